//! DPoP proof verification (RFC 9449 §4.3), in the order the RFC gives, cheapest first.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::Deserializer;
use serde_json::value::RawValue;

use std::sync::Arc;

use super::htu::normalize_htu;
use super::key_cache::ProofKeyCache;
use super::replay::ReplayKey;
use crate::error::{AuthError, AuthErrorKind};
use crate::jose::{
    CompactJws, borrowed_string, is_thumbprint_of, json_object, numeric_date, present,
};
use crate::keys::{AlgorithmSet, SigningAlgorithm, proof_key};

/// What a proof is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProofContext<'a> {
    /// The request method (compared with `htm`, case-sensitively).
    pub(crate) method: &'a str,
    /// The normalized URL the proof must name in `htu`.
    pub(crate) htu: &'a str,
    /// The access token presented with the proof (its hash must be `ath`).
    pub(crate) access_token: &'a str,
    /// Seconds since the epoch.
    pub(crate) now: u64,
    /// How old `iat` may be.
    pub(crate) max_age: u64,
    /// How far in the future `iat` may be.
    pub(crate) max_future: u64,
    /// Allowed proof algorithms (asymmetric only).
    pub(crate) algorithms: AlgorithmSet,
    /// Longest proof accepted.
    pub(crate) max_len: usize,
    /// Proof keys already checked and parsed.
    pub(crate) keys: &'a ProofKeyCache,
}

/// A proof that passed every check but replay.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key.
    pub(crate) jkt: Arc<str>,
    /// What the replay store remembers: the key thumbprint and the proof's `jti`.
    pub(crate) replay: ReplayKey,
    /// The proof's `nonce`, if any.
    pub(crate) nonce: Option<String>,
}

fn invalid(detail: &'static str) -> AuthError {
    AuthError::new(AuthErrorKind::InvalidDpopProof).with_detail(detail)
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    jwk: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_string")]
    jti: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_string")]
    htm: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_string")]
    htu: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default, borrow, deserialize_with = "borrowed_string")]
    ath: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_string")]
    nonce: Option<Cow<'a, str>>,
}

/// Whether a `typ` names the `application/dpop+jwt` media type (RFC 9449 §4.2).
///
/// `typ` is a media type (RFC 7515 §4.1.9): a value without `/` means `application/` plus the
/// value, and type and subtype names are case-insensitive (RFC 6838 §4.2). So `dpop+jwt`,
/// `DPoP+JWT` and `application/dpop+jwt` (any case) are the same type and are all accepted, as
/// panva's `jose` (used by `oidc-provider`) does. Anything else is refused: media-type
/// parameters (`; charset=…`), whitespace, another top-level type, a doubled prefix.
fn is_dpop_typ(typ: &str) -> bool {
    const PREFIX: &str = "application/";
    let subtype = match typ.get(..PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    };
    subtype.eq_ignore_ascii_case("dpop+jwt")
}

/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;

/// Verifies `proof` for the request described by `ctx`.
pub(crate) fn verify_proof(
    proof: &str,
    ctx: &ProofContext<'_>,
) -> Result<VerifiedProof, AuthError> {
    if proof.len() > ctx.max_len {
        return Err(invalid("too large"));
    }
    let jws = CompactJws::split(proof).ok_or_else(|| invalid("not a compact JWS"))?;
    let header_bytes = jws.header().map_err(|_| invalid("bad base64url"))?;
    let header: Header<'_> = json_object(&header_bytes, AuthErrorKind::InvalidDpopProof)
        .map_err(|_| invalid("bad header"))?;
    if header.crit {
        return Err(invalid("unsupported critical header"));
    }
    if !header.typ.as_deref().is_some_and(is_dpop_typ) {
        return Err(invalid("typ is not dpop+jwt"));
    }
    let alg = SigningAlgorithm::from_alg(&header.alg)
        .filter(|a| !a.is_symmetric() && ctx.algorithms.contains(*a))
        .ok_or_else(|| invalid("alg not allowed"))?;
    let jwk = header.jwk.ok_or_else(|| invalid("no jwk"))?.get();
    // A client's proofs repeat its `jwk` text: a remembered key skips the checks and parsing
    // (never the signature).
    let (key, remembered) = match ctx.keys.get(jwk, alg) {
        Some(key) => (key, true),
        None => (
            Arc::new(proof_key(jwk, alg).map_err(|_| invalid("unusable jwk"))?),
            false,
        ),
    };

    let signature = jws.signature().map_err(|_| invalid("bad base64url"))?;
    if !key.key.verify(jws.signing_input().as_bytes(), &signature) {
        return Err(invalid("bad signature"));
    }
    if !remembered {
        ctx.keys.insert(jwk, key.clone());
    }

    let payload = jws.payload().map_err(|_| invalid("bad base64url"))?;
    let claims: Claims<'_> = json_object(&payload, AuthErrorKind::InvalidDpopProof)
        .map_err(|_| invalid("bad claims"))?;
    let htm = claims.htm.ok_or_else(|| invalid("no htm"))?;
    if htm != ctx.method {
        return Err(invalid("htm does not match the method"));
    }
    let htu = claims.htu.ok_or_else(|| invalid("no htu"))?;
    // Normalization is idempotent, so an exact match needs none.
    if htu != ctx.htu && normalize_htu(&htu).as_deref() != Some(ctx.htu) {
        return Err(invalid("htu does not match"));
    }
    let iat = claims.iat.ok_or_else(|| invalid("no iat"))?;
    if iat.saturating_add(ctx.max_age) < ctx.now {
        return Err(invalid("iat too old"));
    }
    if iat > ctx.now.saturating_add(ctx.max_future) {
        return Err(invalid("iat in the future"));
    }
    let ath = claims.ath.ok_or_else(|| invalid("no ath"))?;
    if !is_thumbprint_of(&ath, ctx.access_token) {
        return Err(invalid("ath does not match the token"));
    }
    let jti = claims.jti.ok_or_else(|| invalid("no jti"))?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(invalid("bad jti"));
    }
    Ok(VerifiedProof {
        replay: ReplayKey::new(&key.jkt, &jti),
        jkt: key.jkt.clone(),
        nonce: claims.nonce.map(Cow::into_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DevDpopKey;

    const HTU: &str = "https://mcp.example.com/mcp";
    const TOKEN: &str = "an-access-token";

    /// The exact `jwk` text in a proof's header.
    fn jwk_text(proof: &str) -> String {
        use base64::Engine as _;
        let header = proof.split('.').next().unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        #[derive(Deserialize)]
        struct H<'a> {
            #[serde(borrow)]
            jwk: &'a RawValue,
        }
        let h: H<'_> = serde_json::from_slice(&header).unwrap();
        h.jwk.get().to_owned()
    }

    fn check(proof: &str, keys: &ProofKeyCache) -> Result<VerifiedProof, AuthError> {
        let ctx = ProofContext {
            method: "POST",
            htu: HTU,
            access_token: TOKEN,
            now: crate::jose::unix_now(),
            max_age: 60,
            max_future: 10,
            algorithms: [SigningAlgorithm::ES256].into_iter().collect(),
            max_len: 4096,
            keys,
        };
        verify_proof(proof, &ctx)
    }

    /// A key is remembered only once it has verified a proof's signature, and a remembered key
    /// still refuses a signature it did not make.
    #[test]
    fn keys_are_remembered_only_after_a_verified_signature() {
        let keys = ProofKeyCache::new(16);
        let (key, other) = (DevDpopKey::new(), DevDpopKey::new());

        // A proof carrying `key`'s jwk but another key's signature: refused, not remembered.
        let forged = {
            let mine = key.proof("POST", HTU, TOKEN);
            let theirs = other.proof("POST", HTU, TOKEN);
            let (input, _) = mine.rsplit_once('.').unwrap();
            format!("{input}.{}", theirs.rsplit_once('.').unwrap().1)
        };
        let jwk = jwk_text(&forged);
        let err = check(&forged, &keys).unwrap_err();
        assert_eq!(err.detail(), Some("bad signature"));
        assert!(keys.get(&jwk, SigningAlgorithm::ES256).is_none());

        // A valid proof: accepted, and its key remembered under its thumbprint.
        let valid = key.proof("POST", HTU, TOKEN);
        assert_eq!(jwk_text(&valid), jwk);
        let verified = check(&valid, &keys).unwrap();
        assert_eq!(&*verified.jkt, key.jkt());
        let remembered = keys.get(&jwk, SigningAlgorithm::ES256).expect("remembered");
        assert_eq!(&*remembered.jkt, key.jkt());

        // The same forgery again, now against the remembered key: still refused.
        assert_eq!(
            check(&forged, &keys).unwrap_err().detail(),
            Some("bad signature")
        );
        // And a fresh valid proof still passes through the remembered key.
        assert!(check(&key.proof("POST", HTU, TOKEN), &keys).is_ok());
    }

    #[test]
    fn typ_is_a_case_insensitive_media_type() {
        for ok in [
            "dpop+jwt",
            "DPOP+JWT",
            "DPoP+jwt",
            "application/dpop+jwt",
            "Application/DPoP+JWT",
        ] {
            assert!(is_dpop_typ(ok), "{ok}");
        }
        for bad in [
            "",
            "jwt",
            "dpop",
            "dpop+jwt ",
            " dpop+jwt",
            "dpop+jwt; charset=utf-8",
            "application/dpop+jwt;x=y",
            "application/",
            "application/application/dpop+jwt",
            "text/dpop+jwt",
            "applicatio/dpop+jwt",
            "dpop+jws",
            "at+jwt",
            "\u{0}dpop+jwt",
            "dpop\u{17f}jwt",
        ] {
            assert!(!is_dpop_typ(bad), "{bad:?}");
        }
    }
}
