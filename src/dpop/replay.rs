//! DPoP replay protection: the [`ReplayStore`] trait and a bounded in-memory store.
//!
//! Entries are keyed by SHA-256 of (key thumbprint, `jti`), never by the proof bytes: ECDSA
//! signatures are malleable, so a replay with a re-encoded signature has the same key. An entry
//! lives at least as long as a proof can be accepted. A full store refuses new proofs (503)
//! rather than forgetting live entries, which would reopen the replay window.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// What a store remembers for one proof: SHA-256 of (key thumbprint, `jti`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 32]);

impl ReplayKey {
    /// The key of a proof with this key thumbprint and `jti`.
    pub fn new(jkt: &str, jti: &str) -> Self {
        let mut h = Sha256::new();
        h.update((jkt.len() as u64).to_be_bytes());
        h.update(jkt.as_bytes());
        h.update(jti.as_bytes());
        Self(h.finalize().into())
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReplayKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Why a store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No room for a new entry until old ones expire.
    #[error("replay store full")]
    Full,
    /// The backing store failed.
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
}

/// Remembers used proofs. Shared stores (e.g. Redis `SET NX PX`) make replay protection hold
/// across server instances.
#[async_trait]
pub trait ReplayStore: Send + Sync + fmt::Debug + 'static {
    /// Records `key` for at least `ttl`: `Ok(true)` the first time, `Ok(false)` for a replay.
    async fn check_and_record(&self, key: ReplayKey, ttl: Duration) -> Result<bool, ReplayError>;
}

/// A bounded in-memory store. Expired entries are purged as new ones arrive; when every slot
/// holds a live entry, new proofs are refused.
pub struct InMemoryReplayStore {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    live: HashMap<ReplayKey, Instant>,
    order: VecDeque<(Instant, ReplayKey)>,
}

impl InMemoryReplayStore {
    /// At most `capacity` live entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Live entries (after purging expired ones).
    pub fn len(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.purge(Instant::now());
        state.live.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for InMemoryReplayStore {
    /// 100 000 entries.
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl State {
    fn purge(&mut self, now: Instant) {
        while let Some((expiry, key)) = self.order.front().copied() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            if self.live.get(&key) == Some(&expiry) {
                self.live.remove(&key);
            }
        }
    }
}

#[async_trait]
impl ReplayStore for InMemoryReplayStore {
    async fn check_and_record(&self, key: ReplayKey, ttl: Duration) -> Result<bool, ReplayError> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(expiry) = state.live.get(&key)
            && *expiry > now
        {
            return Ok(false);
        }
        state.purge(now);
        if state.live.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        let expiry = now + ttl;
        state.live.insert(key, expiry);
        // Entries share one TTL in practice, so the queue stays ordered by expiry; a longer TTL
        // only delays purging, never forgets early.
        state.order.push_back((expiry, key));
        Ok(true)
    }
}

impl fmt::Debug for InMemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryReplayStore")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_use_then_replay_then_expiry() {
        let store = InMemoryReplayStore::new(10);
        let key = ReplayKey::new("jkt", "jti-1");
        let ttl = Duration::from_millis(50);
        assert_eq!(store.check_and_record(key, ttl).await, Ok(true));
        assert_eq!(store.check_and_record(key, ttl).await, Ok(false));
        // The same jti from another key is another entry.
        assert_eq!(
            store
                .check_and_record(ReplayKey::new("other", "jti-1"), ttl)
                .await,
            Ok(true)
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.check_and_record(key, ttl).await, Ok(true));
    }

    #[tokio::test]
    async fn full_store_refuses_instead_of_forgetting() {
        let store = InMemoryReplayStore::new(3);
        let ttl = Duration::from_secs(60);
        for i in 0..3 {
            let key = ReplayKey::new("k", &i.to_string());
            assert_eq!(store.check_and_record(key, ttl).await, Ok(true));
        }
        let fresh = ReplayKey::new("k", "new");
        assert_eq!(
            store.check_and_record(fresh, ttl).await,
            Err(ReplayError::Full)
        );
        // Live entries are still remembered.
        let old = ReplayKey::new("k", "0");
        assert_eq!(store.check_and_record(old, ttl).await, Ok(false));
    }

    #[test]
    fn key_is_unambiguous() {
        assert_ne!(ReplayKey::new("ab", "c"), ReplayKey::new("a", "bc"));
    }
}
