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

use async_trait::async_trait;

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

/// Turns an access token into a [`Principal`], or says why it cannot.
///
/// Errors should use the `invalid_token` kinds (401); a temporarily unavailable backend should
/// return [`AuthErrorKind::KeysUnavailable`](crate::AuthErrorKind::KeysUnavailable) (503).
#[async_trait]
pub trait TokenVerifier: Send + Sync + std::fmt::Debug + 'static {
    /// Verifies `token`.
    async fn verify(&self, token: &str) -> Result<Principal, AuthError>;

    /// The verdict on `token` if it is at hand without I/O or signature checks (a cache hit),
    /// else `None`. It must equal what [`verify`](Self::verify) would return now. The token
    /// layer asks this first and settles the request in `call`, skipping the boxed future.
    fn verify_now(&self, token: &str) -> Option<Result<Principal, AuthError>> {
        let _ = token;
        None
    }
}
