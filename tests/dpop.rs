//! DPoP (RFC 9449) through the real stack, in process.
//!
//! - Golden vectors: RFC 9449 §6.1 / RFC 7638 §3.1 / RFC 8037 A.3 JWK thumbprints, the RFC 9449
//!   §7.1 `ath`, and the RFC 9449 Figure 13 proof driven through `DpopLayer` + `TokenLayer` with
//!   the layer's clock fixed at the RFC's `iat` and the default window (accepted from 10 s before
//!   to 60 s after, refused one second beyond), whose key thumbprint must be the RFC's `jkt`.
//! - A table of hostile proofs through `McpAuth::layer()` with `DpopMode::Allowed`: every row
//!   states the exact status, which challenge (`Bearer` or `DPoP`) carries the `error`, the `error`
//!   value, the `AuthErrorKind` and its fixed detail; the inner service is never reached and no
//!   token or proof text is reflected.
//! - Modes (`Required`, `Off`), server nonces (also step by step at a fixed clock, and the
//!   `DevDpopKey::retry_proof` helper), 50 concurrent replays, a full replay store.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{Value, json};
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::dpop::{DpopConfig, DpopLayer, DpopMode, InMemoryReplayStore, jwk_thumbprint};
use tower_mcp_auth::error::ChallengeConfig;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::token::{TokenLayer, TokenVerifier, thumbprint};
use tower_mcp_auth::{
    AuthError, AuthErrorKind, Binding, Confirmation, McpAuth, Principal, PrincipalParts,
};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
const ALGS: &str = "ES256 ES384 EdDSA PS256 RS256";
const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#;
/// The order of the P-256 group.
const P256_N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

use AuthErrorKind as K;

// ---------------------------------------------------------------------------------------------
// Golden vectors
// ---------------------------------------------------------------------------------------------

/// RFC 9449 §4.1 (Figure 4) proof key.
const RFC9449_JWK: &str = r#"{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}"#;
/// RFC 9449 §6.1: its thumbprint.
const RFC9449_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
/// RFC 9449 §7.1 (Figure 12): the access token, and its `ath` (Figure 14).
const RFC9449_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
const RFC9449_ATH: &str = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";
/// RFC 9449 Figure 13: a proof for `GET https://resource.example.org/protectedresource` with
/// that token (`iat` 1562262618), signed by the Figure 4 key.
const RFC9449_FIGURE_13: &str = concat!(
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0Vj",
    "NoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5",
    "VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19",
    ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtc",
    "GxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05y",
    "V0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9",
    ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA",
);
const RFC9449_HTU: &str = "https://resource.example.org/protectedresource";
/// RFC 7638 §3.1.
const RFC7638_N: &str = concat!(
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP",
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY",
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f",
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
);
const RFC7638_JKT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
/// RFC 8037 Appendix A.3.
const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
const RFC8037_JKT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";

#[test]
fn golden_jwk_thumbprints() {
    assert_eq!(jwk_thumbprint(RFC9449_JWK).unwrap(), RFC9449_JKT);
    // Member order, whitespace and non-required members do not count.
    let reordered = r#"{ "crv" : "P-256", "alg":"ES256", "kid":"k", "use":"sig",
        "y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "kty":"EC"}"#;
    assert_eq!(jwk_thumbprint(reordered).unwrap(), RFC9449_JKT);

    let rsa =
        format!(r#"{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","alg":"RS256","kid":"2011-04-29"}}"#);
    assert_eq!(jwk_thumbprint(&rsa).unwrap(), RFC7638_JKT);

    let okp = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{RFC8037_X}"}}"#);
    assert_eq!(jwk_thumbprint(&okp).unwrap(), RFC8037_JKT);

    // Not thumbprintable: no required member, an unsupported type, not an object.
    for bad in [
        r#"{"kty":"EC","crv":"P-256","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs"}"#,
        r#"{"kty":"RSA","e":"AQAB"}"#,
        r#"{"kty":"oct","k":"c2VjcmV0"}"#,
        r#"["kty","EC"]"#,
        "",
    ] {
        assert!(jwk_thumbprint(bad).is_err(), "{bad}");
    }

    // The testing key agrees with the public function.
    let key = DevDpopKey::new();
    assert_eq!(
        jwk_thumbprint(&key.public_jwk().to_string()).unwrap(),
        key.jkt()
    );
}

#[test]
fn golden_ath() {
    assert_eq!(thumbprint(RFC9449_TOKEN), RFC9449_ATH);
}

/// Accepts exactly one opaque token, bound (`cnf.jkt`) to `jkt`.
#[derive(Debug)]
struct OpaqueVerifier {
    token: &'static str,
    jkt: String,
}

#[async_trait]
impl TokenVerifier for OpaqueVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token != self.token {
            return Err(K::InvalidSignature.into());
        }
        let mut cnf = Confirmation::default();
        cnf.jkt = Some(self.jkt.clone());
        Ok(Principal::new(PrincipalParts {
            issuer: "https://server.example.com".into(),
            subject: "rfc9449".into(),
            client_id: None,
            audience: vec![RFC9449_HTU.into()],
            scopes: BTreeSet::new(),
            delegation: Vec::new(),
            expires_at: u64::from(u32::MAX),
            issued_at: None,
            jti: None,
            token_thumbprint: thumbprint(token),
            binding: Binding::Bearer,
            confirmation: Some(cnf),
            claims: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        }))
    }
}

/// The RFC 9449 Figure 13 proof's `iat`.
const RFC9449_IAT: u64 = 1_562_262_618;

/// Sends the RFC 9449 Figure 13 request through `DpopLayer` + `TokenLayer` whose verifier binds
/// the RFC token to `jkt`, with the DPoP layer's clock fixed at `now` and the default window
/// (60 s past, 10 s ahead).
async fn send_figure_13(
    store: Arc<InMemoryReplayStore>,
    jkt: &str,
    now: u64,
) -> (u16, Option<AuthError>, Option<Principal>, Vec<String>) {
    let challenge = ChallengeConfig::new(METADATA_URL).with_dpop_algs("ES256");
    let config = DpopConfig::with_mode(DpopMode::Allowed);
    assert_eq!((config.max_age_secs, config.max_future_secs), (60, 10));
    let dpop = DpopLayer::new(&config, RFC9449_HTU, challenge.clone(), store)
        .unwrap()
        .with_clock(move || now);
    let verifier = OpaqueVerifier {
        token: RFC9449_TOKEN,
        jkt: jkt.to_owned(),
    };
    let token = TokenLayer::new(Arc::new(verifier), challenge);
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        *record.lock().unwrap() = req.extensions().get::<Principal>().cloned();
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
    });
    let req = Request::get(RFC9449_HTU)
        .header(AUTHORIZATION, format!("DPoP {RFC9449_TOKEN}"))
        .header("dpop", RFC9449_FIGURE_13)
        .body(Full::default())
        .unwrap();
    let resp = dpop.layer(token.layer(inner)).oneshot(req).await.unwrap();
    let principal = seen.lock().unwrap().take();
    let www = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (
        resp.status().as_u16(),
        resp.extensions().get::<AuthError>().cloned(),
        principal,
        www,
    )
}

#[tokio::test]
async fn golden_rfc9449_figure_13_through_the_proof_path() {
    let store = Arc::new(InMemoryReplayStore::new(16));
    // Bound to another key: the proof verifies (signature, htm, htu, ath, iat at the RFC's
    // time) but its key's thumbprint is not the token's.
    let other = DevDpopKey::new();
    let (status, error, principal, _) =
        send_figure_13(store.clone(), other.jkt(), RFC9449_IAT).await;
    assert_eq!(status, 401);
    assert_eq!(error.map(|e| e.kind()), Some(K::DpopKeyMismatch));
    assert!(principal.is_none());
    // Bound to the RFC's jkt: accepted, so the proof path computed exactly that thumbprint.
    let (status, error, principal, _) =
        send_figure_13(store.clone(), RFC9449_JKT, RFC9449_IAT).await;
    assert_eq!(status, 200, "{error:?}");
    let principal = principal.expect("inner reached");
    assert_eq!(principal.binding(), Binding::Dpop);
    assert_eq!(principal.key_thumbprint(), Some(RFC9449_JKT));
    // And the proof is used up.
    let (status, error, _, _) = send_figure_13(store, RFC9449_JKT, RFC9449_IAT).await;
    assert_eq!(status, 401);
    assert_eq!(error.map(|e| e.kind()), Some(K::DpopReplay));
}

/// The Figure 13 proof against the default window, the clock at the RFC's `iat` plus `offset`:
/// accepted from 10 s before to 60 s after, refused one second beyond either edge. Each row
/// uses a fresh replay store, so only the time decides.
#[tokio::test]
async fn golden_rfc9449_figure_13_window_at_fixed_times() {
    let rows: [(i64, Option<&str>); 7] = [
        (0, None),
        (60, None),
        (-10, None),
        (61, Some("iat too old")),
        (-11, Some("iat in the future")),
        (3600, Some("iat too old")),
        // Today: the RFC's 2019 proof is long expired under the system clock too.
        (
            i64::try_from(now() - RFC9449_IAT).unwrap(),
            Some("iat too old"),
        ),
    ];
    let mut failures = Vec::new();
    for (offset, refused) in rows {
        let at = RFC9449_IAT.checked_add_signed(offset).unwrap();
        let store = Arc::new(InMemoryReplayStore::new(16));
        let (status, error, principal, www) = send_figure_13(store, RFC9449_JKT, at).await;
        // Refusals carry the error on the DPoP challenge, after the Bearer one.
        let dpop_error = www
            .iter()
            .find(|c| c.starts_with("DPoP "))
            .and_then(|c| parse_challenge(c).ok())
            .and_then(|(_, p)| p.get("error").cloned());
        let got = (
            status,
            error.as_ref().map(AuthError::kind),
            error.as_ref().and_then(AuthError::detail),
            principal.map(|p| (p.binding(), p.key_thumbprint().map(str::to_owned))),
            dpop_error,
        );
        let want = match refused {
            None => (
                200,
                None,
                None,
                Some((Binding::Dpop, Some(RFC9449_JKT.to_owned()))),
                None,
            ),
            Some(detail) => (
                401,
                Some(K::InvalidDpopProof),
                Some(detail),
                None,
                Some("invalid_dpop_proof".to_owned()),
            ),
        };
        if got != want {
            failures.push(format!("iat{offset:+}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    calls: usize,
    principal: Option<Principal>,
}

struct Outcome {
    status: u16,
    headers: HeaderMap,
    error: Option<AuthError>,
    body: Bytes,
    seen: Seen,
}

/// Sends `req` through `auth.layer()` around an inner service that answers 200 "inner reached".
async fn send(auth: &McpAuth, req: Request<Full<Bytes>>) -> Outcome {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let mut s = record.lock().unwrap();
        s.calls += 1;
        s.principal = req.extensions().get::<Principal>().cloned();
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

/// `POST /mcp` calling `whoami`, with these `Authorization` and `DPoP` header values.
fn request(authorization: &[String], dpop: &[String]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(RESOURCE)
        .header(CONTENT_TYPE, "application/json");
    for value in authorization {
        b = b.header(AUTHORIZATION, value.as_str());
    }
    for value in dpop {
        b = b.header("dpop", value.as_str());
    }
    b.body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

/// A request and the credentials it presents (which must never be reflected).
struct Sent {
    request: Request<Full<Bytes>>,
    secrets: Vec<String>,
}

/// `Authorization: DPoP <token>` and one `DPoP: <proof>`.
fn dpop(token: &str, proof: &str) -> Sent {
    dpop_many(token, &[proof])
}

fn dpop_many(token: &str, proofs: &[&str]) -> Sent {
    let proofs: Vec<String> = proofs.iter().map(|p| (*p).to_owned()).collect();
    let mut secrets = proofs.clone();
    secrets.push(token.to_owned());
    Sent {
        request: request(&[format!("DPoP {token}")], &proofs),
        secrets,
    }
}

/// `Authorization: Bearer <token>`, with optional `DPoP` headers.
fn bearer(token: &str, proofs: &[&str]) -> Sent {
    let proofs: Vec<String> = proofs.iter().map(|p| (*p).to_owned()).collect();
    let mut secrets = proofs.clone();
    secrets.push(token.to_owned());
    Sent {
        request: request(&[format!("Bearer {token}")], &proofs),
        secrets,
    }
}

/// A challenge's scheme and auth-params (names lower-cased).
type Challenge = (String, BTreeMap<String, String>);

/// Parses an RFC 9110 challenge: `scheme SP auth-param *( OWS "," OWS auth-param )`, each
/// auth-param `token "=" quoted-string`. Refuses anything else and duplicate parameters.
fn parse_challenge(value: &str) -> Result<Challenge, String> {
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| format!("no space after scheme in {value:?}"))?;
    let mut params = BTreeMap::new();
    let bytes = rest.as_bytes();
    let mut i = 0;
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    loop {
        while bytes.get(i) == Some(&b' ') {
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
            return Err(format!("{name} is not a quoted-string in {value:?}"));
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
                Some(&c) if c == b'\t' || (b' '..=b'~').contains(&c) => {
                    out.push(c as char);
                    i += 1;
                }
                Some(_) => return Err(format!("control or non-ASCII byte in {value:?}")),
            }
        }
        if params.insert(name.clone(), out).is_some() {
            return Err(format!("duplicate auth-param {name} in {value:?}"));
        }
        while bytes.get(i) == Some(&b' ') {
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
    let (scheme, p) = parse_challenge(
        r#"DPoP error="invalid_dpop_proof", error_description="a \"b\" \\ c", algs="ES256 RS256""#,
    )
    .unwrap();
    assert_eq!(scheme, "DPoP");
    assert_eq!(p["error"], "invalid_dpop_proof");
    assert_eq!(p["error_description"], r#"a "b" \ c"#);
    assert_eq!(p["algs"], "ES256 RS256");
    assert!(parse_challenge(r#"DPoP algs=ES256"#).is_err());
    assert!(parse_challenge(r#"DPoP error="a", error="b""#).is_err());
    assert!(parse_challenge(r#"DPoP error="a" algs="b""#).is_err());
    assert!(parse_challenge(r#"DPoP error="a"#).is_err());
}

/// Every challenge, parsed, in order.
fn challenges(headers: &HeaderMap) -> Result<Vec<Challenge>, String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| parse_challenge(v.to_str().map_err(|e| e.to_string())?))
        .collect()
}

/// The pieces of a credential that must never be reflected: the whole value and each
/// `.`-separated segment long enough not to match by chance.
fn secret_pieces(secret: &str) -> Vec<&str> {
    let mut pieces = vec![secret];
    pieces.extend(secret.split('.'));
    pieces.retain(|p| p.len() >= 8);
    pieces
}

fn reflection_problems(out: &Outcome, secrets: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let body = String::from_utf8_lossy(&out.body);
    for secret in secrets {
        for piece in secret_pieces(secret) {
            if body.contains(piece) {
                problems.push(format!("body reflects a credential ({piece:.16}...)"));
            }
            for (name, value) in &out.headers {
                if String::from_utf8_lossy(value.as_bytes()).contains(piece) {
                    problems.push(format!(
                        "header {name} reflects a credential ({piece:.16}...)"
                    ));
                }
            }
            if let Some(err) = &out.error
                && format!("{err:?} {err}").contains(piece)
            {
                problems.push("AuthError reflects a credential".into());
            }
        }
    }
    problems
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits, if needed, until early in a second, so that a proof built now and checked right after
/// sees the same wall-clock second on both sides (the layers read the system clock).
async fn early_in_a_second() {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    if ms > 200 {
        tokio::time::sleep(Duration::from_millis(u64::from(1005 - ms))).await;
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------------

/// Which `WWW-Authenticate` challenge carries the `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Bearer,
    Dpop,
}

#[derive(Debug, Clone, Copy)]
struct Refusal {
    status: u16,
    on: On,
    error: &'static str,
    kind: AuthErrorKind,
    detail: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum Expect {
    /// 200 from the inner service; `Some(jkt)`: a DPoP binding to that key, `None`: bearer.
    Accepted(Option<String>),
    Refused(Refusal),
}

/// 401 `invalid_dpop_proof` on the DPoP challenge, `InvalidDpopProof` with this detail.
const fn bad_proof(detail: &'static str) -> Expect {
    Expect::Refused(Refusal {
        status: 401,
        on: On::Dpop,
        error: "invalid_dpop_proof",
        kind: K::InvalidDpopProof,
        detail: Some(detail),
    })
}

const REPLAY: Expect = Expect::Refused(Refusal {
    status: 401,
    on: On::Dpop,
    error: "invalid_dpop_proof",
    kind: K::DpopReplay,
    detail: None,
});

const fn bad_request(kind: AuthErrorKind) -> Expect {
    Expect::Refused(Refusal {
        status: 400,
        on: On::Dpop,
        error: "invalid_request",
        kind,
        detail: None,
    })
}

const fn invalid_token(on: On, kind: AuthErrorKind) -> Expect {
    Expect::Refused(Refusal {
        status: 401,
        on,
        error: "invalid_token",
        kind,
        detail: None,
    })
}

fn accepted(jkt: &str) -> Expect {
    Expect::Accepted(Some(jkt.to_owned()))
}

/// Every way `out` differs from `refusal`. With `dpop_enabled`, a `Bearer` and a `DPoP`
/// challenge, in that order, exactly one of them carrying the error; without, only `Bearer`.
fn refusal_problems(out: &Outcome, r: &Refusal, dpop_enabled: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |m: String| problems.push(m);
    if out.status != r.status {
        fail(format!("status {} != {}", out.status, r.status));
    }
    if out.seen.calls != 0 {
        fail("inner service reached".into());
    }
    match &out.error {
        Some(e) if e.kind() != r.kind => fail(format!("kind {:?} != {:?}", e.kind(), r.kind)),
        Some(e) if e.detail() != r.detail => {
            fail(format!("detail {:?} != {:?}", e.detail(), r.detail));
        }
        Some(_) => {}
        None => fail("no AuthError in the response extensions".into()),
    }
    if out.headers.get(CACHE_CONTROL).map(|v| v.as_bytes()) != Some(b"no-store") {
        fail("Cache-Control is not no-store".into());
    }
    let body: Value = serde_json::from_slice(&out.body).unwrap_or(Value::Null);
    let description = body.get("error_description").and_then(Value::as_str);
    if body.get("error").and_then(Value::as_str) != Some(r.error) {
        fail(format!(
            "body error {:?} != {:?}",
            body.get("error"),
            r.error
        ));
    }
    let challenges = match challenges(&out.headers) {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return problems;
        }
    };
    let schemes: Vec<&str> = challenges.iter().map(|(s, _)| s.as_str()).collect();
    let expected: &[&str] = if dpop_enabled {
        &["Bearer", "DPoP"]
    } else {
        &["Bearer"]
    };
    if schemes != expected {
        fail(format!("challenges {schemes:?} != {expected:?}"));
        return problems;
    }
    for (scheme, params) in &challenges {
        let carries = match r.on {
            On::Bearer => scheme == "Bearer",
            On::Dpop => scheme == "DPoP",
        } || !dpop_enabled;
        if params.get("resource_metadata").map(String::as_str) != Some(METADATA_URL) {
            fail(format!(
                "{scheme}: resource_metadata {:?}",
                params.get("resource_metadata")
            ));
        }
        if scheme == "DPoP" && params.get("algs").map(String::as_str) != Some(ALGS) {
            fail(format!("DPoP algs {:?} != {ALGS:?}", params.get("algs")));
        }
        if carries {
            if params.get("error").map(String::as_str) != Some(r.error) {
                fail(format!(
                    "{scheme} error {:?} != {:?}",
                    params.get("error"),
                    r.error
                ));
            }
            if params.get("error_description").map(String::as_str) != description
                || description.is_none()
            {
                fail(format!(
                    "{scheme} error_description differs from the body's"
                ));
            }
        } else if params.contains_key("error") || params.contains_key("error_description") {
            fail(format!(
                "{scheme} challenge also carries an error: {params:?}"
            ));
        }
    }
    problems
}

fn acceptance_problems(out: &Outcome, jkt: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if out.status != 200 {
        problems.push(format!(
            "expected 200, got {} ({:?} {:?})",
            out.status,
            out.error.as_ref().map(AuthError::kind),
            out.error.as_ref().and_then(AuthError::detail)
        ));
    }
    if out.seen.calls != 1 {
        problems.push(format!("inner called {} times", out.seen.calls));
    }
    if &out.body[..] != b"inner reached" {
        problems.push("body is not the inner service's".into());
    }
    match &out.seen.principal {
        None => problems.push("inner service saw no Principal".into()),
        Some(p) => {
            let binding = if jkt.is_some() {
                Binding::Dpop
            } else {
                Binding::Bearer
            };
            if p.binding() != binding || p.key_thumbprint() != jkt {
                problems.push(format!(
                    "principal bound {:?} to {:?}, expected {binding:?} to {jkt:?}",
                    p.binding(),
                    p.key_thumbprint()
                ));
            }
            if p.issuer() != ISSUER {
                problems.push(format!("unexpected principal {p:?}"));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Raw P-256 keys for edits that need the exact bytes
// ---------------------------------------------------------------------------------------------

/// A P-256 key signing hand-built header and payload JSON.
struct RawKey {
    key: SigningKey,
    x: Vec<u8>,
    y: Vec<u8>,
}

impl RawKey {
    fn new() -> Self {
        Self::from_key(SigningKey::random(&mut rand_core::OsRng))
    }

    fn from_key(key: SigningKey) -> Self {
        let point = key.verifying_key().to_encoded_point(false);
        Self {
            x: point.x().unwrap().to_vec(),
            y: point.y().unwrap().to_vec(),
            key,
        }
    }

    /// A key whose `x` coordinate starts with a zero byte (so it also has a 31-byte encoding).
    fn with_leading_zero_x() -> Self {
        loop {
            let key = Self::new();
            if key.x[0] == 0 {
                return key;
            }
        }
    }

    /// The canonical public JWK.
    fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": b64(&self.x), "y": b64(&self.y)})
    }

    fn jkt(&self) -> String {
        jwk_thumbprint(&self.jwk().to_string()).unwrap()
    }

    /// `b64(header).b64(payload).b64(r || s)`.
    fn sign(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }

    /// The header JSON of a proof carrying `jwk` (given as JSON text).
    fn header_with(jwk: &str) -> String {
        format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#)
    }

    /// Standard claims for `POST RESOURCE` with `token`, as JSON text, plus `extra` members.
    fn claims(token: &str, extra: &str) -> String {
        format!(
            r#"{{"jti":"{}","htm":"POST","htu":"{RESOURCE}","iat":{},"ath":"{}"{extra}}}"#,
            uuid::Uuid::new_v4(),
            now(),
            thumbprint(token)
        )
    }
}

/// A proof from `pb` padded (claim `pad`, and a header member when the base64url lengths need
/// it) to exactly `len` bytes.
fn sized_proof<'a>(
    pb: &dyn Fn() -> tower_mcp_auth::testing::ProofBuilder<'a>,
    len: usize,
) -> String {
    for extra in ["", "a", "ab", "abc"] {
        let probe = pb().header("x", extra).claim("pad", "").sign();
        let Some(missing) = len.checked_sub(probe.len()) else {
            continue;
        };
        let guess = missing * 3 / 4;
        for pad in guess.saturating_sub(3)..guess + 4 {
            let proof = pb().header("x", extra).claim("pad", "p".repeat(pad)).sign();
            if proof.len() == len {
                return proof;
            }
        }
    }
    panic!("no proof of exactly {len} bytes");
}

/// `n - s` on 32-byte big-endian integers (`s < n`).
fn sub_from_n(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(P256_N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    assert_eq!(borrow, 0, "s >= n");
    out
}

#[test]
fn sub_from_n_works() {
    let mut one = [0u8; 32];
    one[31] = 1;
    let mut n_minus_one = P256_N;
    n_minus_one[31] -= 1;
    assert_eq!(sub_from_n(&one), n_minus_one);
    assert_eq!(sub_from_n(&n_minus_one), one);
    let mut x = [0u8; 32];
    x[0] = 0x01;
    x[31] = 0x52;
    let y = sub_from_n(&x);
    assert_eq!(sub_from_n(&y), x);
}

/// The same proof with its ECDSA signature re-encoded as (r, n - s).
fn flip_s(proof: &str) -> String {
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(sig.len(), 64);
    let mut flipped = sig[..32].to_vec();
    flipped.extend_from_slice(&sub_from_n(&sig[32..]));
    format!("{input}.{}", b64(flipped))
}

fn with_signature(proof: &str, sig: &str) -> String {
    let (input, _) = proof.rsplit_once('.').unwrap();
    format!("{input}.{sig}")
}

// ---------------------------------------------------------------------------------------------
// The hostile table
// ---------------------------------------------------------------------------------------------

type Make<'a> = Box<dyn FnOnce() -> Sent + 'a>;

struct Row<'a> {
    name: &'static str,
    /// Built just before sending, early in a second (time-window edges).
    timed: bool,
    make: Make<'a>,
    expect: Expect,
}

struct Table<'a>(Vec<Row<'a>>);

impl<'a> Table<'a> {
    fn add(&mut self, name: &'static str, sent: Sent, expect: Expect) {
        self.0.push(Row {
            name,
            timed: false,
            make: Box::new(move || sent),
            expect,
        });
    }

    fn timed(&mut self, name: &'static str, make: impl FnOnce() -> Sent + 'a, expect: Expect) {
        self.0.push(Row {
            name,
            timed: true,
            make: Box::new(make),
            expect,
        });
    }
}

fn allowed_auth(dev: &DevIssuer, mode: DpopMode) -> McpAuth {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(DpopConfig::with_mode(mode))
        .build()
        .unwrap()
}

struct Keys {
    dev: DevIssuer,
    /// The client's key, and a token bound to it.
    key: DevDpopKey,
    token: String,
    /// Another client, with its own bound token.
    other: DevDpopKey,
    other_token: String,
    /// A bearer (unbound) token.
    unbound: String,
    /// A raw key and a token bound to it.
    raw: RawKey,
    raw_token: String,
    /// A raw key whose `x` starts with a zero byte, and a token bound to it.
    zero_x: RawKey,
    zero_x_token: String,
}

impl Keys {
    fn new() -> Self {
        let dev = DevIssuer::new(ISSUER);
        let key = DevDpopKey::new();
        let other = DevDpopKey::new();
        let raw = RawKey::new();
        let zero_x = RawKey::with_leading_zero_x();
        Self {
            token: dev.token(RESOURCE).dpop_bound(key.jkt()).sign(),
            other_token: dev.token(RESOURCE).dpop_bound(other.jkt()).sign(),
            unbound: dev.token(RESOURCE).sign(),
            raw_token: dev.token(RESOURCE).dpop_bound(&raw.jkt()).sign(),
            zero_x_token: dev.token(RESOURCE).dpop_bound(&zero_x.jkt()).sign(),
            dev,
            key,
            other,
            raw,
            zero_x,
        }
    }
}

fn rows(k: &Keys) -> Vec<Row<'_>> {
    let mut t = Table(Vec::new());
    let tok = k.token.as_str();
    let key = &k.key;
    let pb = || key.proof_builder("POST", RESOURCE, tok);
    let jkt = key.jkt();
    let t0 = now();

    // Controls.
    t.add("valid proof", dpop(tok, &pb().sign()), accepted(jkt));
    t.add(
        "unbound token as Bearer",
        bearer(&k.unbound, &[]),
        Expect::Accepted(None),
    );
    let lower = pb().sign();
    t.add(
        "lower-case dpop scheme",
        Sent {
            request: request(&[format!("dpop {tok}")], std::slice::from_ref(&lower)),
            secrets: vec![tok.to_owned(), lower.clone()],
        },
        accepted(jkt),
    );
    t.add(
        "nonce claim ignored with nonces off",
        dpop(tok, &pb().nonce("whatever").sign()),
        accepted(jkt),
    );
    let mut decorated = key.public_jwk().clone();
    decorated["kid"] = "client-key-1".into();
    decorated["use"] = "sig".into();
    decorated["alg"] = "ES256".into();
    t.add(
        "jwk with non-required members (same jkt)",
        dpop(tok, &pb().header("jwk", decorated).sign()),
        accepted(jkt),
    );

    // Required claims missing.
    for (name, claim, detail) in [
        ("no jti", "jti", "no jti"),
        ("no htm", "htm", "no htm"),
        ("no htu", "htu", "no htu"),
        ("no iat", "iat", "no iat"),
        ("no ath", "ath", "no ath"),
    ] {
        t.add(
            name,
            dpop(tok, &pb().without_claim(claim).sign()),
            bad_proof(detail),
        );
    }
    // Mistyped claims.
    for (name, claim, value) in [
        ("jti is a number", "jti", json!(12345)),
        ("htm is a number", "htm", json!(1)),
        ("htu is an array", "htu", json!([RESOURCE])),
        ("iat is a string", "iat", json!(t0.to_string())),
        ("iat is negative", "iat", json!(-1)),
        ("iat is a boolean", "iat", json!(true)),
        ("ath is null", "ath", Value::Null),
        ("ath is an object", "ath", json!({"ath": thumbprint(tok)})),
    ] {
        t.add(
            name,
            dpop(tok, &pb().claim(claim, value).sign()),
            bad_proof("bad claims"),
        );
    }
    t.add(
        "empty jti",
        dpop(tok, &pb().claim("jti", "").sign()),
        bad_proof("bad jti"),
    );
    t.add(
        "256-byte jti (the limit)",
        dpop(tok, &pb().claim("jti", "j".repeat(256)).sign()),
        accepted(jkt),
    );
    t.add(
        "257-byte jti",
        dpop(tok, &pb().claim("jti", "j".repeat(257)).sign()),
        bad_proof("bad jti"),
    );

    // typ.
    t.add(
        "no typ",
        dpop(tok, &pb().without_header("typ").sign()),
        bad_proof("typ is not dpop+jwt"),
    );
    // `typ` is a media type (RFC 7515 §4.1.9, RFC 6838 §4.2): case-insensitive, and
    // `application/` may be written out.
    for (name, typ) in [
        ("typ DPOP+JWT (case-insensitive)", "DPOP+JWT"),
        (
            "typ application/dpop+jwt (full media type)",
            "application/dpop+jwt",
        ),
        ("typ Application/DPoP+JWT", "Application/DPoP+JWT"),
    ] {
        t.add(
            name,
            dpop(tok, &pb().header("typ", typ).sign()),
            accepted(jkt),
        );
    }
    for (name, typ) in [
        ("typ JWT", "JWT"),
        ("typ at+jwt", "at+jwt"),
        (
            "typ with a media-type parameter",
            "application/dpop+jwt; charset=utf-8",
        ),
        ("typ text/dpop+jwt", "text/dpop+jwt"),
        (
            "typ application/application/dpop+jwt",
            "application/application/dpop+jwt",
        ),
        ("typ with trailing space", "dpop+jwt "),
    ] {
        t.add(
            name,
            dpop(tok, &pb().header("typ", typ).sign()),
            bad_proof("typ is not dpop+jwt"),
        );
    }
    t.add(
        "typ is a number",
        dpop(tok, &pb().header("typ", 1).sign()),
        bad_proof("bad header"),
    );

    // alg.
    for (name, alg) in [
        ("alg none", "none"),
        ("alg HS256", "HS256"),
        ("alg RS512 (not allowed by default)", "RS512"),
        ("alg unknown", "ES257"),
    ] {
        t.add(
            name,
            dpop(tok, &pb().header("alg", alg).sign()),
            bad_proof("alg not allowed"),
        );
    }
    let none = with_signature(&pb().header("alg", "none").sign(), "");
    t.add(
        "alg none, empty signature",
        dpop(tok, &none),
        bad_proof("alg not allowed"),
    );
    t.add(
        "no alg",
        dpop(tok, &pb().without_header("alg").sign()),
        bad_proof("bad header"),
    );
    for (name, alg) in [
        ("alg ES384 with a P-256 key", "ES384"),
        ("alg EdDSA with a P-256 key", "EdDSA"),
        ("alg RS256 with a P-256 key", "RS256"),
    ] {
        t.add(
            name,
            dpop(tok, &pb().header("alg", alg).sign()),
            bad_proof("unusable jwk"),
        );
    }

    // jwk.
    t.add(
        "no jwk",
        dpop(tok, &pb().without_header("jwk").sign()),
        bad_proof("no jwk"),
    );
    let mut private = key.public_jwk().clone();
    private["d"] = b64([7u8; 32]).into();
    t.add(
        "jwk with private d",
        dpop(tok, &pb().header("jwk", private).sign()),
        bad_proof("unusable jwk"),
    );
    t.add(
        "oct jwk",
        dpop(
            tok,
            &pb()
                .header("jwk", json!({"kty":"oct","k":b64([1u8; 32])}))
                .sign(),
        ),
        bad_proof("unusable jwk"),
    );
    t.add(
        "P-384 coordinates with ES256",
        dpop(
            tok,
            &pb()
                .header(
                    "jwk",
                    json!({"kty":"EC","crv":"P-384","x":b64([3u8; 48]),"y":b64([4u8; 48])}),
                )
                .sign(),
        ),
        bad_proof("unusable jwk"),
    );
    t.add(
        "Ed25519 key with ES256",
        dpop(
            tok,
            &pb()
                .header("jwk", json!({"kty":"OKP","crv":"Ed25519","x":RFC8037_X}))
                .sign(),
        ),
        bad_proof("unusable jwk"),
    );
    let mut declared = key.public_jwk().clone();
    declared["alg"] = "ES384".into();
    t.add(
        "jwk alg ES384 with ES256",
        dpop(tok, &pb().header("jwk", declared).sign()),
        bad_proof("unusable jwk"),
    );
    t.add(
        "jwk is a string",
        dpop(tok, &pb().header("jwk", "EC").sign()),
        bad_proof("unusable jwk"),
    );
    t.add(
        "foreign RFC 9449 key, garbage signature",
        dpop(
            tok,
            &with_signature(
                &pb()
                    .header("jwk", serde_json::from_str::<Value>(RFC9449_JWK).unwrap())
                    .sign(),
                &b64([0x5au8; 64]),
            ),
        ),
        bad_proof("bad signature"),
    );

    // Non-canonical encodings of a real key, properly signed by it: accepting one would give the
    // same key a second thumbprint (a second replay namespace).
    let zx = &k.zero_x;
    let zx_y = b64(&zx.y);
    let short_x = format!(
        r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{zx_y}"}}"#,
        b64(&zx.x[1..])
    );
    t.add(
        "31-byte x (leading zero stripped)",
        dpop(
            &k.zero_x_token,
            &zx.sign(
                &RawKey::header_with(&short_x),
                &RawKey::claims(&k.zero_x_token, ""),
            ),
        ),
        bad_proof("unusable jwk"),
    );
    let canonical_x = b64(&k.raw.x);
    let mut chars: Vec<char> = canonical_x.chars().collect();
    // 32 bytes = 43 characters; the last one carries 2 data bits and 4 zero bits.
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = ALPHABET.find(chars[42]).unwrap();
    chars[42] = ALPHABET.as_bytes()[last | 1] as char;
    let trailing_bits_x: String = chars.into_iter().collect();
    assert_ne!(trailing_bits_x, canonical_x);
    let raw_y = b64(&k.raw.y);
    for (name, x) in [
        ("x with non-zero trailing bits", trailing_bits_x),
        ("x with base64 padding", format!("{canonical_x}=")),
        ("x in standard base64 alphabet", {
            // Only differs if the encoding has a '-' or '_'; fall back to padding otherwise.
            let std = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&k.raw.x);
            if std == canonical_x {
                format!("{canonical_x}==")
            } else {
                std
            }
        }),
    ] {
        let jwk = format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{raw_y}"}}"#);
        t.add(
            name,
            dpop(
                &k.raw_token,
                &k.raw.sign(
                    &RawKey::header_with(&jwk),
                    &RawKey::claims(&k.raw_token, ""),
                ),
            ),
            bad_proof("unusable jwk"),
        );
    }
    // The raw key itself, canonically encoded: accepted (control for the rows above).
    let raw_jwk = k.raw.jwk().to_string();
    t.add(
        "raw key, canonical jwk",
        dpop(
            &k.raw_token,
            &k.raw.sign(
                &RawKey::header_with(&raw_jwk),
                &RawKey::claims(&k.raw_token, ""),
            ),
        ),
        accepted(&k.raw.jkt()),
    );
    t.add(
        "duplicate htu member (evil first)",
        dpop(
            &k.raw_token,
            &k.raw.sign(
                &RawKey::header_with(&raw_jwk),
                &RawKey::claims(&k.raw_token, "").replacen(
                    r#""htu""#,
                    r#""htu":"https://evil.example.com/mcp","htu""#,
                    1,
                ),
            ),
        ),
        bad_proof("bad claims"),
    );
    t.add(
        "duplicate jwk member",
        dpop(
            &k.raw_token,
            &k.raw.sign(
                &format!(
                    r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{raw_jwk},"jwk":{RFC9449_JWK}}}"#
                ),
                &RawKey::claims(&k.raw_token, ""),
            ),
        ),
        bad_proof("bad header"),
    );
    t.add(
        "payload is not JSON",
        dpop(
            &k.raw_token,
            &k.raw.sign(&RawKey::header_with(&raw_jwk), "not json"),
        ),
        bad_proof("bad claims"),
    );
    t.add(
        "payload is a JSON array",
        dpop(
            &k.raw_token,
            &k.raw.sign(&RawKey::header_with(&raw_jwk), "[1,2]"),
        ),
        bad_proof("bad claims"),
    );
    t.add(
        "header is a JSON array",
        dpop(
            &k.raw_token,
            &k.raw
                .sign("[\"dpop+jwt\"]", &RawKey::claims(&k.raw_token, "")),
        ),
        bad_proof("bad header"),
    );
    t.add(
        "lone surrogate escape in an unknown header member",
        dpop(
            &k.raw_token,
            &k.raw.sign(
                &format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{raw_jwk},"x":"\ud800"}}"#),
                &RawKey::claims(&k.raw_token, ""),
            ),
        ),
        bad_proof("bad header"),
    );
    t.add(
        "lone surrogate escape in an unknown claim",
        dpop(
            &k.raw_token,
            &k.raw.sign(
                &RawKey::header_with(&raw_jwk),
                &RawKey::claims(&k.raw_token, r#","note":"\uDC00""#),
            ),
        ),
        bad_proof("bad claims"),
    );

    // Signatures.
    let good = pb().sign();
    let mut sig = URL_SAFE_NO_PAD
        .decode(good.rsplit_once('.').unwrap().1)
        .unwrap();
    sig[10] ^= 0x01;
    t.add(
        "bad signature (one bit)",
        dpop(tok, &with_signature(&good, &b64(&sig))),
        bad_proof("bad signature"),
    );
    let der = {
        let (input, _) = good.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD
            .decode(good.rsplit_once('.').unwrap().1)
            .unwrap();
        let der = Signature::from_slice(&sig).unwrap().to_der();
        format!("{input}.{}", b64(der.as_bytes()))
    };
    t.add(
        "DER-encoded ECDSA signature",
        dpop(tok, &der),
        bad_proof("bad signature"),
    );
    t.add(
        "all-zero 64-byte signature",
        dpop(tok, &with_signature(&good, &b64([0u8; 64]))),
        bad_proof("bad signature"),
    );
    t.add(
        "signature of another proof",
        dpop(
            tok,
            &with_signature(&good, pb().sign().rsplit_once('.').unwrap().1),
        ),
        bad_proof("bad signature"),
    );
    t.add(
        "empty signature",
        dpop(tok, &with_signature(&good, "")),
        bad_proof("bad base64url"),
    );
    t.add(
        "signature not base64url",
        dpop(tok, &with_signature(&good, "abc+/def")),
        bad_proof("bad base64url"),
    );
    t.add(
        "signed by another key",
        dpop(
            tok,
            &with_signature(
                &good,
                k.other
                    .proof("POST", RESOURCE, tok)
                    .rsplit_once('.')
                    .unwrap()
                    .1,
            ),
        ),
        bad_proof("bad signature"),
    );

    // htm.
    t.add(
        "htm post (lower case)",
        dpop(tok, &pb().claim("htm", "post").sign()),
        bad_proof("htm does not match the method"),
    );
    t.add(
        "htm GET",
        dpop(tok, &pb().claim("htm", "GET").sign()),
        bad_proof("htm does not match the method"),
    );

    // htu.
    for (name, htu) in [
        ("htu another host", "https://evil.example.com/mcp"),
        ("htu another port", "https://mcp.example.com:8443/mcp"),
        ("htu another path", "https://mcp.example.com/mcp2"),
        ("htu trailing slash", "https://mcp.example.com/mcp/"),
        ("htu upper-case path", "https://mcp.example.com/MCP"),
        ("htu http scheme", "http://mcp.example.com/mcp"),
        ("htu with userinfo", "https://user@mcp.example.com/mcp"),
        ("htu relative", "/mcp"),
        ("htu trailing-dot host", "https://mcp.example.com./mcp"),
    ] {
        t.add(
            name,
            dpop(tok, &pb().claim("htu", htu).sign()),
            bad_proof("htu does not match"),
        );
    }
    for (name, htu) in [
        (
            "htu with a query (ignored)",
            "https://mcp.example.com/mcp?x=1",
        ),
        ("htu with upper-case host", "https://MCP.Example.COM/mcp"),
        (
            "htu with default port and fragment",
            "https://mcp.example.com:443/mcp#f",
        ),
        (
            "htu with an encoded unreserved char",
            "https://mcp.example.com/%6Dcp",
        ),
    ] {
        t.add(
            name,
            dpop(tok, &pb().claim("htu", htu).sign()),
            accepted(jkt),
        );
    }

    // iat window (default: 60 s old, 10 s ahead).
    t.timed(
        "iat 61 s old",
        move || dpop(tok, &pb().claim("iat", now() - 61).sign()),
        bad_proof("iat too old"),
    );
    t.timed(
        "iat 59 s old",
        move || dpop(tok, &pb().claim("iat", now() - 59).sign()),
        accepted(jkt),
    );
    t.timed(
        "iat 11 s ahead",
        move || dpop(tok, &pb().claim("iat", now() + 11).sign()),
        bad_proof("iat in the future"),
    );
    t.timed(
        "iat 9 s ahead",
        move || dpop(tok, &pb().claim("iat", now() + 9).sign()),
        accepted(jkt),
    );
    t.timed(
        "iat 60 s old (the limit)",
        move || dpop(tok, &pb().claim("iat", now() - 60).sign()),
        accepted(jkt),
    );
    t.add(
        "iat 10 s ahead (the limit)",
        dpop(tok, &pb().claim("iat", t0 + 10).sign()),
        accepted(jkt),
    );
    t.add(
        "iat 0",
        dpop(tok, &pb().claim("iat", 0).sign()),
        bad_proof("iat too old"),
    );
    t.add(
        "iat u64::MAX",
        dpop(tok, &pb().claim("iat", u64::MAX).sign()),
        bad_proof("iat in the future"),
    );

    // ath.
    t.add(
        "ath wrong",
        dpop(tok, &pb().claim("ath", thumbprint("x")).sign()),
        bad_proof("ath does not match the token"),
    );
    t.add(
        "ath of another token",
        dpop(tok, &pb().claim("ath", thumbprint(&k.other_token)).sign()),
        bad_proof("ath does not match the token"),
    );
    t.add(
        "ath padded",
        dpop(
            tok,
            &pb().claim("ath", format!("{}=", thumbprint(tok))).sign(),
        ),
        bad_proof("ath does not match the token"),
    );
    t.add(
        "proof made for another token",
        dpop(tok, &key.proof("POST", RESOURCE, &k.other_token)),
        bad_proof("ath does not match the token"),
    );

    // DPoP header shape.
    let p1 = pb().sign();
    let p2 = pb().sign();
    t.add(
        "two DPoP headers",
        dpop_many(tok, &[&p1, &p2]),
        bad_request(K::MultipleDpopProofs),
    );
    t.add(
        "two comma-separated proofs",
        dpop(tok, &format!("{p1}, {p2}")),
        bad_request(K::MultipleDpopProofs),
    );
    t.add(
        "two proofs, comma, no space",
        dpop(tok, &format!("{p1},{p2}")),
        bad_request(K::MultipleDpopProofs),
    );
    t.add(
        "no DPoP header with the DPoP scheme",
        dpop_many(tok, &[]),
        bad_request(K::MissingDpopProof),
    );
    t.add(
        "empty DPoP header",
        dpop(tok, ""),
        bad_proof("not a compact JWS"),
    );
    let [h, p, s] = {
        let v: Vec<&str> = p1.split('.').collect();
        [v[0], v[1], v[2]]
    };
    t.add(
        "two-segment proof",
        dpop(tok, &format!("{h}.{p}")),
        bad_proof("not a compact JWS"),
    );
    t.add(
        "JWE-shaped 5-segment proof",
        dpop(tok, &format!("{h}.{p}.{s}.{p}.{s}")),
        bad_proof("not a compact JWS"),
    );
    t.add(
        "header not base64url",
        dpop(tok, &format!("{h}*.{p}.{s}")),
        bad_proof("bad base64url"),
    );
    t.add(
        "crit in the proof header",
        dpop(
            tok,
            &pb().header("crit", json!(["exp"])).header("exp", 1).sign(),
        ),
        bad_proof("unsupported critical header"),
    );
    t.add(
        "proof over 4096 bytes",
        dpop(tok, &pb().claim("pad", "p".repeat(4096)).sign()),
        bad_proof("too large"),
    );
    let at_limit = sized_proof(&pb, 4096);
    t.add(
        "proof of exactly 4096 bytes",
        dpop(tok, &at_limit),
        accepted(jkt),
    );
    t.add(
        "proof of 4097 bytes",
        dpop(tok, &sized_proof(&pb, 4097)),
        bad_proof("too large"),
    );

    // Replays: keyed by (jkt, jti), never by the proof bytes.
    let original = pb().claim("jti", "shared-jti-0001").sign();
    t.add("replay: original", dpop(tok, &original), accepted(jkt));
    t.add("replay: same proof again", dpop(tok, &original), REPLAY);
    t.add(
        "replay: high-S re-encoded signature",
        dpop(tok, &flip_s(&original)),
        REPLAY,
    );
    t.add(
        "replay: same jti, re-signed with another iat and header",
        dpop(
            tok,
            &pb()
                .claim("jti", "shared-jti-0001")
                .claim("iat", t0 - 1)
                .header("jwk", {
                    let mut j = key.public_jwk().clone();
                    j["kid"] = "k2".into();
                    j
                })
                .sign(),
        ),
        REPLAY,
    );
    t.add(
        "same jti from another key with its own token",
        dpop(
            &k.other_token,
            &k.other
                .proof_builder("POST", RESOURCE, &k.other_token)
                .claim("jti", "shared-jti-0001")
                .sign(),
        ),
        accepted(k.other.jkt()),
    );

    // Binding.
    t.add(
        "bound token as Bearer",
        bearer(tok, &[]),
        invalid_token(On::Bearer, K::MissingProofOfPossession),
    );
    t.add(
        "bound token as Bearer, with a valid proof header",
        bearer(tok, &[&pb().sign()]),
        invalid_token(On::Bearer, K::MissingProofOfPossession),
    );
    t.add(
        "unbound token with the DPoP scheme and a valid proof",
        dpop(&k.unbound, &key.proof("POST", RESOURCE, &k.unbound)),
        invalid_token(On::Dpop, K::DpopKeyMismatch),
    );
    t.add(
        "bound token, proof from another key",
        dpop(tok, &k.other.proof("POST", RESOURCE, tok)),
        invalid_token(On::Dpop, K::DpopKeyMismatch),
    );
    t.add(
        "other key's token, this key's proof",
        dpop(&k.other_token, &key.proof("POST", RESOURCE, &k.other_token)),
        invalid_token(On::Dpop, K::DpopKeyMismatch),
    );
    let forged = k.dev.token(RESOURCE).dpop_bound(jkt).sign();
    let forged = with_signature(&forged, &b64([9u8; 64]));
    t.add(
        "badly signed bound token, valid proof",
        dpop(&forged, &key.proof("POST", RESOURCE, &forged)),
        invalid_token(On::Dpop, K::InvalidSignature),
    );
    t.0
}

/// [`allowed_auth`], audited into a capture.
fn audited_allowed_auth(dev: &DevIssuer, mode: DpopMode) -> (McpAuth, common::AuditCapture) {
    let (emitter, capture) = common::AuditCapture::new();
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(DpopConfig::with_mode(mode))
        .audit(emitter)
        .build()
        .unwrap();
    (auth, capture)
}

/// The row's one audit event: schema-valid, free of the row's token and proofs, agreeing with
/// the expectation (a refusal: `deny`, its status and reason kind, no principal; an acceptance:
/// `allow`, the binding and key thumbprint).
async fn audit_problems(
    capture: &mut common::AuditCapture,
    expect: &Expect,
    secrets: &[String],
) -> Vec<String> {
    use tower_mcp_auth::audit::{DecisionKind, Outcome};
    let event = match capture.one(secrets).await {
        Ok(event) => event,
        Err(problems) => return problems,
    };
    let mut problems = Vec::new();
    let mut fail = |m: String| problems.push(format!("audit: {m}"));
    if event.outcome != Outcome::Completed {
        fail(format!("outcome {:?}", event.outcome));
    }
    match expect {
        Expect::Refused(r) => {
            if event.decision != DecisionKind::Deny {
                fail(format!("decision {:?}, expected deny", event.decision));
            }
            if event.reason.as_deref() != Some(r.kind.as_str()) {
                fail(format!(
                    "reason {:?} != {:?}",
                    event.reason,
                    r.kind.as_str()
                ));
            }
            if event.http.status != r.status {
                fail(format!("status {} != {}", event.http.status, r.status));
            }
            if event.principal.is_some() || event.token.is_some() {
                fail("a refused proof left a principal or token facts".into());
            }
        }
        Expect::Accepted(jkt) => {
            if event.decision != DecisionKind::Allow || event.reason.is_some() {
                fail(format!(
                    "{:?} {:?}, expected allow",
                    event.decision, event.reason
                ));
            }
            if event.http.status != 200 {
                fail(format!("status {}", event.http.status));
            }
            let binding = if jkt.is_some() { "dpop" } else { "bearer" };
            match &event.token {
                Some(t) if t.binding == binding && t.key_thumbprint == *jkt => {}
                other => fail(format!("token facts {other:?}, expected {binding} {jkt:?}")),
            }
        }
    }
    problems
}

#[tokio::test]
async fn hostile_proofs_table() {
    let keys = Keys::new();
    let (auth, mut audit) = audited_allowed_auth(&keys.dev, DpopMode::Allowed);
    let rows = rows(&keys);
    let total = rows.len();
    let accepted_rows = rows
        .iter()
        .filter(|r| matches!(r.expect, Expect::Accepted(_)))
        .count();
    assert!(
        total - accepted_rows >= 40,
        "only {} refused rows",
        total - accepted_rows
    );

    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for row in rows {
        assert!(names.insert(row.name), "duplicate row {}", row.name);
        if row.timed {
            early_in_a_second().await;
        }
        let sent = (row.make)();
        let out = send(&auth, sent.request).await;
        let mut problems = reflection_problems(&out, &sent.secrets);
        if (500..600).contains(&out.status) {
            problems.push(format!("5xx status {}", out.status));
        }
        if out.headers.contains_key("dpop-nonce") {
            problems.push("DPoP-Nonce sent with nonces off".into());
        }
        match &row.expect {
            Expect::Accepted(jkt) => problems.extend(acceptance_problems(&out, jkt.as_deref())),
            Expect::Refused(r) => problems.extend(refusal_problems(&out, r, true)),
        }
        // Exactly one audit event per row.
        problems.extend(audit_problems(&mut audit, &row.expect, &sent.secrets).await);
        failures.extend(problems.into_iter().map(|p| format!("[{}] {p}", row.name)));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) over {total} rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
    audit.handle.shutdown().await.unwrap();
    eprintln!(
        "hostile_proofs_table: {total} rows ({accepted_rows} accepted) passed, each audited once"
    );
}

/// A client's key is remembered after its first proof (by its `jwk` text); every later proof's
/// signature is still checked against it. Same result with the key cache off.
#[tokio::test]
async fn remembered_proof_keys_still_verify_every_signature() {
    let Expect::Refused(bad_signature) = bad_proof("bad signature") else {
        unreachable!()
    };
    for capacity in [DpopConfig::default().key_cache_capacity, 0] {
        let dev = DevIssuer::new(ISSUER);
        let key = DevDpopKey::new();
        let other = DevDpopKey::new();
        let token = dev.token(RESOURCE).dpop_bound(key.jkt()).sign();
        let mut config = DpopConfig::with_mode(DpopMode::Allowed);
        config.key_cache_capacity = capacity;
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
            .dpop(config)
            .build()
            .unwrap();
        let mut problems = Vec::new();
        for round in 0..3 {
            let out = send(
                &auth,
                dpop(&token, &key.proof("POST", RESOURCE, &token)).request,
            )
            .await;
            for p in acceptance_problems(&out, Some(key.jkt())) {
                problems.push(format!("capacity {capacity}, valid proof {round}: {p}"));
            }
        }
        // The same `jwk` text as the remembered key, with a signature it did not make: another
        // proof's (same key, other claims), or another key's.
        let a = key.proof("POST", RESOURCE, &token);
        let b = key.proof("POST", RESOURCE, &token);
        let c = other.proof("POST", RESOURCE, &token);
        for (what, sig) in [
            ("another proof's signature", b.rsplit_once('.').unwrap().1),
            ("another key's signature", c.rsplit_once('.').unwrap().1),
        ] {
            let forged = with_signature(&a, sig);
            let out = send(&auth, dpop(&token, &forged).request).await;
            for p in refusal_problems(&out, &bad_signature, true) {
                problems.push(format!("capacity {capacity}, {what}: {p}"));
            }
        }
        // The untouched proof still passes: the refusals above recorded nothing.
        let out = send(&auth, dpop(&token, &a).request).await;
        for p in acceptance_problems(&out, Some(key.jkt())) {
            problems.push(format!("capacity {capacity}, the original proof: {p}"));
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

async fn metadata(auth: &McpAuth) -> Value {
    let req = Request::get(METADATA_URL).body(Full::default()).unwrap();
    let out = send(auth, req).await;
    assert_eq!(out.status, 200);
    serde_json::from_slice(&out.body).unwrap()
}

#[tokio::test]
async fn required_mode_refuses_bearer_tokens_and_says_so() {
    let k = Keys::new();
    let auth = allowed_auth(&k.dev, DpopMode::Required);

    let sent = bearer(&k.unbound, &[]);
    let out = send(&auth, sent.request).await;
    let mut problems = refusal_problems(
        &out,
        &Refusal {
            status: 401,
            on: On::Bearer,
            error: "invalid_token",
            kind: K::DpopRequired,
            detail: None,
        },
        true,
    );
    problems.extend(reflection_problems(&out, &sent.secrets));
    assert!(problems.is_empty(), "{problems:#?}");

    // A bound token with its proof still works.
    let sent = dpop(&k.token, &k.key.proof("POST", RESOURCE, &k.token));
    let out = send(&auth, sent.request).await;
    let problems = acceptance_problems(&out, Some(k.key.jkt()));
    assert!(problems.is_empty(), "{problems:#?}");

    let doc = metadata(&auth).await;
    assert_eq!(
        doc["dpop_bound_access_tokens_required"],
        json!(true),
        "{doc}"
    );
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "PS256", "RS256"]),
        "{doc}"
    );

    // Allowed: algorithms advertised, binding not required (member omitted).
    let doc = metadata(&allowed_auth(&k.dev, DpopMode::Allowed)).await;
    assert!(
        doc.get("dpop_bound_access_tokens_required").is_none(),
        "{doc}"
    );
    assert_eq!(
        doc["dpop_signing_alg_values_supported"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
}

#[tokio::test]
async fn off_mode_refuses_the_dpop_scheme_without_a_dpop_challenge() {
    let k = Keys::new();
    let auth = allowed_auth(&k.dev, DpopMode::Off);

    let sent = dpop(&k.token, &k.key.proof("POST", RESOURCE, &k.token));
    let out = send(&auth, sent.request).await;
    let mut problems = refusal_problems(
        &out,
        &Refusal {
            status: 401,
            on: On::Bearer,
            error: "invalid_token",
            kind: K::DpopNotEnabled,
            detail: None,
        },
        false,
    );
    problems.extend(reflection_problems(&out, &sent.secrets));
    assert!(problems.is_empty(), "{problems:#?}");

    // A bound token cannot fall back to Bearer either.
    let out = send(&auth, bearer(&k.token, &[]).request).await;
    let problems = refusal_problems(
        &out,
        &Refusal {
            status: 401,
            on: On::Bearer,
            error: "invalid_token",
            kind: K::MissingProofOfPossession,
            detail: None,
        },
        false,
    );
    assert!(problems.is_empty(), "{problems:#?}");

    // Plain bearer tokens work; the metadata says nothing about DPoP.
    let out = send(&auth, bearer(&k.unbound, &[]).request).await;
    let problems = acceptance_problems(&out, None);
    assert!(problems.is_empty(), "{problems:#?}");
    let doc = metadata(&auth).await;
    assert!(
        doc.get("dpop_signing_alg_values_supported").is_none(),
        "{doc}"
    );
    assert!(
        doc.get("dpop_bound_access_tokens_required").is_none(),
        "{doc}"
    );
}

// ---------------------------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------------------------

fn nonce_of(out: &Outcome) -> Option<String> {
    out.headers
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

const USE_NONCE: Refusal = Refusal {
    status: 401,
    on: On::Dpop,
    error: "use_dpop_nonce",
    kind: K::UseDpopNonce,
    detail: None,
};

#[tokio::test]
async fn nonces_are_required_issued_and_checked() {
    let k = Keys::new();
    let mut config = DpopConfig::with_mode(DpopMode::Allowed);
    config.nonces = true;
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(k.dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(config)
        .build()
        .unwrap();
    let tok = &k.token;
    let pb = || k.key.proof_builder("POST", RESOURCE, tok);
    let is_nonce =
        |n: &str| n.len() == 32 && URL_SAFE_NO_PAD.decode(n).is_ok_and(|raw| raw.len() == 24);

    // No nonce: use_dpop_nonce with a fresh nonce.
    let sent = dpop(tok, &pb().sign());
    let out = send(&auth, sent.request).await;
    let mut problems = refusal_problems(&out, &USE_NONCE, true);
    problems.extend(reflection_problems(&out, &sent.secrets));
    assert!(problems.is_empty(), "{problems:#?}");
    let nonce = nonce_of(&out).expect("DPoP-Nonce on use_dpop_nonce");
    assert!(is_nonce(&nonce), "{nonce}");
    let dpop_challenge = out.headers.get_all(WWW_AUTHENTICATE).iter().nth(1).unwrap();
    assert!(
        dpop_challenge
            .to_str()
            .unwrap()
            .starts_with("DPoP error=\"use_dpop_nonce\""),
        "{dpop_challenge:?}"
    );

    // With it: accepted, and the success carries a nonce.
    let with_nonce = pb().nonce(&nonce).sign();
    let out = send(&auth, dpop(tok, &with_nonce).request).await;
    let problems = acceptance_problems(&out, Some(k.key.jkt()));
    assert!(problems.is_empty(), "{problems:#?}");
    let next = nonce_of(&out).expect("DPoP-Nonce on success");
    assert!(is_nonce(&next), "{next}");

    // The nonce serves several proofs (it is not single-use); a replay is still a replay, and
    // still gets a nonce.
    let out = send(&auth, dpop(tok, &pb().nonce(&nonce).sign()).request).await;
    assert!(acceptance_problems(&out, Some(k.key.jkt())).is_empty());
    let out = send(&auth, dpop(tok, &with_nonce).request).await;
    let problems = refusal_problems(
        &out,
        &match REPLAY {
            Expect::Refused(r) => r,
            Expect::Accepted(_) => unreachable!(),
        },
        true,
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(nonce_of(&out).is_some(), "no DPoP-Nonce on a replay");

    // Forged (right shape, random bytes) and garbage nonces.
    let mut random = [0u8; 24];
    random[..8].copy_from_slice(&(now() / 60).to_be_bytes());
    random[8..].copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    let forged = b64(random);
    assert!(is_nonce(&forged));
    for bad in [
        forged.as_str(),
        "garbage",
        "",
        &b64([0u8; 24]),
        &format!("{nonce}x"),
    ] {
        let sent = dpop(tok, &pb().nonce(bad).sign());
        let out = send(&auth, sent.request).await;
        let mut problems = refusal_problems(&out, &USE_NONCE, true);
        problems.extend(reflection_problems(&out, &sent.secrets));
        assert!(problems.is_empty(), "nonce {bad:?}: {problems:#?}");
        assert!(
            nonce_of(&out).is_some_and(|n| is_nonce(&n)),
            "nonce {bad:?}"
        );
    }

    // A bad proof also gets a nonce (so the client can retry at once).
    let out = send(
        &auth,
        dpop(tok, &pb().nonce(&nonce).claim("htm", "GET").sign()).request,
    )
    .await;
    let problems = refusal_problems(
        &out,
        &Refusal {
            status: 401,
            on: On::Dpop,
            error: "invalid_dpop_proof",
            kind: K::InvalidDpopProof,
            detail: Some("htm does not match the method"),
        },
        true,
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(nonce_of(&out).is_some());
}

/// Nonce time steps through the whole stack with the DPoP clock fixed (default step 60 s): a
/// nonce is good in its step and the next; two steps old, from a later step, or forged, it gets
/// 401 `use_dpop_nonce` with a fresh `DPoP-Nonce`, and a retry with that nonce passes.
#[tokio::test]
async fn nonce_steps_at_a_fixed_clock() {
    use std::sync::atomic::{AtomicU64, Ordering};

    let k = Keys::new();
    let mut config = DpopConfig::with_mode(DpopMode::Allowed);
    config.nonces = true;
    assert_eq!(config.nonce_step_secs, 60);
    // Step-aligned, so offsets 0..59 are one step.
    let t0 = now() / 60 * 60;
    let clock = Arc::new(AtomicU64::new(t0));
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(k.dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(config)
        .dpop_clock({
            let clock = clock.clone();
            move || clock.load(Ordering::SeqCst)
        })
        .build()
        .unwrap();
    let tok = &k.token;
    let jkt = k.key.jkt();
    let at = |offset: u64| {
        clock.store(t0 + offset, Ordering::SeqCst);
        k.key
            .proof_builder("POST", RESOURCE, tok)
            .issued_at(t0 + offset)
    };
    // The nonce the server hands out at each offset (from a refusal of a nonce-less proof).
    let mut issued = BTreeMap::new();
    for offset in [0, 60, 120, 180] {
        let out = send(&auth, dpop(tok, &at(offset).sign()).request).await;
        let problems = refusal_problems(&out, &USE_NONCE, true);
        assert!(problems.is_empty(), "t0+{offset}: {problems:#?}");
        issued.insert(offset, nonce_of(&out).expect("DPoP-Nonce"));
    }
    let n = |offset: u64| issued[&offset].clone();
    let distinct: BTreeSet<_> = issued.values().collect();
    assert_eq!(distinct.len(), 4, "one nonce per step: {issued:?}");

    // A nonce with the current step's prefix and another step's tag, and random bytes.
    let raw = |nonce: &str| URL_SAFE_NO_PAD.decode(nonce).unwrap();
    let mut spliced = raw(&n(0));
    spliced[8..].copy_from_slice(&raw(&n(60))[8..]);
    let spliced = b64(spliced);
    let mut random = [0u8; 24];
    random[..8].copy_from_slice(&(t0 / 60).to_be_bytes());
    random[8..].copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    let forged = b64(random);

    // (row, clock offset, nonce sent, Ok(nonce on the success) or Err(fresh nonce expected)).
    let rows: Vec<(&str, u64, String, Result<String, String>)> = vec![
        ("current step", 0, n(0), Ok(n(0))),
        ("current step, its last second", 59, n(0), Ok(n(0))),
        ("previous step", 60, n(0), Ok(n(60))),
        ("previous step, its last second", 119, n(0), Ok(n(60))),
        ("two steps old", 120, n(0), Err(n(120))),
        ("three steps old", 180, n(0), Err(n(180))),
        ("two steps old, later nonce", 180, n(60), Err(n(180))),
        ("from a later step", 0, n(60), Err(n(0))),
        ("forged for the current step", 0, forged, Err(n(0))),
        (
            "current step with another step's tag",
            0,
            spliced,
            Err(n(0)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, offset, nonce, expect) in rows {
        let sent = dpop(tok, &at(offset).nonce(&nonce).sign());
        let out = send(&auth, sent.request).await;
        let mut problems = reflection_problems(&out, &sent.secrets);
        match &expect {
            Ok(next) => {
                problems.extend(acceptance_problems(&out, Some(jkt)));
                if nonce_of(&out).as_ref() != Some(next) {
                    problems.push(format!("success nonce {:?} != {next:?}", nonce_of(&out)));
                }
            }
            Err(fresh) => {
                problems.extend(refusal_problems(&out, &USE_NONCE, true));
                let got = nonce_of(&out);
                if got.as_ref() != Some(fresh) || got.as_ref() == Some(&nonce) {
                    problems.push(format!("fresh nonce {got:?}, expected {fresh:?}"));
                }
                // The client retries at once with the fresh nonce, at the same time: accepted.
                let retry = at(offset).nonce(fresh).sign();
                let out = send(&auth, dpop(tok, &retry).request).await;
                problems.extend(
                    acceptance_problems(&out, Some(jkt))
                        .into_iter()
                        .map(|p| format!("retry: {p}")),
                );
            }
        }
        failures.extend(problems.into_iter().map(|p| format!("[{name}] {p}")));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `DevDpopKey::retry_proof` answers the layer's own `use_dpop_nonce` refusal (system clock).
#[tokio::test]
async fn retry_proof_answers_the_nonce_challenge() {
    let k = Keys::new();
    let mut config = DpopConfig::with_mode(DpopMode::Allowed);
    config.nonces = true;
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(k.dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(config)
        .build()
        .unwrap();
    let tok = &k.token;
    early_in_a_second().await;
    let out = send(
        &auth,
        dpop(tok, &k.key.proof("POST", RESOURCE, tok)).request,
    )
    .await;
    assert!(refusal_problems(&out, &USE_NONCE, true).is_empty());
    let mut refused = Response::new(());
    *refused.status_mut() = http::StatusCode::from_u16(out.status).unwrap();
    *refused.headers_mut() = out.headers.clone();
    assert_eq!(
        tower_mcp_auth::testing::nonce_challenge(&refused),
        nonce_of(&out).as_deref()
    );
    let retry = k
        .key
        .retry_proof(&refused, "POST", RESOURCE, tok)
        .expect("a use_dpop_nonce refusal");
    let out = send(&auth, dpop(tok, &retry).request).await;
    let problems = acceptance_problems(&out, Some(k.key.jkt()));
    assert!(problems.is_empty(), "{problems:#?}");
    // The success is not a challenge: no second retry.
    let mut ok = Response::new(());
    *ok.headers_mut() = out.headers.clone();
    assert!(k.key.retry_proof(&ok, "POST", RESOURCE, tok).is_none());
    // Another refusal (a bad proof) with a nonce is not a nonce challenge either.
    let bad = k
        .key
        .proof_builder("POST", RESOURCE, tok)
        .nonce(&nonce_of(&out).unwrap())
        .claim("htm", "GET")
        .sign();
    let out = send(&auth, dpop(tok, &bad).request).await;
    assert_eq!(out.status, 401);
    let mut refused = Response::new(());
    *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
    *refused.headers_mut() = out.headers.clone();
    assert!(out.headers.contains_key("dpop-nonce"));
    assert_eq!(tower_mcp_auth::testing::nonce_challenge(&refused), None);
}

// ---------------------------------------------------------------------------------------------
// Concurrency and capacity
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_accept_exactly_one() {
    let k = Keys::new();
    let auth = allowed_auth(&k.dev, DpopMode::Allowed);
    let proof = k.key.proof("POST", RESOURCE, &k.token);
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let auth = auth.clone();
        let request = dpop(&k.token, &proof).request;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            send(&auth, request).await
        }));
    }
    let mut accepted = 0;
    let mut problems = Vec::new();
    for task in tasks {
        let out = task.await.unwrap();
        if out.status == 200 {
            accepted += 1;
            problems.extend(acceptance_problems(&out, Some(k.key.jkt())));
        } else if let Expect::Refused(r) = REPLAY {
            problems.extend(refusal_problems(&out, &r, true));
        }
    }
    assert_eq!(accepted, 1, "{problems:#?}");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn full_replay_store_refuses_new_proofs_and_remembers_old_ones() {
    let k = Keys::new();
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(k.dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(DpopConfig::with_mode(DpopMode::Allowed))
        .replay_store(Arc::new(InMemoryReplayStore::new(2)))
        .build()
        .unwrap();
    let first = k.key.proof("POST", RESOURCE, &k.token);
    for proof in [first.clone(), k.key.proof("POST", RESOURCE, &k.token)] {
        let out = send(&auth, dpop(&k.token, &proof).request).await;
        let problems = acceptance_problems(&out, Some(k.key.jkt()));
        assert!(problems.is_empty(), "{problems:#?}");
    }

    let sent = dpop(&k.token, &k.key.proof("POST", RESOURCE, &k.token));
    let out = send(&auth, sent.request).await;
    assert_eq!(out.status, 503);
    assert_eq!(out.seen.calls, 0);
    assert_eq!(
        out.error.as_ref().map(AuthError::kind),
        Some(K::ReplayStoreFull)
    );
    assert!(
        out.headers.get(RETRY_AFTER).is_some_and(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|s| s >= 1)
        }),
        "{:?}",
        out.headers
    );
    assert!(
        out.headers.get(WWW_AUTHENTICATE).is_none(),
        "{:?}",
        out.headers
    );
    assert!(reflection_problems(&out, &sent.secrets).is_empty());

    // The first proof is still remembered.
    let out = send(&auth, dpop(&k.token, &first).request).await;
    let Expect::Refused(r) = REPLAY else {
        unreachable!()
    };
    let problems = refusal_problems(&out, &r, true);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// RFC 9449 §4.3 step 9: `htu` must match the URI of the request the proof came with. When the
/// stack wraps more than the MCP endpoint (e.g. the whole axum Router), a proof naming `/mcp` is
/// refused on a request to another path.
#[tokio::test]
async fn proof_for_the_mcp_endpoint_is_refused_on_another_path() {
    let k = Keys::new();
    let auth = allowed_auth(&k.dev, DpopMode::Allowed);
    for uri in ["https://mcp.example.com/other", "/other"] {
        let proof = k.key.proof("POST", RESOURCE, &k.token);
        let req = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("DPoP {}", k.token))
            .header("dpop", proof.as_str())
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap();
        let out = send(&auth, req).await;
        let mut problems = refusal_problems(
            &out,
            &Refusal {
                status: 401,
                on: On::Dpop,
                error: "invalid_dpop_proof",
                kind: K::InvalidDpopProof,
                detail: Some("the request is not for the proof's htu"),
            },
            true,
        );
        problems.extend(reflection_problems(&out, &[proof, k.token.clone()]));
        assert!(
            problems.is_empty(),
            "POST {uri} with htu {RESOURCE}: {problems:#?}"
        );
    }
}
