//! Session binding: an `Mcp-Session-Id` belongs to the principal that initialized it.
//!
//! MCP servers must not use sessions for authentication (security best practices): a session id
//! is not a credential. The policy layer records who received each session id (in the response
//! to an `initialize`) and answers 404 when another principal presents it, and also when the
//! store does not know the id at all (never minted here, ended by DELETE, or expired): a store
//! that forgets must not reopen a session to whoever presents its id.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A [`SessionStore`] is at capacity: it refuses a new binding rather than evicting a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session store is full")]
pub struct SessionStoreFull;

/// Where session bindings live. A shared implementation (e.g. Redis) lets several server
/// instances agree.
///
/// The policy layer fails closed on what the store does not know: a request carrying an
/// `Mcp-Session-Id` without a binding is answered 404, so a store must never forget a live
/// binding to make room. When full, [`bind`](Self::bind) refuses instead (the layer answers the
/// `initialize` with 503 and `Retry-After`).
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Records that `owner` received `session`. An existing binding is kept as it is (the first
    /// owner wins); a full store refuses and evicts nothing.
    async fn bind(&self, session: SessionKey, owner: SessionOwner) -> Result<(), SessionStoreFull>;
    /// The owner of `session`, if known.
    async fn owner(&self, session: &SessionKey) -> Option<SessionOwner>;
    /// Forgets `session` (after a successful DELETE).
    async fn remove(&self, session: &SessionKey);
    /// Whether a new binding would be accepted now. Asked before an `initialize` is forwarded,
    /// so a full store refuses it (503) before the server creates a session; [`bind`](Self::bind)
    /// stays the authority. The default says yes.
    async fn has_room(&self) -> bool {
        true
    }
}

/// An in-memory store: at most `capacity` bindings, each forgotten after an idle TTL. When full
/// it refuses new bindings (after dropping expired ones) and never evicts a live one.
#[derive(Clone)]
pub struct InMemorySessionStore {
    cache: moka::sync::Cache<SessionKey, SessionOwner>,
    capacity: u64,
    /// Bindings held (reserved or in the cache), kept by the eviction listener.
    live: Arc<AtomicU64>,
}

impl InMemorySessionStore {
    /// At most `capacity` sessions, each forgotten after `idle` without use.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        let live = Arc::new(AtomicU64::new(0));
        let counter = live.clone();
        Self {
            // No `max_capacity`: moka would evict live bindings to make room. The count is ours.
            cache: moka::sync::Cache::builder()
                .time_to_idle(idle)
                .eviction_listener(move |_key, _owner, cause| {
                    // `Replaced` keeps the entry; every other cause removes one we counted.
                    if cause != RemovalCause::Replaced {
                        release(&counter);
                    }
                })
                .build(),
            capacity,
            live,
        }
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
            .finish()
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn bind(&self, session: SessionKey, owner: SessionOwner) -> Result<(), SessionStoreFull> {
        if self.cache.contains_key(&session) {
            return Ok(());
        }
        if !self.reserve_or_sweep() {
            return Err(SessionStoreFull);
        }
        // Never replaces a live binding; an expired one is replaced (and its slot freed).
        if !self.cache.entry(session).or_insert(owner).is_fresh() {
            release(&self.live);
        }
        Ok(())
    }

    async fn owner(&self, session: &SessionKey) -> Option<SessionOwner> {
        self.cache.get(session)
    }

    async fn remove(&self, session: &SessionKey) {
        self.cache.invalidate(session);
    }

    async fn has_room(&self) -> bool {
        if self.len() < self.capacity {
            return true;
        }
        self.cache.run_pending_tasks();
        self.len() < self.capacity
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
            assert!(!store.has_room().await);
            assert_eq!(store.bind(c.clone(), owner(3)).await, Err(SessionStoreFull));
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
            assert!(store.has_room().await);
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
            assert_eq!(store.bind(b.clone(), owner(2)).await, Err(SessionStoreFull));
            std::thread::sleep(Duration::from_millis(120));
            assert_eq!(store.owner(&a).await, None, "expired");
            assert!(store.has_room().await);
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
    fn debug_shows_no_session_ids() {
        let store = InMemorySessionStore::new(1, Duration::from_secs(1));
        block_on(store.bind(SessionKey::of("secret-session-id"), owner(1))).unwrap();
        let debug = format!("{store:?} {:?}", SessionKey::of("secret-session-id"));
        assert!(!debug.contains("secret-session-id"), "{debug}");
    }
}
