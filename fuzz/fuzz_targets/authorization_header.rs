//! `Authorization` header value(s) and the query string through the whole stack.
//!
//! Input: lines separated by `\n` (which no header value or URI can hold). Line 1 is the query
//! string of `/mcp` (or, if it starts with `/`, the whole path and query); lines 2 to 4 are the
//! `Authorization` values, 0 to 3 of them. In header values, `TOKEN` stands for the one valid
//! token; `EXPIRED`, `WRONGAUD` and `BOUND` for a validly signed token that is expired, issued
//! for another resource, and DPoP-bound.
//!
//! Invariants: never a 5xx; the inner service is reached only with exactly one header of the form
//! `Bearer 1*SP <valid token>` (scheme case-insensitive) and no `access_token` query parameter,
//! and then the forwarded request carries the principal and no `Authorization` header; a 401
//! carries a Bearer challenge; on `/mcp` the one valid header always gets through.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::{ISSUER, PING, RESOURCE, Seen};
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower::Layer;
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::{Binding, McpAuth, Principal};

struct Harness {
    auth: McpAuth,
    token: String,
    substitutions: Vec<(&'static str, String)>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dev = DevIssuer::new(ISSUER);
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .build()
            .expect("config");
        let token = dev.token(RESOURCE).sign();
        let expired = dev
            .token(RESOURCE)
            .claim("iat", common::now() - 7200)
            .claim("exp", common::now() - 3600)
            .sign();
        let wrong_aud = dev.token("https://other.example.com/mcp").sign();
        let bound = dev
            .token(RESOURCE)
            .dpop_bound(DevDpopKey::new().jkt())
            .expires_in(Duration::from_secs(24 * 3600))
            .sign();
        Harness {
            auth,
            substitutions: vec![
                ("EXPIRED", expired),
                ("WRONGAUD", wrong_aud),
                ("BOUND", bound),
                ("TOKEN", token.clone()),
            ],
            token,
        }
    })
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// `Bearer 1*SP token`, the scheme case-insensitive (RFC 6750 §2.1).
fn is_the_valid_bearer(value: &[u8], token: &str) -> bool {
    if value.len() < 7 || !value[..6].eq_ignore_ascii_case(b"bearer") || value[6] != b' ' {
        return false;
    }
    let mut rest = &value[7..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    rest == token.as_bytes()
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether an `application/x-www-form-urlencoded` query names `access_token`.
fn query_has_access_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.as_bytes()
            .split(|&b| b == b'&')
            .map(|pair| pair.split(|&b| b == b'=').next().unwrap_or_default())
            .any(|name| percent_decode(name) == b"access_token")
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let mut lines = data.split(|&b| b == b'\n');
    let query = lines.next().unwrap_or_default();
    let values: Vec<Vec<u8>> = lines
        .take(3)
        .map(|line| {
            h.substitutions
                .iter()
                .fold(line.to_vec(), |acc, (from, to)| {
                    replace(&acc, from.as_bytes(), to.as_bytes())
                })
        })
        .collect();

    let on_mcp = !query.starts_with(b"/");
    let mut uri = Vec::new();
    if on_mcp {
        uri.extend_from_slice(b"/mcp");
        if !query.is_empty() {
            uri.push(b'?');
            uri.extend_from_slice(query);
        }
    } else {
        uri.extend_from_slice(query);
    }
    let Ok(uri) = http::Uri::try_from(uri) else {
        return;
    };
    let mut request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(PING.as_bytes())))
        .expect("request");
    for value in &values {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        request.headers_mut().append(AUTHORIZATION, value);
    }

    let seen = Seen::default();
    let service = h.auth.layer().layer(common::recorder(seen.clone()));
    let response = common::call(service, request);
    let status = response.status();
    let forwarded = seen.take();
    common::trace(|| format!("status {status}, reached: {}", !forwarded.is_empty()));

    assert!(!status.is_server_error(), "status {status} for {values:?}");
    let valid = values.len() == 1
        && is_the_valid_bearer(&values[0], &h.token)
        && !query_has_access_token(uri.query());
    if let Some((parts, body)) = forwarded.first() {
        assert!(valid, "reached the inner service with {values:?} and {uri}");
        assert_eq!(forwarded.len(), 1);
        assert_eq!(status, 200);
        assert_eq!(&body[..], PING.as_bytes());
        assert!(
            parts.headers.get(AUTHORIZATION).is_none(),
            "token forwarded"
        );
        let principal = parts.extensions.get::<Principal>().expect("a principal");
        assert_eq!(principal.subject(), "dev-user");
        assert_eq!(principal.issuer(), ISSUER);
        assert_eq!(principal.binding(), Binding::Bearer);
    } else if valid && on_mcp {
        panic!("the valid token was refused ({status}) with {uri}");
    }
    if status == 401 {
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .expect("a 401 carries a challenge");
        assert!(
            challenge.as_bytes().starts_with(b"Bearer "),
            "{challenge:?}"
        );
    }
});
