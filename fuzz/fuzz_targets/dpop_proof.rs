//! DPoP proofs through the whole stack (`DpopMode::Allowed`) with DPoP-bound tokens.
//!
//! Input: the first byte picks the mode (bit 0: raw or re-signed; bit 1 in raw mode: present the
//! token with the `Bearer` scheme instead of `DPoP`); the rest is
//!
//! - raw: the `DPoP` header value(s), `\n`-separated (0 to 3); `PROOF` stands for a fresh valid
//!   proof (`DevDpopKey::proof`) for this request;
//! - re-signed: `header JSON \n claims JSON`, signed with our own P-256 key, presented with a
//!   token bound to that key. `JWK` stands for the key's public JWK, `NOW` for the current time,
//!   `ATH` for the token's hash and `JTI` for a fresh unique id.
//!
//! Invariants: never a 5xx but 503; a refusal is 400, 401 or 503; the inner service is reached
//! only (raw) with the `DPoP` scheme and exactly one `DPoP` header equal to the fresh valid proof,
//! which always gets through, or (re-signed) when an independent reading of the proof shows
//! `typ` dpop+jwt, `alg` ES256, our public key and no private member, `htm` POST, the resource
//! as `htu`, `iat` within the window, `ath` the token's SHA-256 and an unused `jti`; and the very
//! same request sent again is refused (replay).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::{ISSUER, PING, RESOURCE, Seen};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use tower::Layer;
use tower_mcp_auth::dpop::{DpopConfig, DpopMode, jwk_thumbprint, normalize_htu};
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::{Binding, McpAuth, Principal};

const MAX_AGE: u64 = 60;
const MAX_FUTURE: u64 = 10;

struct Harness {
    auth: McpAuth,
    /// Raw mode: the DevDpopKey and the token bound to it.
    dev_key: DevDpopKey,
    dev_token: String,
    /// Re-signed mode: our own key, its public JWK and thumbprint, and the token bound to it.
    key: SigningKey,
    jwk: Value,
    jwk_text: String,
    jkt: String,
    token: String,
    /// jti -> when a proof with it was accepted (re-signed mode).
    accepted: Mutex<HashMap<String, Instant>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dev = DevIssuer::new(ISSUER);
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .dpop(DpopConfig::with_mode(DpopMode::Allowed))
            .build()
            .expect("config");
        let week = Duration::from_secs(7 * 24 * 3600);
        let dev_key = DevDpopKey::new();
        let dev_token = dev
            .token(RESOURCE)
            .dpop_bound(dev_key.jkt())
            .expires_in(week)
            .sign();

        let key = SigningKey::random(&mut OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x().expect("x"));
        let y = URL_SAFE_NO_PAD.encode(point.y().expect("y"));
        // RFC 7638, computed here: required members, lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let jkt = common::sha256_b64(&canonical);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        let jwk_text = jwk.to_string();
        assert_eq!(jwk_thumbprint(&jwk_text).expect("thumbprint"), jkt);
        let token = dev.token(RESOURCE).dpop_bound(&jkt).expires_in(week).sign();
        Harness {
            auth,
            dev_key,
            dev_token,
            key,
            jwk,
            jwk_text,
            jkt,
            token,
            accepted: Mutex::default(),
        }
    })
}

fn sign(key: &SigningKey, header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
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

fn request(authorization: &str, proofs: &[HeaderValue]) -> Request<Full<Bytes>> {
    let mut request = Request::post("/mcp")
        .header(AUTHORIZATION, authorization)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(PING.as_bytes())))
        .expect("request");
    for proof in proofs {
        request.headers_mut().append("dpop", proof.clone());
    }
    request
}

/// Sends the request; whether the inner service was reached (checking what it received).
fn send(h: &Harness, authorization: &str, proofs: &[HeaderValue], jkt: &str) -> bool {
    let seen = Seen::default();
    let service = h.auth.layer().layer(common::recorder(seen.clone()));
    let response = common::call(service, request(authorization, proofs));
    let status = response.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 401 | 503),
        "status {status} for {proofs:?}"
    );
    let forwarded = seen.take();
    common::trace(|| format!("status {status}, reached: {}", !forwarded.is_empty()));
    match forwarded.as_slice() {
        [] => {
            assert_ne!(status, 200);
            false
        }
        [(parts, body)] => {
            assert_eq!(status, 200);
            assert_eq!(&body[..], PING.as_bytes());
            let principal = parts.extensions.get::<Principal>().expect("principal");
            assert_eq!(principal.binding(), Binding::Dpop);
            assert_eq!(principal.key_thumbprint(), Some(jkt));
            assert!(parts.headers.get(AUTHORIZATION).is_none());
            true
        }
        _ => panic!("the inner service was called {} times", forwarded.len()),
    }
}

fn raw(h: &Harness, bearer: bool, rest: &[u8]) {
    let proof = h.dev_key.proof("POST", RESOURCE, &h.dev_token);
    let mut proofs = Vec::new();
    if !rest.is_empty() {
        for line in rest.split(|&b| b == b'\n').take(3) {
            let value = replace(line, &[("PROOF", &proof)]);
            let Ok(value) = HeaderValue::from_bytes(&value) else {
                return;
            };
            proofs.push(value);
        }
    }
    let scheme = if bearer { "Bearer" } else { "DPoP" };
    let authorization = format!("{scheme} {}", h.dev_token);
    let exact = !bearer && proofs.len() == 1 && proofs[0].as_bytes() == proof.as_bytes();
    let reached = send(h, &authorization, &proofs, h.dev_key.jkt());
    assert_eq!(
        reached, exact,
        "reached: {reached}, exact valid proof: {exact}, {scheme} {proofs:?}"
    );
    if reached {
        assert!(
            !send(h, &authorization, &proofs, h.dev_key.jkt()),
            "a replayed proof was accepted"
        );
    }
}

fn check_accepted(h: &Harness, header: &[u8], claims: &[u8]) {
    let now = common::now();
    let header: Value = serde_json::from_slice(header).expect("accepted header is JSON");
    let typ = header["typ"].as_str().expect("typ");
    assert!(
        typ.eq_ignore_ascii_case("dpop+jwt") || typ.eq_ignore_ascii_case("application/dpop+jwt"),
        "typ {typ:?}"
    );
    assert_eq!(header["alg"], "ES256");
    assert!(header.get("crit").is_none());
    let jwk = header["jwk"].as_object().expect("jwk");
    assert!(!jwk.contains_key("d"), "a private key was accepted");
    for member in ["kty", "crv", "x", "y"] {
        assert_eq!(jwk.get(member), h.jwk.get(member), "jwk {member}");
    }

    let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    assert_eq!(claims["htm"], "POST");
    let htu = claims["htu"].as_str().expect("htu");
    assert_eq!(normalize_htu(htu), normalize_htu(RESOURCE), "htu {htu:?}");
    let iat = claims["iat"].as_f64().expect("numeric iat") as u64;
    assert!(iat + MAX_AGE + 2 >= now, "iat {iat} too old at {now}");
    assert!(iat <= now + MAX_FUTURE, "iat {iat} ahead of {now}");
    assert_eq!(
        claims["ath"].as_str(),
        Some(common::sha256_b64(&h.token).as_str())
    );
    let jti = claims["jti"].as_str().expect("jti");
    assert!(!jti.is_empty() && jti.len() <= 256, "jti {jti:?}");
    let mut accepted = h.accepted.lock().unwrap_or_else(|e| e.into_inner());
    // A used jti is remembered for max_age + max_future + 5 s; within that, never twice.
    if let Some(at) = accepted.insert(jti.to_owned(), Instant::now()) {
        assert!(
            at.elapsed() > Duration::from_secs(MAX_AGE + MAX_FUTURE),
            "jti {jti:?} accepted twice"
        );
    }
    if accepted.len() > 100_000 {
        accepted.retain(|_, at| at.elapsed() < Duration::from_secs(2 * MAX_AGE));
    }
}

fn resigned(h: &Harness, rest: &[u8]) {
    let now = common::now().to_string();
    let ath = common::sha256_b64(&h.token);
    let mut id = [0u8; 12];
    OsRng.fill_bytes(&mut id);
    let jti = URL_SAFE_NO_PAD.encode(id);
    let subs = [
        ("JWK", h.jwk_text.as_str()),
        ("NOW", now.as_str()),
        ("ATH", ath.as_str()),
        ("JTI", jti.as_str()),
    ];
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let (header, claims) = (replace(header, &subs), replace(claims, &subs));
    let proof = sign(&h.key, &header, &claims);
    let Ok(value) = HeaderValue::from_str(&proof) else {
        return;
    };
    let authorization = format!("DPoP {}", h.token);
    let proofs = [value];
    if send(h, &authorization, &proofs, &h.jkt) {
        check_accepted(h, &header, &claims);
        assert!(
            !send(h, &authorization, &proofs, &h.jkt),
            "a replayed proof was accepted"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    if mode & 1 == 0 {
        raw(h, mode & 2 != 0, rest);
    } else {
        resigned(h, rest);
    }
});
