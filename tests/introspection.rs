//! RFC 7662 introspection through the whole stack (`McpAuth::layer()`), against a stub
//! introspection endpoint on loopback, with the real `ReqwestHttpClient`.
//!
//! The stub counts calls, checks the client authentication (`client_secret_basic` with RFC 6749
//! §2.3.1 form-encoding, `client_secret_post`, `private_key_jwt`: the assertion's ES256
//! signature verified with p256, its claims, and no `jti` reused) and answers the JSON set for
//! each token (`{"active":false}` for unknown ones), or a forced status, raw body, or nothing.
//!
//! Asserted: an active response is accepted and gives the principal (sub, client_id, scopes,
//! iss, jti, exp); every malformed or unacceptable response is a 401 (`active` not the JSON
//! `true`, `exp` missing or past, `nbf` ahead, `aud` missing, wrong or ill-typed, `token_type`
//! DPoP without `cnf.jkt`, an unknown `token_type`, empty `cnf`, an `iss` other than the
//! configured one); endpoint errors (5xx, 4xx, unreachable, hanging, oversized) are 503 with
//! `Retry-After` and never an acceptance, and are not cached; a second use within the cache TTL
//! does not call the endpoint, one after it does; JWT-shaped tokens never reach the endpoint;
//! a revocation list refuses a cached opaque token without asking the endpoint; introspected
//! sender-bound tokens (`token_type: DPoP` + `cnf.jkt`, `cnf.x5t#S256`) are accepted only with
//! their proof or certificate, also when the verdict comes from the cache.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde_json::{Value, json};
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::config::IntrospectionConfig;
use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
use tower_mcp_auth::http_client::ReqwestHttpClient;
use tower_mcp_auth::mtls::ClientCertificate;
use tower_mcp_auth::policy::{Decision, PolicyRequest};
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::token::{
    ClientAuth, InMemoryRevocationList, IntrospectionVerifier, RequiredClaims,
};
use tower_mcp_auth::{
    AuthError, AuthErrorKind, Binding, ConfigError, McpAuth, McpAuthConfig, Principal,
    SigningAlgorithm,
};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";
const CLIENT_ID: &str = "rs-client";
/// Characters that RFC 6749 §2.3.1 form-encodes before Basic: `:`, `+`, `/`, `%`, space, non-ASCII.
const CLIENT_SECRET: &str = "s3cr:t+/% é";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// The stub introspection endpoint
// ---------------------------------------------------------------------------------------------

/// The client authentication the stub requires.
#[derive(Clone)]
enum Expect {
    Basic {
        id: String,
        secret: String,
    },
    Post {
        id: String,
        secret: String,
    },
    /// The assertion must verify with this P-256 public key (PEM) and name this `kid`.
    PrivateKeyJwt {
        id: String,
        public_pem: String,
        kid: String,
    },
}

#[derive(Clone)]
struct StubState {
    expect: Expect,
    endpoint: Arc<Mutex<String>>,
    responses: Arc<Mutex<HashMap<String, Value>>>,
    /// Answer this status (with an `active: true` body) instead.
    status: Arc<Mutex<Option<u16>>>,
    /// Answer 200 with this body instead.
    raw: Arc<Mutex<Option<String>>>,
    hang: Arc<Mutex<bool>>,
    calls: Arc<AtomicUsize>,
    auth_failures: Arc<Mutex<Vec<String>>>,
    assertion_jtis: Arc<Mutex<HashSet<String>>>,
}

struct Stub {
    state: StubState,
    url: url::Url,
}

impl Stub {
    async fn start(expect: Expect) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url: url::Url = format!("http://{addr}/introspect").parse().unwrap();
        let state = StubState {
            expect,
            endpoint: Arc::new(Mutex::new(url.to_string())),
            responses: Arc::default(),
            status: Arc::default(),
            raw: Arc::default(),
            hang: Arc::default(),
            calls: Arc::default(),
            auth_failures: Arc::default(),
            assertion_jtis: Arc::default(),
        };
        let app = Router::new()
            .route("/introspect", post(introspect))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, url }
    }

    /// The stub answers `response` for `token`.
    fn answer(&self, token: &str, response: Value) {
        self.state
            .responses
            .lock()
            .unwrap()
            .insert(token.to_owned(), response);
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn auth_failures(&self) -> Vec<String> {
        self.state.auth_failures.lock().unwrap().clone()
    }

    fn force_status(&self, status: Option<u16>) {
        *self.state.status.lock().unwrap() = status;
    }

    fn force_raw(&self, raw: Option<String>) {
        *self.state.raw.lock().unwrap() = raw;
    }

    fn hang(&self, hang: bool) {
        *self.state.hang.lock().unwrap() = hang;
    }
}

fn json_response(status: StatusCode, body: String) -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

async fn introspect(
    State(state): State<StubState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<axum::body::Body> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    if *state.hang.lock().unwrap() {
        std::future::pending::<()>().await;
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    if let Err(why) = check_request(&state, &headers, &form) {
        state.auth_failures.lock().unwrap().push(why);
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client"}).to_string(),
        );
    }
    if let Some(status) = *state.status.lock().unwrap() {
        let status = StatusCode::from_u16(status).unwrap();
        return json_response(status, json!({"active": true}).to_string());
    }
    if let Some(raw) = state.raw.lock().unwrap().clone() {
        return json_response(StatusCode::OK, raw);
    }
    let token = param(&form, "token").unwrap_or_default();
    let response = state
        .responses
        .lock()
        .unwrap()
        .get(&token)
        .cloned()
        .unwrap_or_else(|| json!({"active": false}));
    json_response(StatusCode::OK, response.to_string())
}

fn param(form: &[(String, String)], name: &str) -> Option<String> {
    let mut values = form
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone());
    let first = values.next();
    assert!(values.next().is_none(), "parameter {name} sent twice");
    first
}

/// The request is a form POST with one `token`, `token_type_hint=access_token`, and the
/// expected client authentication (and no other).
fn check_request(
    state: &StubState,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(), String> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if content_type != Some("application/x-www-form-urlencoded") {
        return Err(format!("content-type {content_type:?}"));
    }
    if param(form, "token").is_none_or(|t| t.is_empty()) {
        return Err("no token".into());
    }
    if param(form, "token_type_hint").as_deref() != Some("access_token") {
        return Err("token_type_hint".into());
    }
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match &state.expect {
        Expect::Basic { id, secret } => {
            if param(form, "client_secret").is_some() || param(form, "client_assertion").is_some() {
                return Err("credentials in the body as well as Basic".into());
            }
            let encoded = authorization
                .and_then(|v| v.strip_prefix("Basic "))
                .ok_or("no Basic authorization")?;
            let pair = String::from_utf8(STANDARD.decode(encoded).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let (user, pass) = pair.split_once(':').ok_or("no colon in Basic")?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded, so the only ':' is the separator.
            let decode = |s: &str| -> String {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            if decode(user) != *id || decode(pass) != *secret {
                return Err(format!("wrong Basic credentials {pair:?}"));
            }
        }
        Expect::Post { id, secret } => {
            if authorization.is_some() {
                return Err("Authorization header with client_secret_post".into());
            }
            if param(form, "client_id").as_deref() != Some(id)
                || param(form, "client_secret").as_deref() != Some(secret)
            {
                return Err("wrong client_secret_post credentials".into());
            }
        }
        Expect::PrivateKeyJwt {
            id,
            public_pem,
            kid,
        } => {
            if authorization.is_some() || param(form, "client_secret").is_some() {
                return Err("a secret with private_key_jwt".into());
            }
            if param(form, "client_assertion_type").as_deref()
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err("client_assertion_type".into());
            }
            if param(form, "client_id").is_some_and(|c| c != *id) {
                return Err("client_id differs from the assertion's".into());
            }
            let assertion = param(form, "client_assertion").ok_or("no client_assertion")?;
            let endpoint = state.endpoint.lock().unwrap().clone();
            check_assertion(
                &assertion,
                id,
                kid,
                public_pem,
                &endpoint,
                &state.assertion_jtis,
            )?;
        }
    }
    Ok(())
}

/// RFC 7523 §3: ES256 signature by the registered key, iss = sub = client id, aud = the
/// endpoint, exp in the near future, a `jti` never seen before.
fn check_assertion(
    assertion: &str,
    id: &str,
    kid: &str,
    public_pem: &str,
    endpoint: &str,
    seen: &Mutex<HashSet<String>>,
) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("the assertion is not a compact JWS".into());
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string());
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" || header["kid"] != kid {
        return Err(format!("assertion header {header}"));
    }
    let key = VerifyingKey::from_public_key_pem(public_pem).map_err(|e| e.to_string())?;
    let signature = Signature::from_slice(&decode(signature)?).map_err(|e| e.to_string())?;
    let input = &assertion[..assertion.rfind('.').unwrap()];
    key.verify(input.as_bytes(), &signature)
        .map_err(|_| "the assertion's signature does not verify".to_owned())?;
    let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    let now = now();
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    if claims["iss"] != id || claims["sub"] != id || claims["aud"] != endpoint {
        return Err(format!("assertion claims {claims}"));
    }
    if exp <= now || exp > now + 300 || iat > now + 5 {
        return Err(format!("assertion times {claims}"));
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
    if !seen.lock().unwrap().insert(jti) {
        return Err("assertion jti reused".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------------

fn client() -> Arc<ReqwestHttpClient> {
    Arc::new(ReqwestHttpClient::new().unwrap())
}

fn basic() -> (Expect, ClientAuth) {
    (
        Expect::Basic {
            id: CLIENT_ID.into(),
            secret: CLIENT_SECRET.into(),
        },
        ClientAuth::SecretBasic {
            client_id: CLIENT_ID.into(),
            secret: CLIENT_SECRET.into(),
        },
    )
}

/// JWTs of `dev` go to the JWT verifier, everything else to `verifier` (an introspection cache
/// of 60 s in front, as the builder sets up).
fn stack(
    dev: &DevIssuer,
    verifier: IntrospectionVerifier,
    revocation: Option<Arc<InMemoryRevocationList>>,
) -> McpAuth {
    let mut builder = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .introspection(Arc::new(verifier));
    if let Some(list) = revocation {
        builder = builder.revocation_list(list);
    }
    builder.build().unwrap()
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    kind: Option<AuthErrorKind>,
    detail: Option<&'static str>,
    headers: HeaderMap,
    principal: Option<Principal>,
}

async fn send(auth: &McpAuth, token: &str) -> Answer {
    let request = Request::get(RESOURCE)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_request(auth, request).await
}

async fn send_request(auth: &McpAuth, request: Request<Full<Bytes>>) -> Answer {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        *record.lock().unwrap() = req.extensions().get::<Principal>().cloned();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner")))) }
    });
    let response = auth.layer().layer(inner).oneshot(request).await.unwrap();
    let principal = seen.lock().unwrap().take();
    Answer {
        status: response.status(),
        kind: response
            .extensions()
            .get::<AuthError>()
            .map(AuthError::kind),
        detail: response
            .extensions()
            .get::<AuthError>()
            .and_then(AuthError::detail),
        headers: response.headers().clone(),
        principal,
    }
}

fn opaque_token() -> String {
    // 32 random bytes, base64url: no dots, so never JWT-shaped.
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An active introspection response for this resource, valid 5 minutes.
fn active(jti: &str) -> Value {
    let now = now();
    json!({
        "active": true,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "notes:read notes:write",
        "aud": RESOURCE,
        "iss": ISSUER,
        "exp": now + 300,
        "iat": now,
        "jti": jti,
        "token_type": "Bearer",
    })
}

fn with(mut value: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            value.as_object_mut().unwrap().remove(k);
        } else {
            value[k] = v.clone();
        }
    }
    value
}

fn assert_invalid_token(answer: &Answer, kind: AuthErrorKind, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {answer:?}"
    );
    assert_eq!(answer.kind, Some(kind), "{what}");
    let www = answer.headers[WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        www.starts_with("Bearer ") && www.contains(r#"error="invalid_token""#),
        "{what}: {www}"
    );
    assert!(
        answer.principal.is_none(),
        "{what}: the inner service was not reached"
    );
}

fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {answer:?}"
    );
    assert_eq!(answer.kind, Some(AuthErrorKind::KeysUnavailable), "{what}");
    assert!(
        answer.headers.contains_key(RETRY_AFTER),
        "{what}: Retry-After"
    );
    assert!(
        !answer.headers.contains_key(WWW_AUTHENTICATE),
        "{what}: no challenge on a 503"
    );
    assert!(answer.principal.is_none(), "{what}: never an acceptance");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn active_token_is_accepted_with_its_principal_then_served_from_the_cache() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client()),
        None,
    );
    let token = opaque_token();
    let response = active("op-1");
    stub.answer(&token, response.clone());

    let answer = send(&auth, &token).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{answer:?} {:?}",
        stub.auth_failures()
    );
    let p = answer.principal.expect("a principal");
    assert_eq!(p.subject(), "user-1");
    assert_eq!(p.client_id(), Some("app-1"));
    assert_eq!(
        p.scopes().iter().map(String::as_str).collect::<Vec<_>>(),
        ["notes:read", "notes:write"]
    );
    assert_eq!(p.issuer(), ISSUER);
    assert_eq!(p.jti(), Some("op-1"));
    assert_eq!(p.audience(), [RESOURCE]);
    assert_eq!(p.expires_at_unix(), response["exp"].as_u64().unwrap());
    assert_eq!(
        p.token_thumbprint(),
        tower_mcp_auth::token::thumbprint(&token)
    );
    assert_eq!(stub.calls(), 1);

    // Within the TTL the verdict comes from the cache: the endpoint is not called again.
    let again = send(&auth, &token).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.principal.unwrap().subject(), "user-1");
    assert_eq!(stub.calls(), 1, "second use within the TTL is a cache hit");
    assert!(stub.auth_failures().is_empty());
}

#[tokio::test]
async fn unacceptable_responses_are_401() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client())
            .issuer(ISSUER),
        None,
    );
    let now = now();
    use AuthErrorKind::*;
    let base = active("j");
    let cases: Vec<(&str, Value, AuthErrorKind)> = vec![
        (
            "active false",
            with(base.clone(), json!({"active": false})),
            Revoked,
        ),
        (
            "active \"true\" (a string)",
            with(base.clone(), json!({"active": "true"})),
            Revoked,
        ),
        (
            "active 1",
            with(base.clone(), json!({"active": 1})),
            Revoked,
        ),
        (
            "active missing",
            with(base.clone(), json!({"active": null})),
            InvalidClaim,
        ),
        ("only active true", json!({"active": true}), MissingClaim),
        (
            "exp missing",
            with(base.clone(), json!({"exp": null})),
            MissingClaim,
        ),
        (
            "exp a string",
            with(base.clone(), json!({"exp": (now + 300).to_string()})),
            InvalidClaim,
        ),
        (
            "expired beyond the leeway",
            with(base.clone(), json!({"exp": now - 120})),
            Expired,
        ),
        (
            "nbf ahead",
            with(base.clone(), json!({"nbf": now + 300})),
            NotYetValid,
        ),
        (
            "aud another resource",
            with(
                base.clone(),
                json!({"aud": "https://other.example.com/mcp"}),
            ),
            WrongAudience,
        ),
        (
            "aud list without this resource",
            with(
                base.clone(),
                json!({"aud": ["https://a.example", "https://b.example"]}),
            ),
            WrongAudience,
        ),
        (
            "aud missing",
            with(base.clone(), json!({"aud": null})),
            MissingClaim,
        ),
        (
            "aud with a number",
            with(base.clone(), json!({"aud": [RESOURCE, 5]})),
            InvalidClaim,
        ),
        (
            "aud an object",
            with(base.clone(), json!({"aud": {"x": RESOURCE}})),
            InvalidClaim,
        ),
        (
            "token_type DPoP without cnf",
            with(base.clone(), json!({"token_type": "DPoP"})),
            InvalidClaim,
        ),
        (
            "token_type DPoP with cnf but no jkt",
            with(
                base.clone(),
                json!({"token_type": "DPoP", "cnf": {"x5t#S256": "abc"}}),
            ),
            InvalidClaim,
        ),
        (
            "token_type N_A",
            with(base.clone(), json!({"token_type": "N_A"})),
            WrongTokenType,
        ),
        (
            "cnf empty",
            with(base.clone(), json!({"cnf": {}})),
            InvalidClaim,
        ),
        (
            "DPoP-bound token presented as Bearer",
            with(
                base.clone(),
                json!({"token_type": "DPoP", "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
            ),
            MissingProofOfPossession,
        ),
        (
            "iss another issuer",
            with(base.clone(), json!({"iss": "https://evil.example.com"})),
            UntrustedIssuer,
        ),
        (
            "sub null",
            with(base.clone(), json!({"sub": Value::Null})),
            InvalidClaim,
        ),
    ];
    // `with` removes members set to null; "sub null" must keep its null.
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, mut response, kind)| {
            if what == "sub null" {
                response["sub"] = Value::Null;
            }
            (what, response, kind)
        })
        .collect();
    for (i, (what, response, kind)) in cases.iter().enumerate() {
        let token = opaque_token();
        stub.answer(&token, response.clone());
        let answer = send(&auth, &token).await;
        assert_invalid_token(&answer, *kind, what);
        assert_eq!(stub.calls(), i + 1, "{what}: the endpoint was asked");
    }
    // A refusal is not cached: the same token is introspected again.
    let token = opaque_token();
    stub.answer(&token, with(base.clone(), json!({"active": false})));
    let before = stub.calls();
    assert_invalid_token(&send(&auth, &token).await, Revoked, "inactive");
    assert_invalid_token(&send(&auth, &token).await, Revoked, "inactive again");
    assert_eq!(stub.calls(), before + 2);
    // An unknown token: the stub answers {"active": false}.
    assert_invalid_token(
        &send(&auth, &opaque_token()).await,
        Revoked,
        "unknown token",
    );
    assert!(stub.auth_failures().is_empty());
}

#[tokio::test]
async fn endpoint_failures_are_503_and_never_an_acceptance() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let http =
        Arc::new(ReqwestHttpClient::with_limits(Duration::from_millis(500), 512 * 1024).unwrap());
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(
            stub.url.clone(),
            auth_method.clone(),
            RESOURCE,
            http.clone(),
        ),
        None,
    );
    let token = opaque_token();
    stub.answer(&token, active("j-fail"));

    for status in [500, 502, 503, 400, 401, 404] {
        stub.force_status(Some(status));
        assert_unavailable(
            &send(&auth, &token).await,
            &format!("endpoint answers {status}"),
        );
    }
    stub.force_status(None);
    // A 200 that is not JSON, or not a JSON object: the endpoint misbehaves, so 503 with
    // Retry-After (fail closed, honestly), never a 401 verdict on the token nor an acceptance.
    for raw in [
        "<html>oops</html>",
        "",
        "[]",
        "null",
        "true",
        r#""active""#,
        "42",
        r#"{"active":true"#,
        r#"[{"active":true}]"#,
    ] {
        stub.force_raw(Some(raw.to_owned()));
        let calls = stub.calls();
        assert_unavailable(&send(&auth, &token).await, &format!("200 with {raw:?}"));
        assert_eq!(stub.calls(), calls + 1, "{raw:?}: the endpoint was asked");
        // Not cached either: the next request asks again.
        assert_unavailable(
            &send(&auth, &token).await,
            &format!("200 with {raw:?} again"),
        );
        assert_eq!(stub.calls(), calls + 2, "{raw:?}: a failure is not cached");
    }
    // A response over the client's 512 KiB limit.
    let big = format!(r#"{{"active":true,"pad":"{}"}}"#, "x".repeat(600 * 1024));
    stub.force_raw(Some(big));
    assert_unavailable(&send(&auth, &token).await, "oversized response");
    stub.force_raw(None);
    // A hanging endpoint: bounded by the client timeout (0.5 s).
    stub.hang(true);
    let started = Instant::now();
    assert_unavailable(&send(&auth, &token).await, "hanging endpoint");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    stub.hang(false);

    // Failures were not cached: the endpoint is back, the token is accepted.
    let calls = stub.calls();
    let answer = send(&auth, &token).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(stub.calls(), calls + 1);

    // Unreachable: nothing listens on the port any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let unreachable = stack(
        &dev,
        IntrospectionVerifier::new(
            format!("http://{closed}/introspect").parse().unwrap(),
            auth_method.clone(),
            RESOURCE,
            http.clone(),
        ),
        None,
    );
    assert_unavailable(
        &send(&unreachable, &opaque_token()).await,
        "unreachable endpoint",
    );

    // The AS refuses our credentials (wrong secret): 503, not an acceptance.
    let wrong = stack(
        &dev,
        IntrospectionVerifier::new(
            stub.url.clone(),
            ClientAuth::SecretBasic {
                client_id: CLIENT_ID.into(),
                secret: "wrong".into(),
            },
            RESOURCE,
            http,
        ),
        None,
    );
    assert_unavailable(&send(&wrong, &token).await, "client authentication refused");
    assert_eq!(stub.auth_failures().len(), 1);
}

#[tokio::test]
async fn jwt_shaped_tokens_never_go_to_introspection() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client()),
        None,
    );
    // Even if the AS would call it active.
    let valid = dev.token(RESOURCE).scope("notes:read").sign();
    stub.answer(&valid, active("jwt"));
    let answer = send(&auth, &valid).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        answer.principal.unwrap().subject(),
        "dev-user",
        "verified as a JWT"
    );

    let other = DevIssuer::new(ISSUER);
    let forged = other.token(RESOURCE).header("kid", dev.kid()).sign();
    let untrusted = DevIssuer::new("https://untrusted.example.com")
        .token(RESOURCE)
        .sign();
    let unknown_kid = other.token(RESOURCE).sign();
    let expired = dev.token(RESOURCE).claim("exp", now() - 3600).sign();
    let wrong_aud = dev.token("https://other.example.com/mcp").sign();
    let mut tampered = valid.clone();
    tampered.insert(valid.rfind('.').unwrap() + 3, 'A');
    tampered.truncate(valid.len());
    for (token, kind) in [
        (&forged, AuthErrorKind::InvalidSignature),
        (&untrusted, AuthErrorKind::UntrustedIssuer),
        (&unknown_kid, AuthErrorKind::UnknownKey),
        (&expired, AuthErrorKind::Expired),
        (&wrong_aud, AuthErrorKind::WrongAudience),
    ] {
        stub.answer(token, active("jwt"));
        assert_invalid_token(&send(&auth, token).await, kind, &format!("{kind:?} JWT"));
    }
    let answer = send(&auth, &tampered).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    assert_eq!(
        stub.calls(),
        0,
        "no JWT-shaped token reached the introspection endpoint"
    );

    // Three segments whose first is not a JOSE header: opaque, introspected.
    let dotted = "abc.def.ghi";
    stub.answer(dotted, active("dotted"));
    let answer = send(&auth, dotted).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(stub.calls(), 1);
    let opaque = opaque_token();
    stub.answer(&opaque, active("op"));
    assert_eq!(send(&auth, &opaque).await.status, StatusCode::OK);
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn revocation_list_refuses_a_cached_opaque_token() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let list = Arc::new(InMemoryRevocationList::new());
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client()),
        Some(list.clone()),
    );
    let until = SystemTime::now() + Duration::from_secs(600);

    let token = opaque_token();
    stub.answer(&token, active("op-revoked"));
    assert_eq!(send(&auth, &token).await.status, StatusCode::OK);
    assert_eq!(send(&auth, &token).await.status, StatusCode::OK);
    assert_eq!(stub.calls(), 1, "cached");
    list.revoke_jti("op-revoked", until);
    assert_invalid_token(
        &send(&auth, &token).await,
        AuthErrorKind::Revoked,
        "revoked jti, cached",
    );
    assert_eq!(
        stub.calls(),
        1,
        "refused from the cache, without asking the endpoint"
    );

    // By client id, on the first (uncached) use too.
    let other = opaque_token();
    stub.answer(
        &other,
        with(active("op-2"), json!({"client_id": "leaky-app"})),
    );
    list.revoke_client("leaky-app", until);
    assert_invalid_token(
        &send(&auth, &other).await,
        AuthErrorKind::Revoked,
        "revoked client",
    );
    assert_eq!(stub.calls(), 2);
    // Others are unaffected.
    let fine = opaque_token();
    stub.answer(&fine, active("op-3"));
    assert_eq!(send(&auth, &fine).await.status, StatusCode::OK);
}

#[tokio::test]
async fn client_secret_post_from_the_configuration_with_a_short_cache_ttl() {
    let dev = DevIssuer::new(ISSUER);
    let stub = Stub::start(Expect::Post {
        id: CLIENT_ID.into(),
        secret: CLIENT_SECRET.into(),
    })
    .await;
    let mut introspection = IntrospectionConfig::new(stub.url.as_str(), CLIENT_ID, CLIENT_SECRET);
    introspection.auth_method = "client_secret_post".into();
    introspection.issuer = Some(ISSUER.into());
    introspection.cache_max_ttl_secs = 1;
    let mut config = McpAuthConfig::new(RESOURCE);
    config.introspection = Some(introspection.clone());
    let auth = McpAuth::builder()
        .config(config.clone())
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap();

    let token = opaque_token();
    stub.answer(&token, active("cfg-1"));
    let answer = send(&auth, &token).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{answer:?} {:?}",
        stub.auth_failures()
    );
    assert_eq!(send(&auth, &token).await.status, StatusCode::OK);
    assert_eq!(stub.calls(), 1, "cached within the 1 s TTL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(send(&auth, &token).await.status, StatusCode::OK);
    assert_eq!(stub.calls(), 2, "introspected again after the TTL");

    // The configured issuer is enforced.
    let foreign = opaque_token();
    stub.answer(
        &foreign,
        with(
            active("cfg-2"),
            json!({"iss": "https://other-as.example.com"}),
        ),
    );
    assert_invalid_token(
        &send(&auth, &foreign).await,
        AuthErrorKind::UntrustedIssuer,
        "iss mismatch",
    );
    // JWTs still go to the JWT verifier.
    let jwt = dev.token(RESOURCE).sign();
    assert_eq!(send(&auth, &jwt).await.status, StatusCode::OK);
    assert_eq!(stub.calls(), 3);
    assert!(
        stub.auth_failures().is_empty(),
        "{:?}",
        stub.auth_failures()
    );

    // Introspection alone (no JWT issuer) is a valid configuration; JWTs are then untrusted.
    let alone = McpAuth::builder()
        .config(config.clone())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap();
    assert_eq!(send(&alone, &token).await.status, StatusCode::OK);
    let jwt = dev.token(RESOURCE).sign();
    assert_invalid_token(
        &send(&alone, &jwt).await,
        AuthErrorKind::UntrustedIssuer,
        "no JWT issuer",
    );

    // private_key_jwt cannot be configured in a file.
    let mut bad = config;
    bad.introspection.as_mut().unwrap().auth_method = "private_key_jwt".into();
    assert!(matches!(
        McpAuth::builder().config(bad).build(),
        Err(ConfigError::Parse(_))
    ));
}

#[tokio::test]
async fn private_key_jwt_assertions_are_signed_fresh_and_verified() {
    let dev = DevIssuer::new(ISSUER);
    // A DevIssuer doubles as the resource server's ES256 client key.
    let client_key = Arc::new(DevIssuer::new("client-key"));
    let stub = Stub::start(Expect::PrivateKeyJwt {
        id: CLIENT_ID.into(),
        public_pem: client_key.public_key_pem(),
        kid: "rs-key-1".into(),
    })
    .await;
    let signer = client_key.clone();
    let auth_method = ClientAuth::PrivateKeyJwt {
        client_id: CLIENT_ID.into(),
        alg: SigningAlgorithm::ES256,
        kid: Some("rs-key-1".into()),
        sign: Arc::new(move |input: &[u8]| signer.sign(input)),
    };
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client()),
        None,
    );
    for i in 0..3 {
        let token = opaque_token();
        stub.answer(&token, active(&format!("pkj-{i}")));
        let answer = send(&auth, &token).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{answer:?} {:?}",
            stub.auth_failures()
        );
    }
    assert_eq!(stub.calls(), 3);
    assert!(
        stub.auth_failures().is_empty(),
        "{:?}",
        stub.auth_failures()
    );
    assert_eq!(
        stub.state.assertion_jtis.lock().unwrap().len(),
        3,
        "a fresh jti each time"
    );

    // An assertion signed by another key is refused by the AS: 503, never an acceptance.
    let impostor = Arc::new(DevIssuer::new("impostor"));
    let wrong = stack(
        &dev,
        IntrospectionVerifier::new(
            stub.url.clone(),
            ClientAuth::PrivateKeyJwt {
                client_id: CLIENT_ID.into(),
                alg: SigningAlgorithm::ES256,
                kid: Some("rs-key-1".into()),
                sign: Arc::new(move |input: &[u8]| impostor.sign(input)),
            },
            RESOURCE,
            client(),
        ),
        None,
    );
    let token = opaque_token();
    stub.answer(&token, active("pkj-x"));
    assert_unavailable(&send(&wrong, &token).await, "assertion by another key");
    assert_eq!(
        stub.auth_failures(),
        ["the assertion's signature does not verify"]
    );
}

/// `[token] leeway_secs` is the leeway for `exp` of every token, JWT or introspected.
///
/// Fails at the time of writing: the builder does not pass the configured leeway to the
/// `IntrospectionVerifier`, which always allows 30 s, so an opaque token whose introspection
/// response says `exp` = now - 10 s is accepted (200) with `leeway_secs = 0`, while a JWT with
/// the same `exp` is refused (`expired`).
#[tokio::test]
async fn the_configured_leeway_applies_to_introspected_exp() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, _) = basic();
    let stub = Stub::start(expect).await;
    let mut config = McpAuthConfig::new(RESOURCE);
    config.token.leeway_secs = 0;
    config.introspection = Some(IntrospectionConfig::new(
        stub.url.as_str(),
        CLIENT_ID,
        CLIENT_SECRET,
    ));
    let auth = McpAuth::builder()
        .config(config)
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap();
    // A JWT that expired 10 s ago is refused with leeway 0 ...
    let jwt = dev.token(RESOURCE).claim("exp", now() - 10).sign();
    assert_invalid_token(
        &send(&auth, &jwt).await,
        AuthErrorKind::Expired,
        "JWT, leeway 0",
    );
    // ... and so is an opaque token whose introspection response says the same.
    let token = opaque_token();
    stub.answer(&token, with(active("late"), json!({"exp": now() - 10})));
    assert_invalid_token(
        &send(&auth, &token).await,
        AuthErrorKind::Expired,
        "opaque, leeway 0",
    );
}

/// Claims the crate requires of JWTs are required of introspection responses too (RFC 7662
/// makes them optional): `iss` whenever an issuer is configured, and `sub`, `client_id`, `iat`,
/// `jti` per [`RequiredClaims`] (default all). Each refusal: 401 `invalid_token`, the exact
/// kind and the missing claim's name as the detail.
#[tokio::test]
async fn required_claims_of_introspection_responses() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let strict = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method.clone(), RESOURCE, client())
            .issuer(ISSUER),
        None,
    );
    use AuthErrorKind::*;
    let base = active("rq");
    let now = now();
    let cases: Vec<(&str, Value, AuthErrorKind, Option<&str>)> = vec![
        (
            "iss missing",
            with(base.clone(), json!({"iss": null})),
            MissingClaim,
            Some("iss"),
        ),
        (
            "iss another issuer",
            with(base.clone(), json!({"iss": "https://as.example.com/"})),
            UntrustedIssuer,
            None,
        ),
        (
            "iss a number",
            with(base.clone(), json!({"iss": 7})),
            InvalidClaim,
            None,
        ),
        (
            "sub missing",
            with(base.clone(), json!({"sub": null})),
            MissingClaim,
            Some("sub"),
        ),
        (
            "client_id missing",
            with(base.clone(), json!({"client_id": null})),
            MissingClaim,
            Some("client_id"),
        ),
        (
            "iat missing",
            with(base.clone(), json!({"iat": null})),
            MissingClaim,
            Some("iat"),
        ),
        (
            "jti missing",
            with(base.clone(), json!({"jti": null})),
            MissingClaim,
            Some("jti"),
        ),
        (
            "iat ahead beyond the leeway",
            with(base.clone(), json!({"iat": now + 300})),
            IssuedInFuture,
            None,
        ),
    ];
    for (what, response, kind, detail) in &cases {
        let token = opaque_token();
        stub.answer(&token, response.clone());
        let answer = send(&strict, &token).await;
        assert_invalid_token(&answer, *kind, what);
        assert_eq!(answer.detail, *detail, "{what}: detail");
    }

    // Without a configured issuer, `iss` may be absent (and is then not checked).
    let no_issuer = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method.clone(), RESOURCE, client()),
        None,
    );
    let token = opaque_token();
    stub.answer(&token, with(base.clone(), json!({"iss": null})));
    let answer = send(&no_issuer, &token).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "no issuer configured: {answer:?}"
    );

    // Relaxed: a minimal RFC 7662 response (active, aud, exp) is accepted; `iss` still required
    // because an issuer is configured.
    let mut none_required = RequiredClaims::default();
    none_required.sub = false;
    none_required.client_id = false;
    none_required.iat = false;
    none_required.jti = false;
    let relaxed = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client())
            .issuer(ISSUER)
            .required_claims(none_required),
        None,
    );
    let minimal = json!({"active": true, "aud": RESOURCE, "exp": now + 300});
    let token = opaque_token();
    stub.answer(&token, with(minimal.clone(), json!({"iss": ISSUER})));
    let answer = send(&relaxed, &token).await;
    assert_eq!(answer.status, StatusCode::OK, "relaxed: {answer:?}");
    let p = answer.principal.unwrap();
    assert_eq!(p.subject(), "");
    assert_eq!(p.client_id(), None);
    let token = opaque_token();
    stub.answer(&token, minimal);
    let answer = send(&relaxed, &token).await;
    assert_invalid_token(&answer, MissingClaim, "relaxed, iss missing");
    assert_eq!(answer.detail, Some("iss"));
}

/// `[introspection] required_claims` relaxes the rules from the configuration; by default the
/// `[token] required_claims` apply to introspection too.
#[tokio::test]
async fn required_claims_from_the_configuration() {
    let (expect, _) = basic();
    let stub = Stub::start(expect).await;
    let build = |introspection_extra: &str, token_extra: &str| {
        let toml = format!(
            r#"
            resource = "{RESOURCE}"
            [token]
            {token_extra}
            [introspection]
            endpoint = "{}"
            client_id = "{CLIENT_ID}"
            client_secret = {:?}
            issuer = "{ISSUER}"
            {introspection_extra}
            "#,
            stub.url, CLIENT_SECRET
        );
        let config = tower_mcp_auth::McpAuthConfig::from_toml_str(&toml).unwrap();
        McpAuth::builder()
            .config(config)
            .policy(|_: &PolicyRequest<'_>| Decision::Allow)
            .build()
            .unwrap()
    };
    let no_sub = with(active("cfg-rq"), json!({"sub": null, "client_id": null}));
    let cases = [
        ("defaults", "", "", false),
        (
            "[introspection] relaxed",
            "required_claims = { sub = false, client_id = false }",
            "",
            true,
        ),
        (
            "[token] relaxed applies to introspection",
            "",
            "required_claims = { sub = false, client_id = false }",
            true,
        ),
        (
            "[introspection] stricter than [token]",
            "required_claims = { sub = true, client_id = true }",
            "required_claims = { sub = false, client_id = false }",
            false,
        ),
    ];
    for (what, introspection_extra, token_extra, accepted) in cases {
        let auth = build(introspection_extra, token_extra);
        let token = opaque_token();
        stub.answer(&token, no_sub.clone());
        let answer = send(&auth, &token).await;
        if accepted {
            assert_eq!(answer.status, StatusCode::OK, "{what}: {answer:?}");
        } else {
            assert_invalid_token(&answer, AuthErrorKind::MissingClaim, what);
            assert_eq!(answer.detail, Some("sub"), "{what}");
        }
    }
}

/// An authorization server metadata document at the RFC 8414 location of
/// `http://127.0.0.1:port`, counting requests.
async fn metadata_server(document: Arc<Mutex<Value>>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/.well-known/oauth-authorization-server",
        axum::routing::get(move || {
            let document = document.clone();
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = document.lock().unwrap().to_string();
                json_response(StatusCode::OK, body)
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

/// `[introspection]` without `endpoint`: the discovered issuer's `introspection_endpoint` is
/// used (and its `iss` enforced); a document naming another issuer is never used.
#[tokio::test]
async fn introspection_endpoint_from_discovered_metadata() {
    let (expect, _) = basic();
    let stub = Stub::start(expect).await;
    let document = Arc::new(Mutex::new(Value::Null));
    let (issuer, metadata_hits) = metadata_server(document.clone()).await;
    *document.lock().unwrap() = json!({
        "issuer": issuer,
        "introspection_endpoint": stub.url.as_str(),
    });
    let toml = |extra: &str| {
        format!(
            r#"
            resource = "{RESOURCE}"
            [[issuers]]
            issuer = "{issuer}"
            discover = true
            [introspection]
            client_id = "{CLIENT_ID}"
            client_secret = {CLIENT_SECRET:?}
            {extra}
            "#
        )
    };
    let build = |toml: String| {
        McpAuth::builder()
            .config(tower_mcp_auth::McpAuthConfig::from_toml_str(&toml).unwrap())
            .policy(|_: &PolicyRequest<'_>| Decision::Allow)
            .build()
    };
    // The only discovered issuer, or named explicitly.
    for extra in ["", &format!("issuer = \"{issuer}\"")] {
        let auth = build(toml(extra)).unwrap();
        let token = opaque_token();
        stub.answer(&token, with(active("disc-1"), json!({"iss": issuer})));
        let answer = send(&auth, &token).await;
        assert_eq!(answer.status, StatusCode::OK, "{extra:?}: {answer:?}");
        assert_eq!(answer.principal.unwrap().issuer(), issuer);
        // The discovered issuer is required in responses.
        for (what, response, kind) in [
            (
                "iss missing",
                json!({"iss": null}),
                AuthErrorKind::MissingClaim,
            ),
            (
                "iss another",
                json!({"iss": "https://as.example.com"}),
                AuthErrorKind::UntrustedIssuer,
            ),
        ] {
            let token = opaque_token();
            stub.answer(&token, with(active("disc-2"), response));
            assert_invalid_token(&send(&auth, &token).await, kind, what);
        }
    }
    assert_eq!(metadata_hits.load(Ordering::SeqCst), 2, "once per stack");

    // A document for another issuer: never used, so the endpoint is never called (503).
    *document.lock().unwrap() = json!({
        "issuer": format!("{issuer}/"),
        "introspection_endpoint": stub.url.as_str(),
    });
    let calls = stub.calls();
    let auth = build(toml("")).unwrap();
    assert_unavailable(
        &send(&auth, &opaque_token()).await,
        "metadata of another issuer",
    );
    // Metadata without an introspection endpoint: 503 too.
    *document.lock().unwrap() = json!({ "issuer": issuer });
    let auth = build(toml("")).unwrap();
    assert_unavailable(
        &send(&auth, &opaque_token()).await,
        "no introspection_endpoint",
    );
    assert_eq!(stub.calls(), calls, "the endpoint was not called");

    // An explicit endpoint wins over discovery; no endpoint and no discovered issuer to take
    // one from is a configuration error.
    let explicit = build(toml(&format!("endpoint = \"{}\"", stub.url))).unwrap();
    let token = opaque_token();
    stub.answer(&token, active("disc-3"));
    assert_eq!(send(&explicit, &token).await.status, StatusCode::OK);
    let err = build(toml("issuer = \"https://as.example.com\"")).unwrap_err();
    assert!(
        matches!(err, tower_mcp_auth::ConfigError::Introspection(_)),
        "{err:?}"
    );
    let no_discovery = format!(
        r#"
        resource = "{RESOURCE}"
        [introspection]
        client_id = "{CLIENT_ID}"
        client_secret = "x"
        "#
    );
    assert!(matches!(
        build(no_discovery).unwrap_err(),
        tower_mcp_auth::ConfigError::Introspection(_)
    ));
}

/// `McpAuth::introspection_cache_stats` counts hits and misses of introspection verdicts.
#[tokio::test]
async fn introspection_cache_stats_count_hits_and_misses() {
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let auth = stack(
        &dev,
        IntrospectionVerifier::new(stub.url.clone(), auth_method, RESOURCE, client()),
        None,
    );
    let before = auth
        .introspection_cache_stats()
        .expect("introspection is cached");
    let token = opaque_token();
    stub.answer(&token, active("stats-1"));
    for _ in 0..3 {
        assert_eq!(send(&auth, &token).await.status, StatusCode::OK);
    }
    let after = auth.introspection_cache_stats().unwrap();
    assert_eq!(after.misses - before.misses, 1, "{after:?}");
    assert_eq!(after.hits - before.hits, 2, "{after:?}");
    assert_eq!(stub.calls(), 1);
    // JWT verdicts are counted apart.
    let jwt_stats = auth.cache_stats().unwrap();
    assert_eq!(jwt_stats.hits, 0, "{jwt_stats:?}");
    // Without introspection there are no such stats.
    let plain = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .build()
        .unwrap();
    assert!(plain.introspection_cache_stats().is_none());
}

/// The `WWW-Authenticate` challenge that carries an `error`: (scheme, error), e.g.
/// `("Bearer", "invalid_token")`; `None` if no challenge carries one.
fn error_challenge(headers: &HeaderMap) -> Option<(String, String)> {
    headers.get_all(WWW_AUTHENTICATE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (scheme, params) = v.split_once(' ')?;
        let error = params.split("error=\"").nth(1)?.split('"').next()?;
        Some((scheme.to_owned(), error.to_owned()))
    })
}

/// How a row should end: accepted with this binding and key thumbprint, or refused with
/// (status, kind, scheme of the challenge carrying the error, error code).
type Outcome = Result<(Binding, String), (u16, AuthErrorKind, String, String)>;

fn refused(status: u16, kind: AuthErrorKind, scheme: &str, error: &str) -> Outcome {
    Err((status, kind, scheme.to_owned(), error.to_owned()))
}

#[tokio::test]
async fn introspected_bound_tokens_need_their_proof_or_certificate() {
    use AuthErrorKind as K;
    let dev = DevIssuer::new(ISSUER);
    let (expect, auth_method) = basic();
    let stub = Stub::start(expect).await;
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .dpop(DpopConfig::with_mode(DpopMode::Allowed))
        .introspection(Arc::new(IntrospectionVerifier::new(
            stub.url.clone(),
            auth_method,
            RESOURCE,
            client(),
        )))
        .build()
        .unwrap();

    let key = DevDpopKey::new();
    let other_key = DevDpopKey::new();
    let dpop_token = opaque_token();
    stub.answer(
        &dpop_token,
        with(
            active("op-dpop"),
            json!({"token_type": "DPoP", "cnf": {"jkt": key.jkt()}}),
        ),
    );
    // Any DER works: the thumbprint is SHA-256 over the bytes the TLS layer verified.
    let cert = ClientCertificate::from_der(b"\x30\x03\x02\x01\x01".to_vec());
    let other_cert = ClientCertificate::from_der(b"\x30\x03\x02\x01\x02".to_vec());
    let mtls_token = opaque_token();
    stub.answer(
        &mtls_token,
        with(
            active("op-mtls"),
            json!({"cnf": {"x5t#S256": cert.thumbprint()}}),
        ),
    );

    let get = |authorization: String| {
        Request::get(RESOURCE)
            .header(AUTHORIZATION, authorization)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let with_proof = |token: &str, key: &DevDpopKey| {
        let mut req = get(format!("DPoP {token}"));
        req.headers_mut()
            .insert("dpop", key.proof("GET", RESOURCE, token).parse().unwrap());
        req
    };
    let with_cert = |token: &str, cert: &ClientCertificate| {
        let mut req = get(format!("Bearer {token}"));
        req.extensions_mut().insert(cert.clone());
        req
    };
    let jkt = key.jkt().to_owned();
    let x5t = cert.thumbprint().to_owned();
    // In order: the first row introspects each token, later rows are cache hits, which must
    // apply the binding as strictly.
    let rows: Vec<(&str, Request<Full<Bytes>>, Outcome)> = vec![
        (
            "DPoP token with its proof",
            with_proof(&dpop_token, &key),
            Ok((Binding::Dpop, jkt.clone())),
        ),
        (
            "DPoP token as Bearer",
            get(format!("Bearer {dpop_token}")),
            refused(401, K::MissingProofOfPossession, "Bearer", "invalid_token"),
        ),
        (
            "DPoP token with another key's proof",
            with_proof(&dpop_token, &other_key),
            refused(401, K::DpopKeyMismatch, "DPoP", "invalid_token"),
        ),
        (
            "DPoP token, DPoP scheme without a proof",
            get(format!("DPoP {dpop_token}")),
            refused(400, K::MissingDpopProof, "DPoP", "invalid_request"),
        ),
        (
            "DPoP token with its proof, from the cache",
            with_proof(&dpop_token, &key),
            Ok((Binding::Dpop, jkt.clone())),
        ),
        (
            "certificate-bound token with its certificate",
            with_cert(&mtls_token, &cert),
            Ok((Binding::Mtls, x5t.clone())),
        ),
        (
            "certificate-bound token without a certificate",
            get(format!("Bearer {mtls_token}")),
            refused(401, K::CertificateMismatch, "Bearer", "invalid_token"),
        ),
        (
            "certificate-bound token with another certificate",
            with_cert(&mtls_token, &other_cert),
            refused(401, K::CertificateMismatch, "Bearer", "invalid_token"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, expect) in rows {
        let answer = send_request(&auth, request).await;
        let got: Outcome = match &answer.principal {
            Some(p) if answer.status == StatusCode::OK => Ok((
                p.binding(),
                p.key_thumbprint().unwrap_or_default().to_owned(),
            )),
            _ => {
                let (scheme, error) = error_challenge(&answer.headers).unwrap_or_default();
                Err((
                    answer.status.as_u16(),
                    answer.kind.unwrap_or(K::InvalidSignature),
                    scheme,
                    error,
                ))
            }
        };
        if got != expect {
            failures.push(format!("[{name}] got {got:?}, want {expect:?}"));
        }
        if expect.is_ok()
            && let Some(p) = &answer.principal
            && p.subject() != "user-1"
        {
            failures.push(format!("[{name}] principal {p:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(stub.calls(), 2, "each token introspected once, then cached");
    assert!(stub.auth_failures().is_empty());
}
