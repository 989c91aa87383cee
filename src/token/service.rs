//! [`Token`]: the token-checking service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::HashedToken;
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
        // Hashed once: the cache key and the principal's thumbprint are both this digest.
        let hashed = HashedToken::new(token);
        // A verdict at hand (a cache hit) is settled here, with the same binding checks. A DPoP
        // request always takes the future: its proof's replay record is async I/O.
        if dpop.is_none()
            && let Some(verdict) = config.verifier.verify_now(&hashed)
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
        let sha256 = *hashed.sha256();
        let certificate = certificate.map(str::to_owned);
        let verifier = config.verifier.clone();
        let dpop_required = config.dpop_required;
        let verify = Box::pin(async move {
            let on_scheme = |e: AuthError| if dpop.is_some() { e.on_dpop() } else { e };
            let hashed = HashedToken::rehydrate(&token, sha256);
            let principal = verifier.verify_hashed(&hashed).await.map_err(on_scheme)?;
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

#[cfg(test)]
mod tests {
    //! Where a verdict is settled: a verdict at hand (`verify_now`) is settled inside `call`,
    //! with the same binding checks as the future; everything else goes through `verify_hashed`.

    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use http::StatusCode;
    use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
    use sha2::Digest as _;
    use tower_layer::Layer;

    use super::*;
    use crate::dpop::InMemoryReplayStore;
    use crate::error::ChallengeConfig;
    use crate::principal::{Confirmation, PrincipalParts};
    use crate::token::{TokenLayer, TokenVerifier};

    const CERT: &[u8] = b"a client certificate, DER in real life";
    const JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln";
    const METADATA: &str = "https://mcp.example/.well-known/oauth-protected-resource/mcp";

    /// What `verify_now` answers.
    #[derive(Debug, Clone, Copy)]
    enum Now {
        /// Nothing at hand: the layer must call `verify`.
        Absent,
        /// A hit: the principal `verify` would return.
        Hit,
        /// A refusal at hand (an expired or revoked entry).
        Refused(AuthErrorKind),
    }

    /// Serves `now` from `verify_now` and an admitted principal from `verify_hashed`, counting
    /// the calls and keeping the digests it was handed.
    #[derive(Debug)]
    struct Stub {
        now: Now,
        cnf: Option<Confirmation>,
        now_calls: AtomicUsize,
        verify_calls: AtomicUsize,
        digests: Mutex<Vec<[u8; 32]>>,
    }

    impl Stub {
        fn principal(&self) -> Principal {
            Principal::new(PrincipalParts {
                issuer: "https://as.example".into(),
                subject: "agent-1".into(),
                client_id: None,
                audience: vec!["https://mcp.example/mcp".into()],
                scopes: Default::default(),
                delegation: Vec::new(),
                expires_at: u64::MAX,
                issued_at: None,
                jti: None,
                token_thumbprint: "thumbprint".into(),
                binding: Binding::Bearer,
                confirmation: self.cnf.clone(),
                claims: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            })
        }
    }

    #[async_trait]
    impl TokenVerifier for Stub {
        async fn verify(&self, _token: &str) -> Result<Principal, AuthError> {
            unreachable!("the token layer hands on the digest: verify_hashed")
        }

        async fn verify_hashed(&self, token: &HashedToken<'_>) -> Result<Principal, AuthError> {
            self.verify_calls.fetch_add(1, Ordering::Relaxed);
            self.digests.lock().unwrap().push(*token.sha256());
            Ok(self.principal())
        }

        fn verify_now(&self, token: &HashedToken<'_>) -> Option<Result<Principal, AuthError>> {
            self.now_calls.fetch_add(1, Ordering::Relaxed);
            self.digests.lock().unwrap().push(*token.sha256());
            match self.now {
                Now::Absent => None,
                Now::Hit => Some(Ok(self.principal())),
                Now::Refused(kind) => Some(Err(kind.into())),
            }
        }
    }

    /// Records, at `call` time, the binding of each principal it is handed.
    #[derive(Clone, Default)]
    struct Inner {
        calls: Arc<Mutex<Vec<Option<Binding>>>>,
    }

    impl Service<Request<()>> for Inner {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            let binding = req.extensions().get::<Principal>().map(Principal::binding);
            self.calls.lock().unwrap().push(binding);
            ready(Ok(Response::new(())))
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Expect {
        /// The inner service was called inside `call`; `verify` never ran.
        SettledInCall(Binding),
        /// The inner service was called only once the future ran `verify` (once).
        SettledInFuture(Binding),
        /// Refused with this kind (401, a Bearer `invalid_token` challenge with the kind's
        /// description), inner service never called.
        Refused(AuthErrorKind),
    }

    struct Row {
        name: &'static str,
        scheme: &'static str,
        /// The key thumbprint of a proof a DPoP layer verified.
        evidence: Option<&'static str>,
        certificate: Option<&'static [u8]>,
        cnf_jkt: Option<&'static str>,
        cnf_x5t: Option<&'static [u8]>,
        require_dpop: bool,
        now: Now,
        /// Whether the layer may ask `verify_now` at all.
        asks_now: bool,
        expect: Expect,
    }

    const fn row(name: &'static str, now: Now, expect: Expect) -> Row {
        Row {
            name,
            scheme: "Bearer",
            evidence: None,
            certificate: None,
            cnf_jkt: None,
            cnf_x5t: None,
            require_dpop: false,
            now,
            asks_now: true,
            expect,
        }
    }

    fn rows() -> Vec<Row> {
        use AuthErrorKind::*;
        use Expect::*;
        vec![
            row("a hit", Now::Hit, SettledInCall(Binding::Bearer)),
            row("an expired entry", Now::Refused(Expired), Refused(Expired)),
            row("a revoked entry", Now::Refused(Revoked), Refused(Revoked)),
            row(
                "nothing at hand",
                Now::Absent,
                SettledInFuture(Binding::Bearer),
            ),
            Row {
                certificate: Some(CERT),
                cnf_x5t: Some(CERT),
                ..row(
                    "an mTLS-bound hit with its certificate",
                    Now::Hit,
                    SettledInCall(Binding::Mtls),
                )
            },
            Row {
                cnf_x5t: Some(CERT),
                ..row(
                    "an mTLS-bound hit without a certificate",
                    Now::Hit,
                    Refused(CertificateMismatch),
                )
            },
            Row {
                certificate: Some(b"another certificate"),
                cnf_x5t: Some(CERT),
                ..row(
                    "an mTLS-bound hit with another certificate",
                    Now::Hit,
                    Refused(CertificateMismatch),
                )
            },
            Row {
                cnf_jkt: Some(JKT),
                ..row(
                    "a DPoP-bound hit sent as Bearer",
                    Now::Hit,
                    Refused(MissingProofOfPossession),
                )
            },
            Row {
                require_dpop: true,
                ..row(
                    "an unbound hit where DPoP is required",
                    Now::Hit,
                    Refused(DpopRequired),
                )
            },
            Row {
                scheme: "DPoP",
                cnf_jkt: Some(JKT),
                asks_now: false,
                ..row(
                    "the DPoP scheme with no verified proof",
                    Now::Hit,
                    Refused(DpopNotEnabled),
                )
            },
            Row {
                scheme: "DPoP",
                evidence: Some(JKT),
                cnf_jkt: Some(JKT),
                asks_now: false,
                ..row(
                    "a DPoP request (its replay record is async)",
                    Now::Hit,
                    SettledInFuture(Binding::Dpop),
                )
            },
        ]
    }

    fn thumbprint(der: &'static [u8]) -> String {
        ClientCertificate::from_der(der).thumbprint().to_owned()
    }

    #[tokio::test]
    async fn a_verdict_at_hand_is_settled_in_call_with_the_same_checks() {
        for row in rows() {
            let name = row.name;
            let cnf = (row.cnf_jkt.is_some() || row.cnf_x5t.is_some()).then(|| Confirmation {
                jkt: row.cnf_jkt.map(str::to_owned),
                x5t_s256: row.cnf_x5t.map(thumbprint),
            });
            let stub = Arc::new(Stub {
                now: row.now,
                cnf,
                now_calls: AtomicUsize::new(0),
                verify_calls: AtomicUsize::new(0),
                digests: Mutex::default(),
            });
            let challenge = ChallengeConfig::new(METADATA);
            let layer = TokenLayer::new(stub.clone(), challenge).require_dpop(row.require_dpop);
            let inner = Inner::default();
            let mut service = layer.layer(inner.clone());

            let mut req = Request::builder()
                .header(AUTHORIZATION, format!("{} {TOKEN}", row.scheme))
                .body(())
                .unwrap();
            if let Some(der) = row.certificate {
                req.extensions_mut()
                    .insert(ClientCertificate::from_der(der));
            }
            let store = Arc::new(InMemoryReplayStore::new(16));
            if let Some(jkt) = row.evidence {
                req.extensions_mut()
                    .insert(DpopEvidence::for_tests(jkt, "jti-1", store.clone()));
            }

            let future = service.call(req);
            let in_call = inner.calls.lock().unwrap().clone();
            let response = future.await.unwrap();
            let after = inner.calls.lock().unwrap().clone();
            let asked = stub.now_calls.load(Ordering::Relaxed);
            let verified = stub.verify_calls.load(Ordering::Relaxed);
            // A proof is used up exactly when a DPoP request is admitted.
            let used = usize::from(row.evidence.is_some() && response.status() == StatusCode::OK);
            assert_eq!(store.len(), used, "{name}: proofs recorded");

            assert_eq!(asked, usize::from(row.asks_now), "{name}: verify_now calls");
            let digest: [u8; 32] = sha2::Sha256::digest(TOKEN.as_bytes()).into();
            let digests = stub.digests.lock().unwrap().clone();
            assert!(
                digests.iter().all(|d| *d == digest),
                "{name}: the token's own digest"
            );
            assert_eq!(
                digests.len(),
                asked + verified,
                "{name}: every call got the digest"
            );
            match row.expect {
                Expect::SettledInCall(binding) => {
                    assert_eq!(in_call, [Some(binding)], "{name}: inner called inside call");
                    assert_eq!(after, [Some(binding)], "{name}: inner called once");
                    assert_eq!(verified, 0, "{name}: verify must not run");
                    assert_eq!(response.status(), StatusCode::OK, "{name}");
                }
                Expect::SettledInFuture(binding) => {
                    assert_eq!(in_call, [], "{name}: inner must wait for verify");
                    assert_eq!(
                        after,
                        [Some(binding)],
                        "{name}: inner called once, after verify"
                    );
                    assert_eq!(verified, 1, "{name}: verify runs once");
                    assert_eq!(response.status(), StatusCode::OK, "{name}");
                }
                Expect::Refused(kind) => {
                    assert_eq!(after, [], "{name}: inner must not be called");
                    assert_eq!(verified, 0, "{name}: refused without verify");
                    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
                    let error = response.extensions().get::<AuthError>();
                    assert_eq!(error.map(AuthError::kind), Some(kind), "{name}");
                    let challenge = response.headers()[WWW_AUTHENTICATE].to_str().unwrap();
                    let expected = format!(
                        r#"Bearer error="invalid_token", error_description="{}", resource_metadata="{METADATA}""#,
                        kind.description()
                    );
                    assert_eq!(challenge, expected, "{name}");
                }
            }
        }
    }
}
