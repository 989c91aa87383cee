//! The token layer: authenticates every request with an OAuth 2.1 access token.
//!
//! [`TokenLayer`] reads exactly one `Authorization` header, verifies the token with a
//! [`TokenVerifier`] (the built-in one is [`JwtVerifier`]), puts the resulting
//! [`Principal`] into the request extensions, removes the `Authorization`
//! header (so the token is never passed through), and calls the inner service. Anything it cannot
//! verify is refused with the status and challenge [`AuthError`] decides.
//!
//! Most users get this layer from [`McpAuth`](crate::McpAuth); build it by hand only for a
//! custom composition.

mod body;
mod cache;
pub(crate) mod credentials;
mod future;
mod introspection;
mod jwt;
mod layer;
mod service;

use std::fmt;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

pub use crate::jose::thumbprint;
pub use body::ResponseBody;
pub use cache::{
    CacheAdmission, CacheLimits, CacheStats, CachingVerifier, InMemoryRevocationList,
    RevocationList,
};
pub use future::ResponseFuture;
pub use introspection::{AssertionSigner, ClientAuth, IntrospectionVerifier, RoutingVerifier};
pub use jwt::{JwtVerifier, RequiredClaims, TrustedIssuer};
pub use layer::TokenLayer;
pub use service::Token;

use crate::error::AuthError;
use crate::principal::Principal;

/// An access token with its SHA-256, hashed once per request: the verified-token cache key and
/// the principal's [`token_thumbprint`](Principal::token_thumbprint) both come from it.
///
/// The digest always belongs to the token: the only way to build one is [`HashedToken::new`].
/// `Debug` shows the thumbprint, never the token.
///
/// ```
/// use tower_mcp_auth::token::{HashedToken, thumbprint};
///
/// let token = HashedToken::new("eyJhbGciOiJFUzI1NiJ9.e30.c2ln");
/// assert_eq!(token.thumbprint(), thumbprint(token.as_str()));
/// assert!(!format!("{token:?}").contains("eyJ"));
/// ```
#[derive(Clone, Copy)]
pub struct HashedToken<'a> {
    token: &'a str,
    sha256: [u8; 32],
}

impl<'a> HashedToken<'a> {
    /// Hashes `token`.
    pub fn new(token: &'a str) -> Self {
        Self {
            token,
            sha256: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Rebuilds a token hashed earlier (the token layer's future owns a copy of the token).
    pub(crate) fn rehydrate(token: &'a str, sha256: [u8; 32]) -> Self {
        debug_assert_eq!(sha256, <[u8; 32]>::from(Sha256::digest(token.as_bytes())));
        Self { token, sha256 }
    }

    /// The token.
    pub fn as_str(&self) -> &'a str {
        self.token
    }

    /// SHA-256 of the token.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// base64url(SHA-256(token)), as [`thumbprint`] computes it.
    pub fn thumbprint(&self) -> String {
        crate::jose::thumbprint_of_digest(&self.sha256)
    }
}

impl fmt::Debug for HashedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashedToken")
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

/// Turns an access token into a [`Principal`], or says why it cannot.
///
/// Errors should use the `invalid_token` kinds (401); a temporarily unavailable backend should
/// return [`AuthErrorKind::KeysUnavailable`](crate::AuthErrorKind::KeysUnavailable) (503).
#[async_trait]
pub trait TokenVerifier: Send + Sync + std::fmt::Debug + 'static {
    /// Verifies `token`.
    async fn verify(&self, token: &str) -> Result<Principal, AuthError>;

    /// [`verify`](Self::verify) for a token already hashed; the token layer calls this. Override
    /// it to reuse the digest (the built-in verifiers do); by default it calls `verify`.
    async fn verify_hashed(&self, token: &HashedToken<'_>) -> Result<Principal, AuthError> {
        self.verify(token.as_str()).await
    }

    /// The verdict on `token` if it is at hand without I/O or signature checks (a cache hit),
    /// else `None`. It must equal what [`verify`](Self::verify) would return now. The token
    /// layer asks this first and settles the request in `call`, skipping the boxed future.
    fn verify_now(&self, token: &HashedToken<'_>) -> Option<Result<Principal, AuthError>> {
        let _ = token;
        None
    }
}
