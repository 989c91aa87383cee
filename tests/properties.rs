//! Property tests of the whole stack (`McpAuth::layer()` around a recording inner service):
//! arbitrary `Authorization` values, queries and tokens never cause a panic or a 5xx, and never
//! reach the inner service unless a genuine token verifies; one-character mutations of a valid
//! token never verify.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use proptest::prelude::*;
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth, Principal};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";
const CASES: u32 = 256;
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    dev: DevIssuer,
    auth: McpAuth,
    /// A valid token, minted once (its lifetime is 10 minutes, far beyond this file's run).
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dev = DevIssuer::new(ISSUER);
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .scopes_supported(["notes:read"])
            .build()
            .unwrap();
        let token = dev.token(RESOURCE).scope("notes:read").sign();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            runtime,
            dev,
            auth,
            token,
        }
    })
}

struct Outcome {
    status: u16,
    /// The `error` auth-param of the challenge, if any (RFC 9110 quoted-string, unescaped).
    error: Option<String>,
    kind: Option<AuthErrorKind>,
    inner_calls: usize,
    principal_seen: bool,
}

/// Sends `req` through the stack and summarizes the response.
fn send(req: Request<Full<Bytes>>) -> Outcome {
    let fx = fixture();
    let calls = Arc::new(AtomicUsize::new(0));
    let principal_seen = Arc::new(AtomicUsize::new(0));
    let (c, p) = (calls.clone(), principal_seen.clone());
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        c.fetch_add(1, Ordering::SeqCst);
        if req.extensions().get::<Principal>().is_some() {
            p.fetch_add(1, Ordering::SeqCst);
        }
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"inner reached"),
        ))))
    });
    let svc = fx.auth.layer().layer(inner);
    let resp = fx.runtime.block_on(svc.oneshot(req)).unwrap();
    let error = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(challenge_error);
    Outcome {
        status: resp.status().as_u16(),
        error,
        kind: resp.extensions().get::<AuthError>().map(AuthError::kind),
        inner_calls: calls.load(Ordering::SeqCst),
        principal_seen: principal_seen.load(Ordering::SeqCst) > 0,
    }
}

/// The value of the `error` auth-param of a Bearer challenge. Walks the `name="quoted"` pairs
/// honouring backslash escapes, so an `error` inside another parameter's value never matches.
fn challenge_error(value: &str) -> Option<String> {
    let rest = value.strip_prefix("Bearer ")?;
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            return None;
        }
        let mut out = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        if name.trim() == "error" {
            return Some(out);
        }
    }
}

fn request(uri: Uri, authorization: Option<HeaderValue>) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method("GET").uri(uri);
    if let Some(value) = authorization {
        req = req.header(AUTHORIZATION, value);
    }
    req.body(Full::default()).unwrap()
}

fn bearer(token: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("Bearer {token}")).ok()
}

/// The invariants of a refusal: not reached, not 5xx, and a 4xx carrying an `AuthError`.
fn assert_refused(out: &Outcome) -> Result<(), TestCaseError> {
    prop_assert!(out.status < 500, "5xx: {}", out.status);
    prop_assert_ne!(out.status, 200);
    prop_assert_eq!(out.inner_calls, 0, "inner service reached");
    prop_assert!(out.kind.is_some(), "no AuthError on a refusal");
    Ok(())
}

/// Bytes that form a valid `HeaderValue`: visible ASCII, SP, HTAB and obs-text.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => 0x20u8..0x7f,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    prop::collection::vec(byte, 0..200)
}

/// Query strings from URI-legal characters, biased towards `access_token`.
fn query() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        3 => "[A-Za-z0-9._~%=&+-]{0,20}",
        1 => Just("access_token=x".to_owned()),
        1 => Just("access%5Ftoken".to_owned()),
        1 => Just("&access_token".to_owned()),
    ];
    prop::collection::vec(part, 0..4).prop_map(|v| v.concat())
}

fn b64url_segment(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(B64URL), 1..max)
        .prop_map(|v| String::from_utf8(v).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// (a) Any header value with any query: never a panic or 5xx, never the inner service.
    #[test]
    fn arbitrary_authorization_and_query_are_refused(
        value in header_bytes(),
        q in query(),
        with_header in any::<bool>(),
    ) {
        let value = HeaderValue::from_bytes(&value).expect("strategy yields valid header bytes");
        let uri: Uri = match format!("/mcp?{q}").parse() {
            Ok(uri) => uri,
            Err(_) => return Err(TestCaseError::reject("not a URI")),
        };
        let out = send(request(uri, with_header.then_some(value)));
        assert_refused(&out)?;
        prop_assert!(matches!(out.status, 400 | 401), "status {}", out.status);
    }

    /// (a) A genuine token with any query: 200 with a `Principal` unless the query carries a
    /// token (then 400 `invalid_request`, inner untouched).
    #[test]
    fn valid_token_with_arbitrary_query(q in query()) {
        let fx = fixture();
        let uri: Uri = match format!("/mcp?{q}").parse() {
            Ok(uri) => uri,
            Err(_) => return Err(TestCaseError::reject("not a URI")),
        };
        let token_in_query = url::form_urlencoded::parse(q.as_bytes())
            .any(|(name, _)| name == "access_token");
        let out = send(request(uri, bearer(&fx.token)));
        if token_in_query {
            assert_refused(&out)?;
            prop_assert_eq!(out.status, 400);
            prop_assert_eq!(out.error.as_deref(), Some("invalid_request"));
            prop_assert_eq!(out.kind, Some(AuthErrorKind::TokenInQuery));
        } else {
            prop_assert_eq!(out.status, 200);
            prop_assert_eq!(out.inner_calls, 1);
            prop_assert!(out.principal_seen);
            prop_assert_eq!(out.kind, None);
        }
    }

    /// (b) Arbitrary strings as bearer tokens: 401 `invalid_token`, or 400 `invalid_request`
    /// when the header itself is malformed.
    #[test]
    fn arbitrary_string_tokens_are_refused(token in "\\PC{0,200}") {
        let Some(value) = bearer(&token) else {
            return Err(TestCaseError::reject("not a header value"));
        };
        let out = send(request(Uri::from_static("/mcp"), Some(value)));
        assert_refused(&out)?;
        match out.status {
            401 => prop_assert_eq!(out.error.as_deref(), Some("invalid_token")),
            400 => prop_assert_eq!(out.error.as_deref(), Some("invalid_request")),
            other => prop_assert!(false, "status {other}"),
        }
    }

    /// (b) Three base64url segments: always 401 `invalid_token`.
    #[test]
    fn arbitrary_three_segment_tokens_are_invalid(
        h in b64url_segment(120),
        p in b64url_segment(300),
        s in b64url_segment(120),
    ) {
        let out = send(request(Uri::from_static("/mcp"), bearer(&format!("{h}.{p}.{s}"))));
        assert_refused(&out)?;
        prop_assert_eq!(out.status, 401);
        prop_assert_eq!(out.error.as_deref(), Some("invalid_token"));
    }

    /// (b) Well-formed JOSE headers (right `typ`, `alg`, `kid`) over arbitrary payload and
    /// signature bytes: always 401 `invalid_token`.
    #[test]
    fn arbitrary_payload_and_signature_under_a_real_header(
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 1..200),
            any::<String>().prop_map(|s| serde_json::json!({"sub": s}).to_string().into_bytes()),
            prop::collection::btree_map("[a-z_]{1,8}", any::<i64>(), 0..8)
                .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        ],
        signature in prop::collection::vec(any::<u8>(), 1..100),
    ) {
        let fx = fixture();
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": fx.dev.kid()});
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&signature),
        );
        let out = send(request(Uri::from_static("/mcp"), bearer(&token)));
        assert_refused(&out)?;
        prop_assert_eq!(out.status, 401);
        prop_assert_eq!(out.error.as_deref(), Some("invalid_token"));
    }

    /// (c) Changing one character of any segment of a valid token never verifies.
    #[test]
    fn one_character_mutation_never_verifies(
        segment in 0usize..3,
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(B64URL),
    ) {
        let fx = fixture();
        let mut parts: Vec<String> = fx.token.split('.').map(str::to_owned).collect();
        let target = &mut parts[segment];
        let i = position.index(target.len());
        let original = target.as_bytes()[i];
        if original == replacement {
            return Err(TestCaseError::reject("identity mutation"));
        }
        target.replace_range(i..=i, &(replacement as char).to_string());
        let mutated = parts.join(".");
        prop_assert_ne!(&mutated, &fx.token);
        let out = send(request(Uri::from_static("/mcp"), bearer(&mutated)));
        assert_refused(&out)?;
        prop_assert_eq!(out.status, 401);
        prop_assert_eq!(out.error.as_deref(), Some("invalid_token"));
    }
}

/// The comparison point of (c): the unmutated token verifies.
#[test]
fn the_unmutated_token_verifies() {
    let fx = fixture();
    let out = send(request(Uri::from_static("/mcp"), bearer(&fx.token)));
    assert_eq!(out.status, 200);
    assert_eq!(out.inner_calls, 1);
    assert!(out.principal_seen);
}

#[test]
fn challenge_error_reads_only_the_error_param() {
    assert_eq!(
        challenge_error(r#"Bearer error_description="error=\"x\"", error="invalid_token""#)
            .as_deref(),
        Some("invalid_token")
    );
    assert_eq!(
        challenge_error(r#"Bearer scope="a", resource_metadata="https://x""#),
        None
    );
}
