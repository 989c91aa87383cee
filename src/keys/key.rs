//! [`VerificationKey`] (one key bound to one algorithm) and [`KeySet`].

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use super::KeyError;
use super::algorithm::{KeyFamily, SigningAlgorithm};
use crate::crypto::PreparedKey;

/// Smallest RSA modulus accepted (RFC 7518 §3.3, RFC 8725 §3.2).
const MIN_RSA_BITS: usize = 2048;
/// Smallest HMAC secret accepted: the hash output size of HS256 (RFC 7518 §3.2).
const MIN_HMAC_BYTES: usize = 32;
/// Longest `kid` kept; longer ones cannot match.
pub(crate) const MAX_KID_LEN: usize = 256;

/// A public key (or an explicitly configured shared secret) usable with exactly one algorithm.
#[derive(Clone)]
pub struct VerificationKey {
    kid: Option<Arc<str>>,
    alg: SigningAlgorithm,
    /// Parsed once, for `alg`.
    key: PreparedKey,
}

impl VerificationKey {
    /// A public key from PEM (`PUBLIC KEY` SPKI, or `RSA PUBLIC KEY`), used only with `alg`.
    pub fn from_pem(alg: SigningAlgorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let key = match alg.family() {
            KeyFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            KeyFamily::EcP256 | KeyFamily::EcP384 => DecodingKey::from_ec_pem(pem),
            KeyFamily::Ed25519 => DecodingKey::from_ed_pem(pem),
            KeyFamily::Hmac => return Err(KeyError::SymmetricNeedsSecret),
        }
        .map_err(|_| KeyError::InvalidPem { alg })?;
        Ok(Self {
            kid: None,
            alg,
            key: PreparedKey::new(key, alg),
        })
    }

    /// A public JWK (RFC 7517) given as JSON. Its `alg` (or, without one, its type and curve)
    /// fixes the algorithm; private keys and `oct` keys are refused.
    pub fn from_jwk_json(json: &str) -> Result<Self, KeyError> {
        let jwk: Jwk = serde_json::from_str(json).map_err(|_| KeyError::InvalidJwk {
            reason: "not a JSON object with string members",
        })?;
        jwk.into_key()
    }

    /// An HMAC shared secret: the only way HS256/384/512 tokens are ever accepted. At least
    /// 32 bytes.
    pub fn shared_secret(alg: SigningAlgorithm, secret: &[u8]) -> Result<Self, KeyError> {
        if !alg.is_symmetric() {
            return Err(KeyError::SecretNeedsHmac { alg });
        }
        if secret.len() < MIN_HMAC_BYTES {
            return Err(KeyError::WeakSecret);
        }
        Ok(Self {
            kid: None,
            alg,
            key: PreparedKey::new(DecodingKey::from_secret(secret), alg),
        })
    }

    /// Sets the key id tokens name in their `kid` header.
    pub fn with_kid(mut self, kid: impl Into<Arc<str>>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }

    /// Whether `signature` is this key's signature of `message` under its algorithm.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify(message, signature)
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyLookupError {
    /// No key with that `kid` (or, without `kid`, not exactly one key for the algorithm).
    NotFound,
    /// More than one key has that `kid` and the token's algorithm: the `kid` is ambiguous and
    /// no key is chosen.
    Ambiguous,
    /// A key with that `kid` exists but is bound to another algorithm.
    AlgorithmMismatch,
}

/// An immutable set of verification keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

impl KeySet {
    /// A set of keys.
    pub fn new(keys: Vec<VerificationKey>) -> Self {
        Self { keys }
    }

    /// Parses a JWK Set document. Keys that cannot verify signatures here (`use` other than
    /// `sig`, `key_ops` without `verify`, private or symmetric keys, weak RSA, unknown types,
    /// curve and `alg` disagreeing) are skipped; the document itself must be well-formed.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(json).map_err(|_| KeyError::InvalidJwkSet)?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            match jwk.into_key() {
                Ok(key) => keys.push(key),
                Err(err) => tracing::debug!(
                    target: "tower_mcp_auth::keys",
                    error = %err,
                    "skipping a JWK that cannot verify signatures"
                ),
            }
        }
        Ok(Self { keys })
    }

    /// The keys.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token header. With a `kid`, the only key with that id and this algorithm:
    /// two or more such keys make the `kid` ambiguous and none is used (a key set publishing
    /// one `kid` twice cannot say which key signed); keys sharing a `kid` under different
    /// algorithms are told apart by the algorithm. Without a `kid`, the only key for this
    /// algorithm.
    pub(crate) fn find(
        &self,
        kid: Option<&str>,
        alg: SigningAlgorithm,
    ) -> Result<&VerificationKey, KeyLookupError> {
        match kid {
            Some(kid) => {
                let mut same_kid = self.keys.iter().filter(|k| k.kid() == Some(kid)).peekable();
                if same_kid.peek().is_none() {
                    return Err(KeyLookupError::NotFound);
                }
                let mut usable = same_kid.filter(|k| k.alg == alg);
                match (usable.next(), usable.next()) {
                    (Some(key), None) => Ok(key),
                    (Some(_), Some(_)) => Err(KeyLookupError::Ambiguous),
                    (None, _) => Err(KeyLookupError::AlgorithmMismatch),
                }
            }
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.alg == alg);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Ok(key),
                    _ => Err(KeyLookupError::NotFound),
                }
            }
        }
    }
}

/// The members of a JWK this crate reads. Unknown members are ignored, except private ones.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    // Private members: present means refuse.
    #[serde(default)]
    d: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    p: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    q: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    dp: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    dq: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    qi: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    oth: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    k: Option<serde::de::IgnoredAny>,
}

/// The public key of a DPoP proof header (`jwk`), prepared for the proof's `alg`, with its
/// RFC 7638 SHA-256 thumbprint.
pub(crate) struct ProofKey {
    /// The proof algorithm the key was prepared for.
    pub(crate) alg: SigningAlgorithm,
    /// The key, parsed once.
    pub(crate) key: PreparedKey,
    /// The thumbprint, computed from the canonical members.
    pub(crate) jkt: Arc<str>,
}

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofKey")
            .field("alg", &self.alg)
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

/// The public key of a DPoP proof header (`jwk`), bound to the proof's `alg`, and its RFC 7638
/// SHA-256 thumbprint computed from the canonical members.
pub(crate) fn proof_key(json: &str, alg: SigningAlgorithm) -> Result<ProofKey, KeyError> {
    let jwk: Jwk = serde_json::from_str(json).map_err(|_| KeyError::InvalidJwk {
        reason: "not a JSON object with string members",
    })?;
    if let Some(declared) = &jwk.alg
        && declared != alg.as_str()
    {
        return Err(invalid("the JWK's `alg` differs from the proof's"));
    }
    // The canonical members are exactly the strings given: strict base64url and the length
    // checks in `checked` make their encoding unique (RFC 7638 §7).
    let jkt = jwk.thumbprint()?;
    let (key, key_alg) = jwk.checked()?;
    if key_alg.family() != alg.family() {
        return Err(invalid(
            "the key type and curve do not match the proof's `alg`",
        ));
    }
    let key = PreparedKey::new(key, alg);
    Ok(ProofKey {
        alg,
        key,
        jkt: jkt.into(),
    })
}

/// The RFC 7638 SHA-256 thumbprint of a JWK (EC, RSA or OKP), base64url: the `jkt` a
/// DPoP-bound token names. Only the required members count.
pub fn jwk_thumbprint(jwk_json: &str) -> Result<String, KeyError> {
    let jwk: Jwk = serde_json::from_str(jwk_json).map_err(|_| KeyError::InvalidJwk {
        reason: "not a JSON object with string members",
    })?;
    jwk.thumbprint()
}

/// The RFC 7638 canonical JSON of a JWK: `kty` and `members` (each name sorted into place), as
/// JSON strings with serde_json's escaping, no whitespace.
fn canonical_jwk(kty: &str, members: &[(&str, &str)]) -> String {
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(members.len() + 1);
    all.extend_from_slice(members);
    all.push(("kty", kty));
    all.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(128);
    out.push('{');
    for (i, (name, value)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push('}');
    out
}

fn push_json_string(out: &mut String, value: &str) {
    // Key members are base64url (nothing to escape); anything else gets serde_json's escaping.
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(value).to_string());
    }
}

/// The bit length of a big-endian unsigned integer (leading zero bytes and bits not counted).
fn modulus_bits(n: &[u8]) -> usize {
    let significant = n.iter().position(|&b| b != 0).map_or(&[][..], |i| &n[i..]);
    match significant.first() {
        Some(top) => (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

fn invalid(reason: &'static str) -> KeyError {
    KeyError::InvalidJwk { reason }
}

fn b64(field: &Option<String>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let value = field
        .as_deref()
        .ok_or(KeyError::InvalidJwk { reason: name })?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| invalid("a key member is not base64url without padding"))
}

impl Jwk {
    /// RFC 7638: the required members, sorted, no whitespace, hashed with SHA-256.
    fn thumbprint(&self) -> Result<String, KeyError> {
        fn member<'a>(v: &'a Option<String>, name: &'static str) -> Result<&'a str, KeyError> {
            v.as_deref().ok_or(KeyError::InvalidJwk { reason: name })
        }
        // The members in lexicographic order, no whitespace (RFC 7638 §3.3).
        let members: [(&str, &str); 3];
        let members: &[(&str, &str)] = match self.kty.as_str() {
            "EC" => {
                members = [
                    ("crv", member(&self.crv, "missing `crv`")?),
                    ("x", member(&self.x, "missing `x`")?),
                    ("y", member(&self.y, "missing `y`")?),
                ];
                &members
            }
            "RSA" => {
                members = [
                    ("e", member(&self.e, "missing `e`")?),
                    ("n", member(&self.n, "missing `n`")?),
                    ("", ""),
                ];
                &members[..2]
            }
            "OKP" => {
                members = [
                    ("crv", member(&self.crv, "missing `crv`")?),
                    ("x", member(&self.x, "missing `x`")?),
                    ("", ""),
                ];
                &members[..2]
            }
            _ => return Err(invalid("unsupported key type")),
        };
        Ok(crate::jose::thumbprint(&canonical_jwk(&self.kty, members)))
    }

    fn into_key(self) -> Result<VerificationKey, KeyError> {
        let (key, alg) = self.checked()?;
        Ok(VerificationKey {
            kid: self.kid.map(Arc::from),
            alg,
            key: PreparedKey::new(key, alg),
        })
    }

    /// Every check a JWK must pass to verify signatures here: the key and the algorithm it is
    /// bound to.
    fn checked(&self) -> Result<(DecodingKey, SigningAlgorithm), KeyError> {
        if self.d.is_some()
            || self.p.is_some()
            || self.q.is_some()
            || self.dp.is_some()
            || self.dq.is_some()
            || self.qi.is_some()
            || self.oth.is_some()
        {
            return Err(invalid("private key material is not accepted"));
        }
        if self.kty == "oct" || self.k.is_some() {
            return Err(invalid(
                "symmetric JWKs are not accepted; use a shared secret",
            ));
        }
        if let Some(use_) = &self.use_
            && use_ != "sig"
        {
            return Err(invalid("`use` is not `sig`"));
        }
        if let Some(ops) = &self.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err(invalid("`key_ops` does not include `verify`"));
        }
        if let Some(kid) = &self.kid
            && kid.len() > MAX_KID_LEN
        {
            return Err(invalid("`kid` is too long"));
        }
        let declared = match &self.alg {
            Some(alg) => Some(
                SigningAlgorithm::from_alg(alg)
                    .filter(|a| !a.is_symmetric())
                    .ok_or(invalid("unsupported `alg`"))?,
            ),
            None => None,
        };
        let (key, alg) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                let n = b64(&self.n, "missing `n`")?;
                let e = b64(&self.e, "missing `e`")?;
                if n.first() == Some(&0) || e.first() == Some(&0) || e.is_empty() {
                    return Err(invalid("RSA members are not minimal big-endian integers"));
                }
                if modulus_bits(&n) < MIN_RSA_BITS {
                    return Err(invalid("RSA modulus shorter than 2048 bits"));
                }
                // Without `alg`, an RSA key is bound to RS256 (the JOSE default), never to the
                // whole RSA family.
                let alg = declared.unwrap_or(SigningAlgorithm::RS256);
                (DecodingKey::from_rsa_raw_components(&n, &e), alg)
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (alg, len) = if crv == "P-256" {
                    (SigningAlgorithm::ES256, 32)
                } else {
                    (SigningAlgorithm::ES384, 48)
                };
                let x = b64(&self.x, "missing `x`")?;
                let y = b64(&self.y, "missing `y`")?;
                if x.len() != len || y.len() != len {
                    return Err(invalid("EC coordinates do not have the curve's length"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (DecodingKey::from_ec_der(&point), alg)
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(&self.x, "missing `x`")?;
                if x.len() != 32 {
                    return Err(invalid("Ed25519 key is not 32 bytes"));
                }
                (DecodingKey::from_ed_der(&x), SigningAlgorithm::EdDSA)
            }
            _ => return Err(invalid("unsupported key type or curve")),
        };
        if let Some(declared) = declared
            && declared.family() != alg.family()
        {
            return Err(invalid("`alg` does not match the key type and curve"));
        }
        Ok((key, declared.unwrap_or(alg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn ec(extra: &str) -> String {
        format!(r#"{{"kty":"EC","crv":"P-256","x":"{P256_X}","y":"{P256_Y}"{extra}}}"#)
    }

    #[test]
    fn ec_key_binds_to_es256() {
        let key = VerificationKey::from_jwk_json(&ec(r#","kid":"k1""#)).unwrap();
        assert_eq!(key.algorithm(), SigningAlgorithm::ES256);
        assert_eq!(key.kid(), Some("k1"));
    }

    #[test]
    fn refused_jwks() {
        for (extra, why) in [
            (r#","d":"AAAA""#, "private"),
            (r#","use":"enc""#, "enc"),
            (r#","key_ops":["sign"]"#, "ops"),
            (r#","alg":"ES384""#, "curve/alg"),
            (r#","alg":"RS256""#, "family"),
            (r#","alg":"HS256""#, "hmac"),
            (r#","alg":"none""#, "none"),
        ] {
            assert!(VerificationKey::from_jwk_json(&ec(extra)).is_err(), "{why}");
        }
        assert!(VerificationKey::from_jwk_json(r#"{"kty":"oct","k":"c2VjcmV0"}"#).is_err());
        let short_x = format!(r#"{{"kty":"EC","crv":"P-256","x":"AAAA","y":"{P256_Y}"}}"#);
        assert!(VerificationKey::from_jwk_json(&short_x).is_err());
        let small_rsa = r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#;
        assert!(VerificationKey::from_jwk_json(small_rsa).is_err());
    }

    /// A modulus of exactly `bits` bits: top bit set, 256 bytes long for 2041..=2048 bits.
    fn rsa_jwk(bits: usize) -> String {
        let len = bits.div_ceil(8);
        let mut n = vec![0xA5u8; len];
        n[0] = 1u8 << ((bits - 1) % 8);
        n[len - 1] |= 1; // odd, as a real modulus
        format!(
            r#"{{"kty":"RSA","alg":"RS256","n":"{}","e":"AQAB"}}"#,
            URL_SAFE_NO_PAD.encode(&n)
        )
    }

    #[test]
    fn rsa_modulus_bits_are_counted_not_bytes() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x7F, 0xFF]), 15);
        for bits in [2041, 2044, 2047] {
            let jwk = rsa_jwk(bits);
            let n = URL_SAFE_NO_PAD
                .decode(
                    serde_json::from_str::<serde_json::Value>(&jwk).unwrap()["n"]
                        .as_str()
                        .unwrap(),
                )
                .unwrap();
            assert_eq!(n.len(), 256, "{bits} bits still take 256 bytes");
            assert_eq!(modulus_bits(&n), bits);
            assert_eq!(
                VerificationKey::from_jwk_json(&jwk).unwrap_err(),
                KeyError::InvalidJwk {
                    reason: "RSA modulus shorter than 2048 bits"
                },
                "{bits}-bit modulus"
            );
            let doc = format!(r#"{{"keys":[{jwk}]}}"#);
            assert!(
                KeySet::from_jwks_json(doc.as_bytes()).unwrap().is_empty(),
                "{bits}"
            );
        }
        for bits in [2048, 3072, 4096] {
            let key = VerificationKey::from_jwk_json(&rsa_jwk(bits))
                .unwrap_or_else(|e| panic!("{bits}-bit modulus: {e}"));
            assert_eq!(key.algorithm(), SigningAlgorithm::RS256);
        }
    }

    #[test]
    fn duplicate_kid_with_two_usable_keys_is_ambiguous() {
        const OTHER_X: &str = "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs";
        const OTHER_Y: &str = "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA";
        let other =
            format!(r#"{{"kty":"EC","crv":"P-256","kid":"dup","x":"{OTHER_X}","y":"{OTHER_Y}"}}"#);
        // Same kid, same algorithm, two different keys: in either order, neither is used.
        for doc in [
            format!(r#"{{"keys":[{},{other}]}}"#, ec(r#","kid":"dup""#)),
            format!(r#"{{"keys":[{other},{}]}}"#, ec(r#","kid":"dup""#)),
        ] {
            let set = KeySet::from_jwks_json(doc.as_bytes()).unwrap();
            assert_eq!(set.keys().len(), 2);
            assert_eq!(
                set.find(Some("dup"), SigningAlgorithm::ES256).unwrap_err(),
                KeyLookupError::Ambiguous
            );
        }
        // A duplicate that is unusable (`use: enc`) is dropped at parse time: no ambiguity.
        let doc = format!(
            r#"{{"keys":[{},{}]}}"#,
            ec(r#","kid":"dup""#),
            other.replace(r#""kid":"dup""#, r#""kid":"dup","use":"enc""#)
        );
        let set = KeySet::from_jwks_json(doc.as_bytes()).unwrap();
        assert!(set.find(Some("dup"), SigningAlgorithm::ES256).is_ok());
        // Same kid under two algorithms: the token's algorithm picks one.
        let doc = format!(
            r#"{{"keys":[{},{}]}}"#,
            ec(r#","kid":"dup""#),
            rsa_jwk(2048).replace(r#""kty":"RSA""#, r#""kty":"RSA","kid":"dup""#)
        );
        let set = KeySet::from_jwks_json(doc.as_bytes()).unwrap();
        assert_eq!(
            set.find(Some("dup"), SigningAlgorithm::ES256)
                .unwrap()
                .algorithm(),
            SigningAlgorithm::ES256
        );
        assert_eq!(
            set.find(Some("dup"), SigningAlgorithm::RS256)
                .unwrap()
                .algorithm(),
            SigningAlgorithm::RS256
        );
    }

    #[test]
    fn jwks_skips_unusable_keys_and_looks_up_deterministically() {
        let doc = format!(
            r#"{{"keys":[{},{},{},{{"kty":"oct","k":"AAAA"}},"junk"]}}"#,
            ec(r#","kid":"a""#),
            ec(r#","kid":"a","use":"enc""#),
            ec(r#","kid":"b""#)
        );
        let set = KeySet::from_jwks_json(doc.as_bytes()).unwrap();
        assert_eq!(set.keys().len(), 2);
        assert!(set.find(Some("a"), SigningAlgorithm::ES256).is_ok());
        assert_eq!(
            set.find(Some("a"), SigningAlgorithm::RS256).unwrap_err(),
            KeyLookupError::AlgorithmMismatch
        );
        assert_eq!(
            set.find(Some("zz"), SigningAlgorithm::ES256).unwrap_err(),
            KeyLookupError::NotFound
        );
        // Two ES256 keys and no kid: ambiguous.
        assert!(set.find(None, SigningAlgorithm::ES256).is_err());
        assert!(KeySet::from_jwks_json(b"{\"keys\":{}}").is_err());
    }

    #[test]
    fn canonical_jwk_matches_serde_json() {
        for value in ["abc-_09", "a\"b", "back\\slash", "ü\u{0}\n", ""] {
            let expected = serde_json::json!({"crv": value, "kty": "EC", "x": "x", "y": value});
            assert_eq!(
                canonical_jwk("EC", &[("crv", value), ("x", "x"), ("y", value)]),
                expected.to_string()
            );
            let expected = serde_json::json!({"e": "AQAB", "kty": value, "n": value});
            assert_eq!(
                canonical_jwk(value, &[("e", "AQAB"), ("n", value)]),
                expected.to_string()
            );
        }
    }

    #[test]
    fn rfc_thumbprint_vectors() {
        // RFC 9449 §6.1 (the §4.1 proof key).
        let ec = r#"{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}"#;
        assert_eq!(
            jwk_thumbprint(ec).unwrap(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        // RFC 8037 Appendix A.3.
        let okp =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert_eq!(
            jwk_thumbprint(okp).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn secrets_must_be_hmac_and_long() {
        assert!(VerificationKey::shared_secret(SigningAlgorithm::HS256, &[7; 32]).is_ok());
        assert!(VerificationKey::shared_secret(SigningAlgorithm::HS256, &[7; 31]).is_err());
        assert!(VerificationKey::shared_secret(SigningAlgorithm::ES256, &[7; 32]).is_err());
    }
}
