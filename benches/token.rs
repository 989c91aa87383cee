//! Token verification cost, in process.
//!
//! - `es256/*`: `JwtVerifier::verify_token` (every call is a full verification: parse, header
//!   checks, key lookup, signature, claims, `Principal`) against a bare `jsonwebtoken::decode` of
//!   the same DevIssuer token with an equivalent `Validation` (ES256, aud, iss, exp).
//! - `layer/*`: one `tools/call` request through `McpAuthLayer` (audit, token and policy layers,
//!   `ToolScopes` allowing the tool) around a trivial service, with a valid token and with no
//!   token (the rejection path), against the bare service.
//!
//! - `cache/*`: the whole stack with the same token, verifying every time (cache off) against a
//!   verified-token cache hit.
//! - `audit/*`: the rejection path (no cryptography) with and without the audit layer (a sink
//!   that discards events): the difference is what auditing adds to the request path; and the
//!   JSON line a `JsonLinesSink` writes for a typical allowed call, `AuditEvent::write_json`
//!   against `serde_json::to_writer` of the same event (identical bytes).
//!
//! - `cold/*`: per algorithm (ES256 from `DevIssuer`, EdDSA and RS256 from fixed test keys below),
//!   `JwtVerifier::verify_token` against `jsonwebtoken::decode` of the same token with an
//!   equivalent `Validation`, back to back in the same run.
//! - `warm/*`: the whole stack with the same token every time (verified-token cache hit) against
//!   the bare inner service.
//! - `dpop/*`: a DPoP request through the whole stack with a fresh proof every request (distinct
//!   `jti`, generated outside the timed loop) and a cached token, against `jsonwebtoken` verifying
//!   the same kind of proof (full `decode`, and the bare ES256 signature check), and against the
//!   one-signature limit of a server (the bare service answering the same request, plus that
//!   signature check).
//! - `policy/*`: a `tools/call` of ~250 B and of 64 KiB through the token layer alone, the token
//!   and policy layers (`ToolScopes`, and an allow-everything closure), and the whole stack.
//! - `listing/*`: a `tools/list` JSON response of 50 tools, filtered to the caller's 25 and
//!   unfiltered (`filter_listings = false`), against the bare service; bodies are read to the end.
//! - `memory/*`: prints the resident-set growth per cached token and per replay entry (100 000 of
//!   each, from `/proc/self/statm`), then times a cache hit with the cache that full and the
//!   replay store's record of a fresh proof; and per remembered DPoP client key (50 000 clients),
//!   timing a request by a client whose key and token were never seen (two signatures).
//!
//! After the `cold`, `warm`, `dpop`, `policy` and `listing` groups, an interleaved A/B run of the
//! compared sides prints a `paired: …` line (see [`paired`]): on a shared, noisy machine the ratios
//! there are more trustworthy than two criterion medians taken seconds apart.
//!
//! Futures are driven with a current-thread tokio runtime's `block_on` inside `b.iter`.
//! Results and how to read them: `docs/performance.md`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_mcp_auth::dpop::{DpopConfig, DpopMode, InMemoryReplayStore, ReplayKey, ReplayStore};
use tower_mcp_auth::keys::{KeySet, StaticKeys, VerificationKey};
use tower_mcp_auth::policy::{Decision, PolicyConfig, PolicyRequest, ToolScopes};
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::{McpAuth, SigningAlgorithm};

mod common;
use common::{
    Body, CALL_WHOAMI, ISSUER, RESOURCE, RESULT, fixture, install_jsonwebtoken_provider,
    ok_handler, post,
};

/// The claims `jsonwebtoken` deserializes, roughly what `Principal` keeps (and, for the EdDSA and
/// RS256 tokens, what it signs).
#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    client_id: String,
    exp: u64,
    iat: u64,
    jti: String,
    scope: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn es256(c: &mut Criterion) {
    install_jsonwebtoken_provider();
    let rt = runtime();
    let (dev, auth, token) = fixture();
    let verifier = auth.verifier().clone();

    let jwk = dev.public_jwk();
    let key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y"),
    )
    .expect("EC key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[RESOURCE]);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 30;

    // Both sides must accept the token, or the numbers mean nothing.
    let principal = rt.block_on(verifier.verify_token(&token)).expect("ours");
    assert_eq!(principal.subject(), "dev-user");
    let raw = jsonwebtoken::decode::<Claims>(&token, &key, &validation).expect("raw");
    assert_eq!(raw.claims.sub, "dev-user");

    let mut group = c.benchmark_group("es256");
    group.bench_function("tower_mcp_auth_verify_token", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify_token(black_box(&token)))
                .expect("valid")
        })
    });
    group.bench_function("jsonwebtoken_decode", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Claims>(black_box(&token), &key, &validation).expect("valid")
        })
    });
    group.finish();
}

fn request(authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/mcp")
        .header(http::header::HOST, "mcp.example.com")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(value) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    builder
        .body(Full::new(Bytes::from_static(CALL_WHOAMI)))
        .expect("request")
}

fn layer(c: &mut Criterion) {
    let rt = runtime();
    let (_dev, auth, token) = fixture();
    let bearer = format!("Bearer {token}");

    let inner = tower::service_fn(|_req: Request<Body>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(RESULT)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(response)
    });
    let mut bare = inner;
    let mut protected = auth.layer().layer(inner);

    // Sanity: the valid token passes, no token is refused.
    rt.block_on(async {
        let ok = protected
            .ready()
            .await
            .unwrap()
            .call(request(Some(&bearer)))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let refused = protected
            .ready()
            .await
            .unwrap()
            .call(request(None))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    });

    let mut group = c.benchmark_group("layer");
    group.bench_function("bare_service", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = bare.ready().await.unwrap();
                svc.call(black_box(request(Some(&bearer)))).await.unwrap()
            })
        })
    });
    // The same token every time: after the first request, a verified-token cache hit.
    group.bench_function("mcp_auth_layer_valid_token", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = protected.ready().await.unwrap();
                let response = svc.call(black_box(request(Some(&bearer)))).await.unwrap();
                debug_assert_eq!(response.status(), StatusCode::OK);
                response
            })
        })
    });
    group.bench_function("mcp_auth_layer_no_token", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = protected.ready().await.unwrap();
                let response = svc.call(black_box(request(None))).await.unwrap();
                debug_assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                response
            })
        })
    });
    group.finish();
}

/// Discards events: isolates the request-path cost of auditing (reserve, record, build, send).
#[derive(Debug)]
struct NullSink;

#[async_trait::async_trait]
impl tower_mcp_auth::audit::AuditSink for NullSink {
    async fn write(
        &self,
        events: &[tower_mcp_auth::audit::AuditEvent],
    ) -> Result<(), tower_mcp_auth::audit::SinkError> {
        black_box(events);
        Ok(())
    }
}

fn audit(c: &mut Criterion) {
    let rt = runtime();
    let dev = DevIssuer::new(ISSUER);
    let build = |audit: Option<tower_mcp_auth::audit::AuditEmitter>| {
        let mut builder = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .policy(ToolScopes::new().tool("whoami", ["notes:read"]));
        if let Some(emitter) = audit {
            builder = builder.audit(emitter);
        }
        builder.build().expect("config")
    };
    let (emitter, _handle) = rt.block_on(async {
        tower_mcp_auth::audit::spawn(
            std::sync::Arc::new(NullSink),
            tower_mcp_auth::audit::AuditOptions::default(),
        )
    });
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(RESULT))))
    });
    let mut plain = build(None).layer().layer(inner);
    let mut audited = build(Some(emitter)).layer().layer(inner);
    let mut group = c.benchmark_group("audit");
    // The rejection path does no cryptography, so the difference is the audit layer's cost.
    group.bench_function("no_token_without_audit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = plain.ready().await.unwrap();
                svc.call(black_box(request(None))).await.unwrap()
            })
        })
    });
    group.bench_function("no_token_with_audit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = audited.ready().await.unwrap();
                svc.call(black_box(request(None))).await.unwrap()
            })
        })
    });
    let event: tower_mcp_auth::audit::AuditEvent =
        serde_json::from_str(SAMPLE_EVENT).expect("sample event");
    let mut line = Vec::with_capacity(1024);
    group.bench_function("encode_serde_json", |b| {
        b.iter(|| {
            line.clear();
            serde_json::to_writer(&mut line, black_box(&event)).unwrap();
            line.len()
        })
    });
    group.bench_function("encode_write_json", |b| {
        b.iter(|| {
            line.clear();
            black_box(&event).write_json(&mut line).unwrap();
            line.len()
        })
    });
    group.finish();
}

/// An allowed `tools/call` as the loopback server logs it
/// (`scripts/loopback-instructions ours-audit`).
const SAMPLE_EVENT: &str = r#"{"schema":1,"time":"2026-12-04T17:13:18.450617Z","event_id":"a3b57466-dafc-4185-957d-0bbed0a2020f","request_id":"a3b57466-dafc-4185-957d-0bbed0a2020e","http":{"method":"POST","path":"/mcp","status":200},"decision":"allow","reason":null,"reason_detail":null,"mcp":[{"method":"tools/call","target":"whoami"}],"session":null,"principal":{"issuer":"https://issuer.bench.example","subject":"bench-user","client_id":"bench-client","delegation_chain":[],"scopes":["notes:read"]},"required_scopes":[],"token":{"jti":"72ab7ab0-a9dd-4829-87d0-5866aa27b19f","thumbprint":"-cYkOCkqey7v6PT4Ou-7AC1oYrKkKi0rVW_Ti0LORfI","binding":"bearer","key_thumbprint":null},"resource":"https://mcp.bench.example/mcp","remote_addr":null,"latency_us":181935,"arguments":null,"outcome":"completed"}"#;

/// Cold (cache off: every request verifies the signature) against warm (cache hit) for the
/// same token through the whole stack.
fn cache(c: &mut Criterion) {
    let rt = runtime();
    let dev = DevIssuer::new(ISSUER);
    let build = |entries: u64| {
        let mut config = tower_mcp_auth::McpAuthConfig::new(RESOURCE);
        config.token.cache_max_entries = entries;
        McpAuth::builder()
            .config(config)
            .issuer(dev.issuer_config())
            .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
            .build()
            .expect("config")
    };
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let bearer = format!("Bearer {token}");
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(RESULT))))
    });
    let mut cold = build(0).layer().layer(inner);
    let mut warm = build(100_000).layer().layer(inner);
    let mut group = c.benchmark_group("cache");
    for (name, service) in [
        ("cold_es256_every_request", &mut cold),
        ("warm_cache_hit", &mut warm),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let svc = service.ready().await.unwrap();
                    let response = svc.call(black_box(request(Some(&bearer)))).await.unwrap();
                    debug_assert_eq!(response.status(), StatusCode::OK);
                    response
                })
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Shared helpers for the groups below.
// ---------------------------------------------------------------------------------------------

/// Fixed test key pairs (generated once with `openssl genpkey -algorithm ed25519` and
/// `openssl genrsa 2048`). Test material only: never trust these keys anywhere.
const ED25519_PRIVATE_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPLnNs0VGVqaGiuk6ePAfQrvtQ1LScS5byu7vXdjRm9S
-----END PRIVATE KEY-----
";
const ED25519_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAEQLTo/wLfWcVhpsx+x++8x5BuB7uuX/QEfoS5PZmJYM=
-----END PUBLIC KEY-----
";
const RSA_PRIVATE_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDW7LWVCBCmJtXk
sO7Mvnos8AP0RHU8r6yX31waZiMH6uh0vu7jlSWtIJEiPI1sPkxitbrcovf2Vxna
jyKXscK4dbr8d0yboecz4L2UeMuRGHTJmNgd6JIoVerNAyzOWaIDbNIrWdc6WTUy
pBABR86xdcIuHpqzRQa+L6ti3uALSyAqy+H8+JXzlcKOnmUHH02IzcVsm3MHwzZ9
A4UMxC5lVc56lbdQNg7wW7QPK8ObI1CstHR2dJa6rQafwLacIoytSlHP36p2wAHr
Ghvp6/ldMx8yBkdsjWdfgDttvsl2cNlb+Bz6VkSNxKRe0ap9egwkUgN8Gtu8jr62
HywZfJsbAgMBAAECggEABWwseqmc7ew96kqyg7TslTSrDN8rTBAsnRpUExBvotQA
8G0eztwk+rS/JKt9b/U0bSsjn0x3UB5LdzG0UDp6bLf/sz35T1Xq5OqvLc9MZ4lD
7RAvp7WF9oGQboK9fylQxqBYvyJBpWW5y2DLTJT4uI59izdXdN1xeZvvSYvRAEfl
m0uvPMX9mrITTdNartZf3qwqPfF26Hwg5D5V7Lafk0s7TGsI6c+fVu54tCGgLIXb
3ofZ5JWHz4wc7OPLiFIa9+v/1UWlOlVn0T+0EXs+2qarkuv0JFUOC2cLRdc2LOma
/FwzWGjMwoGKdUzDvgB6d84oX890U09TysQIQuSFPQKBgQD1L9s6h/QAgSFWT5Es
vllJ/xobi/FoGMvraBhmjpDnWLif9XWPtOxBYMDJyLUXUy43x1W/w7Fyq33cFOqz
PukoRddjovdJqW54t13QMch9EapWQgXlvA86mdLfd9OFxJO+8HQx1ENYV5jxVDj2
S3D9xOk1YnHK5uEpjAeJHf4dFwKBgQDgZzGY6QXDjje7dCGnuiwqPIRg3Jtbhtd/
C3BlUSOsUP+OuCpmLdKkreb9YUY+VWwEoZnIXu/6ei3G6ckswuvvlfpwQyDPqJrS
QTOxVQDUozzjAs7n4HUjBmEou2X1kTrdRSrw3DNoy/4v2n1LLyMSMwh6MOkQaB33
7Vn5YqPcnQKBgEaQEErHB60BfMOnQIOdAHtwRGY7Hy2zPTSxj5wsWX2LJg87CCtk
iT3Dh5hK//sHgFyjLIV032O+AQnOp0EQ0O87MmLFat+zOEzbkM8zFJ0R8XDDrYjR
V5yo2mxfwutTiKXB897HVN5ez3BcqcwQKCOQgQFRJKidS522ZBDNJe3fAoGAGMzu
21Jtk6ZFHI+CJLJbrTNRAg9/kAcADAdsnZXxFltBUzmhXfeUfyTFEZ3NkJgKPxzJ
DS8I4KreIky2Mh88yhbOPdf9aVXd/ny8RM37MIT19rTZvyC8cWmEFWdYpmItmkTJ
sSL0/5ED/6/rBwMnohxHxJFhQLHxFfSCbCBtsbUCgYEA0KCyTZSb2GIQDXYN3LaA
wqScVf7ElWaGh3qg5bcmP9RUWSo5lkZRHBr/LYeGVn+dwEVE8OBBbQzWVyprq3+T
V3JPjyO+l8/abV0dQapEGX65CxO/zVE/W++MlGs95dJsR7re03mV0M0kDsaT01Rn
TWRL8D3FJTX4fhRb8Qh8Ns0=
-----END PRIVATE KEY-----
";
const RSA_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1uy1lQgQpibV5LDuzL56
LPAD9ER1PK+sl99cGmYjB+rodL7u45UlrSCRIjyNbD5MYrW63KL39lcZ2o8il7HC
uHW6/HdMm6HnM+C9lHjLkRh0yZjYHeiSKFXqzQMszlmiA2zSK1nXOlk1MqQQAUfO
sXXCLh6as0UGvi+rYt7gC0sgKsvh/PiV85XCjp5lBx9NiM3FbJtzB8M2fQOFDMQu
ZVXOepW3UDYO8Fu0DyvDmyNQrLR0dnSWuq0Gn8C2nCKMrUpRz9+qdsAB6xob6ev5
XTMfMgZHbI1nX4A7bb7JdnDZW/gc+lZEjcSkXtGqfXoMJFIDfBrbvI6+th8sGXyb
GwIDAQAB
-----END PUBLIC KEY-----
";
const ED_ISSUER: &str = "https://ed.example.com";
const RSA_ISSUER: &str = "https://rsa.example.com";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// One request through `svc`, driven to its response (the body is not read).
fn call<S, B>(rt: &Runtime, svc: &mut S, req: Request<Body>) -> Response<B>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
{
    rt.block_on(async { svc.ready().await.unwrap().call(req).await.unwrap() })
}

/// One request through `svc`, with the response body read to the end.
fn call_collect<S, B>(rt: &Runtime, svc: &mut S, req: Request<Body>) -> (StatusCode, Bytes)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    rt.block_on(async {
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    })
}

/// Checks that `make()` gets a 200 from `svc`, then benchmarks it as `id`.
fn bench_ok<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    rt: &Runtime,
    svc: &mut S,
    make: impl Fn() -> Request<Body>,
) where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
{
    let response = call(rt, svc, make());
    assert_eq!(response.status(), StatusCode::OK, "{id}");
    group.bench_function(id, |b| b.iter(|| call(rt, svc, black_box(make()))));
}

/// Rounds of an interleaved comparison.
const PAIRED_ROUNDS: usize = 61;

/// How many calls of `f` take about 5 ms (at least 1).
fn batch_for(f: &mut dyn FnMut()) -> u32 {
    let start = Instant::now();
    for _ in 0..10 {
        f();
    }
    let per_call = start.elapsed().as_secs_f64() / 10.0;
    (0.005 / per_call).clamp(1.0, 100_000.0) as u32
}

/// An interleaved A/B comparison, printed as `paired: …`. On a shared machine the load swings
/// over seconds, so two criterion benchmarks run one after the other can see different machines;
/// here A and B alternate in batches of `batch` calls (≈ 5 ms), the side going first alternating
/// too, for [`PAIRED_ROUNDS`] rounds, and the ratio is taken per round. Reports the median time
/// per call of each side, the median per-round A/B ratio with its interquartile range, the ratio
/// of the two sides' fastest rounds, and A − B.
fn paired(label: &str, batch: u32, a: &mut dyn FnMut(), b: &mut dyn FnMut()) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..batch {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(batch)
    };
    // One untimed round of each side first.
    time(a);
    time(b);
    let (mut a_ns, mut b_ns, mut ratios, mut diffs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..PAIRED_ROUNDS {
        let (ta, tb) = if round % 2 == 0 {
            let ta = time(a);
            (ta, time(b))
        } else {
            let tb = time(b);
            (time(a), tb)
        };
        a_ns.push(ta);
        b_ns.push(tb);
        ratios.push(ta / tb);
        diffs.push(ta - tb);
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    // The fastest round of each side approximates an undisturbed machine.
    let fastest = quantile(&mut a_ns, 0.0) / quantile(&mut b_ns, 0.0);
    println!(
        "paired: {label}: A {:.2} µs, B {:.2} µs, A/B {:.3} (IQR {:.3}–{:.3}; fastest rounds \
         {fastest:.3}), A−B {:.2} µs [medians of {PAIRED_ROUNDS} rounds of {batch} calls each]",
        quantile(&mut a_ns, 0.5) / 1000.0,
        quantile(&mut b_ns, 0.5) / 1000.0,
        quantile(&mut ratios, 0.5),
        quantile(&mut ratios, 0.25),
        quantile(&mut ratios, 0.75),
        quantile(&mut diffs, 0.5) / 1000.0,
    );
}

/// Resident set size in bytes (Linux `/proc/self/statm`, 4 KiB pages); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

// ---------------------------------------------------------------------------------------------
// cold/*: one full verification per call, per algorithm, against jsonwebtoken::decode.
// ---------------------------------------------------------------------------------------------

/// The `Validation` equivalent to what `JwtVerifier` checks (algorithm, `aud`, `iss`, `exp`,
/// required claims, 30 s leeway).
fn validation(alg: Algorithm, issuer: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_audience(&[RESOURCE]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 30;
    validation
}

/// An RFC 9068 access token signed with jsonwebtoken's `EncodingKey` through the installed
/// (aws-lc-rs) provider's signer.
fn jsonwebtoken_token(alg: Algorithm, private_pem: &str, kid: &str, issuer: &str) -> String {
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".to_owned());
    header.kid = Some(kid.to_owned());
    let now = unix_now();
    let claims = Claims {
        iss: issuer.to_owned(),
        sub: "dev-user".to_owned(),
        aud: RESOURCE.to_owned(),
        client_id: "dev-client".to_owned(),
        exp: now + 600,
        iat: now,
        jti: format!("{kid}-{now}"),
        scope: "notes:read".to_owned(),
    };
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

/// A stack trusting `issuer` with one PEM public key (`VerificationKey::from_pem`).
fn pem_issuer_auth(issuer: &str, alg: SigningAlgorithm, public_pem: &str, kid: &str) -> McpAuth {
    let key = VerificationKey::from_pem(alg, public_pem.as_bytes())
        .expect("public key")
        .with_kid(kid);
    let keys = Arc::new(StaticKeys::new(KeySet::new(vec![key])));
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer_with_keys(issuer, keys, [alg])
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .build()
        .expect("config")
}

fn cold(c: &mut Criterion) {
    install_jsonwebtoken_provider();
    let rt = runtime();

    let (dev, es_auth, es_token) = fixture();
    let jwk = dev.public_jwk();
    let es_key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y"),
    )
    .expect("EC key");

    let ed_auth = pem_issuer_auth(
        ED_ISSUER,
        SigningAlgorithm::EdDSA,
        ED25519_PUBLIC_PEM,
        "ed-1",
    );
    let ed_token = jsonwebtoken_token(Algorithm::EdDSA, ED25519_PRIVATE_PEM, "ed-1", ED_ISSUER);
    let ed_key = DecodingKey::from_ed_pem(ED25519_PUBLIC_PEM.as_bytes()).expect("Ed25519 key");

    let rsa_auth = pem_issuer_auth(RSA_ISSUER, SigningAlgorithm::RS256, RSA_PUBLIC_PEM, "rsa-1");
    let rsa_token = jsonwebtoken_token(Algorithm::RS256, RSA_PRIVATE_PEM, "rsa-1", RSA_ISSUER);
    let rsa_key = DecodingKey::from_rsa_pem(RSA_PUBLIC_PEM.as_bytes()).expect("RSA key");

    let cases = [
        (
            "ES256",
            es_auth,
            es_token,
            es_key,
            validation(Algorithm::ES256, ISSUER),
        ),
        (
            "EdDSA",
            ed_auth,
            ed_token,
            ed_key,
            validation(Algorithm::EdDSA, ED_ISSUER),
        ),
        (
            "RS256",
            rsa_auth,
            rsa_token,
            rsa_key,
            validation(Algorithm::RS256, RSA_ISSUER),
        ),
    ];

    let mut group = c.benchmark_group("cold");
    for (alg, auth, token, key, validation) in &cases {
        let verifier = auth.verifier().clone();
        // Both sides must accept the token, or the numbers mean nothing.
        let principal = rt.block_on(verifier.verify_token(token)).expect("ours");
        assert_eq!(principal.subject(), "dev-user", "{alg}");
        let raw = jsonwebtoken::decode::<Claims>(token, key, validation).expect("raw");
        assert_eq!(raw.claims.sub, "dev-user", "{alg}");

        group.bench_function(format!("{alg}/tower_mcp_auth_verify_token"), |b| {
            b.iter(|| {
                rt.block_on(verifier.verify_token(black_box(token)))
                    .expect("valid")
            })
        });
        group.bench_function(format!("{alg}/jsonwebtoken_decode"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Claims>(black_box(token), key, validation).expect("valid")
            })
        });
    }
    group.finish();

    for (alg, auth, token, key, validation) in &cases {
        let verifier = auth.verifier();
        let mut ours = || {
            black_box(
                rt.block_on(verifier.verify_token(black_box(token)))
                    .expect("valid"),
            );
        };
        let mut raw = || {
            black_box(
                jsonwebtoken::decode::<Claims>(black_box(token), key, validation).expect("valid"),
            );
        };
        let batch = batch_for(&mut ours);
        paired(
            &format!("cold/{alg}: A verify_token, B jsonwebtoken::decode"),
            batch,
            &mut ours,
            &mut raw,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// warm/*: the whole stack on a verified-token cache hit against the bare service.
// ---------------------------------------------------------------------------------------------

fn warm(c: &mut Criterion) {
    let rt = runtime();
    let (_dev, auth, token) = fixture();
    let bearer = format!("Bearer {token}");
    let make = || post(Bytes::from_static(CALL_WHOAMI), &bearer, None);

    let mut bare = tower::service_fn(ok_handler);
    let mut stack = auth.layer().layer(tower::service_fn(ok_handler));

    let mut group = c.benchmark_group("warm");
    bench_ok(&mut group, "bare_service", &rt, &mut bare, make);
    // The sanity request inside `bench_ok` verifies and caches the token: every timed request
    // is a cache hit.
    bench_ok(&mut group, "full_stack_cache_hit", &rt, &mut stack, make);
    group.finish();

    let mut a = || drop(black_box(call(&rt, &mut stack, make())));
    let mut b = || drop(black_box(call(&rt, &mut bare, make())));
    let batch = batch_for(&mut a);
    paired(
        "warm: A full stack (cache hit), B bare service",
        batch,
        &mut a,
        &mut b,
    );
}

// ---------------------------------------------------------------------------------------------
// dpop/*: a fresh proof per request through the whole stack, against one signature check.
// ---------------------------------------------------------------------------------------------

/// What jsonwebtoken deserializes from a DPoP proof.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: u64,
    ath: String,
}

/// A new DPoP client: its key and a `notes:read` token from `dev` bound to it.
fn dpop_client(dev: &DevIssuer) -> (DevDpopKey, String) {
    let key = DevDpopKey::new();
    let token = dev
        .token(RESOURCE)
        .scope("notes:read")
        .dpop_bound(key.jkt())
        .sign();
    (key, token)
}

/// The whole stack for `dev`'s tokens with `dpop`, `whoami` needing `notes:read`.
fn dpop_auth(dev: &DevIssuer, config: tower_mcp_auth::McpAuthConfig, dpop: DpopConfig) -> McpAuth {
    McpAuth::builder()
        .config(config)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .dpop(dpop)
        .build()
        .expect("config")
}

fn dpop(c: &mut Criterion) {
    install_jsonwebtoken_provider();
    let rt = runtime();
    let dev = DevIssuer::new(ISSUER);
    let mut config = DpopConfig::with_mode(DpopMode::Required);
    // Every timed request records a new (key, jti); none may be refused for lack of room.
    config.replay_capacity = 4_000_000;
    let auth = dpop_auth(&dev, tower_mcp_auth::McpAuthConfig::new(RESOURCE), config);
    let (key, token) = dpop_client(&dev);
    let authorization = format!("DPoP {token}");
    let mut stack = auth.layer().layer(tower::service_fn(ok_handler));
    let make = |proof: &str| post(Bytes::from_static(CALL_WHOAMI), &authorization, Some(proof));

    // Sanity: a fresh proof passes (and caches the token); the same proof again is a replay.
    let proof = key.proof("POST", RESOURCE, &token);
    assert_eq!(call(&rt, &mut stack, make(&proof)).status(), StatusCode::OK);
    assert_eq!(
        call(&rt, &mut stack, make(&proof)).status(),
        StatusCode::UNAUTHORIZED
    );

    // The one-signature-per-request limit: jsonwebtoken checking the same kind of proof.
    let jwk = key.public_jwk();
    let proof_key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y"),
    )
    .expect("EC key");
    let mut proof_validation = Validation::new(Algorithm::ES256);
    proof_validation.required_spec_claims = HashSet::new();
    proof_validation.validate_exp = false;
    proof_validation.validate_aud = false;
    let pool: Vec<String> = (0..256)
        .map(|_| key.proof("POST", RESOURCE, &token))
        .collect();
    let split: Vec<(&str, &str)> = pool
        .iter()
        .map(|p| p.rsplit_once('.').expect("compact JWS"))
        .collect();
    let decoded =
        jsonwebtoken::decode::<ProofClaims>(&pool[0], &proof_key, &proof_validation).expect("raw");
    assert_eq!(decoded.claims.htm, "POST");
    assert!(
        jsonwebtoken::crypto::verify(
            split[0].1,
            split[0].0.as_bytes(),
            &proof_key,
            Algorithm::ES256
        )
        .expect("verify")
    );

    let mut group = c.benchmark_group("dpop");
    group.bench_function("full_stack_fresh_proof", |b| {
        b.iter_custom(|iters| {
            // Untimed: one proof per request, each with its own jti and a current iat.
            let proofs: Vec<String> = (0..iters)
                .map(|_| key.proof("POST", RESOURCE, &token))
                .collect();
            let start = Instant::now();
            for proof in &proofs {
                let response = call(&rt, &mut stack, black_box(make(proof)));
                assert_eq!(response.status(), StatusCode::OK);
            }
            start.elapsed()
        })
    });
    let mut i = 0;
    group.bench_function("jsonwebtoken_decode_proof", |b| {
        b.iter(|| {
            i = (i + 1) % pool.len();
            jsonwebtoken::decode::<ProofClaims>(black_box(&pool[i]), &proof_key, &proof_validation)
                .expect("valid")
        })
    });
    let mut i = 0;
    group.bench_function("jsonwebtoken_signature_only", |b| {
        b.iter(|| {
            i = (i + 1) % split.len();
            let (input, signature) = split[i];
            jsonwebtoken::crypto::verify(
                black_box(signature),
                input.as_bytes(),
                &proof_key,
                Algorithm::ES256,
            )
            .expect("verify")
        })
    });
    group.finish();

    // Interleaved: the stack with fresh proofs (made before any timing) against jsonwebtoken on
    // the pool, against the bare signature check, and against the one-signature limit of a
    // server: the bare service answering the same request plus one signature check.
    #[derive(Clone, Copy)]
    enum Baseline {
        Decode,
        Signature,
        BareAndSignature,
    }
    let mut bare = tower::service_fn(ok_handler);
    const BATCH: u32 = 40;
    for (label, baseline) in [
        (
            "dpop: A full stack + fresh proof, B jsonwebtoken::decode(proof)",
            Baseline::Decode,
        ),
        (
            "dpop: A full stack + fresh proof, B signature check only",
            Baseline::Signature,
        ),
        (
            "dpop: A full stack + fresh proof, B bare service + signature check",
            Baseline::BareAndSignature,
        ),
    ] {
        let proofs: Vec<String> = (0..(PAIRED_ROUNDS as u32 + 1) * BATCH)
            .map(|_| key.proof("POST", RESOURCE, &token))
            .collect();
        let mut next = proofs.iter();
        let mut a = || {
            let proof = next.next().expect("enough proofs");
            let response = call(&rt, &mut stack, make(proof));
            assert_eq!(response.status(), StatusCode::OK);
        };
        let mut i = 0;
        let mut b = || {
            i = (i + 1) % pool.len();
            let signature = || {
                let (input, signature) = split[i];
                black_box(
                    jsonwebtoken::crypto::verify(
                        black_box(signature),
                        input.as_bytes(),
                        &proof_key,
                        Algorithm::ES256,
                    )
                    .expect("verify"),
                )
            };
            match baseline {
                Baseline::Decode => {
                    black_box(
                        jsonwebtoken::decode::<ProofClaims>(
                            black_box(&pool[i]),
                            &proof_key,
                            &proof_validation,
                        )
                        .expect("valid"),
                    );
                }
                Baseline::Signature => {
                    signature();
                }
                Baseline::BareAndSignature => {
                    let response = call(&rt, &mut bare, make(&pool[i]));
                    assert_eq!(response.status(), StatusCode::OK);
                    signature();
                }
            }
        };
        paired(label, BATCH, &mut a, &mut b);
    }
}

// ---------------------------------------------------------------------------------------------
// policy/*: what reading and classifying the body costs, small and large.
// ---------------------------------------------------------------------------------------------

/// A `tools/call` of about 250 bytes.
fn small_call() -> Bytes {
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_notes","arguments":{"query":"quarterly planning notes","limit":20,"tags":["work","planning","q3"],"include_archived":false,"sort":"updated"},"_meta":{"progressToken":"tok-7"}}}"#;
    Bytes::from_static(body)
}

fn policy(c: &mut Criterion) {
    let rt = runtime();
    let dev = DevIssuer::new(ISSUER);
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let bearer = format!("Bearer {token}");
    let scoped = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("search_notes", ["notes:read"]))
        .build()
        .expect("config");
    let allow_all = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .expect("config");

    let mut group = c.benchmark_group("policy");
    for (size, body) in [
        ("small_250B", small_call()),
        ("large_64KiB", common::large_call("search_notes")),
    ] {
        let make = || post(body.clone(), &bearer, None);
        let inner = || tower::service_fn(ok_handler);
        // No policy layer at all: the token layer (cache hit) straight to the service.
        let mut token_only = scoped.token_layer().layer(inner());
        let mut toolscopes = scoped
            .token_layer()
            .layer(scoped.policy_layer().layer(inner()));
        let mut allow = allow_all
            .token_layer()
            .layer(allow_all.policy_layer().layer(inner()));
        let mut full = scoped.layer().layer(inner());
        let id = |name: &str| format!("{size}/{name}");
        bench_ok(
            &mut group,
            &id("token_layer_only"),
            &rt,
            &mut token_only,
            make,
        );
        bench_ok(
            &mut group,
            &id("token_and_policy_toolscopes"),
            &rt,
            &mut toolscopes,
            make,
        );
        bench_ok(
            &mut group,
            &id("token_and_policy_allow_all"),
            &rt,
            &mut allow,
            make,
        );
        bench_ok(&mut group, &id("full_stack"), &rt, &mut full, make);

        let mut b = || drop(black_box(call(&rt, &mut token_only, make())));
        let mut a = || drop(black_box(call(&rt, &mut toolscopes, make())));
        let batch = batch_for(&mut a);
        paired(
            &format!("policy/{size}: A token + policy (ToolScopes), B token layer only"),
            batch,
            &mut a,
            &mut b,
        );
        let mut a = || drop(black_box(call(&rt, &mut allow, make())));
        paired(
            &format!("policy/{size}: A token + policy (allow-all closure), B token layer only"),
            batch,
            &mut a,
            &mut b,
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// listing/*: filtering a 50-tool tools/list response.
// ---------------------------------------------------------------------------------------------

const LIST_TOOLS: &[u8] = br#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{}}"#;
const TOOLS: usize = 50;

/// A `tools/list` result of 50 tools, each with a description and an input schema.
fn tools_list_response() -> Bytes {
    let tools: Vec<serde_json::Value> = (0..TOOLS)
        .map(|i| {
            serde_json::json!({
                "name": format!("tool_{i:02}"),
                "title": format!("Tool {i}"),
                "description": format!("Does thing number {i} to the caller's notes and returns a summary."),
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "What to look for"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100}
                    },
                    "required": ["query"]
                },
                "annotations": {"readOnlyHint": i % 2 == 0}
            })
        })
        .collect();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 3, "result": {"tools": tools}});
    Bytes::from(serde_json::to_vec(&body).expect("json"))
}

/// Half the tools need a scope the caller has, half one it lacks.
fn listing_scopes() -> ToolScopes {
    (0..TOOLS).fold(ToolScopes::new(), |scopes, i| {
        let scope = if i < TOOLS / 2 {
            "notes:read"
        } else {
            "notes:admin"
        };
        scopes.tool(format!("tool_{i:02}"), [scope])
    })
}

fn listed_tools(body: &[u8]) -> usize {
    let value: serde_json::Value = serde_json::from_slice(body).expect("listing JSON");
    value["result"]["tools"].as_array().expect("tools").len()
}

fn listing(c: &mut Criterion) {
    let rt = runtime();
    let dev = DevIssuer::new(ISSUER);
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let bearer = format!("Bearer {token}");
    let response_body = tools_list_response();
    let build = |filter: bool| {
        let mut config = PolicyConfig::default();
        config.filter_listings = filter;
        McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .policy(listing_scopes())
            .policy_config(config)
            .build()
            .expect("config")
    };
    let inner = {
        let body = response_body.clone();
        tower::service_fn(move |_req: Request<Body>| {
            let body = body.clone();
            async move {
                let mut response = Response::new(Full::new(body));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            }
        })
    };
    let make = || post(Bytes::from_static(LIST_TOOLS), &bearer, None);
    let filtered = build(true);
    let unfiltered = build(false);
    let mut bare = inner.clone();
    let mut filtered = filtered.layer().layer(inner.clone());
    let mut unfiltered = unfiltered.layer().layer(inner);

    // Sanity: the filter keeps exactly the 25 tools the caller may use.
    let (status, body) = call_collect(&rt, &mut filtered, make());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed_tools(&body), TOOLS / 2);
    let (status, body) = call_collect(&rt, &mut unfiltered, make());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed_tools(&body), TOOLS);
    println!(
        "listing: response of {} tools is {} bytes, filtered {} bytes",
        TOOLS,
        response_body.len(),
        call_collect(&rt, &mut filtered, make()).1.len()
    );

    let mut group = c.benchmark_group("listing");
    group.bench_function("bare_service", |b| {
        b.iter(|| call_collect(&rt, &mut bare, black_box(make())))
    });
    group.bench_function("full_stack_unfiltered", |b| {
        b.iter(|| call_collect(&rt, &mut unfiltered, black_box(make())))
    });
    group.bench_function("full_stack_filtered", |b| {
        b.iter(|| call_collect(&rt, &mut filtered, black_box(make())))
    });
    group.finish();

    let mut a = || drop(black_box(call_collect(&rt, &mut filtered, make())));
    let mut b = || drop(black_box(call_collect(&rt, &mut unfiltered, make())));
    let batch = batch_for(&mut a);
    paired(
        "listing: A filtered (25 of 50 kept), B unfiltered",
        batch,
        &mut a,
        &mut b,
    );
}

// ---------------------------------------------------------------------------------------------
// memory/*: resident memory per cached token and per replay entry.
// ---------------------------------------------------------------------------------------------

const MEMORY_ENTRIES: usize = 100_000;
/// New DPoP clients in the memory group.
const MEMORY_CLIENTS: usize = 50_000;

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let dev = DevIssuer::new(ISSUER);
    let mut config = tower_mcp_auth::McpAuthConfig::new(RESOURCE);
    config.token.cache_max_entries = 2 * MEMORY_ENTRIES as u64;
    let auth = McpAuth::builder()
        .config(config)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .build()
        .expect("config");
    let mut stack = auth.layer().layer(tower::service_fn(ok_handler));

    let mut group = c.benchmark_group("memory");
    // The measurement runs inside the benchmark closure so that it only runs when the group is
    // selected, and only once.
    let mut bearers: Vec<String> = Vec::new();
    group.bench_function("cache_hit_with_100k_cached", |b| {
        if bearers.is_empty() {
            bearers = (0..MEMORY_ENTRIES)
                .map(|_| format!("Bearer {}", dev.token(RESOURCE).scope("notes:read").sign()))
                .collect();
            // Warm the allocator and the stack with one token before the baseline.
            for _ in 0..1_000 {
                let req = post(Bytes::from_static(CALL_WHOAMI), &bearers[0], None);
                assert_eq!(call(&rt, &mut stack, req).status(), StatusCode::OK);
            }
            let before = rss_bytes();
            // Each token twice: the cache admits a token on its second verification.
            for bearer in bearers.iter().chain(&bearers) {
                let req = post(Bytes::from_static(CALL_WHOAMI), bearer, None);
                assert_eq!(call(&rt, &mut stack, req).status(), StatusCode::OK);
            }
            let after = rss_bytes();
            let entries = auth.cache_stats().map_or(0, |s| s.entries);
            report_memory("verified-token cache", before, after, entries);
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bearers.len();
            let req = post(Bytes::from_static(CALL_WHOAMI), &bearers[i], None);
            call(&rt, &mut stack, black_box(req))
        })
    });

    let key = DevDpopKey::new();
    let ttl = Duration::from_secs(75);
    let keys = |n: u64, tag: &str| -> Vec<ReplayKey> {
        (0..n)
            .map(|i| ReplayKey::new(key.jkt(), &format!("{tag}-{i:016x}")))
            .collect()
    };
    let mut measured = false;
    group.bench_function("replay_record_fresh_proof", |b| {
        if !measured {
            measured = true;
            let store = InMemoryReplayStore::new(2 * MEMORY_ENTRIES);
            let fresh = keys(MEMORY_ENTRIES as u64, "memory");
            // No allocator warm-up here: memory freed by an earlier store of the same size would
            // be reused and hide part of the growth.
            let before = rss_bytes();
            for k in fresh {
                assert!(rt.block_on(store.check_and_record(k, ttl)).expect("room"));
            }
            let after = rss_bytes();
            report_memory("DPoP replay store", before, after, store.len() as u64);
        }
        b.iter_custom(|iters| {
            let store = InMemoryReplayStore::new(iters as usize + 1);
            let fresh = keys(iters, "bench");
            let start = Instant::now();
            for k in fresh {
                let recorded = rt.block_on(store.check_and_record(black_box(k), ttl));
                debug_assert_eq!(recorded, Ok(true));
            }
            start.elapsed()
        })
    });

    // DPoP clients never seen before: each request parses and remembers a new key. The token
    // cache is off, so the growth is the remembered key plus one replay entry (about 100 B,
    // above) per client; the key cache is as large as the measurement.
    let mut dpop_config = DpopConfig::with_mode(DpopMode::Required);
    dpop_config.key_cache_capacity = MEMORY_CLIENTS;
    let mut config = tower_mcp_auth::McpAuthConfig::new(RESOURCE);
    config.token.cache_max_entries = 0;
    let auth = dpop_auth(&dev, config, dpop_config);
    let mut stack = auth.layer().layer(tower::service_fn(ok_handler));
    // One (authorization, proof) per new client: a key, a token bound to it, a proof.
    let new_clients = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|_| {
                let (key, token) = dpop_client(&dev);
                let proof = key.proof("POST", RESOURCE, &token);
                (format!("DPoP {token}"), proof)
            })
            .collect()
    };
    let mut measured = false;
    group.bench_function("dpop_new_client_key_and_token", |b| {
        if !measured {
            measured = true;
            let requests = new_clients(MEMORY_CLIENTS);
            let before = rss_bytes();
            for (authorization, proof) in &requests {
                let req = post(Bytes::from_static(CALL_WHOAMI), authorization, Some(proof));
                assert_eq!(call(&rt, &mut stack, req).status(), StatusCode::OK);
            }
            let after = rss_bytes();
            report_memory_n(
                "DPoP client keys remembered (+ one replay entry each)",
                MEMORY_CLIENTS,
                before,
                after,
                None,
            );
        }
        // Timed: a proof by a key never seen, with a token never seen (two signatures).
        b.iter_custom(|iters| {
            let requests = new_clients(iters as usize);
            let start = Instant::now();
            for (authorization, proof) in &requests {
                let req = post(Bytes::from_static(CALL_WHOAMI), authorization, Some(proof));
                let response = call(&rt, &mut stack, black_box(req));
                debug_assert_eq!(response.status(), StatusCode::OK);
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Prints the RSS growth for `MEMORY_ENTRIES` insertions (`entries`: what the store reports).
fn report_memory(what: &str, before: Option<u64>, after: Option<u64>, entries: u64) {
    report_memory_n(what, MEMORY_ENTRIES, before, after, Some(entries));
}

/// Prints the RSS growth for `n` insertions (`entries`: what the store reports, if it can).
fn report_memory_n(
    what: &str,
    n: usize,
    before: Option<u64>,
    after: Option<u64>,
    entries: Option<u64>,
) {
    let live = entries.map_or_else(String::new, |e| format!(" ({e} reported live)"));
    match (before, after) {
        (Some(before), Some(after)) => {
            let grown = after.saturating_sub(before);
            println!(
                "memory: {what}: {n} inserted{live}, \
                 RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB), about {} bytes per entry",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                grown as f64 / 1048576.0,
                grown / n as u64,
            );
        }
        _ => println!("memory: {what}: RSS unavailable (no /proc/self/statm)"),
    }
}

criterion_group!(
    benches, es256, layer, audit, cache, cold, warm, dpop, policy, listing, memory
);
criterion_main!(benches);
