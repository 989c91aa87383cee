//! `AuthError::www_authenticate` / `dpop_challenge` / `to_response` with arbitrary
//! `ChallengeConfig` strings.
//!
//! Input: byte 0 picks the `AuthErrorKind` (modulo the list below); byte 1 is flags (bit 0: a
//! default scope, bit 1: DPoP algorithms, bit 2: the request used the DPoP scheme, bit 3: build
//! with `AuthError::insufficient_scope`, bits 4-5: one of the fixed details); the rest is up to
//! four `\n`-separated strings (lossy UTF-8): resource_metadata, scope, required scope, algs.
//!
//! Invariants: each challenge is a valid `HeaderValue` of visible ASCII, SP and HTAB only, and
//! parses as `scheme 1*(name="quoted-string")` joined by `", "`; each parameter appears once;
//! every quoted value round-trips to its source after the documented rule of `push_quoted`
//! (`"` and `\` escaped, other characters outside visible ASCII/SP/HTAB replaced by a space);
//! the error goes on exactly one challenge; `to_response` carries the same challenges, in order.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tower_mcp_auth::error::ChallengeConfig;
use tower_mcp_auth::{AuthError, AuthErrorKind};

/// Every kind (the crate's own list, checked against the audit schema by its tests).
const KINDS: &[AuthErrorKind] = AuthErrorKind::ALL;

const DETAILS: [Option<&str>; 4] = [
    None,
    Some("iss"),
    Some("quote\" back\\slash"),
    Some("ctl\r\n\t\u{7f} non-ascii \u{e9}\u{2603}"),
];

/// The documented rule of `push_quoted`, minus the escaping (which the parser undoes).
fn quoted(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            ' '..='~' | '\t' => c,
            _ => ' ',
        })
        .collect()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `scheme SP name="value", name="value"…` (RFC 9110 §11.2/§5.6.4), values unescaped.
fn parse(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let b = s.as_bytes();
    let sp = s.find(' ').ok_or("no space after the scheme")?;
    let scheme = &s[..sp];
    if scheme.is_empty() || !scheme.bytes().all(is_tchar) {
        return Err(format!("bad scheme {scheme:?}"));
    }
    let mut i = sp + 1;
    let mut params = Vec::new();
    loop {
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(format!("no parameter name at {i}"));
        }
        let name = s[start..i].to_owned();
        if b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
            return Err(format!("no =\" after {name}"));
        }
        i += 2;
        let mut value = String::new();
        loop {
            let c = *b.get(i).ok_or("unterminated quoted-string")?;
            i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *b.get(i).ok_or("dangling backslash")?;
                    if !(e == b'\t' || (0x20..0x7f).contains(&e)) {
                        return Err(format!("bad quoted-pair {e:#x}"));
                    }
                    value.push(e as char);
                    i += 1;
                }
                b'\t' | 0x20..=0x7e => value.push(c as char),
                _ => return Err(format!("bad qdtext {c:#x}")),
            }
        }
        params.push((name, value));
        if i == b.len() {
            return Ok((scheme.to_owned(), params));
        }
        if !s[i..].starts_with(", ") {
            return Err(format!("no \", \" at {i}"));
        }
        i += 2;
    }
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Parses one challenge and checks the common invariants; its parameters.
fn check(
    value: &str,
    scheme: &str,
    allowed: &[&str],
    config: &ChallengeConfig,
) -> Vec<(String, String)> {
    assert!(
        http::HeaderValue::from_str(value).is_ok(),
        "not a header value: {value:?}"
    );
    assert!(
        value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
        "not visible ASCII: {value:?}"
    );
    let (got, params) = parse(value).unwrap_or_else(|e| panic!("{e}: {value:?}"));
    assert_eq!(got, scheme, "{value:?}");
    for (n, (name, _)) in params.iter().enumerate() {
        assert!(
            allowed.contains(&name.as_str()),
            "parameter {name}: {value:?}"
        );
        assert!(
            params[..n].iter().all(|(other, _)| other != name),
            "repeated {name}: {value:?}"
        );
    }
    assert_eq!(
        params.last().map(|(n, v)| (n.as_str(), v.clone())),
        Some(("resource_metadata", quoted(&config.resource_metadata))),
        "{value:?}"
    );
    params
}

fuzz_target!(|data: &[u8]| {
    let [k, flags, rest @ ..] = data else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\n');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    let (metadata, scope, required, algs) = (next(), next(), next(), next());

    let mut config = ChallengeConfig::new(metadata.as_str());
    if flags & 1 != 0 {
        config = config.with_scope(scope.as_str());
    }
    if flags & 2 != 0 {
        config = config.with_dpop_algs(algs.as_str());
    }
    let mut error = if flags & 8 != 0 {
        AuthError::insufficient_scope(required.as_str())
    } else {
        AuthError::new(KINDS[usize::from(*k) % KINDS.len()])
    };
    if let Some(detail) = DETAILS[usize::from(flags >> 4) & 3] {
        error = error.with_detail(detail);
    }
    if flags & 4 != 0 {
        error = error.on_dpop();
    }
    let kind = error.kind();

    let bearer = error.www_authenticate(&config);
    let dpop = error.dpop_challenge(&config);
    common::trace(|| format!("{bearer:?} {dpop:?}"));
    if !kind.has_challenge() {
        assert!(
            bearer.is_none() && dpop.is_none(),
            "{kind}: {bearer:?} {dpop:?}"
        );
    }
    if config.dpop_algs.is_none() {
        assert!(dpop.is_none());
    }
    let mut errors_sent = 0;
    if let Some(bearer) = &bearer {
        let params = check(
            bearer,
            "Bearer",
            &["error", "error_description", "scope", "resource_metadata"],
            &config,
        );
        let expected_scope = match kind {
            AuthErrorKind::InsufficientScope => error.required_scope(),
            _ if kind.status() == 401 => config.scope.as_deref(),
            _ => None,
        };
        assert_eq!(
            get(&params, "scope"),
            expected_scope.map(quoted).as_deref(),
            "{bearer:?}"
        );
        if let Some(code) = get(&params, "error") {
            errors_sent += 1;
            assert_eq!(Some(code), kind.error_code().map(|c| c.as_str()));
            assert_eq!(
                get(&params, "error_description"),
                Some(quoted(&error.message()).as_str())
            );
        } else {
            assert_eq!(get(&params, "error_description"), None);
        }
    }
    if let Some(dpop) = &dpop {
        let params = check(
            dpop,
            "DPoP",
            &[
                "error",
                "error_description",
                "scope",
                "algs",
                "resource_metadata",
            ],
            &config,
        );
        assert_eq!(
            get(&params, "algs"),
            config.dpop_algs.as_deref().map(quoted).as_deref()
        );
        if let Some(code) = get(&params, "error") {
            errors_sent += 1;
            assert_eq!(Some(code), kind.error_code().map(|c| c.as_str()));
            assert_eq!(
                get(&params, "error_description"),
                Some(quoted(&error.message()).as_str())
            );
        }
        if let Some(scope) = get(&params, "scope") {
            assert_eq!(kind, AuthErrorKind::InsufficientScope);
            assert_eq!(Some(scope), error.required_scope().map(quoted).as_deref());
        }
    }
    if kind.has_challenge() && kind.error_code().is_some() {
        assert_eq!(errors_sent, 1, "{kind}: {bearer:?} {dpop:?}");
    } else {
        assert_eq!(errors_sent, 0, "{kind}: {bearer:?} {dpop:?}");
    }

    let response = error.to_response(&config);
    assert_eq!(response.status(), kind.status());
    let sent: Vec<&str> = response
        .headers()
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().expect("ASCII"))
        .collect();
    let expected: Vec<&str> = [bearer.as_deref(), dpop.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(sent, expected);
});
