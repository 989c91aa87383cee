//! The jsonwebtoken crypto backend, chosen at compile time and used explicitly.
//!
//! jsonwebtoken panics at the first verification when neither or both of its backends are
//! enabled and no process default was installed. This crate never relies on that process-wide
//! default: it calls the chosen provider directly, so a build with both features works (aws-lc-rs
//! wins) and a build with neither does not compile.

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::SigningAlgorithm;

#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
compile_error!(
    "tower-mcp-auth needs exactly one crypto backend: enable the feature `aws-lc-rs` (default) \
     or `rust-crypto`"
);

/// The provider used for every signature check.
#[cfg(feature = "aws-lc-rs")]
pub(crate) fn provider() -> &'static CryptoProvider {
    &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
}

/// The provider used for every signature check.
#[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
pub(crate) fn provider() -> &'static CryptoProvider {
    &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
}

/// Stub so the missing-backend `compile_error!` is the only error reported.
#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
pub(crate) fn provider() -> &'static CryptoProvider {
    unreachable!()
}

/// A public key parsed once and bound to one algorithm: each verification skips re-reading
/// the key's encoding. With aws-lc-rs it is a `ParsedPublicKey` built from the same bytes and
/// with the same verification algorithm jsonwebtoken's aws-lc-rs backend uses (which parses the
/// key again on every call); with RustCrypto, and for HMAC secrets, jsonwebtoken's verifier.
#[derive(Clone)]
pub(crate) struct PreparedKey {
    #[cfg(feature = "aws-lc-rs")]
    parsed: Option<aws_lc_rs::signature::ParsedPublicKey>,
    key: DecodingKey,
    alg: Algorithm,
}

impl PreparedKey {
    /// `key` for `alg`. A key aws-lc-rs cannot parse for `alg` keeps jsonwebtoken's path, which
    /// then refuses every signature as before.
    pub(crate) fn new(key: DecodingKey, alg: SigningAlgorithm) -> Self {
        Self {
            #[cfg(feature = "aws-lc-rs")]
            parsed: parse(&key, alg),
            alg: alg.to_jwt(),
            key,
        }
    }

    /// Whether `signature` is a valid signature of `message` by this key under its algorithm.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        #[cfg(feature = "aws-lc-rs")]
        if let Some(parsed) = &self.parsed {
            return parsed.verify_sig(message, signature).is_ok();
        }
        (provider().verifier_factory)(&self.alg, &self.key)
            .is_ok_and(|v| v.verify(message, &signature.to_vec()).is_ok())
    }
}

/// The key parsed for `alg`, as jsonwebtoken's aws-lc-rs backend would read it per call.
#[cfg(feature = "aws-lc-rs")]
fn parse(
    key: &DecodingKey,
    alg: SigningAlgorithm,
) -> Option<aws_lc_rs::signature::ParsedPublicKey> {
    use SigningAlgorithm as A;
    use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
    use jsonwebtoken::DecodingKeyKind;
    // As jsonwebtoken's verifiers do: a key of another family never verifies.
    if key.family() != alg.to_jwt().family() {
        return None;
    }
    let rsa: &'static sig::RsaParameters = match alg {
        A::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        A::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        A::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        A::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        A::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        A::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        A::ES256 | A::ES384 | A::EdDSA => {
            let DecodingKeyKind::SecretOrDer(bytes) = key.kind() else {
                return None;
            };
            let algorithm: &'static dyn sig::VerificationAlgorithm = match alg {
                A::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                A::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
                _ => &sig::ED25519,
            };
            return ParsedPublicKey::new(algorithm, bytes).ok();
        }
        A::HS256 | A::HS384 | A::HS512 => return None,
    };
    match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => ParsedPublicKey::new(rsa, der).ok(),
        DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
            .to_parsed_public_key(rsa)
            .ok(),
    }
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, feature = "aws-lc-rs"))]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, KeyPair as _};
    use jsonwebtoken::DecodingKey;

    use super::*;

    /// What jsonwebtoken's own verifier says, the reference the prepared key must match.
    fn reference(
        key: &DecodingKey,
        alg: SigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        (provider().verifier_factory)(&alg.to_jwt(), key)
            .is_ok_and(|v| v.verify(message, &signature.to_vec()).is_ok())
    }

    /// `n` and `e` of a PKCS#1 `RSAPublicKey` (DER `SEQUENCE { INTEGER, INTEGER }`), without
    /// leading zero bytes.
    fn rsa_components(der: &[u8]) -> (&[u8], &[u8]) {
        // A tag, then a short or long (0x81/0x82) length: (contents, rest).
        fn element(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
            assert_eq!(input[0], tag);
            let (len, header) = match input[1] {
                0x81 => (usize::from(input[2]), 3),
                0x82 => (usize::from(input[2]) << 8 | usize::from(input[3]), 4),
                short => (usize::from(short), 2),
            };
            input[header..].split_at(len)
        }
        let (sequence, _) = element(der, 0x30);
        let (n, rest) = element(sequence, 0x02);
        let (e, _) = element(rest, 0x02);
        let trim = |v: &[u8]| v.iter().position(|&b| b != 0).unwrap_or(v.len());
        (&n[trim(n)..], &e[trim(e)..])
    }

    /// A prepared key agrees with jsonwebtoken on valid, altered and cross-algorithm signatures.
    #[test]
    fn prepared_keys_agree_with_jsonwebtoken() {
        let rng = SystemRandom::new();
        let message = b"header.payload";
        let mut cases: Vec<(DecodingKey, SigningAlgorithm, Vec<u8>)> = Vec::new();

        for (signing, alg) in [
            (
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                SigningAlgorithm::ES256,
            ),
            (
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
                SigningAlgorithm::ES384,
            ),
        ] {
            let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = sig::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
            let signature = pair.sign(&rng, message).unwrap().as_ref().to_vec();
            cases.push((
                DecodingKey::from_ec_der(pair.public_key().as_ref()),
                alg,
                signature,
            ));
        }
        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        cases.push((
            DecodingKey::from_ed_der(ed.public_key().as_ref()),
            SigningAlgorithm::EdDSA,
            ed.sign(message).as_ref().to_vec(),
        ));
        let rsa = sig::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        for (padding, alg) in [
            (
                &sig::RSA_PKCS1_SHA256 as &dyn sig::RsaEncoding,
                SigningAlgorithm::RS256,
            ),
            (&sig::RSA_PSS_SHA256, SigningAlgorithm::PS256),
            (&sig::RSA_PKCS1_SHA512, SigningAlgorithm::RS512),
        ] {
            let mut signature = vec![0; rsa.public_modulus_len()];
            rsa.sign(padding, &rng, message, &mut signature).unwrap();
            let der = rsa.public_key().as_ref();
            cases.push((DecodingKey::from_rsa_der(der), alg, signature.clone()));
            // The same key as a JWK gives it: modulus and exponent.
            let (n, e) = rsa_components(der);
            cases.push((DecodingKey::from_rsa_raw_components(n, e), alg, signature));
        }

        let algorithms = [
            SigningAlgorithm::ES256,
            SigningAlgorithm::ES384,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
            SigningAlgorithm::PS256,
            SigningAlgorithm::RS512,
        ];
        for (key, signed_with, signature) in &cases {
            let mut altered = signature.clone();
            altered[signature.len() / 2] ^= 1;
            for alg in algorithms {
                let prepared = PreparedKey::new(key.clone(), alg);
                for (what, message, signature) in [
                    ("valid", &message[..], &signature[..]),
                    ("other message", &b"header.payloaD"[..], &signature[..]),
                    ("altered signature", &message[..], &altered[..]),
                    (
                        "truncated signature",
                        &message[..],
                        &signature[..signature.len() - 1],
                    ),
                ] {
                    let expected = reference(key, alg, message, signature);
                    assert_eq!(
                        prepared.verify(message, signature),
                        expected,
                        "{signed_with} key, verified as {alg}: {what}"
                    );
                    assert_eq!(expected, alg == *signed_with && what == "valid");
                }
            }
        }
    }
}
