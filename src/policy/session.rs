//! Session binding: an `Mcp-Session-Id` belongs to the principal that initialized it.
//!
//! MCP servers must not use sessions for authentication (security best practices): a session id
//! is not a credential. The policy layer records who received each session id (in the response
//! to an `initialize`) and answers 404 when another principal presents it.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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

/// Where session bindings live. A shared implementation (e.g. Redis) lets several server
/// instances agree.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Records that `owner` received `session`.
    async fn bind(&self, session: SessionKey, owner: SessionOwner);
    /// The owner of `session`, if known.
    async fn owner(&self, session: &SessionKey) -> Option<SessionOwner>;
    /// Forgets `session` (after a successful DELETE).
    async fn remove(&self, session: &SessionKey);
}

/// An in-memory store: bounded, entries expire after a TTL of inactivity.
#[derive(Clone)]
pub struct InMemorySessionStore {
    cache: moka::sync::Cache<SessionKey, SessionOwner>,
}

impl InMemorySessionStore {
    /// At most `capacity` sessions, each forgotten after `idle` without use.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
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
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn bind(&self, session: SessionKey, owner: SessionOwner) {
        self.cache.insert(session, owner);
    }

    async fn owner(&self, session: &SessionKey) -> Option<SessionOwner> {
        self.cache.get(session)
    }

    async fn remove(&self, session: &SessionKey) {
        self.cache.invalidate(session);
    }
}
