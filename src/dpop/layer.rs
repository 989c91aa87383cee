//! [`DpopLayer`], the [`Dpop`] service and the [`DpopEvidence`] it attaches.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use super::key_cache::ProofKeyCache;
use super::nonce::NonceIssuer;
use super::proof::{ProofContext, verify_proof};
use super::replay::{InMemoryReplayStore, ReplayError, ReplayKey, ReplayStore};
use crate::error::{AuthError, AuthErrorKind, ChallengeConfig, DPOP_NONCE};
use crate::keys::{AlgorithmSet, SigningAlgorithm};
use crate::token::ResponseBody;

const DPOP: HeaderName = HeaderName::from_static("dpop");

/// Whether and how DPoP-bound tokens are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DpopMode {
    /// The `DPoP` scheme is refused (a DPoP-bound token is refused too).
    #[default]
    Off,
    /// Bearer and DPoP-bound tokens are both accepted (a bound token only with its proof).
    Allowed,
    /// Only DPoP-bound tokens with a valid proof are accepted.
    Required,
}

/// The `[dpop]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DpopConfig {
    /// `off`, `allowed` or `required`.
    pub mode: DpopMode,
    /// Proof algorithms (asymmetric only); default ES256, ES384, EdDSA, PS256, RS256.
    pub algorithms: Vec<SigningAlgorithm>,
    /// How old a proof's `iat` may be, in seconds (default 60).
    pub max_age_secs: u64,
    /// How far in the future a proof's `iat` may be, in seconds (default 10).
    pub max_future_secs: u64,
    /// The URL proofs must name in `htu`; default: the resource URI. Never taken from `Host`.
    pub htu: Option<String>,
    /// Require server nonces (RFC 9449 §9).
    pub nonces: bool,
    /// How often nonces rotate, in seconds (default 60; a nonce stays valid one step more).
    pub nonce_step_secs: u64,
    /// Live replay entries kept in memory (default 100 000); when full, new proofs get 503.
    pub replay_capacity: usize,
    /// Longest proof accepted, in bytes (default 4096).
    pub max_proof_bytes: usize,
    /// Client keys remembered, already checked and parsed, by the exact text of a proof's
    /// `jwk` (default 4096; 0 turns this off). Every proof's signature is still verified, and
    /// only keys that verified one are remembered. About 1.2 KB per P-256 key; an entry's text
    /// is bounded by `max_proof_bytes`.
    pub key_cache_capacity: usize,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            mode: DpopMode::Off,
            algorithms: vec![
                SigningAlgorithm::ES256,
                SigningAlgorithm::ES384,
                SigningAlgorithm::EdDSA,
                SigningAlgorithm::PS256,
                SigningAlgorithm::RS256,
            ],
            max_age_secs: 60,
            max_future_secs: 10,
            htu: None,
            nonces: false,
            nonce_step_secs: 60,
            replay_capacity: 100_000,
            max_proof_bytes: 4096,
            key_cache_capacity: 4096,
        }
    }
}

impl DpopConfig {
    /// The default settings with `mode`.
    pub fn with_mode(mode: DpopMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// The time source of a [`DpopLayer`]: seconds since the Unix epoch.
///
/// The layer reads it once per request, for the `iat` window and the nonce time step. The
/// default is [`SystemClock`]; tests fix or move the clock to check window edges and nonce
/// rotation at exact instants. Any `Fn() -> u64 + Send + Sync + 'static` is a clock:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_mcp_auth::dpop::Clock;
///
/// let time = Arc::new(AtomicU64::new(1_562_262_618));
/// let clock = {
///     let time = time.clone();
///     move || time.load(Ordering::SeqCst)
/// };
/// assert_eq!(clock.now_unix_secs(), 1_562_262_618);
/// time.fetch_add(61, Ordering::SeqCst);
/// assert_eq!(clock.now_unix_secs(), 1_562_262_679);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Whole seconds since the Unix epoch.
    fn now_unix_secs(&self) -> u64;
}

impl<F> Clock for F
where
    F: Fn() -> u64 + Send + Sync + 'static,
{
    fn now_unix_secs(&self) -> u64 {
        self()
    }
}

/// The system wall clock ([`std::time::SystemTime::now`]); 0 if it reads before the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_secs(&self) -> u64 {
        crate::jose::unix_now()
    }
}

/// The verified proof, as the token layer sees it. Use is recorded (replay protection) only
/// once the token layer has checked everything else.
#[derive(Clone)]
pub struct DpopEvidence {
    jkt: Arc<str>,
    replay: ReplayKey,
    ttl: Duration,
    store: Arc<dyn ReplayStore>,
    nonce: Option<Arc<str>>,
}

impl DpopEvidence {
    /// The RFC 7638 SHA-256 thumbprint of the proof key (what `cnf.jkt` must equal).
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The thumbprint, shared (the principal of the request keeps it).
    pub(crate) fn jkt_shared(&self) -> Arc<str> {
        self.jkt.clone()
    }

    /// Evidence as a proof layer would attach it, for the token layer's unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(jkt: &str, jti: &str, store: Arc<dyn ReplayStore>) -> Self {
        Self {
            jkt: Arc::from(jkt),
            replay: ReplayKey::new(jkt, jti),
            ttl: Duration::from_secs(60),
            store,
            nonce: None,
        }
    }

    /// Records the proof's use; a second use of the same (key, `jti`) is a replay.
    pub(crate) async fn record_use(&self) -> Result<(), AuthError> {
        let with_nonce = |e: AuthError| match &self.nonce {
            Some(nonce) => e.with_nonce(nonce.clone()),
            None => e,
        };
        match self.store.check_and_record(self.replay, self.ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(with_nonce(AuthErrorKind::DpopReplay.into())),
            Err(ReplayError::Full) => {
                Err(AuthError::unavailable(AuthErrorKind::ReplayStoreFull, 1))
            }
            Err(_) => Err(AuthError::unavailable(AuthErrorKind::ReplayStoreFull, 5)),
        }
    }
}

impl fmt::Debug for DpopEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopEvidence")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

/// Verifies DPoP proofs for requests using the `DPoP` scheme and attaches [`DpopEvidence`].
/// Place it outside the token layer ([`McpAuth`](crate::McpAuth) does); it never grants access
/// by itself.
#[derive(Clone)]
#[must_use]
pub struct DpopLayer {
    shared: Option<Arc<DpopShared>>,
}

#[derive(Clone)]
struct DpopShared {
    htu: String,
    /// `scheme://authority` of `htu`, to rebuild the request's URL from its path.
    origin: String,
    /// The path of `htu`, compared with the request path before any normalization.
    path: String,
    algorithms: AlgorithmSet,
    max_age: u64,
    max_future: u64,
    max_len: usize,
    keys: Arc<ProofKeyCache>,
    nonces: Option<NonceIssuer>,
    store: Arc<dyn ReplayStore>,
    challenge: ChallengeConfig,
    clock: Arc<dyn Clock>,
}

/// Why a DPoP layer could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopConfigError {
    /// The `htu` is not an absolute http(s) URL.
    #[error("invalid DPoP htu {0:?}")]
    InvalidHtu(String),
    /// The algorithm list is empty or names an HMAC algorithm.
    #[error("DPoP algorithms must be a non-empty list of asymmetric algorithms")]
    InvalidAlgorithms,
}

impl DpopLayer {
    /// A layer checking proofs for `htu` (the public URL of the MCP endpoint), challenging with
    /// `challenge`, remembering proofs in `store`.
    pub fn new(
        config: &DpopConfig,
        htu: &str,
        challenge: ChallengeConfig,
        store: Arc<dyn ReplayStore>,
    ) -> Result<Self, DpopConfigError> {
        let normalized =
            super::normalize_htu(htu).ok_or_else(|| DpopConfigError::InvalidHtu(htu.to_owned()))?;
        if config.algorithms.is_empty() || config.algorithms.iter().any(|a| a.is_symmetric()) {
            return Err(DpopConfigError::InvalidAlgorithms);
        }
        let (origin, path) = url::Url::parse(&normalized)
            .map(|u| (u.origin().ascii_serialization(), u.path().to_owned()))
            .map_err(|_| DpopConfigError::InvalidHtu(htu.to_owned()))?;
        Ok(Self {
            shared: Some(Arc::new(DpopShared {
                htu: normalized,
                origin,
                path,
                algorithms: config.algorithms.iter().copied().collect(),
                max_age: config.max_age_secs,
                max_future: config.max_future_secs,
                max_len: config.max_proof_bytes,
                keys: Arc::new(ProofKeyCache::new(config.key_cache_capacity)),
                nonces: config
                    .nonces
                    .then(|| NonceIssuer::random(config.nonce_step_secs)),
                store,
                challenge,
                clock: Arc::new(SystemClock),
            })),
        })
    }

    /// A layer that checks nothing (DPoP off): requests pass unchanged, and the token layer
    /// refuses the `DPoP` scheme for want of evidence.
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// The same layer with a given nonce issuer (e.g. a secret shared by several servers).
    pub fn with_nonce_issuer(self, issuer: NonceIssuer) -> Self {
        self.map_shared(|s| s.nonces = Some(issuer))
    }

    /// The same layer reading time from `clock` instead of the system clock: the `iat` window
    /// (`max_age_secs` / `max_future_secs`) and the nonce time step are computed from it. For
    /// tests at fixed instants. A disabled layer is returned unchanged.
    ///
    /// Feature `testing` only: the replay store forgets proofs by the real clock, so a clock
    /// slower than real time could let a proof outlive its replay record.
    #[cfg(feature = "testing")]
    pub fn with_clock(self, clock: impl Clock) -> Self {
        self.with_shared_clock(Arc::new(clock))
    }

    pub(crate) fn with_shared_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.map_shared(|s| s.clock = clock)
    }

    fn map_shared(self, f: impl FnOnce(&mut DpopShared)) -> Self {
        let Some(shared) = self.shared else {
            return self;
        };
        let mut shared = Arc::unwrap_or_clone(shared);
        f(&mut shared);
        Self {
            shared: Some(Arc::new(shared)),
        }
    }

    /// The default in-memory replay store for `config`.
    pub fn default_store(config: &DpopConfig) -> Arc<dyn ReplayStore> {
        Arc::new(InMemoryReplayStore::new(config.replay_capacity))
    }
}

impl fmt::Debug for DpopLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(s) = &self.shared else {
            return f.write_str("DpopLayer(disabled)");
        };
        f.debug_struct("DpopLayer")
            .field("htu", &s.htu)
            .field("algorithms", &s.algorithms)
            .field("max_age", &s.max_age)
            .field("max_future", &s.max_future)
            .field("nonces", &s.nonces.is_some())
            .field("store", &s.store)
            .finish()
    }
}

impl<S> Layer<S> for DpopLayer {
    type Service = Dpop<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Dpop {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The proof-checking service; see [`DpopLayer`].
#[derive(Clone)]
pub struct Dpop<S> {
    inner: S,
    shared: Option<Arc<DpopShared>>,
}

impl<S> Dpop<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Dpop<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dpop")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl DpopShared {
    /// Checks the proof of a DPoP-scheme request; `Ok(None)` for other requests.
    fn evidence<B>(&self, req: &Request<B>, now: u64) -> Result<Option<DpopEvidence>, AuthError> {
        let mut authorization = req.headers().get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (authorization.next(), authorization.next()) else {
            // None, or several: the token layer refuses those.
            return Ok(None);
        };
        let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
            return Ok(None);
        };
        if !scheme.eq_ignore_ascii_case("dpop") {
            return Ok(None);
        }
        let nonce = self
            .nonces
            .as_ref()
            .map(|n| Arc::<str>::from(n.current(now)));
        let fail = |kind: AuthErrorKind| {
            let error = AuthError::new(kind).on_dpop();
            match &nonce {
                Some(nonce) => error.with_nonce(nonce.clone()),
                None => error,
            }
        };
        let mut proofs = req.headers().get_all(DPOP).iter();
        let proof = match (proofs.next(), proofs.next()) {
            (None, _) => return Err(fail(AuthErrorKind::MissingDpopProof)),
            (Some(_), Some(_)) => return Err(fail(AuthErrorKind::MultipleDpopProofs)),
            (Some(proof), None) => proof
                .to_str()
                .ok()
                .filter(|p| !p.contains(',') && !p.contains(' '))
                .ok_or_else(|| fail(AuthErrorKind::MultipleDpopProofs))?,
        };
        // The proof names the configured URL; the request must be for that URL too (the
        // origin comes from configuration, never from `Host`).
        // Normalization is idempotent: a path equal to the configured one needs none.
        if req.uri().path() != self.path
            && super::normalize_htu(&format!("{}{}", self.origin, req.uri().path())).as_deref()
                != Some(self.htu.as_str())
        {
            let error = AuthError::new(AuthErrorKind::InvalidDpopProof)
                .with_detail("the request is not for the proof's htu")
                .on_dpop();
            return Err(match &nonce {
                Some(nonce) => error.with_nonce(nonce.clone()),
                None => error,
            });
        }
        let ctx = ProofContext {
            method: req.method().as_str(),
            htu: &self.htu,
            access_token: token.trim_start_matches(' '),
            now,
            max_age: self.max_age,
            max_future: self.max_future,
            algorithms: self.algorithms,
            max_len: self.max_len,
            keys: &self.keys,
        };
        let verified = verify_proof(proof, &ctx).map_err(|e| match &nonce {
            Some(nonce) => e.on_dpop().with_nonce(nonce.clone()),
            None => e.on_dpop(),
        })?;
        if let Some(issuer) = &self.nonces {
            let valid = verified
                .nonce
                .as_deref()
                .is_some_and(|n| issuer.is_valid(n, now));
            if !valid {
                return Err(fail(AuthErrorKind::UseDpopNonce));
            }
        }
        Ok(Some(DpopEvidence {
            replay: verified.replay,
            jkt: verified.jkt,
            // Remember each proof for as long as any proof can be accepted, plus a margin.
            ttl: Duration::from_secs(self.max_age + self.max_future + 5),
            store: self.store.clone(),
            nonce,
        }))
    }
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Dpop<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResponseBody<B>>>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture {
                kind: Kind::Inner {
                    future: self.inner.call(req),
                    nonce: None,
                },
            };
        };
        let now = shared.clock.now_unix_secs();
        let nonce = shared
            .nonces
            .as_ref()
            .and_then(|n| HeaderValue::from_str(&n.current(now)).ok());
        match shared.evidence(&req, now) {
            Ok(evidence) => {
                if let Some(evidence) = evidence {
                    req.extensions_mut().insert(evidence);
                }
                ResponseFuture {
                    kind: Kind::Inner {
                        future: self.inner.call(req),
                        nonce,
                    },
                }
            }
            Err(error) => {
                tracing::debug!(
                    target: "tower_mcp_auth::dpop",
                    reason = error.kind().as_str(),
                    "DPoP proof refused"
                );
                ResponseFuture {
                    kind: Kind::Rejected {
                        response: Some(error.to_response(&shared.challenge)),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`Dpop`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F, nonce: Option<HeaderValue> },
        Rejected { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody<B>>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, nonce } => {
                let mut response = ready!(future.poll(cx))?;
                // A fresh nonce on every response while nonces are on (RFC 9449 §8.2).
                if let Some(nonce) = nonce.take() {
                    response.headers_mut().entry(DPOP_NONCE).or_insert(nonce);
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Rejected { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::local)))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
