//! The protected resource metadata and the challenges, checked against the examples of the
//! RFCs they implement: RFC 9728 §3.2 (the metadata response), RFC 6750 §3 (the `Bearer`
//! challenge) with RFC 9110 §11 / RFC 7230 §3.2.6 auth-param and quoted-string syntax, and
//! RFC 9449 §7.1 (the `DPoP` challenge). Headers are compared literally: parameter names,
//! order, quoting and separators are part of what clients parse.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use tower::{Layer as _, ServiceExt as _};
use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
use tower_mcp_auth::error::ChallengeConfig;
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth, McpAuthConfig};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    inner_called: bool,
}

async fn send(auth: &McpAuth, req: Request<Full<Bytes>>) -> Answer {
    let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = called.clone();
    let inner = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"inner"),
        ))))
    });
    let resp = auth.layer().layer(inner).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
        inner_called: called.load(std::sync::atomic::Ordering::SeqCst),
    }
}

fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// RFC 9728 §3.2
// ---------------------------------------------------------------------------------------------

/// The RFC 9728 §3.2 example, configured as the RFC's resource: the same document, field by
/// field, except `bearer_methods_supported`, which is `["header"]` where the example says
/// `["header", "body"]`: this resource refuses form-body tokens (OAuth 2.1, MCP), so it must
/// not advertise them.
#[tokio::test]
async fn metadata_matches_rfc9728_section_3_2_example() {
    // HTTP/1.1 200 OK
    // Content-Type: application/json
    //
    // {
    //   "resource": "https://resource.example.com",
    //   "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
    //   "bearer_methods_supported": ["header", "body"],
    //   "scopes_supported": ["profile", "email", "phone"],
    //   "resource_documentation": "https://resource.example.com/resource_documentation.html"
    // }
    let dev = DevIssuer::new("https://as1.example.com");
    let toml = format!(
        r#"
        resource = "https://resource.example.com"
        authorization_servers = ["https://as1.example.com", "https://as2.example.net"]
        scopes_supported = ["profile", "email", "phone"]
        resource_documentation = "https://resource.example.com/resource_documentation.html"

        [[issuers]]
        issuer = "https://as1.example.com"
        jwks = '{}'
        "#,
        dev.jwks_json()
    );
    let auth = McpAuth::from_config(McpAuthConfig::from_toml_str(&toml).unwrap()).unwrap();
    // A resource without a path: the path-inserted and the root URL are the same.
    assert_eq!(
        auth.metadata_paths(),
        &[
            "/.well-known/oauth-protected-resource".to_owned(),
            "/.well-known/oauth-protected-resource".to_owned()
        ]
    );
    let out = send(
        &auth,
        request(Method::GET, "/.well-known/oauth-protected-resource")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.headers[CONTENT_TYPE], "application/json");
    assert!(!out.inner_called);
    let doc: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": "https://resource.example.com",
            "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["profile", "email", "phone"],
            "resource_documentation": "https://resource.example.com/resource_documentation.html"
        })
    );
}

/// Every field this crate can emit, from one configuration, and nothing else; absent options
/// are omitted, not `null`.
#[tokio::test]
async fn metadata_has_exactly_the_configured_fields() {
    let dev = DevIssuer::new(ISSUER);
    let mut config = McpAuthConfig::new(RESOURCE);
    config.issuers.push(dev.issuer_config());
    config.scopes_supported = vec!["notes:read".into()];
    config.resource_name = Some("Notes".into());
    config.resource_documentation = Some("https://mcp.example.com/docs".into());
    config.mtls = true;
    config.dpop = DpopConfig::with_mode(DpopMode::Required);
    let full = McpAuth::from_config(config).unwrap();
    let minimal = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .build()
        .unwrap();
    let get = |auth: &McpAuth| {
        let auth = auth.clone();
        async move {
            let out = send(
                &auth,
                request(Method::GET, "/.well-known/oauth-protected-resource/mcp")
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(out.status, 200);
            assert_eq!(out.headers[CONTENT_TYPE], "application/json");
            serde_json::from_slice::<Value>(&out.body).unwrap()
        }
    };
    let algs: Vec<String> = DpopConfig::default()
        .algorithms
        .iter()
        .map(|a| a.as_str().to_owned())
        .collect();
    assert_eq!(
        get(&full).await,
        json!({
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "scopes_supported": ["notes:read"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Notes",
            "resource_documentation": "https://mcp.example.com/docs",
            "dpop_signing_alg_values_supported": algs,
            "dpop_bound_access_tokens_required": true,
            "tls_client_certificate_bound_access_tokens": true
        })
    );
    assert_eq!(
        get(&minimal).await,
        json!({
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"]
        })
    );
}

/// GET, HEAD and the CORS preflight (browser clients fetch the document cross-origin), 405 with
/// `Allow` for every other method; both well-known URLs; never a challenge.
#[tokio::test]
async fn metadata_methods_and_cors() {
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .build()
        .unwrap();
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let get = send(
            &auth,
            request(Method::GET, path)
                .header("origin", "https://app.example.org")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(get.status, 200, "GET {path}");
        assert_eq!(get.headers[CONTENT_TYPE], "application/json", "GET {path}");
        assert_eq!(get.headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*", "GET {path}");
        assert!(get.headers.get(WWW_AUTHENTICATE).is_none());
        let document: Value = serde_json::from_slice(&get.body).unwrap();
        assert_eq!(document["resource"], RESOURCE);

        let head = send(
            &auth,
            request(Method::HEAD, path).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has no body");
        assert_eq!(head.headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            head.headers[CONTENT_LENGTH],
            get.body.len().to_string().as_str(),
            "HEAD {path}: the GET body's length"
        );
        assert_eq!(head.headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");

        let preflight = send(
            &auth,
            request(Method::OPTIONS, path)
                .header("origin", "https://app.example.org")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "mcp-protocol-version")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(preflight.status, 204, "OPTIONS {path}");
        assert!(preflight.body.is_empty());
        assert_eq!(preflight.headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            preflight.headers[ACCESS_CONTROL_ALLOW_METHODS],
            "GET, HEAD, OPTIONS"
        );
        assert_eq!(preflight.headers[ACCESS_CONTROL_ALLOW_HEADERS], "*");
        assert_eq!(preflight.headers[ACCESS_CONTROL_MAX_AGE], "86400");
        assert!(preflight.headers.get(WWW_AUTHENTICATE).is_none());

        for method in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::TRACE,
            Method::from_bytes(b"PROPFIND").unwrap(),
        ] {
            let out = send(
                &auth,
                request(method.clone(), path).body(Full::default()).unwrap(),
            )
            .await;
            assert_eq!(out.status, 405, "{method} {path}");
            assert_eq!(out.headers[ALLOW], "GET, HEAD, OPTIONS", "{method} {path}");
            assert!(out.body.is_empty());
            assert!(out.headers.get(WWW_AUTHENTICATE).is_none());
            assert!(!out.inner_called);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 6750 §3 and RFC 9449 §7.1 challenges, literally
// ---------------------------------------------------------------------------------------------

/// RFC 9110 §11.2 / RFC 7230 §3.2.6: `auth-scheme 1*SP auth-param *( OWS "," OWS auth-param )`,
/// `auth-param = token BWS "=" BWS ( token / quoted-string )`. Returns the scheme and the
/// parameters in order, unescaped; refuses anything else, and duplicate names (RFC 6750 §3:
/// MUST NOT appear more than once).
fn parse_challenge(value: &str) -> Result<(String, Vec<(String, String)>), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() && tchar(bytes[i]) {
        i += 1;
    }
    if i == 0 || bytes.get(i) != Some(&b' ') {
        return Err(format!("no scheme in {value:?}"));
    }
    let scheme = value[..i].to_owned();
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && tchar(bytes[i]) {
            i += 1;
        }
        if start == i || bytes.get(i) != Some(&b'=') {
            return Err(format!("bad auth-param at {start} in {value:?}"));
        }
        let name = value[start..i].to_owned();
        i += 1;
        let mut text = Vec::new();
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(format!("unterminated quoted-string in {value:?}")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => match bytes.get(i + 1) {
                        Some(&c) if c == b'\t' || (0x20..=0x7e).contains(&c) => {
                            text.push(c);
                            i += 2;
                        }
                        _ => return Err(format!("bad quoted-pair in {value:?}")),
                    },
                    // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E (no obs-text here)
                    Some(&c) if c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) => {
                        text.push(c);
                        i += 1;
                    }
                    Some(_) => return Err(format!("byte outside qdtext in {value:?}")),
                }
            }
        } else {
            let t = i;
            while i < bytes.len() && tchar(bytes[i]) {
                i += 1;
            }
            if t == i {
                return Err(format!("empty value for {name} in {value:?}"));
            }
            text.extend_from_slice(&bytes[t..i]);
        }
        if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return Err(format!("duplicate {name} in {value:?}"));
        }
        params.push((name, String::from_utf8(text).unwrap()));
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        match bytes.get(i) {
            None => return Ok((scheme, params)),
            Some(b',') => i += 1,
            Some(_) => return Err(format!("expected ',' at {i} in {value:?}")),
        }
    }
}

#[test]
fn the_challenge_parser_accepts_the_rfc6750_examples_and_refuses_junk() {
    // RFC 6750 §3, the two examples, verbatim (line folding removed).
    let (scheme, params) = parse_challenge(r#"Bearer realm="example""#).unwrap();
    assert_eq!(scheme, "Bearer");
    assert_eq!(params, [("realm".to_owned(), "example".to_owned())]);
    let (_, params) = parse_challenge(
        r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
    )
    .unwrap();
    assert_eq!(
        params.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["realm", "error", "error_description"]
    );
    assert_eq!(params[2].1, "The access token expired");
    for junk in [
        r#"Bearer error=invalid token"#,
        r#"Bearer error="a", error="b""#,
        r#"Bearer error="a" scope="b""#,
        r#"Bearer error="a"#,
        r#"Bearer error="a\"#,
        "Bearer error=\"a\u{7f}\"",
        r#"Bearer"#,
        r#"Bearer ="a""#,
    ] {
        assert!(parse_challenge(junk).is_err(), "{junk:?}");
    }
}

fn challenge_config() -> ChallengeConfig {
    ChallengeConfig::new(METADATA_URL).with_scope("notes:read")
}

/// The rendered challenges, literally: RFC 6750 §3's forms with this crate's parameters (no
/// `realm`; `scope` and RFC 9728 `resource_metadata` added), in the crate's fixed order
/// `error`, `error_description`, `scope`, `resource_metadata`; `", "` between parameters; every
/// value a quoted-string.
#[test]
fn bearer_challenges_render_like_rfc6750_section_3() {
    let c = challenge_config();
    let rows: [(AuthError, &str); 6] = [
        // RFC 6750 §3.1: no credentials → no error information at all.
        (
            AuthError::new(AuthErrorKind::MissingCredentials),
            r#"Bearer scope="notes:read", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        ),
        // The RFC's second example, with our description of an expired token.
        (
            AuthError::new(AuthErrorKind::Expired),
            r#"Bearer error="invalid_token", error_description="the token has expired", scope="notes:read", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        ),
        (
            AuthError::new(AuthErrorKind::MissingClaim).with_detail("jti"),
            r#"Bearer error="invalid_token", error_description="the token lacks a required claim: jti", scope="notes:read", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        ),
        // 400 invalid_request: no scope (the request, not the token's power, is at fault).
        (
            AuthError::new(AuthErrorKind::MultipleCredentials),
            r#"Bearer error="invalid_request", error_description="exactly one Authorization header is allowed", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        ),
        // 403 insufficient_scope: the scope the operation needs, not the default.
        (
            AuthError::insufficient_scope("notes:write notes:admin"),
            r#"Bearer error="insufficient_scope", error_description="the token lacks a scope this operation requires", scope="notes:write notes:admin", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        ),
        // 403 that no scope cures: no error, no scope.
        (
            AuthError::new(AuthErrorKind::AccessDenied),
            r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        ),
    ];
    for (error, expected) in rows {
        let rendered = error.www_authenticate(&c).unwrap();
        assert_eq!(rendered, expected, "{:?}", error.kind());
        let (scheme, params) = parse_challenge(&rendered).unwrap();
        assert_eq!(scheme, "Bearer");
        // RFC 6750 §3: error_description and scope use restricted character sets.
        for (name, value) in &params {
            let nqschar = |b: u8| {
                b == 0x20 || b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
            };
            if name == "error_description" || name == "scope" || name == "error" {
                assert!(value.bytes().all(nqschar), "{name}={value:?}");
            }
        }
    }
    assert_eq!(
        AuthError::unavailable(AuthErrorKind::KeysUnavailable, 30).www_authenticate(&c),
        None,
        "503: no challenge"
    );
}

/// RFC 9449 §7.1: with DPoP on, a `DPoP` challenge with `algs` follows the Bearer one; the
/// error goes on the scheme the request used (or on DPoP when the proof is at fault).
#[test]
fn dpop_challenges_render_like_rfc9449_section_7_1() {
    let c = challenge_config().with_dpop_algs("ES256 EdDSA");
    let meta =
        r#"resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#;
    let rows: [(AuthError, String, String); 3] = [
        (
            AuthError::new(AuthErrorKind::MissingCredentials),
            format!(r#"Bearer scope="notes:read", {meta}"#),
            format!(r#"DPoP algs="ES256 EdDSA", {meta}"#),
        ),
        (
            AuthError::new(AuthErrorKind::Expired),
            format!(
                r#"Bearer error="invalid_token", error_description="the token has expired", scope="notes:read", {meta}"#
            ),
            format!(r#"DPoP algs="ES256 EdDSA", {meta}"#),
        ),
        (
            AuthError::new(AuthErrorKind::InvalidDpopProof).on_dpop(),
            format!(r#"Bearer scope="notes:read", {meta}"#),
            format!(
                r#"DPoP error="invalid_dpop_proof", error_description="the DPoP proof is invalid", algs="ES256 EdDSA", {meta}"#
            ),
        ),
    ];
    for (error, bearer, dpop) in rows {
        assert_eq!(
            error.www_authenticate(&c).unwrap(),
            bearer,
            "{:?}",
            error.kind()
        );
        assert_eq!(
            error.dpop_challenge(&c).unwrap(),
            dpop,
            "{:?}",
            error.kind()
        );
        parse_challenge(&bearer).unwrap();
        parse_challenge(&dpop).unwrap();
        // In a response: Bearer first, then DPoP, as two header lines.
        let response = error.to_response(&c);
        let lines: Vec<_> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(lines, [bearer, dpop]);
    }
}

/// RFC 7230 §3.2.6 quoted-string: `"` and `\` become quoted-pairs (`\"`, `\\`); HTAB, SP and
/// VCHAR stay as they are; CR, LF, other controls and non-ASCII (which would break or smuggle
/// headers) become a space. Checked on configured values, the only ones that reach a header
/// (descriptions are fixed text, and nothing a client sends is reflected).
#[test]
fn quoted_strings_are_escaped_per_rfc7230() {
    let rows = [
        ("plain", "https://x.example/m", r#""https://x.example/m""#),
        ("double quote", r#"a"b"#, r#""a\"b""#),
        ("backslash", r"a\b", r#""a\\b""#),
        ("backslash then quote", r#"\""#, r#""\\\"""#),
        ("trailing backslash", "a\\", r#""a\\""#),
        ("tab kept", "a\tb", "\"a\tb\""),
        (
            "CR LF smuggling",
            "a\r\nWWW-Authenticate: Basic",
            r#""a  WWW-Authenticate: Basic""#,
        ),
        ("NUL and DEL", "a\u{0}b\u{7f}c", r#""a b c""#),
        ("non-ASCII", "caf\u{e9}", r#""caf ""#),
        ("comma and equals", "a, b=c", r#""a, b=c""#),
    ];
    for (name, input, quoted) in rows {
        let rendered = AuthError::new(AuthErrorKind::MissingCredentials)
            .www_authenticate(&ChallengeConfig::new(input))
            .unwrap();
        assert_eq!(
            rendered,
            format!("Bearer resource_metadata={quoted}"),
            "{name}"
        );
        let (_, params) = parse_challenge(&rendered).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(params.len(), 1, "{name}: one parameter, nothing smuggled");
        let expected: String = input
            .chars()
            .map(|c| match c {
                '\t' | ' '..='~' => c,
                _ => ' ',
            })
            .collect();
        assert_eq!(params[0].1, expected, "{name}: round trip");
        assert!(http::HeaderValue::from_str(&rendered).is_ok(), "{name}");
    }
}

/// The same literal challenges through the whole stack, as a client sees them.
#[tokio::test]
async fn challenges_through_the_stack_are_literal() {
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .build()
        .unwrap();
    let meta = format!(r#"resource_metadata="{METADATA_URL}""#);
    let expired = dev
        .token(RESOURCE)
        .claim("iat", now() - 1200)
        .claim("exp", now() - 600)
        .sign();
    let rows: Vec<(&str, Request<Full<Bytes>>, u16, String)> = vec![
        (
            "no credentials",
            request(Method::POST, "/mcp").body(Full::default()).unwrap(),
            401,
            format!(r#"Bearer scope="notes:read", {meta}"#),
        ),
        (
            "expired token",
            request(Method::POST, "/mcp")
                .header(AUTHORIZATION, format!("Bearer {expired}"))
                .body(Full::default())
                .unwrap(),
            401,
            format!(
                r#"Bearer error="invalid_token", error_description="the token has expired", scope="notes:read", {meta}"#
            ),
        ),
        (
            "token in the query",
            request(Method::POST, "/mcp?access_token=abc")
                .body(Full::default())
                .unwrap(),
            400,
            format!(
                r#"Bearer error="invalid_request", error_description="access tokens are not accepted in the query string", {meta}"#
            ),
        ),
    ];
    for (name, req, status, challenge) in rows {
        let out = send(&auth, req).await;
        assert_eq!(out.status, status, "{name}");
        let lines: Vec<_> = out.headers.get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(lines.len(), 1, "{name}");
        assert_eq!(lines[0], challenge.as_str(), "{name}");
        assert!(!out.inner_called, "{name}");
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        let params: BTreeMap<String, String> =
            parse_challenge(&challenge).unwrap().1.into_iter().collect();
        assert_eq!(
            body.get("error").and_then(Value::as_str),
            params.get("error").map(String::as_str),
            "{name}"
        );
    }
}
