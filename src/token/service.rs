//! [`Token`]: the token-checking service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::body::ResponseBody;
use super::credentials::{self, Credentials, Scheme};
use super::future::ResponseFuture;
use super::layer::TokenConfig;
use crate::error::AuthErrorKind;

/// Authenticates each request before calling `S`; built by [`TokenLayer`](super::TokenLayer).
#[derive(Clone)]
pub struct Token<S> {
    inner: S,
    config: Arc<TokenConfig>,
}

impl<S> Token<S> {
    pub(crate) fn new(inner: S, config: Arc<TokenConfig>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn is_cors_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Token<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if config.allow_cors_preflight && is_cors_preflight(&req) {
            return ResponseFuture::called(self.inner.call(req));
        }
        let token =
            match credentials::extract(req.headers(), req.uri(), config.max_authorization_len) {
                Ok(Credentials {
                    scheme: Scheme::Bearer,
                    token,
                }) => token.to_owned(),
                Ok(Credentials {
                    scheme: Scheme::Dpop,
                    ..
                }) => {
                    // Fail closed until a DPoP proof layer supplies verified evidence.
                    return ResponseFuture::rejected(
                        config.reject(AuthErrorKind::DpopNotEnabled.into()),
                    );
                }
                Err(error) => return ResponseFuture::rejected(config.reject(error)),
            };
        let verifier = config.verifier.clone();
        let verify = Box::pin(async move { verifier.verify(&token).await });
        // Drive the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::verifying(verify, req, ready, config.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for Token<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
