//! [`Token`]: the token-checking service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::body::ResponseBody;
use super::credentials::{self, Credentials, Scheme};
use super::future::{ResponseFuture, admit};
use super::layer::TokenConfig;
use crate::dpop::DpopEvidence;
use crate::error::{AuthError, AuthErrorKind};
use crate::mtls::ClientCertificate;
use crate::principal::{Binding, Principal};

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
        let (token, dpop) =
            match credentials::extract(req.headers(), req.uri(), config.max_authorization_len) {
                Ok(Credentials {
                    scheme: Scheme::Bearer,
                    token,
                }) => (token, None),
                Ok(Credentials {
                    scheme: Scheme::Dpop,
                    token,
                }) => match req.extensions().get::<DpopEvidence>() {
                    Some(evidence) => (token, Some(evidence.clone())),
                    // No proof layer verified a proof: fail closed, never fall back to bearer.
                    None => {
                        let error = AuthError::from(AuthErrorKind::DpopNotEnabled).on_dpop();
                        return ResponseFuture::rejected(config.reject(error));
                    }
                },
                Err(error) => return ResponseFuture::rejected(config.reject(error)),
            };
        let certificate = req
            .extensions()
            .get::<ClientCertificate>()
            .map(ClientCertificate::thumbprint);
        // A verdict at hand (a cache hit) is settled here, with the same binding checks. A DPoP
        // request always takes the future: its proof's replay record is async I/O.
        if dpop.is_none()
            && let Some(verdict) = config.verifier.verify_now(token)
        {
            let admitted = verdict.and_then(|principal| {
                let (binding, key) = bind(&principal, None, certificate, config.dpop_required)?;
                Ok(principal.bound(binding, key))
            });
            return match admitted {
                Ok(principal) => {
                    let mut req = req;
                    admit(&mut req, principal, config);
                    ResponseFuture::called(self.inner.call(req))
                }
                Err(error) => ResponseFuture::rejected(config.reject(error)),
            };
        }
        let token = token.to_owned();
        let certificate = certificate.map(str::to_owned);
        let verifier = config.verifier.clone();
        let dpop_required = config.dpop_required;
        let verify = Box::pin(async move {
            let on_scheme = |e: AuthError| if dpop.is_some() { e.on_dpop() } else { e };
            let principal = verifier.verify(&token).await.map_err(on_scheme)?;
            let (binding, key) = bind(
                &principal,
                dpop.as_ref(),
                certificate.as_deref(),
                dpop_required,
            )
            .map_err(on_scheme)?;
            // Replay protection last: a proof is used up only by a request that passed all else.
            if let Some(evidence) = &dpop {
                evidence.record_use().await?;
            }
            Ok(principal.bound(binding, key))
        });
        // Drive the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::verifying(verify, req, ready, config.clone())
    }
}

/// Checks the token's confirmation (`cnf`) against the evidence (RFC 9449 §7, RFC 8705 §3).
fn bind(
    principal: &Principal,
    dpop: Option<&DpopEvidence>,
    certificate: Option<&str>,
    dpop_required: bool,
) -> Result<(Binding, Option<Arc<str>>), AuthError> {
    let cnf = principal.confirmation();
    let jkt = cnf.and_then(|c| c.jkt.as_deref());
    let x5t = cnf.and_then(|c| c.x5t_s256.as_deref());
    if let Some(x5t) = x5t
        && certificate != Some(x5t)
    {
        return Err(AuthErrorKind::CertificateMismatch.into());
    }
    match (jkt, dpop) {
        (Some(jkt), Some(evidence)) if evidence.jkt() == jkt => {
            Ok((Binding::Dpop, Some(evidence.jkt_shared())))
        }
        (Some(_), Some(_)) => Err(AuthErrorKind::DpopKeyMismatch.into()),
        // A DPoP-bound token presented as a bearer token (RFC 9449 §7.2).
        (Some(_), None) => Err(AuthErrorKind::MissingProofOfPossession.into()),
        // A proof with a token not bound to its key proves nothing about the token.
        (None, Some(_)) => Err(AuthErrorKind::DpopKeyMismatch.into()),
        (None, None) if dpop_required => Err(AuthErrorKind::DpopRequired.into()),
        (None, None) => match x5t {
            Some(x5t) => Ok((Binding::Mtls, Some(Arc::from(x5t)))),
            None => Ok((Binding::Bearer, None)),
        },
    }
}

impl<S: fmt::Debug> fmt::Debug for Token<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
