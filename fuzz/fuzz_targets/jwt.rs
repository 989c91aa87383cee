//! Access tokens through `JwtVerifier::verify_token` (`McpAuth::verifier`).
//!
//! Input: the first byte picks the mode (even: raw, odd: re-signed); the rest is
//!
//! - raw: the token text (lossy UTF-8); `TOKEN` stands for one valid token, so mutations of a
//!   real token are explored;
//! - re-signed: `header JSON \n payload JSON`, signed by the trusted `DevIssuer` with
//!   `sign_raw`, so every claim check is reached. `KID` stands for the issuer's key id, `NOW`
//!   for the current time and `LATER` for ten minutes on.
//!
//! Invariants: verification never panics and never reports a 5xx (the keys are static); a raw
//! token is accepted only if it signs exactly what the valid token signs; a re-signed token is
//! accepted only if an independent `serde_json::Value` reading shows a typed header
//! (`typ` at+jwt, `alg` ES256, no `crit`), `iss` the issuer, `aud` naming the resource, a
//! numeric `exp` not past (30 s leeway), `nbf`/`iat` not ahead, and the principal's subject is
//! the `sub` claim.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::sync::OnceLock;

use common::{ISSUER, RESOURCE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::testing::DevIssuer;

const LEEWAY: f64 = 30.0;

struct Harness {
    dev: DevIssuer,
    auth: McpAuth,
    token: String,
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
        let token = dev.token(RESOURCE).scope("a b").sign();
        Harness { dev, auth, token }
    })
}

fn signing_input(token: &str) -> &str {
    match token.rfind('.') {
        Some(dot) => &token[..dot],
        None => token,
    }
}

fn replace(haystack: &[u8], substitutions: &[(&str, &str)]) -> Vec<u8> {
    let mut out = haystack.to_vec();
    for (from, to) in substitutions {
        let (from, to) = (from.as_bytes(), to.as_bytes());
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(from) {
                next.extend_from_slice(to);
                i += from.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

fn number(value: Option<&Value>) -> Option<f64> {
    value.and_then(Value::as_f64)
}

fn check_accepted(header: &[u8], payload: &[u8], principal: &tower_mcp_auth::Principal) {
    let now = common::now() as f64;
    let header: Value = serde_json::from_slice(header).expect("accepted header is JSON");
    let header = header.as_object().expect("accepted header is an object");
    let typ = header.get("typ").and_then(Value::as_str).expect("typ");
    assert!(
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt"),
        "accepted typ {typ:?}"
    );
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("ES256"));
    assert!(!header.contains_key("crit"), "accepted crit");

    let claims: Value = serde_json::from_slice(payload).expect("accepted payload is JSON");
    let claims = claims.as_object().expect("accepted payload is an object");
    let exp = number(claims.get("exp")).expect("accepted a token without a numeric exp");
    // `now` is read after the verifier's clock: allow the one second that may have passed.
    assert!(exp + LEEWAY + 1.0 > now, "accepted exp {exp} at {now}");
    match claims.get("aud") {
        Some(Value::String(aud)) => assert_eq!(aud, RESOURCE, "accepted the wrong aud"),
        Some(Value::Array(auds)) => assert!(
            auds.iter().any(|a| a.as_str() == Some(RESOURCE)),
            "accepted the wrong aud {auds:?}"
        ),
        other => panic!("accepted aud {other:?}"),
    }
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    for name in ["nbf", "iat"] {
        if let Some(t) = claims.get(name) {
            let t = t.as_f64().expect("accepted a non-numeric time claim");
            assert!(t <= now + LEEWAY + 1.0, "accepted {name} {t} at {now}");
        }
    }
    let sub = claims.get("sub").and_then(Value::as_str).expect("sub");
    assert_eq!(principal.subject(), sub);
    let exp_u64 = claims["exp"].as_u64().unwrap_or(exp as u64);
    assert_eq!(principal.expires_at_unix(), exp_u64);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let verifier = h.auth.verifier();
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest).replace("TOKEN", &h.token);
        let result = common::block_on(verifier.verify_token(&token));
        common::trace(|| {
            format!(
                "raw: {:?}",
                result.as_ref().map(|_| "accepted").map_err(|e| e.kind())
            )
        });
        match result {
            Ok(principal) => {
                assert_eq!(
                    signing_input(&token),
                    signing_input(&h.token),
                    "accepted a token the issuer never signed: {token:?}"
                );
                assert_eq!(principal.subject(), "dev-user");
            }
            Err(e) => assert!(!e.status().is_server_error(), "{e:?}"),
        }
        return;
    }

    let now = common::now();
    let (now_s, later_s) = (now.to_string(), (now + 600).to_string());
    let subs = [
        ("KID", h.dev.kid()),
        ("LATER", later_s.as_str()),
        ("NOW", now_s.as_str()),
    ];
    let (header, payload) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let (header, payload) = (replace(header, &subs), replace(payload, &subs));
    let token = h.dev.sign_raw(&header, &payload);
    let result = common::block_on(verifier.verify_token(&token));
    common::trace(|| {
        format!(
            "re-signed: {:?}",
            result.as_ref().map(|_| "accepted").map_err(|e| e.kind())
        )
    });
    match result {
        Ok(principal) => check_accepted(&header, &payload, &principal),
        Err(e) => assert!(!e.status().is_server_error(), "{e:?}"),
    }
});
