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
//!   that discards events): the difference is what auditing adds to the request path.
//!
//! Futures are driven with a current-thread tokio runtime's `block_on` inside `b.iter`.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://auth.example.com";
const CALL_WHOAMI: &[u8] =
    br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
const RESULT: &[u8] =
    br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"dev-user"}]}}"#;

/// The claims `jsonwebtoken` deserializes, roughly what `Principal` keeps.
#[derive(Debug, Deserialize)]
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

/// jsonwebtoken picks its process-wide provider from its features; with both backends enabled
/// (`--all-features`) it cannot, so install the one this crate uses.
fn install_jsonwebtoken_provider() {
    #[cfg(feature = "aws-lc-rs")]
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

fn fixture() -> (DevIssuer, McpAuth, String) {
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .build()
        .expect("config");
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    (dev, auth, token)
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

type Body = Full<Bytes>;

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
    group.finish();
}

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

criterion_group!(benches, es256, layer, audit, cache);
criterion_main!(benches);
