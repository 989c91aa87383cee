//! Key lifecycle of a [`RemoteJwks`] against a real key server on loopback, through the whole
//! stack (`McpAuth::layer()`), with the real [`ReqwestHttpClient`]:
//!
//! - a flood of tokens with random unknown `kid`s causes at most one fetch per cooldown (merged
//!   into one by the single flight), and tokens with the known key keep working throughout;
//! - rotation: a token signed with a newly published key is accepted on its first use once the
//!   cooldown since the last fetch has passed;
//! - key server down (503, connection refused): the last good keys serve until `max_stale`, then
//!   503 with `Retry-After` and no challenge; it recovers when the server comes back;
//! - a hanging key server: requests that need a fetch end within the client timeout or
//!   `fetch_timeout` (503, or the stale keys);
//! - a 50 MB JWKS (with and without `Content-Length`) is refused by the body limit and the old
//!   keys are kept;
//! - unusable documents (not JSON, no usable key, encryption or private keys only) and
//!   redirects (never followed) keep the old keys; a key server stalling mid-body is bounded;
//! - `Cache-Control: max-age` sets the TTL within the floor and ceiling.
//!
//! Every token is fresh (new `jti`), so the verified-token cache never hides a key lookup.
//! Timing margins are at least 0.5 s; the whole file runs in about 15 s (two test threads).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::http_client::ReqwestHttpClient;
use tower_mcp_auth::keys::{RemoteJwks, RemoteJwksOptions};
use tower_mcp_auth::policy::{Decision, PolicyRequest};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth, SigningAlgorithm};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";

// ---------------------------------------------------------------------------------------------
// The key server
// ---------------------------------------------------------------------------------------------

/// What the key server answers to `GET /jwks`.
#[derive(Clone)]
enum Mode {
    /// 200 with this JWK Set and, if given, this `Cache-Control`.
    Keys {
        body: String,
        cache_control: Option<String>,
    },
    /// This status, with a small JSON body.
    Status(u16),
    /// Never answers.
    Hang,
    /// 200 with this body as it is.
    Raw(String),
    /// 302 to `/evil`, which serves this JWK Set (and counts its own hits).
    Redirect(String),
    /// 200, sends `{"keys":[` and then nothing more, never ending the body.
    Drip,
    /// 200 with a body of `total` bytes, streamed in 64 KiB chunks (never held in memory):
    /// a JWK Set with `keys` and whitespace padding, so that it would parse if read whole.
    /// `content_length`: announce the length, else chunked transfer encoding.
    Huge {
        keys: String,
        total: usize,
        content_length: bool,
    },
}

#[derive(Clone)]
struct ServerState {
    mode: Arc<Mutex<Mode>>,
    delay: Arc<Mutex<Duration>>,
    hits: Arc<AtomicUsize>,
    evil: Arc<Mutex<(String, usize)>>,
}

/// A JWKS server on 127.0.0.1 counting requests; its answer is changed at run time. Every
/// response has `Connection: close`, so a stopped server refuses the next connection instead of
/// serving a pooled one.
struct KeyServer {
    state: ServerState,
    addr: SocketAddr,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl KeyServer {
    async fn start(mode: Mode) -> Self {
        let state = ServerState {
            mode: Arc::new(Mutex::new(mode)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            hits: Arc::new(AtomicUsize::new(0)),
            evil: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            state,
            addr,
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/jwks", get(jwks))
            .route("/evil", get(evil))
            .with_state(self.state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops accepting connections (the next fetch is refused).
    async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // The listener is closed once the aborted task is dropped.
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the key server still accepts connections after stop");
    }

    /// Listens again on the same address.
    async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn url(&self) -> url::Url {
        format!("http://{}/jwks", self.addr).parse().unwrap()
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests to the redirect target.
    fn evil_hits(&self) -> usize {
        self.state.evil.lock().unwrap().1
    }
}

async fn evil(State(state): State<ServerState>) -> Response<axum::body::Body> {
    let body = {
        let mut evil = state.evil.lock().unwrap();
        evil.1 += 1;
        evil.0.clone()
    };
    Response::new(axum::body::Body::from(body))
}

async fn jwks(State(state): State<ServerState>) -> Response<axum::body::Body> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = state.mode.lock().unwrap().clone();
    let mut response = match mode {
        Mode::Keys {
            body,
            cache_control,
        } => {
            let mut response = Response::new(axum::body::Body::from(body));
            if let Some(cc) = cache_control {
                response
                    .headers_mut()
                    .insert(CACHE_CONTROL, cc.parse().unwrap());
            }
            response
        }
        Mode::Status(status) => {
            let mut response = Response::new(axum::body::Body::from(r#"{"error":"down"}"#));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
        }
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::Raw(body) => Response::new(axum::body::Body::from(body)),
        Mode::Redirect(target_keys) => {
            state.evil.lock().unwrap().0 = target_keys;
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::FOUND;
            response
                .headers_mut()
                .insert(http::header::LOCATION, "/evil".parse().unwrap());
            response
        }
        Mode::Drip => Response::new(axum::body::Body::new(Drip { sent: false })),
        Mode::Huge {
            keys,
            total,
            content_length,
        } => {
            let head = Bytes::from(format!(r#"{{"keys":{keys}"#));
            let tail = Bytes::from_static(b"}");
            assert!(total > head.len() + tail.len());
            let body = Padded {
                head: Some(head.clone()),
                tail: Some(tail),
                pad: Bytes::from(vec![b' '; 64 * 1024]),
                remaining_pad: total - head.len() - 1,
                exact: content_length,
            };
            Response::new(axum::body::Body::new(body))
        }
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "application/jwk-set+json".parse().unwrap());
    headers.insert(CONNECTION, "close".parse().unwrap());
    response
}

/// `{"keys":[`, then a body that never ends.
struct Drip {
    sent: bool,
}

impl http_body::Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"keys\":[")))))
    }
}

/// `head`, then `remaining_pad` spaces in 64 KiB frames, then `tail`.
struct Padded {
    head: Option<Bytes>,
    tail: Option<Bytes>,
    pad: Bytes,
    remaining_pad: usize,
    exact: bool,
}

impl Padded {
    fn remaining(&self) -> u64 {
        (self.head.as_ref().map_or(0, Bytes::len)
            + self.remaining_pad
            + self.tail.as_ref().map_or(0, Bytes::len)) as u64
    }
}

impl http_body::Body for Padded {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.remaining_pad > 0 {
            let n = self.remaining_pad.min(self.pad.len());
            self.remaining_pad -= n;
            return Poll::Ready(Some(Ok(Frame::data(self.pad.slice(..n)))));
        }
        Poll::Ready(self.tail.take().map(|t| Ok(Frame::data(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining())
        } else {
            SizeHint::default()
        }
    }
}

fn keys(cache_control: Option<&str>, issuers: &[&DevIssuer]) -> Mode {
    Mode::Keys {
        body: jwks_of(issuers),
        cache_control: cache_control.map(str::to_owned),
    }
}

fn jwks_of(issuers: &[&DevIssuer]) -> String {
    let keys: Vec<_> = issuers.iter().map(|d| d.public_jwk()).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

// ---------------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------------

fn options(configure: impl FnOnce(&mut RemoteJwksOptions)) -> RemoteJwksOptions {
    let mut options = RemoteJwksOptions::default();
    configure(&mut options);
    options
}

fn remote(
    server: &KeyServer,
    client: ReqwestHttpClient,
    options: RemoteJwksOptions,
) -> Arc<RemoteJwks> {
    Arc::new(RemoteJwks::with_options(
        server.url(),
        Arc::new(client),
        options,
    ))
}

fn default_client() -> ReqwestHttpClient {
    ReqwestHttpClient::new().unwrap()
}

fn stack(jwks: Arc<RemoteJwks>) -> McpAuth {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer_with_keys(ISSUER, jwks, [SigningAlgorithm::ES256])
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap()
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    kind: Option<AuthErrorKind>,
    headers: HeaderMap,
}

async fn send(auth: &McpAuth, token: &str) -> Answer {
    let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner"))))
    });
    let request = Request::get(RESOURCE)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = auth.layer().layer(inner).oneshot(request).await.unwrap();
    Answer {
        status: response.status(),
        kind: response
            .extensions()
            .get::<AuthError>()
            .map(AuthError::kind),
        headers: response.headers().clone(),
    }
}

/// A fresh token of `dev` (new `jti`: never a cache hit).
fn token(dev: &DevIssuer) -> String {
    dev.token(RESOURCE).scope("notes:read").sign()
}

/// `signed` (a token of the trusted issuer's name, signed by someone else) with its header
/// replaced by one naming a random `kid`. The signature no longer matches, which does not
/// matter: no key has that `kid` (and signing 1 000 tokens would take long in a debug build).
fn random_kid_token(signed: &str, i: usize) -> String {
    let header = serde_json::json!({
        "alg": "ES256",
        "typ": "at+jwt",
        "kid": format!("rnd-{i}-{}", uuid::Uuid::new_v4()),
    });
    let (_, rest) = signed.split_once('.').unwrap();
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

async fn accepted(auth: &McpAuth, dev: &DevIssuer, what: &str) {
    let answer = send(auth, &token(dev)).await;
    assert_eq!(answer.status, StatusCode::OK, "{what}: {answer:?}");
}

/// 503 `keys_unavailable` with `Retry-After` and no challenge.
fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {answer:?}"
    );
    assert_eq!(answer.kind, Some(AuthErrorKind::KeysUnavailable), "{what}");
    let retry: u64 = answer.headers[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is delta-seconds"));
    assert!(retry > 0, "{what}: Retry-After {retry}");
    assert!(
        !answer.headers.contains_key(WWW_AUTHENTICATE),
        "{what}: a 503 carries no challenge: {answer:?}"
    );
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

fn secs(s: f64) -> Duration {
    Duration::from_millis((s * 1000.0) as u64)
}

// ---------------------------------------------------------------------------------------------
// Unknown kid floods
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kid_flood_fetches_at_most_once_per_cooldown() {
    let dev = DevIssuer::new(ISSUER);
    let attacker = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(None, &[&dev])).await;
    let cooldown = secs(2.0);
    let jwks = remote(
        &server,
        default_client(),
        options(|o| o.cooldown = cooldown),
    );
    let auth = stack(jwks);

    accepted(&auth, &dev, "initial load").await;
    let loaded = Instant::now();
    assert_eq!(server.hits(), 1);
    // Every 11th request carries a fresh token with the known key, the others random kids.
    let attacker_token = token(&attacker);
    let flood: Vec<(bool, String)> = (0..1100)
        .map(|i| {
            if i % 11 == 0 {
                (true, token(&dev))
            } else {
                (false, random_kid_token(&attacker_token, i))
            }
        })
        .collect();
    // Past the cooldown the flood may cause one fetch: it must be exactly one, shared by all.
    // The key server is slow to answer, so most of the flood waits on that one fetch.
    sleep_until(loaded + cooldown + secs(0.2)).await;
    server.set_delay(secs(0.3));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (known, token) in flood {
        let auth = auth.clone();
        tasks.push(tokio::spawn(
            async move { (known, send(&auth, &token).await) },
        ));
    }
    let (mut known_ok, mut unknown_refused) = (0, 0);
    for task in tasks {
        let (known, answer) = task.await.unwrap();
        if known {
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "known kid during the flood: {answer:?}"
            );
            known_ok += 1;
        } else {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
            assert_eq!(answer.kind, Some(AuthErrorKind::UnknownKey));
            unknown_refused += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!((known_ok, unknown_refused), (100, 1000));
    let hits = server.hits();
    eprintln!("flood of 1000 unknown kids + 100 known: {elapsed:?}, {hits} fetches in all");
    // One initial load plus at most one fetch per started cooldown during the flood (the flood
    // normally ends well within one cooldown: exactly 2).
    let cooldowns = 1 + (elapsed.as_millis() / cooldown.as_millis()) as usize;
    assert!(hits >= 2, "the flood past the cooldown refreshed once");
    assert!(
        hits <= 1 + cooldowns,
        "{hits} fetches for a flood of {elapsed:?} with a {cooldown:?} cooldown"
    );
    if elapsed < cooldown {
        assert_eq!(hits, 2);
    }

    // The known key was never evicted.
    server.set_delay(Duration::ZERO);
    let before = server.hits();
    accepted(&auth, &dev, "after the flood").await;
    assert_eq!(server.hits(), before, "a known key needs no fetch");
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rotated_key_is_accepted_on_first_use_after_the_cooldown() {
    let old = DevIssuer::new(ISSUER);
    let new = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(None, &[&old])).await;
    let cooldown = secs(1.0);
    let auth = stack(remote(
        &server,
        default_client(),
        options(|o| o.cooldown = cooldown),
    ));

    accepted(&auth, &old, "initial load").await;
    let loaded = Instant::now();
    assert_eq!(server.hits(), 1);

    // The AS starts publishing the new key next to the old one and signs with it.
    server.set(keys(None, &[&new, &old]));
    sleep_until(loaded + cooldown + secs(0.1)).await;
    let first = send(&auth, &token(&new)).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "first use of the new key: {first:?}"
    );
    assert_eq!(server.hits(), 2, "the unknown kid caused one fetch");
    // Old tokens keep working (the old key is still published), without another fetch.
    accepted(&auth, &old, "old key after the rotation").await;
    accepted(&auth, &new, "new key again").await;
    assert_eq!(server.hits(), 2);

    // The AS retires the old key: once the set is fetched again, old-key tokens are refused.
    server.set(keys(None, &[&new]));
    sleep_until(Instant::now() + cooldown + secs(0.1)).await;
    let other = DevIssuer::new(ISSUER);
    // Any unknown kid triggers the refresh that drops the retired key.
    let refused = send(&auth, &token(&other)).await;
    assert_eq!(refused.kind, Some(AuthErrorKind::UnknownKey), "{refused:?}");
    assert_eq!(server.hits(), 3);
    let retired = send(&auth, &token(&old)).await;
    assert_eq!(retired.status, StatusCode::UNAUTHORIZED, "{retired:?}");
    assert_eq!(retired.kind, Some(AuthErrorKind::UnknownKey));
    accepted(&auth, &new, "new key after the old one was retired").await;
}

// ---------------------------------------------------------------------------------------------
// Key server down
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Outage {
    Status503,
    ConnectionRefused,
}

/// Keys with a 1 s TTL, usable 2 s past it: they serve while the server is down until
/// `max_stale`, then 503; back up, the next fetch after the cooldown restores service.
async fn outage(kind: Outage) {
    let dev = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(Some("max-age=1"), &[&dev])).await;
    let opts = options(|o| {
        o.min_ttl = secs(1.0);
        o.max_ttl = secs(1.0);
        o.cooldown = secs(0.3);
        o.max_stale = secs(2.0);
    });
    let auth = stack(remote(&server, default_client(), opts));

    let start = Instant::now();
    accepted(&auth, &dev, "initial load").await;
    let loaded = Instant::now();
    match kind {
        Outage::Status503 => server.set(Mode::Status(503)),
        Outage::ConnectionRefused => server.stop().await,
    }

    // Expired (TTL 1 s) but within max_stale: the fetch fails, the old keys serve.
    sleep_until(loaded + secs(1.5)).await;
    accepted(
        &auth,
        &dev,
        &format!("{kind:?}: stale keys within max_stale"),
    )
    .await;
    let expected_hits = match kind {
        Outage::Status503 => 2,
        Outage::ConnectionRefused => 1,
    };
    assert_eq!(server.hits(), expected_hits, "{kind:?}: one failed fetch");
    // Unknown kids during the outage are still just unknown.
    let other = DevIssuer::new(ISSUER);
    let unknown = send(&auth, &token(&other)).await;
    assert_eq!(
        unknown.kind,
        Some(AuthErrorKind::UnknownKey),
        "{kind:?}: {unknown:?}"
    );

    // Past expiry + max_stale (at most loaded + 3 s): 503 with Retry-After, no challenge.
    sleep_until(loaded + secs(3.5)).await;
    let answer = send(&auth, &token(&dev)).await;
    assert_unavailable(&answer, &format!("{kind:?}: past max_stale"));
    assert!(start.elapsed() < secs(10.0));

    // The key server comes back: the next request after the cooldown is served again.
    match kind {
        Outage::Status503 => server.set(keys(Some("max-age=1"), &[&dev])),
        Outage::ConnectionRefused => server.restart().await,
    }
    tokio::time::sleep(secs(0.4)).await;
    accepted(&auth, &dev, &format!("{kind:?}: recovered")).await;
}

#[tokio::test]
async fn key_server_503_stale_keys_until_max_stale_then_503() {
    outage(Outage::Status503).await;
}

#[tokio::test]
async fn key_server_refusing_connections_stale_keys_until_max_stale_then_503() {
    outage(Outage::ConnectionRefused).await;
}

// ---------------------------------------------------------------------------------------------
// Hanging key server
// ---------------------------------------------------------------------------------------------

/// Bound of a request that needs a fetch from a server that never answers: loose, the
/// configured timeouts are 0.5 s.
const HANG_BOUND: Duration = Duration::from_secs(5);

/// No keys cached and the server hangs: 20 concurrent requests share one fetch and all get a
/// 503 within the timeout bound.
async fn hanging_without_keys(client: ReqwestHttpClient, fetch_timeout: Duration) {
    let dev = DevIssuer::new(ISSUER);
    let server = KeyServer::start(Mode::Hang).await;
    let opts = options(|o| {
        o.fetch_timeout = fetch_timeout;
        o.cooldown = secs(5.0);
    });
    let auth = stack(remote(&server, client, opts));
    let started = Instant::now();
    let answers = futures_join_all((0..20).map(|_| {
        let auth = auth.clone();
        let token = token(&dev);
        async move { send(&auth, &token).await }
    }))
    .await;
    let elapsed = started.elapsed();
    for answer in &answers {
        assert_unavailable(answer, "hanging key server, nothing cached");
    }
    assert!(elapsed < HANG_BOUND, "took {elapsed:?}");
    assert_eq!(server.hits(), 1, "one fetch for all 20 requests");
    eprintln!("hanging key server (fetch_timeout {fetch_timeout:?}): 20 × 503 in {elapsed:?}");
}

#[tokio::test]
async fn hanging_key_server_bounded_by_the_client_timeout() {
    let client = ReqwestHttpClient::with_limits(secs(0.5), 512 * 1024).unwrap();
    hanging_without_keys(client, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn hanging_key_server_bounded_by_fetch_timeout() {
    let client = ReqwestHttpClient::with_limits(Duration::from_secs(30), 512 * 1024).unwrap();
    hanging_without_keys(client, secs(0.5)).await;
}

#[tokio::test]
async fn hanging_key_server_with_stale_keys_answers_in_time() {
    let dev = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(Some("max-age=1"), &[&dev])).await;
    let client = ReqwestHttpClient::with_limits(secs(0.5), 512 * 1024).unwrap();
    let opts = options(|o| {
        o.min_ttl = secs(1.0);
        o.cooldown = secs(0.3);
        o.fetch_timeout = secs(0.5);
    });
    let auth = stack(remote(&server, client, opts));
    accepted(&auth, &dev, "initial load").await;
    let loaded = Instant::now();
    server.set(Mode::Hang);
    sleep_until(loaded + secs(1.5)).await;
    let started = Instant::now();
    accepted(&auth, &dev, "expired keys, hanging server: stale keys").await;
    let elapsed = started.elapsed();
    assert!(elapsed < HANG_BOUND, "took {elapsed:?}");
    assert!(
        elapsed >= secs(0.4),
        "the request waited for the fetch: {elapsed:?}"
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn key_server_stalling_mid_body_is_bounded_and_stale_keys_serve() {
    let dev = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(Some("max-age=1"), &[&dev])).await;
    let client = ReqwestHttpClient::with_limits(secs(0.5), 512 * 1024).unwrap();
    let opts = options(|o| {
        o.min_ttl = secs(1.0);
        o.cooldown = secs(0.3);
    });
    let auth = stack(remote(&server, client, opts));
    accepted(&auth, &dev, "initial load").await;
    let loaded = Instant::now();
    // Headers and the first bytes arrive at once, then nothing: the client's timeout covers
    // the whole body, not only the headers.
    server.set(Mode::Drip);
    sleep_until(loaded + secs(1.5)).await;
    let started = Instant::now();
    accepted(&auth, &dev, "expired keys, body stalled: stale keys").await;
    assert!(
        started.elapsed() < HANG_BOUND,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.hits(), 2);
}

/// Runs `futures` as concurrent tasks; their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Oversized key set
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_megabyte_jwks_is_refused_and_old_keys_kept() {
    const FIFTY_MB: usize = 50 * 1024 * 1024;
    let dev = DevIssuer::new(ISSUER);
    let attacker = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(Some("max-age=1"), &[&dev])).await;
    let opts = options(|o| {
        o.min_ttl = secs(1.0);
        o.cooldown = secs(0.3);
    });
    // The default client: 5 s timeout, 512 KiB body limit.
    let auth = stack(remote(&server, default_client(), opts));
    accepted(&auth, &dev, "initial load").await;
    let loaded = Instant::now();

    // A valid JWK Set with the attacker's key, padded to 50 MB: adopted only if read whole.
    let attacker_keys = serde_json::json!([attacker.public_jwk()]).to_string();
    for (round, content_length) in [(1, true), (2, false)] {
        server.set(Mode::Huge {
            keys: attacker_keys.clone(),
            total: FIFTY_MB,
            content_length,
        });
        if round == 1 {
            sleep_until(loaded + secs(1.3)).await;
        } else {
            tokio::time::sleep(secs(0.4)).await;
        }
        let what = format!("50 MB JWKS, Content-Length announced: {content_length}");
        let started = Instant::now();
        accepted(&auth, &dev, &format!("{what}: old keys kept")).await;
        assert!(
            started.elapsed() < secs(5.0),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_eq!(
            server.hits(),
            1 + round,
            "{what}: the oversized set was fetched"
        );
        let refused = send(&auth, &token(&attacker)).await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {refused:?}"
        );
        assert_eq!(
            refused.kind,
            Some(AuthErrorKind::UnknownKey),
            "{what}: the padded key set was not adopted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------------------------

/// Serves `cache_control`, then checks the fetch count at the given times (seconds after the
/// initial load; a check that expects a fetch is made at least 0.5 s after the TTL ended, one
/// that expects none at least 0.5 s before it).
async fn ttl_scenario(cache_control: Option<&'static str>, checks: &[(f64, usize)]) {
    let dev = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(cache_control, &[&dev])).await;
    let opts = options(|o| {
        o.min_ttl = secs(2.0);
        o.max_ttl = secs(4.0);
        o.default_ttl = Duration::from_secs(60);
        o.cooldown = secs(0.1);
    });
    let auth = stack(remote(&server, default_client(), opts));
    let before = Instant::now();
    accepted(&auth, &dev, "initial load").await;
    let after = Instant::now();
    assert_eq!(server.hits(), 1);
    for &(at, hits) in checks {
        // "No fetch yet" is checked relative to before the load (the TTL started later),
        // "fetched" relative to after it (the TTL started earlier).
        let base = if hits == 1 { before } else { after };
        sleep_until(base + secs(at)).await;
        accepted(&auth, &dev, &format!("{cache_control:?} at {at} s")).await;
        assert_eq!(
            server.hits(),
            hits,
            "Cache-Control {cache_control:?}: fetches {at} s after the load"
        );
    }
}

#[tokio::test]
async fn cache_control_max_age_within_floor_and_ceiling() {
    // floor 2 s, ceiling 4 s, default 60 s.
    tokio::join!(
        // Within the bounds: 3 s.
        ttl_scenario(Some("public, max-age=3"), &[(2.5, 1), (3.5, 2)]),
        // Below the floor (max-age=0, no-cache): 2 s.
        ttl_scenario(Some("no-cache, max-age=0"), &[(1.5, 1), (2.5, 2)]),
        // Above the ceiling: 4 s.
        ttl_scenario(Some("max-age=86400"), &[(3.5, 1), (4.5, 2)]),
        // No max-age: the default TTL.
        ttl_scenario(None, &[(4.5, 1)]),
    );
}

// ---------------------------------------------------------------------------------------------
// Unusable key set documents and redirects
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unusable_jwks_documents_and_redirects_keep_the_old_keys() {
    let dev = DevIssuer::new(ISSUER);
    let attacker = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(Some("max-age=1"), &[&dev])).await;
    let opts = options(|o| {
        o.min_ttl = secs(1.0);
        o.cooldown = secs(0.2);
    });
    let auth = stack(remote(&server, default_client(), opts));
    accepted(&auth, &dev, "initial load").await;
    let loaded = Instant::now();

    let jwk = attacker.public_jwk();
    let with = |extra: serde_json::Value| {
        let mut key = jwk.clone();
        for (k, v) in extra.as_object().unwrap() {
            key[k] = v.clone();
        }
        serde_json::json!({ "keys": [key] }).to_string()
    };
    let cases = [
        ("not JSON", Mode::Raw("<html>maintenance</html>".into())),
        ("not a JWK Set", Mode::Raw(r#"{"keys":"none"}"#.into())),
        ("an empty set", Mode::Raw(r#"{"keys":[]}"#.into())),
        (
            "an encryption key only",
            Mode::Raw(with(serde_json::json!({"use": "enc"}))),
        ),
        (
            "a private key only",
            Mode::Raw(with(
                serde_json::json!({"d": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            )),
        ),
        (
            "key_ops without verify",
            Mode::Raw(with(serde_json::json!({"key_ops": ["sign"]}))),
        ),
        (
            "a redirect to another key set",
            Mode::Redirect(jwks_of(&[&attacker])),
        ),
    ];
    sleep_until(loaded + secs(1.2)).await;
    for (i, (what, mode)) in cases.into_iter().enumerate() {
        server.set(mode);
        if i > 0 {
            tokio::time::sleep(secs(0.3)).await;
        }
        accepted(&auth, &dev, &format!("{what}: the old keys serve")).await;
        assert_eq!(server.hits(), 2 + i, "{what}: fetched once");
        let refused = send(&auth, &token(&attacker)).await;
        assert_eq!(
            refused.kind,
            Some(AuthErrorKind::UnknownKey),
            "{what}: nothing adopted: {refused:?}"
        );
    }
    assert_eq!(server.evil_hits(), 0, "redirects are not followed");

    // A usable set again, with unusable members beside the usable key: only it is adopted.
    let mixed = serde_json::json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "hmac"},
        serde_json::from_str::<serde_json::Value>(&with(serde_json::json!({"use": "enc"}))).unwrap()["keys"][0],
        {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "AAAA", "y": "AAAA"},
        dev.public_jwk(),
    ]});
    server.set(Mode::Keys {
        body: mixed.to_string(),
        cache_control: None,
    });
    tokio::time::sleep(secs(0.3)).await;
    accepted(&auth, &dev, "mixed set").await;
    let fetched = server.hits();
    let refused = send(&auth, &token(&attacker)).await;
    assert_eq!(refused.kind, Some(AuthErrorKind::UnknownKey), "{refused:?}");
    accepted(&auth, &dev, "fresh mixed set, no fetch").await;
    assert_eq!(server.hits(), fetched);
}

// ---------------------------------------------------------------------------------------------
// Issuer metadata discovery, and `[issuers.jwks_refresh]` from TOML
// ---------------------------------------------------------------------------------------------

/// What the metadata server answers at one path.
#[derive(Clone)]
enum Meta {
    Json(String),
    Status(u16),
    Hang,
}

#[derive(Clone, Default)]
struct MetaState {
    routes: Arc<Mutex<std::collections::HashMap<String, Meta>>>,
    hits: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

/// An authorization server metadata host on loopback: answers each path as set (404 for
/// unset paths) and counts the requests per path.
struct MetaServer {
    state: MetaState,
    addr: SocketAddr,
}

impl MetaServer {
    async fn start() -> Self {
        let state = MetaState::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(meta).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, addr }
    }

    /// The issuer identifier `http://127.0.0.1:port/tenant`.
    fn issuer(&self) -> String {
        format!("http://{}/tenant", self.addr)
    }

    fn rfc8414(&self) -> &'static str {
        "/.well-known/oauth-authorization-server/tenant"
    }

    fn oidc(&self) -> &'static str {
        "/tenant/.well-known/openid-configuration"
    }

    fn set(&self, path: &str, meta: Meta) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), meta);
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn meta(State(state): State<MetaState>, uri: http::Uri) -> Response<axum::body::Body> {
    let path = uri.path().to_owned();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let route = state.routes.lock().unwrap().get(&path).cloned();
    let (status, body) = match route {
        Some(Meta::Json(body)) => (StatusCode::OK, body),
        Some(Meta::Status(status)) => (StatusCode::from_u16(status).unwrap(), "{}".to_owned()),
        Some(Meta::Hang) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        None => (StatusCode::NOT_FOUND, "{}".to_owned()),
    };
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

fn metadata(issuer: &str, jwks_uri: &url::Url) -> Meta {
    Meta::Json(serde_json::json!({ "issuer": issuer, "jwks_uri": jwks_uri.as_str() }).to_string())
}

/// A stack from TOML: one issuer, `source` its key source lines, `refresh` the body of its
/// `[issuers.jwks_refresh]` table (none when empty).
fn toml_stack(issuer: &str, source: &str, refresh: &str, client: ReqwestHttpClient) -> McpAuth {
    let refresh = if refresh.is_empty() {
        String::new()
    } else {
        format!("[issuers.jwks_refresh]\n{refresh}")
    };
    let toml = format!(
        "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{issuer}\"\nalgorithms = [\"ES256\"]\n{source}\n{refresh}\n"
    );
    let config = tower_mcp_auth::McpAuthConfig::from_toml_str(&toml).unwrap();
    McpAuth::builder()
        .config(config)
        .http_client(Arc::new(client))
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap()
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration_when_rfc8414_is_404() {
    let meta = MetaServer::start().await;
    let dev = DevIssuer::new(meta.issuer());
    let keys = KeyServer::start(keys(None, &[&dev])).await;
    // RFC 8414 location unset: 404.
    meta.set(meta.oidc(), metadata(&meta.issuer(), &keys.url()));
    let auth = toml_stack(&meta.issuer(), "discover = true", "", default_client());
    accepted(&auth, &dev, "keys from the OpenID configuration's jwks_uri").await;
    assert_eq!(meta.hits(meta.rfc8414()), 1, "RFC 8414 tried first");
    assert_eq!(meta.hits(meta.oidc()), 1, "then OpenID discovery");
    assert_eq!(keys.hits(), 1);
    // Discovered once: later requests use the cached metadata.
    accepted(&auth, &dev, "again").await;
    assert_eq!(meta.hits(meta.rfc8414()) + meta.hits(meta.oidc()), 2);
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_never_used() {
    let meta = MetaServer::start().await;
    let dev = DevIssuer::new(meta.issuer());
    // The impostor documents point at a key server that would accept the tokens.
    let evil_keys = KeyServer::start(keys(None, &[&dev])).await;
    let good_keys = KeyServer::start(keys(None, &[&dev])).await;
    let others = [
        format!("{}/", meta.issuer()),
        format!("http://{}/other", meta.addr),
        format!("http://{}", meta.addr),
        meta.issuer().to_uppercase(),
    ];
    for other in &others {
        // Both locations name another issuer: refused, and the fallback refuses too.
        meta.set(meta.rfc8414(), metadata(other, &evil_keys.url()));
        meta.set(meta.oidc(), metadata(other, &evil_keys.url()));
        let auth = toml_stack(&meta.issuer(), "discover = true", "", default_client());
        assert_unavailable(&send(&auth, &token(&dev)).await, other);
        assert_eq!(
            evil_keys.hits(),
            0,
            "{other}: its jwks_uri is never fetched"
        );
    }
    // RFC 8414 names another issuer, OpenID discovery the right one: the right one is used.
    meta.set(meta.rfc8414(), metadata(&others[1], &evil_keys.url()));
    meta.set(meta.oidc(), metadata(&meta.issuer(), &good_keys.url()));
    let auth = toml_stack(&meta.issuer(), "discover = true", "", default_client());
    accepted(&auth, &dev, "the matching document").await;
    assert_eq!(evil_keys.hits(), 0);
    assert_eq!(good_keys.hits(), 1);
}

#[tokio::test]
async fn hanging_metadata_endpoint_is_bounded_by_the_fetch_timeout() {
    let meta = MetaServer::start().await;
    let dev = DevIssuer::new(meta.issuer());
    meta.set(meta.rfc8414(), Meta::Hang);
    meta.set(meta.oidc(), Meta::Hang);
    // The client would wait 60 s; `timeout_secs = 1` bounds each location.
    let patient = ReqwestHttpClient::with_limits(Duration::from_secs(60), 512 * 1024).unwrap();
    let auth = toml_stack(
        &meta.issuer(),
        "discover = true",
        "timeout_secs = 1",
        patient,
    );
    let started = Instant::now();
    assert_unavailable(&send(&auth, &token(&dev)).await, "hanging metadata");
    let took = started.elapsed();
    assert!(
        took >= secs(0.9),
        "both locations tried with the bound: {took:?}"
    );
    assert!(took < secs(4.0), "bounded: {took:?}");
    assert_eq!(meta.hits(meta.rfc8414()), 1);
    assert_eq!(meta.hits(meta.oidc()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_is_refetched_after_a_failure_at_most_once_per_cooldown() {
    let meta = MetaServer::start().await;
    let dev = DevIssuer::new(meta.issuer());
    let keys = KeyServer::start(keys(None, &[&dev])).await;
    meta.set(meta.rfc8414(), Meta::Status(500));
    meta.set(meta.oidc(), Meta::Status(503));
    let auth = Arc::new(toml_stack(
        &meta.issuer(),
        "discover = true",
        "cooldown_secs = 1",
        default_client(),
    ));
    let started = Instant::now();
    let answers = futures_join_all((0..50).map(|_| {
        let auth = auth.clone();
        let token = token(&dev);
        async move { send(&auth, &token).await }
    }))
    .await;
    for answer in &answers {
        assert_unavailable(answer, "metadata down");
    }
    assert_eq!(
        meta.hits(meta.rfc8414()),
        1,
        "one attempt for 50 concurrent requests"
    );
    assert_eq!(meta.hits(meta.oidc()), 1);
    assert_unavailable(&send(&auth, &token(&dev)).await, "within the cooldown");
    assert_eq!(
        meta.hits(meta.rfc8414()),
        1,
        "no attempt within the cooldown"
    );

    // The cooldown has passed and the metadata is back: one more attempt, which succeeds.
    meta.set(meta.oidc(), metadata(&meta.issuer(), &keys.url()));
    sleep_until(started + secs(1.3)).await;
    accepted(&auth, &dev, "after the cooldown").await;
    assert_eq!(meta.hits(meta.rfc8414()), 2);
    assert_eq!(meta.hits(meta.oidc()), 2);
}

/// `[issuers.jwks_refresh]` reaches the key source: a 1 s TTL, cooldown and timeout, 2 s of
/// staleness; `McpAuth::key_stats` counts the fetches, failures, stale serves and skips.
#[tokio::test]
async fn toml_jwks_refresh_settings_reach_the_key_source() {
    let dev = DevIssuer::new(ISSUER);
    let server = KeyServer::start(keys(Some("max-age=3600"), &[&dev])).await;
    let auth = toml_stack(
        ISSUER,
        &format!("jwks_uri = \"{}\"", server.url()),
        "min_ttl_secs = 1\nmax_ttl_secs = 1\ncooldown_secs = 1\nmax_stale_secs = 2\ntimeout_secs = 1",
        default_client(),
    );
    let stats = |auth: &McpAuth| {
        let all = auth.key_stats();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, ISSUER);
        let s = all[0].1;
        (s.fetches, s.failures, s.stale_serves, s.cooldown_skips)
    };
    let t0 = Instant::now();
    accepted(&auth, &dev, "first fetch").await;
    assert_eq!(stats(&auth), (1, 0, 0, 0), "a refresh");
    // An unknown kid within the cooldown: skipped.
    let signed = token(&dev);
    let answer = send(&auth, &random_kid_token(&signed, 0)).await;
    assert_eq!(answer.kind, Some(AuthErrorKind::UnknownKey));
    assert_eq!(stats(&auth), (1, 0, 0, 1), "a cooldown skip");
    assert_eq!(server.hits(), 1);

    // Past the 1 s TTL (max-age 3600 capped by max_ttl_secs) and the cooldown, the key server
    // fails: the expired keys serve (stale), within max_stale_secs.
    server.set(Mode::Status(503));
    sleep_until(t0 + secs(1.3)).await;
    accepted(&auth, &dev, "stale keys").await;
    assert_eq!(stats(&auth), (2, 1, 1, 1), "a failure and a stale serve");
    assert_eq!(server.hits(), 2, "refetched after the 1 s cooldown");

    // Past expiry + 2 s of staleness: 503.
    sleep_until(t0 + secs(3.6)).await;
    assert_unavailable(&send(&auth, &token(&dev)).await, "past max_stale_secs");
    let (fetches, failures, _, _) = stats(&auth);
    assert_eq!((fetches, failures), (3, 2));

    // A hanging key server is bounded by timeout_secs = 1 (the client would wait 5 s).
    server.set(Mode::Hang);
    sleep_until(t0 + secs(4.8)).await;
    let started = Instant::now();
    assert_unavailable(&send(&auth, &token(&dev)).await, "hanging key server");
    assert!(started.elapsed() < secs(2.5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn invalid_jwks_refresh_settings_are_refused_at_build_time() {
    use tower_mcp_auth::ConfigError;
    let cases = [
        ("min_ttl_secs = 0", "min_ttl_secs must not be 0"),
        ("max_ttl_secs = 0", "max_ttl_secs must not be 0"),
        ("cooldown_secs = 0", "cooldown_secs must not be 0"),
        ("timeout_secs = 0", "timeout_secs must not be 0"),
        ("default_ttl_secs = 0", "default_ttl_secs must not be 0"),
        (
            "min_ttl_secs = 600\nmax_ttl_secs = 60",
            "min_ttl_secs must not exceed max_ttl_secs",
        ),
        (
            "default_ttl_secs = 100000\nmax_ttl_secs = 3600",
            "default_ttl_secs must lie between",
        ),
        (
            "max_stale_secs = 18446744073709551615",
            "must not exceed 604800",
        ),
        (
            "cooldown_secs = 18446744073709551615",
            "must not exceed 604800",
        ),
        (
            "max_ttl_secs = 18446744073709551615",
            "must not exceed 604800",
        ),
        ("timeout_secs = 301", "timeout_secs must not exceed 300"),
    ];
    for (body, message) in cases {
        let toml = format!(
            "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\njwks_uri = \"https://as.example.com/jwks\"\n[issuers.jwks_refresh]\n{body}\n"
        );
        let config = tower_mcp_auth::McpAuthConfig::from_toml_str(&toml).unwrap();
        let err = McpAuth::from_config(config).unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidJwksRefresh { .. }),
            "{body}: {err:?}"
        );
        assert!(err.to_string().contains(message), "{body}: {err}");
    }
    // Static keys have nothing to refresh.
    let dev = DevIssuer::new(ISSUER);
    let toml = format!(
        "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\njwks = {:?}\n[issuers.jwks_refresh]\ncooldown_secs = 5\n",
        dev.jwks_json()
    );
    let config = tower_mcp_auth::McpAuthConfig::from_toml_str(&toml).unwrap();
    let err = McpAuth::from_config(config).unwrap_err();
    assert!(
        matches!(err, ConfigError::InvalidJwksRefresh { .. }),
        "{err:?}"
    );
    // Unknown members are refused when parsing.
    let toml = format!(
        "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\njwks_uri = \"https://as.example.com/jwks\"\n[issuers.jwks_refresh]\ncooldown = 5\n"
    );
    assert!(tower_mcp_auth::McpAuthConfig::from_toml_str(&toml).is_err());
}

/// A `kid` published for two usable ES256 keys is ambiguous: neither key is used, in either
/// order, even for a token one of them really signed; a distinct `kid` still works.
#[tokio::test]
async fn duplicate_kid_with_two_usable_keys_is_refused_as_ambiguous() {
    let dev = DevIssuer::new(ISSUER);
    let other = DevIssuer::new(ISSUER);
    let mut impostor = other.public_jwk();
    impostor["kid"] = dev.kid().into();
    for keys in [
        vec![dev.public_jwk(), impostor.clone()],
        vec![impostor.clone(), dev.public_jwk()],
    ] {
        let body = serde_json::json!({ "keys": keys }).to_string();
        let server = KeyServer::start(Mode::Keys {
            body,
            cache_control: None,
        })
        .await;
        let auth = stack(remote(
            &server,
            default_client(),
            RemoteJwksOptions::default(),
        ));
        for signer in [&dev, &other] {
            let answer = send(&auth, &token(signer)).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
            assert_eq!(answer.kind, Some(AuthErrorKind::UnknownKey));
            let www = answer.headers[WWW_AUTHENTICATE].to_str().unwrap();
            assert!(www.contains(r#"error="invalid_token""#), "{www}");
        }
    }
    // Without the duplicate, the same token verifies.
    let server = KeyServer::start(keys(None, &[&dev, &other])).await;
    let auth = stack(remote(
        &server,
        default_client(),
        RemoteJwksOptions::default(),
    ));
    accepted(&auth, &dev, "distinct kids").await;
    accepted(&auth, &other, "distinct kids").await;
}
