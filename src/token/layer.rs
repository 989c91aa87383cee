//! [`TokenLayer`]: configuration of the token layer.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tower_layer::Layer;

use super::TokenVerifier;
use super::service::Token;
use crate::error::{AuthError, ChallengeConfig, ShapeRejection, apply_shape};

/// Authenticates requests with an access token; see the [module docs](crate::token).
#[derive(Clone)]
#[must_use]
pub struct TokenLayer {
    pub(crate) config: Arc<TokenConfig>,
}

#[derive(Clone)]
pub(crate) struct TokenConfig {
    pub(crate) verifier: Arc<dyn TokenVerifier>,
    pub(crate) challenge: ChallengeConfig,
    pub(crate) shape: Option<Arc<dyn ShapeRejection>>,
    pub(crate) keep_authorization: bool,
    pub(crate) max_authorization_len: usize,
    pub(crate) allow_cors_preflight: bool,
    pub(crate) dpop_required: bool,
}

impl TokenConfig {
    /// The one way this layer builds a rejection.
    pub(crate) fn reject(&self, error: AuthError) -> Response<Full<Bytes>> {
        tracing::debug!(
            target: "tower_mcp_auth::token",
            reason = error.kind().as_str(),
            status = error.status().as_u16(),
            "request refused"
        );
        let mut response = error.to_response(&self.challenge);
        if let Some(shape) = &self.shape {
            apply_shape(shape.as_ref(), &error, &mut response);
        }
        response
    }
}

impl TokenLayer {
    /// A layer verifying tokens with `verifier` and challenging with `challenge`.
    pub fn new(verifier: Arc<dyn TokenVerifier>, challenge: ChallengeConfig) -> Self {
        Self {
            config: Arc::new(TokenConfig {
                verifier,
                challenge,
                shape: None,
                keep_authorization: false,
                max_authorization_len: 8 * 1024 + 16,
                allow_cors_preflight: false,
                dpop_required: false,
            }),
        }
    }

    /// Reshapes every rejection this layer makes (for example its body) after it is built; the
    /// status, challenges and error extension stay as computed (see [`ShapeRejection`]).
    pub fn shape_rejection(self, shape: impl ShapeRejection) -> Self {
        self.shape_rejection_shared(Arc::new(shape))
    }

    pub(crate) fn shape_rejection_shared(mut self, shape: Arc<dyn ShapeRejection>) -> Self {
        Arc::make_mut(&mut self.config).shape = Some(shape);
        self
    }

    /// Keep the `Authorization` header on requests passed inward. Off by default, so the inner
    /// service never sees (and cannot pass through or log) the token.
    pub fn keep_authorization_header(mut self, keep: bool) -> Self {
        Arc::make_mut(&mut self.config).keep_authorization = keep;
        self
    }

    /// Longest `Authorization` header accepted, in bytes (default 8 KiB plus the scheme).
    pub fn max_authorization_len(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.config).max_authorization_len = max;
        self
    }

    /// Let CORS preflight requests (`OPTIONS` with `Access-Control-Request-Method`) through
    /// without a token, for browser-based clients. Off by default: the inner service then
    /// answers `OPTIONS` unauthenticated, so enable it only if that is safe there.
    pub fn allow_cors_preflight(mut self, allow: bool) -> Self {
        Arc::make_mut(&mut self.config).allow_cors_preflight = allow;
        self
    }
}

impl TokenLayer {
    /// Accept only sender-constrained (DPoP-bound) tokens: unbound tokens get 401
    /// `invalid_token`. Set by [`McpAuth`](crate::McpAuth) for DPoP mode `required`.
    pub fn require_dpop(mut self, required: bool) -> Self {
        Arc::make_mut(&mut self.config).dpop_required = required;
        self
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = Token<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Token::new(inner, self.config.clone())
    }
}

impl fmt::Debug for TokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLayer")
            .field("verifier", &self.config.verifier)
            .field("challenge", &self.config.challenge)
            .field("shape", &self.config.shape.as_ref().map(|_| "<fn>"))
            .field("keep_authorization", &self.config.keep_authorization)
            .field("max_authorization_len", &self.config.max_authorization_len)
            .field("allow_cors_preflight", &self.config.allow_cors_preflight)
            .finish()
    }
}
