//! [`CachingVerifier`]: verified-token cache and revocation checks in front of any verifier.
//!
//! A signature check costs tens of microseconds; a token seen before is answered from a bounded
//! cache keyed by SHA-256 of the token. Entries never outlive the token (`exp`), and every hit is
//! re-checked: expiry (with the leeway), and the [`RevocationList`]. Sender binding (DPoP,
//! mTLS) is checked by the token layer on every request, cached or not.
//!
//! By default a token is admitted on its second verification ([`CacheAdmission`]): a token
//! used once never pays for an insert (and cannot push out tokens that are in use), which
//! keeps the miss path as cheap as a plain signature check under a flood of one-shot tokens.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{HashedToken, TokenVerifier};
use crate::error::{AuthError, AuthErrorKind};
use crate::principal::Principal;

/// Answers "has this token been revoked?" on every request, cached verdicts included.
///
/// It is called on the hot path and must not block: keep remote lists in memory and refresh
/// them in the background.
pub trait RevocationList: Send + Sync + fmt::Debug + 'static {
    /// Whether `principal`'s token is revoked.
    fn is_revoked(&self, principal: &Principal) -> bool;
}

/// What can be revoked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Revoked {
    Jti(String),
    Subject(String, String),
    Client(String),
}

/// An in-memory revocation list: revoke by `jti`, by (issuer, subject) or by client id, each
/// until a time after which the entry is dropped (set it to the tokens' maximum lifetime, so the
/// list does not grow forever).
#[derive(Debug, Default)]
pub struct InMemoryRevocationList {
    entries: RwLock<HashMap<Revoked, SystemTime>>,
}

impl InMemoryRevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, entry: Revoked, until: SystemTime) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        entries.retain(|_, until| *until > now);
        entries.insert(entry, until);
    }

    /// Revokes the token with this `jti` until `until`.
    pub fn revoke_jti(&self, jti: impl Into<String>, until: SystemTime) {
        self.insert(Revoked::Jti(jti.into()), until);
    }

    /// Revokes every token of this subject from this issuer until `until`.
    pub fn revoke_subject(
        &self,
        issuer: impl Into<String>,
        subject: impl Into<String>,
        until: SystemTime,
    ) {
        self.insert(Revoked::Subject(issuer.into(), subject.into()), until);
    }

    /// Revokes every token issued to this client until `until`.
    pub fn revoke_client(&self, client_id: impl Into<String>, until: SystemTime) {
        self.insert(Revoked::Client(client_id.into()), until);
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        let now = SystemTime::now();
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.values().filter(|until| **until > now).count()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RevocationList for InMemoryRevocationList {
    fn is_revoked(&self, principal: &Principal) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if entries.is_empty() {
            return false;
        }
        let now = SystemTime::now();
        let live = |key: &Revoked| entries.get(key).is_some_and(|until| *until > now);
        principal
            .jti()
            .is_some_and(|jti| live(&Revoked::Jti(jti.to_owned())))
            || live(&Revoked::Subject(
                principal.issuer().to_owned(),
                principal.subject().to_owned(),
            ))
            || principal
                .client_id()
                .is_some_and(|c| live(&Revoked::Client(c.to_owned())))
    }
}

impl<T: RevocationList + ?Sized> RevocationList for Arc<T> {
    fn is_revoked(&self, principal: &Principal) -> bool {
        (**self).is_revoked(principal)
    }
}

/// Counters of a [`CachingVerifier`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Verdicts answered from the cache.
    pub hits: u64,
    /// Tokens verified by the inner verifier.
    pub misses: u64,
    /// Requests refused because the token was revoked.
    pub revoked: u64,
    /// Entries now cached.
    pub entries: u64,
    /// Their estimated memory, in bytes, as weighed against [`CacheLimits::max_bytes`].
    pub bytes: u64,
}

/// When a verified token enters the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheAdmission {
    /// On its second verification (default for JWTs). A small lock-free table of recently
    /// verified token hashes (the doorkeeper) remembers first sightings; one-shot tokens are
    /// verified and never cached.
    #[default]
    SecondSight,
    /// On its first verification (default for introspection, where a miss is a network call).
    FirstSight,
}

/// Cache size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheLimits {
    /// Most tokens cached.
    pub max_entries: u64,
    /// Most memory the cached verdicts may hold, estimated per entry (claims, strings and
    /// bookkeeping). Each entry counts as at least `max_bytes / max_entries`, so both bounds
    /// hold: small tokens are limited by count, large claim sets by bytes.
    pub max_bytes: u64,
    /// Longest any entry lives, even for long-lived tokens.
    pub max_ttl: Duration,
    /// Clock-skew leeway re-applied to `exp` on every hit (match the verifier's).
    pub leeway: Duration,
    /// When a token is admitted.
    pub admission: CacheAdmission,
}

impl Default for CacheLimits {
    /// 100 000 tokens, 256 MiB, 5 minutes, 30 s leeway, admitted on second sight.
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_ttl: Duration::from_secs(300),
            leeway: Duration::from_secs(30),
            admission: CacheAdmission::SecondSight,
        }
    }
}

/// First sightings of verified tokens: one 64-bit fingerprint per slot, overwritten freely.
///
/// A token is "seen before" when its slot still holds its fingerprint. Collisions only make a
/// token wait longer for admission (or, at 2^-63, admit one early); they never affect a verdict,
/// since only tokens that verified are recorded.
struct Doorkeeper {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl Doorkeeper {
    /// A table with a slot per cache entry (a power of two, 1 Ki to 1 Mi slots).
    fn new(max_entries: u64) -> Self {
        let slots = usize::try_from(max_entries)
            .unwrap_or(usize::MAX)
            .clamp(1 << 10, 1 << 20)
            .next_power_of_two();
        Self {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            mask: slots - 1,
        }
    }

    /// Records a verification of the token hashed to `key`; whether it was recorded before.
    fn seen_before(&self, key: &[u8; 32]) -> bool {
        let word = |i: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&key[i..i + 8]);
            u64::from_le_bytes(bytes)
        };
        // The index and the fingerprint come from independent bits of SHA-256; never 0.
        let slot = &self.slots[word(0) as usize & self.mask];
        let fingerprint = word(8) | 1;
        slot.swap(fingerprint, Ordering::Relaxed) == fingerprint
    }
}

#[derive(Clone)]
struct Entry {
    principal: Principal,
    /// When the entry must be gone (`exp` + leeway, or the maximum TTL).
    expires: Instant,
}

/// Caches successful verifications of an inner [`TokenVerifier`] and checks revocation.
pub struct CachingVerifier {
    inner: Arc<dyn TokenVerifier>,
    cache: moka::sync::Cache<[u8; 32], Entry>,
    doorkeeper: Option<Doorkeeper>,
    revocation: Option<Arc<dyn RevocationList>>,
    limits: CacheLimits,
    hits: AtomicU64,
    misses: AtomicU64,
    revoked: AtomicU64,
}

/// What an entry weighs against `max_bytes`: its estimated size, and never less than its share.
fn entry_weigher(limits: CacheLimits) -> impl Fn(&[u8; 32], &Entry) -> u32 + Send + Sync {
    let floor = limits
        .max_bytes
        .max(limits.max_entries)
        .checked_div(limits.max_entries)
        .unwrap_or(u64::MAX);
    move |_key, entry| {
        let bytes = entry.principal.estimated_bytes() as u64;
        u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
    }
}

struct EntryExpiry;

impl moka::Expiry<[u8; 32], Entry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        entry: &Entry,
        now: Instant,
    ) -> Option<Duration> {
        Some(entry.expires.saturating_duration_since(now))
    }
}

impl CachingVerifier {
    /// Caches `inner`'s verdicts within `limits`.
    pub fn new(inner: Arc<dyn TokenVerifier>, limits: CacheLimits) -> Self {
        Self {
            inner,
            cache: moka::sync::Cache::builder()
                .max_capacity(limits.max_bytes.max(limits.max_entries))
                .weigher(entry_weigher(limits))
                .expire_after(EntryExpiry)
                .build(),
            doorkeeper: (limits.admission == CacheAdmission::SecondSight && limits.max_entries > 0)
                .then(|| Doorkeeper::new(limits.max_entries)),
            revocation: None,
            limits,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }

    /// Checks every verdict, cached or fresh, against `list`.
    pub fn with_revocation(mut self, list: Arc<dyn RevocationList>) -> Self {
        self.revocation = Some(list);
        self
    }

    /// The counters (settles the cache's pending bookkeeping first, so `entries` is current).
    pub fn stats(&self) -> CacheStats {
        self.cache.run_pending_tasks();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }

    /// The verdict of a cached entry for `key`: expiry re-checked, revocation checked.
    fn cached(&self, key: &[u8; 32]) -> Option<Result<Principal, AuthError>> {
        let entry = self.cache.get(key)?;
        // Re-check expiry on every hit: the cache's own eviction is lazy.
        let exp = entry.principal.expires_at_unix();
        if crate::jose::unix_now() < exp.saturating_add(self.limits.leeway.as_secs()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(target: "tower_mcp_auth::cache", token = entry.principal.token_thumbprint(), "verified-token cache hit");
            return Some(self.check(entry.principal));
        }
        self.cache.invalidate(key);
        Some(Err(AuthErrorKind::Expired.into()))
    }

    fn check(&self, principal: Principal) -> Result<Principal, AuthError> {
        if let Some(list) = &self.revocation
            && list.is_revoked(&principal)
        {
            self.revoked.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                target: "tower_mcp_auth::cache",
                token = principal.token_thumbprint(),
                "token revoked"
            );
            return Err(AuthErrorKind::Revoked.into());
        }
        Ok(principal)
    }
}

#[async_trait]
impl TokenVerifier for CachingVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_hashed(&HashedToken::new(token)).await
    }

    async fn verify_hashed(&self, token: &HashedToken<'_>) -> Result<Principal, AuthError> {
        // The key is the token's SHA-256: the cache never holds the token itself.
        let key = *token.sha256();
        if let Some(verdict) = self.cached(&key) {
            return verdict;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let principal = self.inner.verify_hashed(token).await?;
        if self.limits.max_entries == 0
            || self
                .doorkeeper
                .as_ref()
                .is_some_and(|door| !door.seen_before(&key))
        {
            tracing::trace!(target: "tower_mcp_auth::cache", token = principal.token_thumbprint(), "verified, not cached (first sighting)");
            return self.check(principal);
        }
        tracing::trace!(target: "tower_mcp_auth::cache", token = principal.token_thumbprint(), "verified and cached");
        let remaining = principal
            .expires_at_unix()
            .saturating_add(self.limits.leeway.as_secs())
            .saturating_sub(crate::jose::unix_now());
        let ttl = Duration::from_secs(remaining).min(self.limits.max_ttl);
        if !ttl.is_zero() {
            self.cache.insert(
                key,
                Entry {
                    principal: principal.clone(),
                    expires: Instant::now() + ttl,
                },
            );
        }
        self.check(principal)
    }

    /// A cache hit, settled without the inner verifier; a miss is left to [`Self::verify`]
    /// (and counted there).
    fn verify_now(&self, token: &HashedToken<'_>) -> Option<Result<Principal, AuthError>> {
        self.cached(token.sha256())
    }
}

impl fmt::Debug for CachingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingVerifier")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .field("revocation", &self.revocation)
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .field("misses", &self.misses.load(Ordering::Relaxed))
            .field("revoked", &self.revoked.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::principal::{Binding, PrincipalParts};

    /// An inner verifier that admits everything and keeps the digest of each call.
    #[derive(Debug, Default)]
    struct Recorder {
        digests: Mutex<Vec<[u8; 32]>>,
    }

    #[async_trait]
    impl TokenVerifier for Recorder {
        async fn verify(&self, _token: &str) -> Result<Principal, AuthError> {
            unreachable!("the cache hands on the digest it keyed by: verify_hashed")
        }

        async fn verify_hashed(&self, token: &HashedToken<'_>) -> Result<Principal, AuthError> {
            self.digests.lock().unwrap().push(*token.sha256());
            Ok(Principal::new(PrincipalParts {
                issuer: "https://as.example".into(),
                subject: "agent-1".into(),
                client_id: None,
                audience: Vec::new(),
                scopes: Default::default(),
                delegation: Vec::new(),
                expires_at: crate::jose::unix_now() + 300,
                issued_at: None,
                jti: None,
                token_thumbprint: token.thumbprint(),
                binding: Binding::Bearer,
                confirmation: None,
                claims: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            }))
        }
    }

    #[tokio::test]
    async fn the_digest_keys_the_cache_and_reaches_the_inner_verifier() {
        let inner = Arc::new(Recorder::default());
        let limits = CacheLimits {
            admission: CacheAdmission::FirstSight,
            ..CacheLimits::default()
        };
        let cache = CachingVerifier::new(inner.clone(), limits);
        let token = HashedToken::new("a.b.c");

        assert!(cache.verify_now(&token).is_none(), "nothing cached yet");
        // The unhashed entry point hashes exactly as `HashedToken::new` does.
        let first = cache.verify("a.b.c").await.unwrap();
        assert_eq!(first.token_thumbprint(), crate::jose::thumbprint("a.b.c"));
        assert_eq!(*inner.digests.lock().unwrap(), [*token.sha256()]);

        let hit = cache.verify_now(&token).expect("cached").unwrap();
        assert_eq!(hit.token_thumbprint(), first.token_thumbprint());
        let again = cache.verify_hashed(&token).await.unwrap();
        assert_eq!(again.token_thumbprint(), first.token_thumbprint());
        assert_eq!(
            inner.digests.lock().unwrap().len(),
            1,
            "hits never reach the inner verifier"
        );

        let other = HashedToken::new("a.b.d");
        assert!(
            cache.verify_now(&other).is_none(),
            "another token, another key"
        );
        cache.verify_hashed(&other).await.unwrap();
        assert_eq!(inner.digests.lock().unwrap()[1], *other.sha256());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 2));
    }
}
