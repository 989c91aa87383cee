//! The jsonwebtoken crypto backend, chosen at compile time and used explicitly.
//!
//! jsonwebtoken panics at the first verification when neither or both of its backends are
//! enabled and no process default was installed. This crate never relies on that process-wide
//! default: it calls the chosen provider directly, so a build with both features works (aws-lc-rs
//! wins) and a build with neither does not compile.

use jsonwebtoken::crypto::CryptoProvider;

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

/// The decoded public members of a checked JWK (big-endian integers, SEC1 point, raw key).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PublicKeyParts<'a> {
    /// RSA modulus and exponent.
    Rsa { n: &'a [u8], e: &'a [u8] },
    /// An uncompressed SEC1 point (`0x04 || x || y`) on P-256 or P-384.
    Ec { point: &'a [u8] },
    /// A raw 32-byte Ed25519 public key.
    Ed25519 { x: &'a [u8] },
}

impl PublicKeyParts<'_> {
    /// The key as jsonwebtoken takes it.
    pub(crate) fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        use jsonwebtoken::DecodingKey;
        match *self {
            Self::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
            Self::Ec { point } => DecodingKey::from_ec_der(point),
            Self::Ed25519 { x } => DecodingKey::from_ed_der(x),
        }
    }
}

/// A public key parsed once and bound to one algorithm: each verification skips re-reading
/// the key's encoding (with aws-lc-rs, a `ParsedPublicKey`; with RustCrypto, jsonwebtoken's
/// verifier, which parses per call).
pub(crate) struct PreparedKey {
    #[cfg(feature = "aws-lc-rs")]
    parsed: aws_lc_rs::signature::ParsedPublicKey,
    #[cfg(not(feature = "aws-lc-rs"))]
    key: jsonwebtoken::DecodingKey,
    #[cfg(not(feature = "aws-lc-rs"))]
    alg: jsonwebtoken::Algorithm,
}

impl PreparedKey {
    /// The key for `alg`, or `None` when the parts are not a valid key of `alg`'s family.
    #[cfg(feature = "aws-lc-rs")]
    pub(crate) fn new(parts: PublicKeyParts<'_>, alg: crate::SigningAlgorithm) -> Option<Self> {
        use crate::SigningAlgorithm as A;
        use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
        // The same verification algorithms jsonwebtoken's aws-lc-rs backend uses.
        let rsa = |params: &'static sig::RsaParameters, n: &[u8], e: &[u8]| {
            RsaPublicKeyComponents { n, e }.to_parsed_public_key(params)
        };
        let parsed = match (parts, alg) {
            (PublicKeyParts::Ec { point }, A::ES256) => {
                ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point)
            }
            (PublicKeyParts::Ec { point }, A::ES384) => {
                ParsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, point)
            }
            (PublicKeyParts::Ed25519 { x }, A::EdDSA) => ParsedPublicKey::new(&sig::ED25519, x),
            (PublicKeyParts::Rsa { n, e }, A::RS256) => rsa(&sig::RSA_PKCS1_2048_8192_SHA256, n, e),
            (PublicKeyParts::Rsa { n, e }, A::RS384) => rsa(&sig::RSA_PKCS1_2048_8192_SHA384, n, e),
            (PublicKeyParts::Rsa { n, e }, A::RS512) => rsa(&sig::RSA_PKCS1_2048_8192_SHA512, n, e),
            (PublicKeyParts::Rsa { n, e }, A::PS256) => rsa(&sig::RSA_PSS_2048_8192_SHA256, n, e),
            (PublicKeyParts::Rsa { n, e }, A::PS384) => rsa(&sig::RSA_PSS_2048_8192_SHA384, n, e),
            (PublicKeyParts::Rsa { n, e }, A::PS512) => rsa(&sig::RSA_PSS_2048_8192_SHA512, n, e),
            _ => return None,
        };
        parsed.ok().map(|parsed| Self { parsed })
    }

    /// The key for `alg`, or `None` when the parts are not a key of `alg`'s family.
    #[cfg(not(feature = "aws-lc-rs"))]
    pub(crate) fn new(parts: PublicKeyParts<'_>, alg: crate::SigningAlgorithm) -> Option<Self> {
        use crate::keys::KeyFamily;
        let fits = match parts {
            PublicKeyParts::Rsa { .. } => alg.family() == KeyFamily::Rsa,
            PublicKeyParts::Ec { point } => match alg.family() {
                KeyFamily::EcP256 => point.len() == 65,
                KeyFamily::EcP384 => point.len() == 97,
                _ => false,
            },
            PublicKeyParts::Ed25519 { .. } => alg.family() == KeyFamily::Ed25519,
        };
        fits.then(|| Self {
            key: parts.decoding_key(),
            alg: alg.to_jwt(),
        })
    }

    /// Whether `signature` is a valid signature of `message` by this key.
    #[cfg(feature = "aws-lc-rs")]
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(message, signature).is_ok()
    }

    /// Whether `signature` is a valid signature of `message` by this key.
    #[cfg(not(feature = "aws-lc-rs"))]
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        (provider().verifier_factory)(&self.alg, &self.key)
            .is_ok_and(|v| v.verify(message, &signature.to_vec()).is_ok())
    }
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey").finish_non_exhaustive()
    }
}
