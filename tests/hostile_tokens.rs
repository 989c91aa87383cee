//! Hostile requests driven through the real stack (`McpAuth::layer()` around a trivial inner
//! service), in process. Every row states the exact status, the exact `error` auth-param of the
//! challenge and the `AuthErrorKind` attached to the response; every refused row also checks the
//! invariants every rejection must keep (inner service untouched, no 5xx, a well-formed Bearer
//! challenge naming the metadata URL, a JSON body, `no-store`, and no echo of the token).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Map, Value, json};
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::keys::{KeyError, KeySet, KeySource, RefreshReason};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{
    AuthError, AuthErrorKind, IssuerConfig, McpAuth, Principal, SigningAlgorithm,
};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// What the inner service saw.
#[derive(Default)]
struct Seen {
    calls: usize,
    principal: Option<Principal>,
    authorization_present: bool,
}

struct Outcome {
    status: u16,
    headers: http::HeaderMap,
    error: Option<AuthError>,
    body: Bytes,
    seen: Seen,
}

/// Sends `req` through `auth.layer()` around an inner service that answers 200 "inner reached"
/// and records what it saw.
async fn send(auth: &McpAuth, req: Request<Full<Bytes>>) -> Outcome {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let mut s = record.lock().unwrap();
        s.calls += 1;
        s.principal = req.extensions().get::<Principal>().cloned();
        s.authorization_present = req.headers().contains_key(AUTHORIZATION);
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"inner reached"),
        ))))
    });
    let resp = auth.layer().layer(inner).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    Outcome {
        status: parts.status.as_u16(),
        error: parts.extensions.get::<AuthError>().cloned(),
        headers: parts.headers,
        body,
        seen,
    }
}

/// Parses an RFC 9110 challenge: `scheme SP auth-param *( OWS "," OWS auth-param )`, where each
/// auth-param here is `token "=" quoted-string` (backslash escapes honoured). Refuses anything
/// else, and duplicate parameter names.
fn parse_challenge(value: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| format!("no space after scheme in {value:?}"))?;
    let mut params = BTreeMap::new();
    let bytes = rest.as_bytes();
    let mut i = 0;
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    loop {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && is_tchar(bytes[i]) {
            i += 1;
        }
        if start == i || bytes.get(i) != Some(&b'=') {
            return Err(format!("bad auth-param name at {start} in {value:?}"));
        }
        let name = rest[start..i].to_ascii_lowercase();
        i += 1;
        if bytes.get(i) != Some(&b'"') {
            return Err(format!(
                "auth-param {name} is not a quoted-string in {value:?}"
            ));
        }
        i += 1;
        let mut out = String::new();
        loop {
            match bytes.get(i) {
                None => return Err(format!("unterminated quoted-string in {value:?}")),
                Some(b'"') => {
                    i += 1;
                    break;
                }
                Some(b'\\') => {
                    let c = *bytes
                        .get(i + 1)
                        .ok_or_else(|| format!("dangling escape in {value:?}"))?;
                    out.push(c as char);
                    i += 2;
                }
                Some(&c) => {
                    if !(c == b'\t' || (b' '..=b'~').contains(&c)) {
                        return Err(format!("control or non-ASCII byte in {value:?}"));
                    }
                    out.push(c as char);
                    i += 1;
                }
            }
        }
        if params.insert(name.clone(), out).is_some() {
            return Err(format!("duplicate auth-param {name} in {value:?}"));
        }
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        match bytes.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(format!("expected ',' at {i} in {value:?}")),
        }
    }
    Ok((scheme.to_owned(), params))
}

#[test]
fn challenge_parser_handles_escapes_and_refuses_junk() {
    let (scheme, p) =
        parse_challenge(r#"Bearer error="invalid_token", error_description="a \"b\" \\ c""#)
            .unwrap();
    assert_eq!(scheme, "Bearer");
    assert_eq!(p["error"], "invalid_token");
    assert_eq!(p["error_description"], r#"a "b" \ c"#);
    assert!(parse_challenge(r#"Bearer error=invalid_token"#).is_err());
    assert!(parse_challenge(r#"Bearer error="a", error="b""#).is_err());
    assert!(parse_challenge(r#"Bearer error="a" scope="b""#).is_err());
    assert!(parse_challenge(r#"Bearer error="a"#).is_err());
}

/// The pieces of a presented credential that must never be reflected: the whole value and each
/// `.`-separated segment long enough not to match by chance.
fn secret_pieces(secret: &str) -> Vec<&str> {
    let mut pieces = vec![secret];
    pieces.extend(secret.split('.'));
    pieces.retain(|p| p.len() >= 8);
    pieces
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// HMAC-SHA-256 (RFC 2104) on the crate's own `sha2` dependency: what an attacker computes when
/// signing an `HS256` token with the server's public key as the "secret".
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[test]
fn hmac_matches_rfc4231_test_case_2() {
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 from the inner service, with a `Principal` and without `Authorization`.
    Accepted,
    /// Refused with this status, this `error` auth-param (or none), and this kind.
    Refused(u16, Option<&'static str>, AuthErrorKind),
}

use AuthErrorKind as K;
use Expect::Accepted;

const fn invalid_token(kind: AuthErrorKind) -> Expect {
    Expect::Refused(401, Some("invalid_token"), kind)
}
const fn invalid_request(kind: AuthErrorKind) -> Expect {
    Expect::Refused(400, Some("invalid_request"), kind)
}
const fn no_error_401(kind: AuthErrorKind) -> Expect {
    Expect::Refused(401, None, kind)
}

struct Row {
    name: String,
    request: Request<Full<Bytes>>,
    /// Credentials the client presented (checked for reflection).
    secrets: Vec<String>,
    expect: Expect,
}

fn get(uri: &str) -> http::request::Builder {
    Request::builder().method(Method::GET).uri(uri)
}

fn with_auth(value: HeaderValue) -> Request<Full<Bytes>> {
    get("/mcp")
        .header(AUTHORIZATION, value)
        .body(Full::default())
        .unwrap()
}

/// Collects rows with terse constructors.
struct Table(Vec<Row>);

impl Table {
    /// `Authorization: Bearer <token>`.
    fn bearer(&mut self, name: impl Into<String>, token: impl Into<String>, expect: Expect) {
        let token = token.into();
        let value = HeaderValue::try_from(format!("Bearer {token}")).unwrap();
        self.raw(name, with_auth(value), vec![token], expect);
    }

    fn raw(
        &mut self,
        name: impl Into<String>,
        request: Request<Full<Bytes>>,
        secrets: Vec<String>,
        expect: Expect,
    ) {
        self.0.push(Row {
            name: name.into(),
            request,
            secrets,
            expect,
        });
    }

    /// Sends every row through `auth` and fails with every mismatch, each named by its row.
    async fn assert_all(self, auth: &McpAuth) {
        let mut failures = Vec::new();
        for row in self.0 {
            let name = row.name.clone();
            let problems = check(auth, row).await;
            failures.extend(problems.into_iter().map(|p| format!("[{name}] {p}")));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// A standard, valid claim set from `dev`.
fn claims(dev: &DevIssuer) -> Map<String, Value> {
    let now = now();
    let mut m = Map::new();
    m.insert("iss".into(), dev.issuer().into());
    m.insert("aud".into(), RESOURCE.into());
    m.insert("sub".into(), "dev-user".into());
    m.insert("client_id".into(), "dev-client".into());
    m.insert("iat".into(), now.into());
    m.insert("exp".into(), (now + 600).into());
    m.insert("jti".into(), "jti-0123456789".into());
    m
}

fn header(dev: &DevIssuer) -> Value {
    json!({"alg": "ES256", "typ": "at+jwt", "kid": dev.kid()})
}

/// Splits a compact token into its three segments.
fn segments(token: &str) -> [String; 3] {
    let v: Vec<&str> = token.split('.').collect();
    assert_eq!(v.len(), 3);
    [v[0].to_owned(), v[1].to_owned(), v[2].to_owned()]
}

fn with_signature(token: &str, sig: &str) -> String {
    let [h, p, _] = segments(token);
    format!("{h}.{p}.{sig}")
}

/// An HS256 token over `dev`'s standard claims, MACed with `secret`.
fn hmac_token(dev: &DevIssuer, header: Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string()),
        b64(Value::Object(claims(dev)).to_string())
    );
    let mac = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", b64(mac))
}

fn rows(dev: &DevIssuer, attacker: &DevIssuer) -> Vec<Row> {
    let mut t = Table(Vec::new());
    let now = now();
    let valid = || dev.token(RESOURCE).scope("notes:read");
    let payload = Value::Object(claims(dev)).to_string();
    let good = valid().sign();

    // ---- controls: accepted -----------------------------------------------------------------
    t.bearer("control: default token", good.clone(), Accepted);
    t.bearer(
        "control: typ application/at+jwt",
        valid().header("typ", "application/at+jwt").sign(),
        Accepted,
    );
    t.bearer(
        "control: typ AT+JWT (media types are case-insensitive)",
        valid().header("typ", "AT+JWT").sign(),
        Accepted,
    );
    t.bearer(
        "control: aud array containing the resource",
        valid()
            .claim("aud", json!(["https://other.example.com", RESOURCE]))
            .sign(),
        Accepted,
    );
    t.bearer(
        "control: no kid, exactly one ES256 key",
        valid().without_header("kid").sign(),
        Accepted,
    );
    t.raw(
        "control: lowercase bearer scheme",
        with_auth(HeaderValue::try_from(format!("bearer {good}")).unwrap()),
        vec![good.clone()],
        Accepted,
    );
    t.raw(
        "control: BEARER scheme, several spaces",
        with_auth(HeaderValue::try_from(format!("BEARER   {good}")).unwrap()),
        vec![good.clone()],
        Accepted,
    );
    t.bearer(
        "control: unknown header members (jku, x5u) are ignored, not followed",
        valid()
            .header("jku", "https://attacker.example/jwks")
            .header("x5u", "https://attacker.example/cert")
            .sign(),
        Accepted,
    );

    // ---- alg ----------------------------------------------------------------------------------
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "at+jwt", "kid": dev.kid()}).to_string();
        t.bearer(
            format!("alg {alg}, empty signature"),
            format!("{}.{}.", b64(&h), b64(&payload)),
            invalid_token(K::AlgorithmNotAllowed),
        );
        t.bearer(
            format!("alg {alg}, real ES256 signature"),
            dev.sign_raw(h.as_bytes(), payload.as_bytes()),
            invalid_token(K::AlgorithmNotAllowed),
        );
    }
    t.bearer(
        "alg none, no kid, no typ, empty signature",
        format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&payload)),
        invalid_token(K::WrongTokenType),
    );
    for alg in ["es256", "ES384", "RS256", "PS256", "EdDSA", "ES256 ", ""] {
        t.bearer(
            format!("alg {alg:?} not allowed"),
            valid().header("alg", alg).sign(),
            invalid_token(K::AlgorithmNotAllowed),
        );
    }
    t.bearer(
        "alg missing",
        valid().without_header("alg").sign(),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "alg null",
        valid().header("alg", Value::Null).sign(),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "alg as array",
        valid().header("alg", json!(["ES256"])).sign(),
        invalid_token(K::MalformedToken),
    );

    // ---- HS256 key confusion -----------------------------------------------------------------
    let hs_header = json!({"alg": "HS256", "typ": "at+jwt", "kid": dev.kid()});
    t.bearer(
        "HS256 MACed with the public key PEM",
        hmac_token(dev, hs_header.clone(), dev.public_key_pem().as_bytes()),
        invalid_token(K::AlgorithmNotAllowed),
    );
    t.bearer(
        "HS256 MACed with the public key PEM, no kid",
        hmac_token(
            dev,
            json!({"alg": "HS256", "typ": "at+jwt"}),
            dev.public_key_pem().as_bytes(),
        ),
        invalid_token(K::AlgorithmNotAllowed),
    );
    t.bearer(
        "HS256 MACed with the public JWK JSON",
        hmac_token(
            dev,
            hs_header.clone(),
            dev.public_jwk().to_string().as_bytes(),
        ),
        invalid_token(K::AlgorithmNotAllowed),
    );
    t.bearer(
        "HS256 MACed with the JWK Set document",
        hmac_token(dev, hs_header.clone(), dev.jwks_json().as_bytes()),
        invalid_token(K::AlgorithmNotAllowed),
    );
    t.bearer(
        "HS512 header, MACed with the public key PEM",
        hmac_token(
            dev,
            json!({"alg": "HS512", "typ": "at+jwt", "kid": dev.kid()}),
            dev.public_key_pem().as_bytes(),
        ),
        invalid_token(K::AlgorithmNotAllowed),
    );

    // ---- embedded / remote key headers (attacker-signed) --------------------------------------
    let forged = || attacker.token(RESOURCE).scope("notes:read");
    t.bearer(
        "jwk header with the attacker's key",
        forged().header("jwk", attacker.public_jwk()).sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "jwk header with the attacker's key, victim kid",
        forged()
            .header("kid", dev.kid())
            .header("jwk", attacker.public_jwk())
            .sign(),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "jku header to the attacker's JWKS",
        forged()
            .header("jku", "https://attacker.example/jwks.json")
            .sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "jku header, victim kid",
        forged()
            .header("kid", dev.kid())
            .header("jku", "https://attacker.example/jwks.json")
            .sign(),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "x5u header",
        forged()
            .header("x5u", "https://attacker.example/cert.pem")
            .sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "x5c header, victim kid",
        forged()
            .header("kid", dev.kid())
            .header("x5c", json!([STANDARD_NO_PAD.encode(b"not really a cert")]))
            .sign(),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "x5c header, no kid",
        forged()
            .without_header("kid")
            .header("x5c", json!([STANDARD_NO_PAD.encode(b"not really a cert")]))
            .sign(),
        invalid_token(K::InvalidSignature),
    );

    // ---- kid -------------------------------------------------------------------------------------
    t.bearer(
        "unknown kid",
        valid().header("kid", "no-such-key").sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "empty kid",
        valid().header("kid", "").sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "oversized kid (300 chars)",
        valid().header("kid", "k".repeat(300)).sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "oversized kid that starts with the real kid",
        valid()
            .header("kid", format!("{}{}", dev.kid(), "k".repeat(300)))
            .sign(),
        invalid_token(K::UnknownKey),
    );
    t.bearer(
        "kid as number",
        valid().header("kid", 1).sign(),
        invalid_token(K::MalformedToken),
    );

    // ---- typ -------------------------------------------------------------------------------------
    for typ in [
        "JWT",
        "jwt",
        "application/jwt",
        "dpop+jwt",
        "id_token",
        "at+jwt ",
        "",
    ] {
        t.bearer(
            format!("typ {typ:?}"),
            valid().header("typ", typ).sign(),
            invalid_token(K::WrongTokenType),
        );
    }
    t.bearer(
        "typ missing",
        valid().without_header("typ").sign(),
        invalid_token(K::WrongTokenType),
    );
    t.bearer(
        "typ as number",
        valid().header("typ", 9068).sign(),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "ID-token-shaped (typ JWT, aud client id, nonce)",
        dev.token("dev-client")
            .header("typ", "JWT")
            .claim("nonce", "n-0S6_WzA2Mj")
            .claim("auth_time", now)
            .sign(),
        invalid_token(K::WrongTokenType),
    );
    t.bearer(
        "ID-token-shaped but typed at+jwt (aud client id)",
        dev.token("dev-client")
            .claim("nonce", "n-0S6_WzA2Mj")
            .sign(),
        invalid_token(K::WrongAudience),
    );

    // ---- time --------------------------------------------------------------------------------
    t.bearer(
        "expired",
        valid()
            .claim("iat", now - 7200)
            .claim("exp", now - 3600)
            .sign(),
        invalid_token(K::Expired),
    );
    t.bearer(
        "expired beyond leeway (exp = now - 120)",
        valid()
            .claim("iat", now - 600)
            .claim("exp", now - 120)
            .sign(),
        invalid_token(K::Expired),
    );
    t.bearer(
        "exp = 0",
        valid().claim("iat", 0).claim("exp", 0).sign(),
        invalid_token(K::Expired),
    );
    t.bearer(
        "nbf in the future",
        valid().claim("nbf", now + 3600).sign(),
        invalid_token(K::NotYetValid),
    );
    t.bearer(
        "iat in the future",
        valid()
            .claim("iat", now + 3600)
            .claim("exp", now + 7200)
            .sign(),
        invalid_token(K::IssuedInFuture),
    );

    // ---- aud -------------------------------------------------------------------------------------
    for (name, aud) in [
        ("wrong aud", json!("https://other.example.com/mcp")),
        ("aud with trailing slash", json!(format!("{RESOURCE}/"))),
        (
            "aud with upper-case host",
            json!("https://MCP.EXAMPLE.COM/mcp"),
        ),
        ("aud is the origin only", json!("https://mcp.example.com")),
        ("aud is the metadata URL", json!(METADATA_URL)),
        ("aud empty array", json!([])),
        (
            "aud array without the resource",
            json!(["https://a.example.com", "https://b.example.com"]),
        ),
        ("aud empty string", json!("")),
    ] {
        t.bearer(
            name,
            valid().claim("aud", aud).sign(),
            invalid_token(K::WrongAudience),
        );
    }
    t.bearer(
        "aud missing",
        valid().without_claim("aud").sign(),
        invalid_token(K::MissingClaim),
    );
    t.bearer(
        "aud as number",
        valid().claim("aud", 42).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "aud array with a number",
        valid().claim("aud", json!([RESOURCE, 1])).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "aud as object",
        valid().claim("aud", json!({"aud": RESOURCE})).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "aud null",
        valid().claim("aud", Value::Null).sign(),
        invalid_token(K::InvalidClaim),
    );

    // ---- iss -------------------------------------------------------------------------------------
    t.bearer(
        "wrong iss",
        valid().claim("iss", "https://evil.example.com").sign(),
        invalid_token(K::UntrustedIssuer),
    );
    t.bearer(
        "iss with a trailing slash",
        valid().claim("iss", format!("{ISSUER}/")).sign(),
        invalid_token(K::UntrustedIssuer),
    );
    t.bearer(
        "iss differing in case",
        valid().claim("iss", "https://AS.example.com").sign(),
        invalid_token(K::UntrustedIssuer),
    );
    t.bearer(
        "iss missing",
        valid().without_claim("iss").sign(),
        invalid_token(K::MissingClaim),
    );
    t.bearer(
        "iss as array",
        valid().claim("iss", json!([ISSUER])).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "attacker key, victim issuer, attacker kid",
        forged().sign(),
        invalid_token(K::UnknownKey),
    );

    // ---- NumericDate types -----------------------------------------------------------------
    for (name, exp) in [
        ("exp as string", json!((now + 600).to_string())),
        ("exp null", Value::Null),
        ("exp negative", json!(-1)),
        ("exp as bool", json!(true)),
        ("exp 1e300", json!(1e300)),
        ("exp as array", json!([now + 600])),
    ] {
        t.bearer(
            name,
            valid().claim("exp", exp).sign(),
            invalid_token(K::InvalidClaim),
        );
    }
    t.bearer(
        "nbf as string",
        valid().claim("nbf", "0").sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "iat negative",
        valid().claim("iat", -5).sign(),
        invalid_token(K::InvalidClaim),
    );

    // ---- required claims ---------------------------------------------------------------------
    for claim in ["sub", "client_id", "iat", "jti", "exp"] {
        t.bearer(
            format!("{claim} missing"),
            valid().without_claim(claim).sign(),
            invalid_token(K::MissingClaim),
        );
    }

    // ---- claim types -----------------------------------------------------------------------
    for (name, claim, value) in [
        ("sub as number", "sub", json!(12345)),
        ("sub null", "sub", Value::Null),
        ("client_id as object", "client_id", json!({"id": "x"})),
        ("jti as number", "jti", json!(7)),
        ("scope as array", "scope", json!(["notes:read"])),
        ("scp as number", "scp", json!(1)),
        ("act as string", "act", json!("agent")),
        ("act without sub", "act", json!({"client_id": "agent"})),
    ] {
        t.bearer(
            name,
            valid().claim(claim, value).sign(),
            invalid_token(K::InvalidClaim),
        );
    }

    // ---- sender-constrained ----------------------------------------------------------------
    t.bearer(
        "cnf.jkt presented as Bearer",
        valid()
            .claim(
                "cnf",
                json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            )
            .sign(),
        invalid_token(K::MissingProofOfPossession),
    );
    t.bearer(
        "cnf.x5t#S256 presented without its client certificate",
        valid()
            .claim(
                "cnf",
                json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            )
            .sign(),
        invalid_token(K::CertificateMismatch),
    );
    t.bearer(
        "cnf null presented as Bearer",
        valid().claim("cnf", Value::Null).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "cnf with an unsupported confirmation method",
        valid().claim("cnf", json!({"jwk": {"kty": "EC"}})).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "cnf empty object",
        valid().claim("cnf", json!({})).sign(),
        invalid_token(K::InvalidClaim),
    );
    t.bearer(
        "DPoP-bound and certificate-bound, presented as Bearer",
        valid()
            .claim(
                "cnf",
                json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
                       "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            )
            .sign(),
        invalid_token(K::CertificateMismatch),
    );

    // ---- duplicate members -----------------------------------------------------------------
    let kid = dev.kid();
    t.bearer(
        "duplicate alg in header (ES256 then none)",
        dev.sign_raw(
            format!(r#"{{"alg":"ES256","alg":"none","typ":"at+jwt","kid":"{kid}"}}"#).as_bytes(),
            payload.as_bytes(),
        ),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "duplicate alg in header (none then ES256)",
        dev.sign_raw(
            format!(r#"{{"alg":"none","alg":"ES256","typ":"at+jwt","kid":"{kid}"}}"#).as_bytes(),
            payload.as_bytes(),
        ),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "duplicate alg, second spelled with a JSON escape",
        dev.sign_raw(
            format!(r#"{{"alg":"ES256","\u0061lg":"none","typ":"at+jwt","kid":"{kid}"}}"#)
                .as_bytes(),
            payload.as_bytes(),
        ),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "duplicate typ in header",
        dev.sign_raw(
            format!(r#"{{"alg":"ES256","typ":"JWT","typ":"at+jwt","kid":"{kid}"}}"#).as_bytes(),
            payload.as_bytes(),
        ),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "duplicate kid in header",
        dev.sign_raw(
            format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"other","kid":"{kid}"}}"#).as_bytes(),
            payload.as_bytes(),
        ),
        invalid_token(K::MalformedToken),
    );
    let dup_claims = |dup: &str| {
        let mut body = Value::Object(claims(dev)).to_string();
        body.pop();
        format!("{body},{dup}}}")
    };
    let hdr = header(dev).to_string();
    for (name, dup) in [
        ("duplicate aud claim", r#""aud":"https://evil.example.com""#),
        ("duplicate iss claim", r#""iss":"https://evil.example.com""#),
        ("duplicate sub claim", r#""sub":"admin""#),
        ("duplicate exp claim", r#""exp":99999999999"#),
        (
            "duplicate aud, escaped key",
            r#""\u0061ud":"https://evil.example.com""#,
        ),
    ] {
        t.bearer(
            name,
            dev.sign_raw(hdr.as_bytes(), dup_claims(dup).as_bytes()),
            invalid_token(K::InvalidClaim),
        );
    }

    // ---- crit / JWE-like / b64 ---------------------------------------------------------------
    t.bearer(
        "unknown crit",
        valid()
            .header("crit", json!(["urn:example:x"]))
            .header("urn:example:x", true)
            .sign(),
        invalid_token(K::UnsupportedCriticalHeader),
    );
    t.bearer(
        "empty crit",
        valid().header("crit", json!([])).sign(),
        invalid_token(K::UnsupportedCriticalHeader),
    );
    t.bearer(
        "crit listing exp",
        valid().header("crit", json!(["exp"])).sign(),
        invalid_token(K::UnsupportedCriticalHeader),
    );
    t.bearer(
        "enc header (JWE-like)",
        valid().header("enc", "A256GCM").sign(),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "zip header",
        valid().header("zip", "DEF").sign(),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "b64 false (RFC 7797)",
        valid()
            .header("b64", false)
            .header("crit", json!(["b64"]))
            .sign(),
        invalid_token(K::MalformedToken),
    );
    let [gh, gp, gs] = segments(&good);
    t.bearer(
        "JWE compact serialization (5 segments)",
        format!(
            "{}.{}.{}.{}.{}",
            b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM","typ":"at+jwt"}"#),
            b64([1u8; 32]),
            b64([2u8; 12]),
            b64([3u8; 40]),
            b64([4u8; 16])
        ),
        invalid_token(K::MalformedToken),
    );

    // ---- compact serialization shape ---------------------------------------------------------
    t.bearer(
        "truncated: 2 segments",
        format!("{gh}.{gp}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "truncated: 1 segment",
        gh.clone(),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "4 segments",
        format!("{good}.{gs}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "4 segments, trailing dot",
        format!("{good}."),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "5 segments",
        format!("{good}.{gp}.{gs}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer("empty segments ..", "..", invalid_token(K::MalformedToken));
    t.bearer(
        "empty payload segment",
        format!("{gh}..{gs}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "empty header segment",
        format!(".{gp}.{gs}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "empty signature segment",
        format!("{gh}.{gp}."),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "padding = at the end (token68 allows it)",
        format!("{good}=="),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "padding = inside the header segment (not token68)",
        format!("{gh}=.{gp}.{gs}"),
        invalid_request(K::MalformedAuthorization),
    );
    t.bearer(
        "standard base64 alphabet (/ and +) in the signature",
        with_signature(
            &good,
            &STANDARD_NO_PAD.encode(
                [0xffu8; 63]
                    .iter()
                    .chain(&[0xfb])
                    .copied()
                    .collect::<Vec<u8>>(),
            ),
        ),
        invalid_token(K::MalformedToken),
    );
    let std_payload = {
        // A run of '?' (0x3f) encodes to "Pz8/" in the standard alphabet at some alignment.
        let mut c = claims(dev);
        c.insert("x".into(), "??????".into());
        STANDARD_NO_PAD.encode(Value::Object(c).to_string())
    };
    assert!(std_payload.contains('/'));
    t.bearer(
        "standard base64 alphabet in the payload",
        format!("{gh}.{std_payload}.{gs}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "non-base64 token68 byte (~) in the payload",
        format!("{gh}.{gp}~.{gs}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "non-token68 byte (!) in the signature",
        format!("{good}!"),
        invalid_request(K::MalformedAuthorization),
    );
    t.bearer(
        "non-token68 byte (\") in the token",
        format!("{gh}\".{gp}.{gs}"),
        invalid_request(K::MalformedAuthorization),
    );
    t.bearer(
        "non-canonical base64 (trailing bits) in the signature",
        {
            // 64 bytes -> 86 chars, the last carrying 2 unused bits; set them.
            let mut sig = gs.clone();
            let last = sig.pop().unwrap();
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let idx = alphabet.iter().position(|c| *c as char == last).unwrap();
            sig.push(alphabet[idx ^ 1] as char);
            with_signature(&good, &sig)
        },
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "header is a JSON array",
        dev.sign_raw(br#"["ES256","at+jwt"]"#, payload.as_bytes()),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "header is JSON null",
        dev.sign_raw(b"null", payload.as_bytes()),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "header is not JSON",
        dev.sign_raw(b"alg=ES256", payload.as_bytes()),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "header with trailing garbage",
        dev.sign_raw(format!("{hdr}x").as_bytes(), payload.as_bytes()),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "payload is not JSON",
        dev.sign_raw(hdr.as_bytes(), b"hello world"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "payload is a JSON array",
        dev.sign_raw(hdr.as_bytes(), format!("[{payload}]").as_bytes()),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "payload is a JSON string",
        dev.sign_raw(hdr.as_bytes(), b"\"claims\""),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "payload with trailing garbage",
        dev.sign_raw(hdr.as_bytes(), format!("{payload}{{}}").as_bytes()),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "payload with invalid UTF-8",
        dev.sign_raw(hdr.as_bytes(), b"{\"sub\":\"\xff\xfe\"}"),
        invalid_token(K::MalformedToken),
    );
    t.bearer(
        "all-zero 64-byte ES256 signature",
        with_signature(&good, &b64([0u8; 64])),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "signature of wrong length (63 bytes)",
        with_signature(&good, &b64(&URL_SAFE_NO_PAD.decode(&gs).unwrap()[..63])),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "signature of wrong length (65 bytes)",
        with_signature(
            &good,
            &b64([URL_SAFE_NO_PAD.decode(&gs).unwrap(), vec![0]].concat()),
        ),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "signature of one byte",
        with_signature(&good, "AA"),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "signature of another valid token (same key)",
        with_signature(&valid().subject("admin").sign(), &gs),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "signature by the attacker over the victim-kid header",
        forged().header("kid", dev.kid()).sign(),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "token longer than 8 KiB, header within limit",
        "a".repeat(8193),
        invalid_token(K::TokenTooLarge),
    );
    t.bearer(
        "Authorization header over its limit",
        "a".repeat(8202),
        invalid_request(K::MalformedAuthorization),
    );

    // ---- transport ---------------------------------------------------------------------------
    t.raw(
        "no Authorization header",
        get("/mcp").body(Full::default()).unwrap(),
        vec![],
        no_error_401(K::MissingCredentials),
    );
    t.raw(
        "two Authorization headers (both valid)",
        {
            let other = valid().sign();
            get("/mcp")
                .header(AUTHORIZATION, format!("Bearer {good}"))
                .header(AUTHORIZATION, format!("Bearer {other}"))
                .body(Full::default())
                .unwrap()
        },
        vec![good.clone()],
        invalid_request(K::MultipleCredentials),
    );
    t.raw(
        "Bearer and DPoP Authorization headers",
        get("/mcp")
            .header(AUTHORIZATION, format!("Bearer {good}"))
            .header(AUTHORIZATION, format!("DPoP {good}"))
            .body(Full::default())
            .unwrap(),
        vec![good.clone()],
        invalid_request(K::MultipleCredentials),
    );
    t.raw(
        "access_token in the query, with a header",
        get(&format!("/mcp?access_token={good}"))
            .header(AUTHORIZATION, format!("Bearer {good}"))
            .body(Full::default())
            .unwrap(),
        vec![good.clone()],
        invalid_request(K::TokenInQuery),
    );
    t.raw(
        "access_token in the query, no header",
        get(&format!("/mcp?x=1&access_token={good}"))
            .body(Full::default())
            .unwrap(),
        vec![good.clone()],
        invalid_request(K::TokenInQuery),
    );
    t.raw(
        "percent-encoded access_token name in the query",
        get(&format!("/mcp?access%5Ftoken={good}"))
            .body(Full::default())
            .unwrap(),
        vec![good.clone()],
        invalid_request(K::TokenInQuery),
    );
    t.raw(
        "form-encoded body",
        get("/mcp")
            .header(AUTHORIZATION, format!("Bearer {good}"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("access_token={good}"))))
            .unwrap(),
        vec![good.clone()],
        invalid_request(K::FormEncodedBody),
    );
    t.raw(
        "form-encoded body, odd casing and parameters",
        get("/mcp")
            .header(
                CONTENT_TYPE,
                " Application/X-WWW-Form-URLEncoded ; charset=UTF-8",
            )
            .body(Full::new(Bytes::from(format!("access_token={good}"))))
            .unwrap(),
        vec![good.clone()],
        invalid_request(K::FormEncodedBody),
    );
    t.raw(
        "Basic scheme",
        with_auth(HeaderValue::from_static(
            "Basic ZGV2LWNsaWVudDpzM2NyM3QtcGFzc3dvcmQ=",
        )),
        vec!["ZGV2LWNsaWVudDpzM2NyM3QtcGFzc3dvcmQ=".into()],
        no_error_401(K::MissingCredentials),
    );
    t.raw(
        "unknown scheme carrying a valid token",
        with_auth(HeaderValue::try_from(format!("Token {good}")).unwrap()),
        vec![good.clone()],
        no_error_401(K::MissingCredentials),
    );
    t.raw(
        "Bearer joined to the token by a tab",
        with_auth(HeaderValue::try_from(format!("Bearer\t{good}")).unwrap()),
        vec![good.clone()],
        no_error_401(K::MissingCredentials),
    );
    t.raw(
        "DPoP scheme (no DPoP layer)",
        with_auth(HeaderValue::try_from(format!("DPoP {good}")).unwrap()),
        vec![good.clone()],
        invalid_token(K::DpopNotEnabled),
    );
    t.raw(
        "lowercase dpop scheme (no DPoP layer)",
        with_auth(HeaderValue::try_from(format!("dpop {good}")).unwrap()),
        vec![good.clone()],
        invalid_token(K::DpopNotEnabled),
    );
    t.raw(
        "Bearer with no token",
        with_auth(HeaderValue::from_static("Bearer")),
        vec![],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "Bearer followed by spaces only",
        with_auth(HeaderValue::from_static("Bearer    ")),
        vec![],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "two tokens in one header",
        with_auth(HeaderValue::try_from(format!("Bearer {good} {good}")).unwrap()),
        vec![good.clone()],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "trailing space after the token",
        with_auth(HeaderValue::try_from(format!("Bearer {good} ")).unwrap()),
        vec![good.clone()],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "comma-separated credentials",
        with_auth(HeaderValue::try_from(format!("Bearer {good}, Basic Zm9vOmJhcg==")).unwrap()),
        vec![good.clone()],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "64 KiB Authorization header",
        with_auth(HeaderValue::try_from(format!("Bearer {}", "A".repeat(64 * 1024))).unwrap()),
        vec!["A".repeat(64 * 1024)],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "non-ASCII (UTF-8) byte in a valid token",
        with_auth(
            HeaderValue::from_bytes(format!("Bearer {gh}.{gp}\u{e9}.{gs}").as_bytes()).unwrap(),
        ),
        vec![good.clone()],
        invalid_request(K::MalformedAuthorization),
    );
    t.raw(
        "obs-text byte 0xff after a valid token",
        with_auth(
            HeaderValue::from_bytes(&[format!("Bearer {good}").as_bytes(), b"\xff"].concat())
                .unwrap(),
        ),
        vec![good.clone()],
        invalid_request(K::MalformedAuthorization),
    );
    t.0
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn auth_for(dev: &DevIssuer) -> McpAuth {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .build()
        .unwrap()
}

/// The same stack, audited into a channel, so each row's one event can be checked.
struct Audited {
    auth: McpAuth,
    handle: tower_mcp_auth::audit::AuditHandle,
    events: tokio::sync::mpsc::Receiver<tower_mcp_auth::audit::AuditEvent>,
    schema: jsonschema::Validator,
}

fn audited_auth_for(dev: &DevIssuer) -> Audited {
    use tower_mcp_auth::audit::{self, AuditOptions, ChannelSink};
    let (sink, events) = ChannelSink::new(1024);
    let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .audit(emitter)
        .build()
        .unwrap();
    let schema: Value =
        serde_json::from_str(include_str!("../schema/audit-event-v1.json")).unwrap();
    Audited {
        auth,
        handle,
        events,
        schema: jsonschema::validator_for(&schema).unwrap(),
    }
}

/// Exactly one schema-valid event for the last request, agreeing with the response, and free of
/// the row's secrets.
async fn check_audit(
    audited: &mut Audited,
    status: u16,
    error: Option<&AuthError>,
    secrets: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    audited.handle.flush().await.unwrap();
    let mut events = Vec::new();
    while let Ok(event) = audited.events.try_recv() {
        events.push(event);
    }
    if events.len() != 1 {
        problems.push(format!("{} audit events instead of 1", events.len()));
        return problems;
    }
    let event = &events[0];
    let json = serde_json::to_value(event).unwrap();
    for error in audited.schema.iter_errors(&json) {
        problems.push(format!("audit event violates the schema: {error}"));
    }
    if event.http.status != status {
        problems.push(format!("audit status {} != {status}", event.http.status));
    }
    let expected = error.map(|e| e.kind().as_str().to_owned());
    if event.reason != expected {
        problems.push(format!("audit reason {:?} != {expected:?}", event.reason));
    }
    let deny = event.decision == tower_mcp_auth::audit::DecisionKind::Deny;
    if deny != error.is_some() {
        problems.push(format!("audit decision {:?} disagrees", event.decision));
    }
    let text = json.to_string();
    for secret in secrets {
        for piece in secret_pieces(secret) {
            if text.contains(piece) {
                problems.push(format!("audit event reflects the token ({piece:.16}...)"));
            }
        }
    }
    problems
}

/// Checks one row; returns every violated expectation.
async fn check(auth: &McpAuth, row: Row) -> Vec<String> {
    check_with(auth, None, row).await
}

/// [`check`], plus exactly one correct audit event per request.
async fn check_audited(audited: &mut Audited, row: Row) -> Vec<String> {
    let auth = audited.auth.clone();
    check_with(&auth, Some(audited), row).await
}

async fn check_with(auth: &McpAuth, audited: Option<&mut Audited>, row: Row) -> Vec<String> {
    let mut problems = Vec::new();
    let out = send(auth, row.request).await;
    if let Some(audited) = audited {
        problems.extend(check_audit(audited, out.status, out.error.as_ref(), &row.secrets).await);
    }
    let mut fail = |msg: String| problems.push(msg);

    if (500..600).contains(&out.status) {
        fail(format!("5xx status {}", out.status));
    }
    // No reflection of the presented credentials, anywhere.
    let body_text = String::from_utf8_lossy(&out.body).into_owned();
    for secret in &row.secrets {
        for piece in secret_pieces(secret) {
            if body_text.contains(piece) {
                fail(format!("body reflects the token ({piece:.16}...)"));
            }
            for (name, value) in &out.headers {
                if String::from_utf8_lossy(value.as_bytes()).contains(piece) {
                    fail(format!("header {name} reflects the token ({piece:.16}...)"));
                }
            }
        }
        if let Some(err) = &out.error
            && secret.len() >= 8
            && format!("{err:?} {err}").contains(secret.as_str())
        {
            fail("AuthError reflects the token".into());
        }
    }

    match row.expect {
        Expect::Accepted => {
            if out.status != 200 {
                fail(format!(
                    "expected 200, got {} ({:?})",
                    out.status,
                    out.error.as_ref().map(AuthError::kind)
                ));
            }
            if out.seen.calls != 1 {
                fail(format!(
                    "inner called {} times, expected once",
                    out.seen.calls
                ));
            }
            match &out.seen.principal {
                Some(p) => {
                    if p.subject() != "dev-user" || p.issuer() != ISSUER {
                        fail(format!("unexpected principal {p:?}"));
                    }
                    if !p.audience().iter().any(|a| a == RESOURCE) {
                        fail("principal audience lacks the resource".into());
                    }
                }
                None => fail("inner service saw no Principal".into()),
            }
            if out.seen.authorization_present {
                fail("Authorization header reached the inner service".into());
            }
            if out.error.is_some() {
                fail("AuthError extension on an accepted response".into());
            }
            if &out.body[..] != b"inner reached" {
                fail("body is not the inner service's".into());
            }
        }
        Expect::Refused(status, error, kind) => {
            if out.status != status {
                fail(format!("status {} != expected {status}", out.status));
            }
            if out.seen.calls != 0 {
                fail("inner service was reached".into());
            }
            match &out.error {
                Some(e) if e.kind() == kind => {}
                Some(e) => fail(format!("kind {:?} != expected {kind:?}", e.kind())),
                None => fail("no AuthError in the response extensions".into()),
            }
            if out.headers.get(CACHE_CONTROL).map(|v| v.as_bytes()) != Some(b"no-store") {
                fail("Cache-Control is not no-store".into());
            }
            let body: Option<Value> = serde_json::from_slice(&out.body).ok();
            let body_description = body
                .as_ref()
                .and_then(|b| b.get("error_description"))
                .and_then(Value::as_str);
            if body_description.is_none() {
                fail(format!(
                    "body is not JSON with error_description: {body_text}"
                ));
            }
            let body_error = body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str);
            if body_error != error {
                fail(format!("body error {body_error:?} != expected {error:?}"));
            }
            let challenges: Vec<_> = out.headers.get_all(WWW_AUTHENTICATE).iter().collect();
            if matches!(status, 400 | 401 | 403) {
                if challenges.len() != 1 {
                    fail(format!("{} WWW-Authenticate headers", challenges.len()));
                }
                if let Some(value) = challenges.first() {
                    let value = value.to_str().unwrap_or_default();
                    if !value.starts_with("Bearer ") {
                        fail(format!("challenge does not start with `Bearer `: {value}"));
                    }
                    match parse_challenge(value) {
                        Err(e) => fail(e),
                        Ok((_, params)) => {
                            if params.get("resource_metadata").map(String::as_str)
                                != Some(METADATA_URL)
                            {
                                fail(format!("resource_metadata wrong in {value}"));
                            }
                            if params.get("error").map(String::as_str) != error {
                                fail(format!(
                                    "challenge error {:?} != expected {error:?}",
                                    params.get("error")
                                ));
                            }
                            if error.is_some()
                                && params.get("error_description").map(String::as_str)
                                    != body_description
                            {
                                fail("challenge error_description differs from the body".into());
                            }
                            if error.is_none() && params.contains_key("error_description") {
                                fail("error_description without error".into());
                            }
                            let expected_scope = (status == 401).then_some("notes:read");
                            if params.get("scope").map(String::as_str) != expected_scope {
                                fail(format!(
                                    "scope {:?} != expected {expected_scope:?}",
                                    params.get("scope")
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    problems
}

#[tokio::test]
async fn hostile_requests_table() {
    let dev = DevIssuer::new(ISSUER);
    let attacker = DevIssuer::new(ISSUER);
    let mut audited = audited_auth_for(&dev);
    let rows = rows(&dev, &attacker);
    let refused = rows
        .iter()
        .filter(|r| matches!(r.expect, Expect::Refused(..)))
        .count();
    assert!(rows.len() >= 45, "only {} rows", rows.len());
    assert!(rows.len() - refused >= 3, "need at least 3 control rows");

    let mut failures = Vec::new();
    let total = rows.len();
    let mut names = std::collections::HashSet::new();
    for row in rows {
        assert!(
            names.insert(row.name.clone()),
            "duplicate row name {}",
            row.name
        );
        let name = row.name.clone();
        for problem in check_audited(&mut audited, row).await {
            failures.push(format!("[{name}] {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) over {total} rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("hostile_requests_table: {total} rows ({refused} refused) passed");
}

/// With no `algorithms` restriction (the default: every asymmetric algorithm), HMAC forged with
/// the public key is still refused.
#[tokio::test]
async fn hs256_key_confusion_refused_with_default_algorithms() {
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(IssuerConfig::new(ISSUER).jwks(dev.jwks_json()))
        .scopes_supported(["notes:read"])
        .build()
        .unwrap();
    let mut t = Table(Vec::new());
    for (name, secret) in [
        ("PEM", dev.public_key_pem()),
        ("JWK", dev.public_jwk().to_string()),
    ] {
        for alg in ["HS256", "HS384", "HS512"] {
            t.bearer(
                format!("{alg} with the {name}"),
                hmac_token(
                    &dev,
                    json!({"alg": alg, "typ": "at+jwt", "kid": dev.kid()}),
                    secret.as_bytes(),
                ),
                invalid_token(K::AlgorithmNotAllowed),
            );
        }
    }
    t.bearer("control", dev.token(RESOURCE).sign(), Accepted);
    t.assert_all(&auth).await;
}

/// RFC 8259 lets any string be written with escapes (`\/`, `\uXXXX`), and RFC 7515 §4 makes the
/// JOSE header an ordinary JSON object, so an escaped `typ`, `kid` or `alg` means the same as
/// the plain one. Some encoders escape by default (PHP's `json_encode` writes `\/`). A validly
/// signed token whose header uses escapes must be judged on the decoded values: accepted when
/// they are right, refused with the same kind as the plain spelling when they are wrong.
#[tokio::test]
async fn json_escaped_header_strings_are_decoded() {
    let dev = DevIssuer::new(ISSUER);
    let auth = auth_for(&dev);
    let payload = Value::Object(claims(&dev)).to_string();
    let kid = dev.kid();
    // The kid with its first character written as a \u escape.
    let escaped_kid = {
        let mut chars = kid.chars();
        let first = chars.next().unwrap();
        format!("\\u{:04x}{}", first as u32, chars.as_str())
    };
    let mut t = Table(Vec::new());
    for (name, header, expect) in [
        (
            "typ application\\/at+jwt (escaped solidus)",
            format!(r#"{{"alg":"ES256","typ":"application\/at+jwt","kid":"{kid}"}}"#),
            Accepted,
        ),
        (
            "typ with a \\u escape",
            format!(r#"{{"alg":"ES256","typ":"at\u002bjwt","kid":"{kid}"}}"#),
            Accepted,
        ),
        (
            "kid with a \\u escape",
            format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"{escaped_kid}"}}"#),
            Accepted,
        ),
        (
            "alg with \\u escapes (ES256)",
            format!(r#"{{"alg":"ES\u0032\u00356","typ":"at+jwt","kid":"{kid}"}}"#),
            Accepted,
        ),
        (
            "alg none spelled with a \\u escape",
            format!(r#"{{"alg":"\u006eone","typ":"at+jwt","kid":"{kid}"}}"#),
            invalid_token(K::AlgorithmNotAllowed),
        ),
        (
            "typ JWT spelled with a \\u escape",
            format!(r#"{{"alg":"ES256","typ":"\u004aWT","kid":"{kid}"}}"#),
            invalid_token(K::WrongTokenType),
        ),
    ] {
        t.bearer(
            name,
            dev.sign_raw(header.as_bytes(), payload.as_bytes()),
            expect,
        );
    }
    t.assert_all(&auth).await;
}

/// A lone UTF-16 surrogate escape has no Unicode reading, and JSON readers disagree on it
/// (serde skips it in members it ignores, `serde_json::Value` and Python refuse or replace
/// it), so a signed token holding one anywhere, even in a member nobody reads, is malformed.
/// Proper pairs and an escaped backslash before `ud800` are ordinary text and pass.
#[tokio::test]
async fn lone_surrogate_escapes_are_malformed_wherever_they_are() {
    let dev = DevIssuer::new(ISSUER);
    let auth = auth_for(&dev);
    let kid = dev.kid();
    let hdr = |extra: &str| format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"{kid}"{extra}}}"#);
    let body = |extra: &str| {
        let plain = Value::Object(claims(&dev)).to_string();
        format!("{}{extra}}}", &plain[..plain.len() - 1])
    };
    let mut t = Table(Vec::new());
    for (name, header, payload, expect) in [
        (
            "lone high surrogate in an unknown header member",
            hdr(r#","x":"\ud800""#),
            body(""),
            invalid_token(K::MalformedToken),
        ),
        (
            "lone low surrogate (upper case) in an unknown header member",
            hdr(r#","x":"a\uDFFFb""#),
            body(""),
            invalid_token(K::MalformedToken),
        ),
        (
            "reversed pair in an unknown header member",
            hdr(r#","x":"\ude00\ud83d""#),
            body(""),
            invalid_token(K::MalformedToken),
        ),
        (
            "lone surrogate as an unknown header member's name",
            hdr(r#","\udbff":1"#),
            body(""),
            invalid_token(K::MalformedToken),
        ),
        (
            "lone surrogate in an unknown claim",
            hdr(""),
            body(r#","note":"\ud800""#),
            invalid_token(K::MalformedToken),
        ),
        (
            "lone surrogate nested in an ignored claim",
            hdr(""),
            body(r#","ext":{"deep":["ok","\udc00"]}"#),
            invalid_token(K::MalformedToken),
        ),
        (
            "surrogate pair in an unknown header member and claim",
            hdr(r#","x":"\ud83d\ude00""#),
            body(r#","note":"\uD83D\uDE00""#),
            Accepted,
        ),
        (
            "escaped backslash before ud800 is plain text",
            hdr(r#","x":"\\ud800""#),
            body(r#","note":"\\uDFFF""#),
            Accepted,
        ),
    ] {
        t.bearer(
            name,
            dev.sign_raw(header.as_bytes(), payload.as_bytes()),
            expect,
        );
    }
    t.assert_all(&auth).await;
}

/// A key source that has nothing and cannot fetch: the one deliberate 5xx.
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

#[tokio::test]
async fn keys_unavailable_is_503_without_challenge() {
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer_with_keys(ISSUER, Arc::new(Down), [SigningAlgorithm::ES256])
        .scopes_supported(["notes:read"])
        .build()
        .unwrap();
    let token = dev.token(RESOURCE).sign();
    let out = send(
        &auth,
        with_auth(HeaderValue::try_from(format!("Bearer {token}")).unwrap()),
    )
    .await;
    assert_eq!(out.status, 503);
    assert_eq!(out.seen.calls, 0);
    assert_eq!(out.error.map(|e| e.kind()), Some(K::KeysUnavailable));
    assert!(out.headers.get(WWW_AUTHENTICATE).is_none());
    assert!(out.headers.get(http::header::RETRY_AFTER).is_some());
    assert_eq!(out.headers[CACHE_CONTROL], "no-store");
    let body: Value = serde_json::from_slice(&out.body).unwrap();
    assert!(body["error_description"].is_string());
    assert!(body.get("error").is_none());
    let text = String::from_utf8_lossy(&out.body);
    for piece in secret_pieces(&token) {
        assert!(!text.contains(piece));
    }
    // A token the source cannot be consulted for (wrong issuer) is still a plain 401.
    let other = DevIssuer::new("https://evil.example.com")
        .token(RESOURCE)
        .sign();
    let out = send(
        &auth,
        with_auth(HeaderValue::try_from(format!("Bearer {other}")).unwrap()),
    )
    .await;
    assert_eq!(out.status, 401);
    assert_eq!(out.error.map(|e| e.kind()), Some(K::UntrustedIssuer));
}

// ---------------------------------------------------------------------------------------------
// Metadata routing through the layer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metadata_paths_are_served_without_a_token() {
    let dev = DevIssuer::new(ISSUER);
    let auth = auth_for(&dev);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let req = |method: Method| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(Full::default())
                .unwrap()
        };
        let out = send(&auth, req(Method::GET)).await;
        assert_eq!(out.status, 200, "GET {path}");
        assert_eq!(out.seen.calls, 0);
        assert!(out.error.is_none());
        let doc: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(doc["resource"], RESOURCE);
        assert_eq!(doc["authorization_servers"], json!([ISSUER]));
        assert_eq!(doc["scopes_supported"], json!(["notes:read"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));

        let out = send(&auth, req(Method::HEAD)).await;
        assert_eq!(out.status, 200, "HEAD {path}");
        assert!(out.body.is_empty());
        assert_eq!(out.seen.calls, 0);

        let out = send(&auth, req(Method::OPTIONS)).await;
        assert_eq!(out.status, 204, "OPTIONS {path}");
        assert_eq!(out.seen.calls, 0);

        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let out = send(&auth, req(method.clone())).await;
            assert_eq!(out.status, 405, "{method} {path}");
            let allow = out.headers[ALLOW].to_str().unwrap();
            let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
            allowed.sort_unstable();
            assert_eq!(allowed, ["GET", "HEAD", "OPTIONS"]);
            assert_eq!(out.seen.calls, 0);
        }
    }
    // A bad token on the metadata path does not matter: the document is public.
    let out = send(
        &auth,
        Request::get("/.well-known/oauth-protected-resource/mcp")
            .header(AUTHORIZATION, "Bearer garbage")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(out.status, 200);
}

#[tokio::test]
async fn other_well_known_paths_go_through_auth() {
    let dev = DevIssuer::new(ISSUER);
    let auth = auth_for(&dev);
    for path in [
        "/.well-known/oauth-protected-resource/other",
        "/.well-known/oauth-protected-resource/mcp/",
        "/.well-known/oauth-protected-resource/",
        "/.well-known/oauth-protected-resource/mcp/extra",
        "/.well-known/OAUTH-PROTECTED-RESOURCE/mcp",
        "/.well-known/oauth-authorization-server",
    ] {
        let out = send(&auth, Request::get(path).body(Full::default()).unwrap()).await;
        assert_eq!(out.status, 401, "{path}");
        assert_eq!(out.seen.calls, 0, "{path}");
        assert_eq!(
            out.error.map(|e| e.kind()),
            Some(K::MissingCredentials),
            "{path}"
        );
        let challenge = out.headers[WWW_AUTHENTICATE].to_str().unwrap();
        let (scheme, params) = parse_challenge(challenge).unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["resource_metadata"], METADATA_URL);
        assert_eq!(params["scope"], "notes:read");
        assert!(!params.contains_key("error"));
    }
    // With a valid token, such a path reaches the inner service like any other.
    let token = dev.token(RESOURCE).sign();
    let out = send(
        &auth,
        Request::get("/.well-known/oauth-protected-resource/other")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.seen.calls, 1);
}

// ---------------------------------------------------------------------------------------------
// The untyped-token opt-in (`accept_untyped_tokens`, TOML `[token] accept_untyped_tokens`)
// ---------------------------------------------------------------------------------------------

/// Rows for one stack; `opt_in` says whether it accepts untyped tokens. The opt-in admits only a
/// missing `typ` or the generic `JWT` / `application/jwt`: any other `typ` is still refused, and
/// every other check still applies.
fn untyped_rows(dev: &DevIssuer, opt_in: bool) -> Vec<Row> {
    let mut t = Table(Vec::new());
    let valid = || dev.token(RESOURCE).scope("notes:read");
    let generic = |accepted: bool| {
        if accepted {
            Accepted
        } else {
            invalid_token(K::WrongTokenType)
        }
    };
    t.bearer("typ at+jwt", valid().sign(), Accepted);
    t.bearer(
        "typ application/at+jwt",
        valid().header("typ", "application/at+jwt").sign(),
        Accepted,
    );
    t.bearer(
        "no typ",
        valid().without_header("typ").sign(),
        generic(opt_in),
    );
    for typ in ["JWT", "jwt", "application/jwt", "APPLICATION/JWT"] {
        t.bearer(
            format!("typ {typ}"),
            valid().header("typ", typ).sign(),
            generic(opt_in),
        );
    }
    for typ in [
        "id+jwt",
        "dpop+jwt",
        "logout+jwt",
        "secevent+jwt",
        "application/id+jwt",
        "JWS",
        "",
        "at+jwt ",
        "at+jwt,JWT",
    ] {
        t.bearer(
            format!("typ {typ:?} (refused with or without the opt-in)"),
            valid().header("typ", typ).sign(),
            invalid_token(K::WrongTokenType),
        );
    }
    t.bearer(
        "typ as a number",
        valid().header("typ", 1).sign(),
        invalid_token(K::MalformedToken),
    );
    // `null` is a member of the wrong type, not an absent one: never "untyped".
    t.bearer(
        "typ null",
        valid().header("typ", Value::Null).sign(),
        invalid_token(K::MalformedToken),
    );
    // Without `typ`, the rest of the token decides: the opt-in widens nothing else.
    let untyped = |expect: Expect| if opt_in { expect } else { generic(false) };
    t.bearer(
        "no typ, expired",
        valid()
            .without_header("typ")
            .claim("iat", now() - 1000)
            .claim("exp", now() - 600)
            .sign(),
        untyped(invalid_token(K::Expired)),
    );
    t.bearer(
        "no typ, another audience",
        valid()
            .without_header("typ")
            .claim("aud", "https://other.example.com/mcp")
            .sign(),
        untyped(invalid_token(K::WrongAudience)),
    );
    t.bearer(
        "an ID token (typ JWT, aud = the client id, no client_id)",
        valid()
            .header("typ", "JWT")
            .claim("aud", "dev-client")
            .without_claim("client_id")
            .claim("nonce", "n-0S6_WzA2Mj")
            .sign(),
        untyped(invalid_token(K::WrongAudience)),
    );
    t.bearer(
        "no typ, missing jti",
        valid().without_header("typ").without_claim("jti").sign(),
        untyped(invalid_token(K::MissingClaim)),
    );
    t.bearer(
        "no typ, alg none",
        format!(
            "{}.{}.",
            b64(json!({"alg": "none"}).to_string()),
            b64(Value::Object(claims(dev)).to_string())
        ),
        invalid_token(if opt_in {
            K::AlgorithmNotAllowed
        } else {
            K::WrongTokenType
        }),
    );
    t.0
}

#[tokio::test]
async fn untyped_tokens_only_with_the_opt_in_and_only_untyped() {
    let dev = DevIssuer::new(ISSUER);
    let toml_auth = |opt_in: Option<bool>| {
        let token = match opt_in {
            Some(value) => format!("[token]\naccept_untyped_tokens = {value}\n"),
            None => String::new(),
        };
        let text = format!(
            "resource = \"{RESOURCE}\"\nscopes_supported = [\"notes:read\"]\n\
             [[issuers]]\nissuer = \"{ISSUER}\"\njwks = '{}'\nalgorithms = [\"ES256\"]\n{token}",
            dev.jwks_json()
        );
        McpAuth::from_config(tower_mcp_auth::McpAuthConfig::from_toml_str(&text).unwrap()).unwrap()
    };
    let builder = |opt_in: bool| {
        McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .scopes_supported(["notes:read"])
            .accept_untyped_tokens(opt_in)
            .build()
            .unwrap()
    };
    let stacks = [
        ("default (builder)", auth_for(&dev), false),
        ("default (TOML, no [token])", toml_auth(None), false),
        ("builder, opt-in off", builder(false), false),
        ("TOML, opt-in off", toml_auth(Some(false)), false),
        ("builder, opt-in on", builder(true), true),
        ("TOML, opt-in on", toml_auth(Some(true)), true),
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for (stack, auth, opt_in) in stacks {
        for row in untyped_rows(&dev, opt_in) {
            total += 1;
            let name = row.name.clone();
            failures.extend(
                check(&auth, row)
                    .await
                    .into_iter()
                    .map(|p| format!("[{stack}: {name}] {p}")),
            );
        }
    }
    assert!(total >= 100, "only {total} rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// No `kid` with several keys: never a guess
// ---------------------------------------------------------------------------------------------

/// With two ES256 keys, a token without `kid` is refused (which key would verify it is not for
/// the token to decide, and trying each is an oracle); with a `kid`, each key verifies its own
/// tokens and only its own.
#[tokio::test]
async fn no_kid_with_several_keys_is_refused() {
    let dev = DevIssuer::new(ISSUER);
    let second = DevIssuer::new(ISSUER);
    let jwks = json!({"keys": [dev.public_jwk(), second.public_jwk()]}).to_string();
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(
            IssuerConfig::new(ISSUER)
                .jwks(jwks)
                .algorithms([SigningAlgorithm::ES256]),
        )
        .scopes_supported(["notes:read"])
        .build()
        .unwrap();
    let mut t = Table(Vec::new());
    for (who, issuer) in [("first", &dev), ("second", &second)] {
        let valid = || issuer.token(RESOURCE).scope("notes:read");
        t.bearer(
            format!("control: {who} key, its kid"),
            valid().sign(),
            Accepted,
        );
        t.bearer(
            format!("no kid, two ES256 keys ({who} key signed)"),
            valid().without_header("kid").sign(),
            invalid_token(K::UnknownKey),
        );
        t.bearer(
            format!("empty kid, two ES256 keys ({who} key signed)"),
            valid().header("kid", "").sign(),
            invalid_token(K::UnknownKey),
        );
        t.bearer(
            format!("kid null, two ES256 keys ({who} key signed)"),
            valid().header("kid", Value::Null).sign(),
            invalid_token(K::MalformedToken),
        );
    }
    t.bearer(
        "second key's signature under the first key's kid",
        second.token(RESOURCE).header("kid", dev.kid()).sign(),
        invalid_token(K::InvalidSignature),
    );
    t.bearer(
        "no kid, alg ES384 (no key for it)",
        dev.token(RESOURCE)
            .without_header("kid")
            .header("alg", "ES384")
            .sign(),
        invalid_token(K::AlgorithmNotAllowed),
    );
    t.assert_all(&auth).await;
}
