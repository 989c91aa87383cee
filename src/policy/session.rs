//! Session binding: an `Mcp-Session-Id` belongs to the principal that initialized it.
//!
//! MCP servers must not use sessions for authentication (security best practices): a session id
//! is not a credential. The policy layer records who received each session id (in the response
//! to an `initialize`) and answers 404 when another principal presents it, and also when the
//! store does not know the id at all (never minted here, ended by DELETE, or expired): a store
//! that forgets must not reopen a session to whoever presents its id.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::notification::RemovalCause;
use sha2::{Digest, Sha256};

use crate::principal::Principal;

/// Who owns a session: a hash of (issuer, subject, client id).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionOwner([u8; 32]);

impl SessionOwner {
    /// The owner key of `principal`.
    pub fn of(principal: &Principal) -> Self {
        let mut h = Sha256::new();
        for part in [
            principal.issuer(),
            principal.subject(),
            principal.client_id().unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self(h.finalize().into())
    }
}

impl fmt::Debug for SessionOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionOwner({})", URL_SAFE_NO_PAD.encode(&self.0[..8]))
    }
}

/// A session id as stored: its SHA-256 (the id itself is a bearer secret for the session).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key of a session id.
    pub fn of(session_id: &str) -> Self {
        Self(Sha256::digest(session_id.as_bytes()).into())
    }

    /// base64url of the hash, for logs and audit.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", URL_SAFE_NO_PAD.encode(&self.0[..8]))
    }
}

/// Why a [`SessionStore`] refused a new binding. It refuses rather than evicting a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindRefused {
    /// Every slot holds a live binding (the layer answers 503 with `Retry-After`).
    #[error("the session store is full")]
    StoreFull,
    /// This owner already holds as many bindings as one owner may (429 with `Retry-After`),
    /// so one principal cannot take every slot.
    #[error("the owner holds too many sessions")]
    OwnerLimit,
}

/// Where session bindings live. A shared implementation (e.g. Redis) lets several server
/// instances agree.
///
/// The policy layer fails closed on what the store does not know: a request carrying an
/// `Mcp-Session-Id` without a binding is answered 404, so a store must never forget a live
/// binding to make room. When full, [`bind`](Self::bind) refuses instead (the layer answers the
/// `initialize` with 503, or 429 for [`BindRefused::OwnerLimit`], and `Retry-After`).
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Records that `owner` received `session`. An existing binding is kept as it is (the first
    /// owner wins); a full store refuses and evicts nothing.
    async fn bind(&self, session: SessionKey, owner: SessionOwner) -> Result<(), BindRefused>;
    /// The owner of `session`, if known.
    async fn owner(&self, session: &SessionKey) -> Option<SessionOwner>;
    /// Forgets `session` (after a successful DELETE).
    async fn remove(&self, session: &SessionKey);
    /// Whether a new binding for `owner` would be accepted now. Asked before an `initialize` is
    /// forwarded, so a full store refuses it before the server creates a session;
    /// [`bind`](Self::bind) stays the authority. The default says yes.
    async fn has_room(&self, owner: &SessionOwner) -> Result<(), BindRefused> {
        let _ = owner;
        Ok(())
    }
}

/// Live bindings per owner: owners holding none are not kept.
type OwnerCounts = Arc<Mutex<HashMap<SessionOwner, u32>>>;

/// An in-memory store: at most `capacity` bindings, each forgotten after an idle TTL, and at
/// most [`DEFAULT_OWNER_LIMIT`](Self::DEFAULT_OWNER_LIMIT) per owner. When full it refuses new
/// bindings (after dropping expired ones) and never evicts a live one.
#[derive(Clone)]
pub struct InMemorySessionStore {
    cache: moka::sync::Cache<SessionKey, SessionOwner>,
    capacity: u64,
    owner_limit: u32,
    /// Bindings held (reserved or in the cache), kept by the eviction listener.
    live: Arc<AtomicU64>,
    /// The same, per owner.
    owners: OwnerCounts,
}

impl InMemorySessionStore {
    /// Bindings one owner may hold unless [`with_owner_limit`](Self::with_owner_limit) says
    /// otherwise.
    pub const DEFAULT_OWNER_LIMIT: u32 = 1000;

    /// At most `capacity` sessions, each forgotten after `idle` without use.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        let live = Arc::new(AtomicU64::new(0));
        let owners = OwnerCounts::default();
        let (counter, per_owner) = (live.clone(), owners.clone());
        Self {
            // No `max_capacity`: moka would evict live bindings to make room. The count is ours.
            cache: moka::sync::Cache::builder()
                .time_to_idle(idle)
                .eviction_listener(move |_key, owner, cause| {
                    // `Replaced` keeps the entry; every other cause removes one we counted.
                    if cause != RemovalCause::Replaced {
                        release(&counter);
                        release_owner(&per_owner, &owner);
                    }
                })
                .build(),
            capacity,
            owner_limit: Self::DEFAULT_OWNER_LIMIT,
            live,
            owners,
        }
    }

    /// The same store allowing each owner (issuer, subject, client id) at most `limit` live
    /// bindings (at least 1). Several agents sharing one identity share this limit.
    pub fn with_owner_limit(mut self, limit: u32) -> Self {
        self.owner_limit = limit.max(1);
        self
    }

    /// Takes one of `owner`'s slots, if one is free.
    fn reserve_owner(&self, owner: &SessionOwner) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let held = owners.entry(owner.clone()).or_insert(0);
        if *held >= self.owner_limit {
            return false;
        }
        *held += 1;
        true
    }

    /// Takes one of `owner`'s slots, first dropping expired bindings if none is free.
    fn reserve_owner_or_sweep(&self, owner: &SessionOwner) -> bool {
        if self.reserve_owner(owner) {
            return true;
        }
        // The listener takes the lock: never hold it here.
        self.cache.run_pending_tasks();
        self.reserve_owner(owner)
    }

    fn owner_has_room(&self, owner: &SessionOwner) -> bool {
        let owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        owners.get(owner).copied().unwrap_or(0) < self.owner_limit
    }

    /// Takes one slot, if one is free.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes one slot, first dropping expired bindings if none is free.
    fn reserve_or_sweep(&self) -> bool {
        if self.reserve() {
            return true;
        }
        // Expired entries are removed lazily; settle them (the listener frees their slots).
        self.cache.run_pending_tasks();
        self.reserve()
    }

    /// Bindings held now (expired ones may count until they are swept).
    pub fn len(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// Whether no binding is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn release(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

fn release_owner(owners: &Mutex<HashMap<SessionOwner, u32>>, owner: &SessionOwner) {
    let mut owners = owners.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(held) = owners.get_mut(owner) {
        *held = held.saturating_sub(1);
        if *held == 0 {
            owners.remove(owner);
        }
    }
}

impl Default for InMemorySessionStore {
    /// 100 000 sessions, 24 h idle.
    fn default() -> Self {
        Self::new(100_000, Duration::from_secs(24 * 3600))
    }
}

impl fmt::Debug for InMemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemorySessionStore")
            .field("entries", &self.len())
            .field("capacity", &self.capacity)
            .field("owner_limit", &self.owner_limit)
            .finish()
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn bind(&self, session: SessionKey, owner: SessionOwner) -> Result<(), BindRefused> {
        if self.cache.contains_key(&session) {
            return Ok(());
        }
        if !self.reserve_or_sweep() {
            return Err(BindRefused::StoreFull);
        }
        if !self.reserve_owner_or_sweep(&owner) {
            release(&self.live);
            return Err(BindRefused::OwnerLimit);
        }
        // Never replaces a live binding; an expired one is replaced (and its slots freed).
        if !self
            .cache
            .entry(session)
            .or_insert(owner.clone())
            .is_fresh()
        {
            release(&self.live);
            release_owner(&self.owners, &owner);
        }
        Ok(())
    }

    async fn owner(&self, session: &SessionKey) -> Option<SessionOwner> {
        self.cache.get(session)
    }

    async fn remove(&self, session: &SessionKey) {
        self.cache.invalidate(session);
    }

    async fn has_room(&self, owner: &SessionOwner) -> Result<(), BindRefused> {
        let check = || {
            if self.len() >= self.capacity {
                Err(BindRefused::StoreFull)
            } else if !self.owner_has_room(owner) {
                Err(BindRefused::OwnerLimit)
            } else {
                Ok(())
            }
        };
        check().or_else(|_| {
            self.cache.run_pending_tasks();
            check()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u8) -> SessionOwner {
        SessionOwner([n; 32])
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn full_store_refuses_and_keeps_live_bindings() {
        block_on(async {
            let store = InMemorySessionStore::new(2, Duration::from_secs(3600));
            let (a, b, c) = (
                SessionKey::of("a"),
                SessionKey::of("b"),
                SessionKey::of("c"),
            );
            store.bind(a.clone(), owner(1)).await.unwrap();
            store.bind(b.clone(), owner(2)).await.unwrap();
            assert_eq!(store.has_room(&owner(3)).await, Err(BindRefused::StoreFull));
            assert_eq!(
                store.bind(c.clone(), owner(3)).await,
                Err(BindRefused::StoreFull)
            );
            assert_eq!(store.owner(&a).await, Some(owner(1)));
            assert_eq!(store.owner(&b).await, Some(owner(2)));
            assert_eq!(store.owner(&c).await, None);
            // An existing binding is kept, whoever asks, and takes no new slot.
            store.bind(a.clone(), owner(9)).await.unwrap();
            assert_eq!(store.owner(&a).await, Some(owner(1)));
            assert_eq!(store.len(), 2);
            // DELETE frees a slot.
            store.remove(&a).await;
            assert_eq!(store.owner(&a).await, None);
            assert_eq!(store.has_room(&owner(3)).await, Ok(()));
            store.bind(c.clone(), owner(3)).await.unwrap();
            assert_eq!(store.owner(&c).await, Some(owner(3)));
            assert_eq!(store.len(), 2);
        });
    }

    #[test]
    fn expired_bindings_are_forgotten_and_free_their_slots() {
        block_on(async {
            let store = InMemorySessionStore::new(1, Duration::from_millis(50));
            let (a, b) = (SessionKey::of("a"), SessionKey::of("b"));
            store.bind(a.clone(), owner(1)).await.unwrap();
            assert_eq!(
                store.bind(b.clone(), owner(2)).await,
                Err(BindRefused::StoreFull)
            );
            std::thread::sleep(Duration::from_millis(120));
            assert_eq!(store.owner(&a).await, None, "expired");
            assert_eq!(store.has_room(&owner(2)).await, Ok(()));
            store.bind(b.clone(), owner(2)).await.unwrap();
            assert_eq!(store.owner(&b).await, Some(owner(2)));
            assert_eq!(store.len(), 1);
            // Rebinding an expired key replaces it without leaking a slot.
            std::thread::sleep(Duration::from_millis(120));
            store.bind(b.clone(), owner(3)).await.unwrap();
            assert_eq!(store.owner(&b).await, Some(owner(3)));
            store.cache.run_pending_tasks();
            assert_eq!(store.len(), 1);
        });
    }

    #[test]
    fn one_owner_cannot_take_every_slot() {
        block_on(async {
            let store =
                InMemorySessionStore::new(10, Duration::from_secs(3600)).with_owner_limit(2);
            let key = |n: u32| SessionKey::of(&format!("s{n}"));
            store.bind(key(1), owner(1)).await.unwrap();
            store.bind(key(2), owner(1)).await.unwrap();
            assert_eq!(
                store.has_room(&owner(1)).await,
                Err(BindRefused::OwnerLimit)
            );
            assert_eq!(
                store.bind(key(3), owner(1)).await,
                Err(BindRefused::OwnerLimit)
            );
            assert_eq!(store.owner(&key(3)).await, None);
            // The refusal took no slot; other owners are unaffected.
            assert_eq!(store.len(), 2);
            assert_eq!(store.has_room(&owner(2)).await, Ok(()));
            store.bind(key(4), owner(2)).await.unwrap();
            // Rebinding an existing session is not a new slot.
            store.bind(key(1), owner(1)).await.unwrap();
            // Ending a session frees the owner's slot.
            store.remove(&key(1)).await;
            store.cache.run_pending_tasks();
            assert_eq!(store.has_room(&owner(1)).await, Ok(()));
            store.bind(key(3), owner(1)).await.unwrap();
            assert_eq!(store.owner(&key(3)).await, Some(owner(1)));
            assert_eq!(store.len(), 3);
        });
    }

    #[test]
    fn expired_bindings_free_their_owner_slots() {
        block_on(async {
            let store =
                InMemorySessionStore::new(10, Duration::from_millis(50)).with_owner_limit(1);
            let (a, b) = (SessionKey::of("a"), SessionKey::of("b"));
            store.bind(a.clone(), owner(1)).await.unwrap();
            assert_eq!(
                store.bind(b.clone(), owner(1)).await,
                Err(BindRefused::OwnerLimit)
            );
            std::thread::sleep(Duration::from_millis(120));
            assert_eq!(store.has_room(&owner(1)).await, Ok(()));
            store.bind(b.clone(), owner(1)).await.unwrap();
            assert_eq!(store.owner(&b).await, Some(owner(1)));
            // An expired session rebound by another owner moves the slot to that owner.
            std::thread::sleep(Duration::from_millis(120));
            store.bind(b.clone(), owner(2)).await.unwrap();
            store.cache.run_pending_tasks();
            assert_eq!(store.has_room(&owner(1)).await, Ok(()));
            assert_eq!(
                store.has_room(&owner(2)).await,
                Err(BindRefused::OwnerLimit)
            );
            assert_eq!(store.len(), 1);
        });
    }

    #[test]
    fn debug_shows_no_session_ids() {
        let store = InMemorySessionStore::new(1, Duration::from_secs(1));
        block_on(store.bind(SessionKey::of("secret-session-id"), owner(1))).unwrap();
        let debug = format!("{store:?} {:?}", SessionKey::of("secret-session-id"));
        assert!(!debug.contains("secret-session-id"), "{debug}");
    }
}
