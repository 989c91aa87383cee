//! The rejection body-shaping hook (`McpAuthBuilder::shape_rejection`, `ShapeRejection`): the
//! hook's body and extra headers are what the client gets, while the status, the challenges,
//! `Cache-Control`, `Retry-After` and the `AuthError` extension stay exactly as the crate
//! computed them, whatever the hook does. A hook cannot widen access: the inner service is never
//! reached, and a refusal stays a refusal.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
use tower_mcp_auth::error::DPOP_NONCE;
use tower_mcp_auth::keys::{KeyError, KeySet, KeySource, RefreshReason};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth, McpAuthBuilder, SigningAlgorithm};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";
const X_SHAPED: HeaderName = HeaderName::from_static("x-shaped");

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    error: Option<AuthError>,
    body: Bytes,
    inner_calls: usize,
}

async fn send(auth: &McpAuth, req: Request<Full<Bytes>>) -> Answer {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let inner = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"inner reached"),
        ))))
    });
    let resp = auth.layer().layer(inner).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        error: parts.extensions.get::<AuthError>().cloned(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
        inner_calls: calls.load(Ordering::SeqCst),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A key source with nothing and no way to fetch: the 503 path.
#[derive(Debug)]
struct Down;

#[async_trait]
impl KeySource for Down {
    fn current(&self) -> Option<Arc<KeySet>> {
        None
    }
    async fn refresh(&self, _reason: RefreshReason<'_>) -> Result<Arc<KeySet>, KeyError> {
        Err(KeyError::Unavailable("test: down".into()))
    }
}

/// A body in the RFC 9457 problem style, naming the error code.
fn problem(error: &AuthError) -> Bytes {
    Bytes::from(
        json!({"type": "about:blank", "title": error.kind().as_str(), "status": error.status().as_u16()})
            .to_string(),
    )
}

/// A hook that shapes the body and, beyond that, tries everything it must not be able to do.
fn hostile_hook(calls: Arc<AtomicUsize>) -> impl Fn(&AuthError, &mut Response<Full<Bytes>>) {
    move |error, response| {
        calls.fetch_add(1, Ordering::SeqCst);
        *response.body_mut() = Full::new(problem(error));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(X_SHAPED, HeaderValue::from_static("yes"));
        // None of the following may survive.
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.remove(WWW_AUTHENTICATE);
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"x\""),
        );
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=86400"),
        );
        headers.remove(RETRY_AFTER);
        headers.insert(DPOP_NONCE, HeaderValue::from_static("attacker-nonce"));
        response.extensions_mut().remove::<AuthError>();
    }
}

/// A hook that only replaces the body.
fn body_hook(error: &AuthError, response: &mut Response<Full<Bytes>>) {
    *response.body_mut() = Full::new(problem(error));
}

/// The requests every stack is asked, by name, and whether the token layer refuses them (the
/// DPoP layer's own refusals, with DPoP on, do not go through the hook); fresh each time
/// (requests are not `Clone`).
fn requests(dev: &DevIssuer, dpop: bool) -> Vec<(&'static str, Request<Full<Bytes>>, bool)> {
    let post = |auth: Option<String>| {
        let mut b = Request::post("/mcp");
        if let Some(value) = auth {
            b = b.header(AUTHORIZATION, value);
        }
        b.body(Full::default()).unwrap()
    };
    let expired = dev
        .token(RESOURCE)
        .claim("iat", now() - 1200)
        .claim("exp", now() - 600)
        .sign();
    vec![
        ("no credentials (401, no error)", post(None), true),
        (
            "two schemes in one header (400 invalid_request)",
            post(Some("Bearer a, Bearer b".into())),
            true,
        ),
        (
            "expired token (401 invalid_token)",
            post(Some(format!("Bearer {expired}"))),
            true,
        ),
        (
            "token in the query (400)",
            Request::post("/mcp?access_token=abc")
                .body(Full::default())
                .unwrap(),
            true,
        ),
        (
            // DPoP off: 401 from the token layer. DPoP on: no proof, 400 from the DPoP layer.
            "DPoP scheme without a proof",
            post(Some(format!("DPoP {}", dev.token(RESOURCE).sign()))),
            !dpop,
        ),
    ]
}

fn stack(dev: &DevIssuer, dpop: bool) -> McpAuthBuilder {
    let builder = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"]);
    if dpop {
        builder.dpop(DpopConfig::with_mode(DpopMode::Allowed))
    } else {
        builder
    }
}

const PINNED: [HeaderName; 4] = [WWW_AUTHENTICATE, CACHE_CONTROL, RETRY_AFTER, DPOP_NONCE];

/// Checks a shaped answer against the unshaped one for the same request.
fn compare(name: &str, plain: &Answer, shaped: &Answer, hostile: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |m: String| problems.push(format!("[{name}] {m}"));
    if !plain.status.is_client_error() && !plain.status.is_server_error() {
        fail(format!("control: the unshaped answer is {}", plain.status));
    }
    if shaped.status != plain.status {
        fail(format!("status {} != {}", shaped.status, plain.status));
    }
    for header in &PINNED {
        let a: Vec<_> = plain.headers.get_all(header).iter().collect();
        let b: Vec<_> = shaped.headers.get_all(header).iter().collect();
        if a != b {
            fail(format!("{header}: {b:?} != {a:?}"));
        }
    }
    match (&plain.error, &shaped.error) {
        (Some(a), Some(b)) if a == b => {}
        (a, b) => fail(format!("AuthError extension {b:?} != {a:?}")),
    }
    if shaped.inner_calls != 0 || plain.inner_calls != 0 {
        fail("the inner service was reached".into());
    }
    let error = plain.error.as_ref().expect("a rejection");
    if shaped.body != problem(error) {
        fail(format!(
            "body {:?} is not the hook's",
            String::from_utf8_lossy(&shaped.body)
        ));
    }
    if hostile {
        if shaped.headers.get(CONTENT_TYPE).map(|v| v.as_bytes())
            != Some(b"application/problem+json")
        {
            fail("the hook's Content-Type was not kept".into());
        }
        if shaped.headers.get(X_SHAPED).is_none() {
            fail("the hook's extra header was not kept".into());
        }
    } else if shaped.headers.get(CONTENT_TYPE) != plain.headers.get(CONTENT_TYPE) {
        fail("Content-Type changed by a body-only hook".into());
    }
    problems
}

#[tokio::test]
async fn the_hook_shapes_the_body_and_cannot_change_status_or_challenges() {
    let dev = DevIssuer::new(ISSUER);
    let mut failures = Vec::new();
    let mut compared = 0;
    for dpop in [false, true] {
        for hostile in [false, true] {
            let calls = Arc::new(AtomicUsize::new(0));
            let plain = stack(&dev, dpop).build().unwrap();
            let shaped = if hostile {
                stack(&dev, dpop).shape_rejection(hostile_hook(calls.clone()))
            } else {
                let counter = calls.clone();
                stack(&dev, dpop).shape_rejection(
                    move |e: &AuthError, r: &mut Response<Full<Bytes>>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        body_hook(e, r);
                    },
                )
            }
            .build()
            .unwrap();
            let expected_calls = requests(&dev, dpop).iter().filter(|r| r.2).count();
            for ((name, a, by_token_layer), (_, b, _)) in
                requests(&dev, dpop).into_iter().zip(requests(&dev, dpop))
            {
                let plain_answer = send(&plain, a).await;
                let shaped_answer = send(&shaped, b).await;
                let label = format!("dpop={dpop} hostile={hostile} {name}");
                if by_token_layer {
                    failures.extend(compare(&label, &plain_answer, &shaped_answer, hostile));
                } else if shaped_answer.body != plain_answer.body
                    || shaped_answer.status != plain_answer.status
                    || shaped_answer.inner_calls != 0
                {
                    // Pinned: the DPoP layer's refusals are not shaped (documented on
                    // `McpAuthBuilder::shape_rejection`).
                    failures.push(format!("[{label}] a DPoP-layer refusal changed"));
                }
                compared += 1;
            }
            if calls.load(Ordering::SeqCst) != expected_calls {
                failures.push(format!(
                    "dpop={dpop} hostile={hostile}: hook called {} times for {expected_calls} rejections",
                    calls.load(Ordering::SeqCst)
                ));
            }

            // A valid token: accepted, the hook is not called, the inner service answers
            // (GET: a valid token and no JSON-RPC operation to authorize).
            let before = calls.load(Ordering::SeqCst);
            let ok = send(
                &shaped,
                Request::get("/mcp")
                    .header(
                        AUTHORIZATION,
                        format!("Bearer {}", dev.token(RESOURCE).sign()),
                    )
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(ok.status, StatusCode::OK);
            assert_eq!(ok.inner_calls, 1);
            assert_eq!(&ok.body[..], b"inner reached");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                before,
                "hook called on success"
            );
        }
    }
    assert_eq!(compared, 20);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// 503 (keys unavailable): `Retry-After` and the absence of a challenge are kept too.
#[tokio::test]
async fn the_hook_keeps_retry_after_on_503() {
    let dev = DevIssuer::new(ISSUER);
    let build = |hook: bool| {
        let b = McpAuth::builder()
            .resource(RESOURCE)
            .issuer_with_keys(ISSUER, Arc::new(Down), [SigningAlgorithm::ES256])
            .scopes_supported(["notes:read"]);
        if hook {
            b.shape_rejection(hostile_hook(Arc::new(AtomicUsize::new(0))))
        } else {
            b
        }
        .build()
        .unwrap()
    };
    let token = dev.token(RESOURCE).sign();
    let req = || {
        Request::post("/mcp")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::default())
            .unwrap()
    };
    let plain = send(&build(false), req()).await;
    let shaped = send(&build(true), req()).await;
    assert_eq!(plain.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(plain.headers.get(RETRY_AFTER).is_some());
    let problems = compare("keys unavailable (503)", &plain, &shaped, true);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        shaped.headers.get(WWW_AUTHENTICATE).is_none(),
        "the hook's challenge on a 503 was dropped"
    );
    assert_eq!(
        shaped.error.map(|e| e.kind()),
        Some(AuthErrorKind::KeysUnavailable)
    );
    let body: Value = serde_json::from_slice(&shaped.body).unwrap();
    assert_eq!(body["title"], "keys_unavailable");
}
