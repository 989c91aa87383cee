//! [`SigningAlgorithm`] and [`AlgorithmSet`]: the JWS algorithms this crate verifies.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JWS signing algorithm (RFC 7518, RFC 8037).
///
/// `none` does not exist here, so it can never be configured or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 (shared secret; only with an explicitly configured secret).
    HS256,
    /// HMAC with SHA-384 (shared secret; only with an explicitly configured secret).
    HS384,
    /// HMAC with SHA-512 (shared secret; only with an explicitly configured secret).
    HS512,
}

/// The key type an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl SigningAlgorithm {
    /// Every algorithm, asymmetric first.
    pub const ALL: [Self; 12] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
        Self::HS256,
        Self::HS384,
        Self::HS512,
    ];

    /// The `alg` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
        }
    }

    /// Parses an `alg` value exactly (case-sensitive, as RFC 7515 requires).
    pub fn from_alg(alg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == alg)
    }

    /// Whether this is an HMAC (shared-secret) algorithm.
    pub const fn is_symmetric(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    pub(crate) const fn family(self) -> KeyFamily {
        match self {
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                KeyFamily::Rsa
            }
            Self::ES256 => KeyFamily::EcP256,
            Self::ES384 => KeyFamily::EcP384,
            Self::EdDSA => KeyFamily::Ed25519,
            Self::HS256 | Self::HS384 | Self::HS512 => KeyFamily::Hmac,
        }
    }

    pub(crate) const fn to_jwt(self) -> Algorithm {
        match self {
            Self::RS256 => Algorithm::RS256,
            Self::RS384 => Algorithm::RS384,
            Self::RS512 => Algorithm::RS512,
            Self::PS256 => Algorithm::PS256,
            Self::PS384 => Algorithm::PS384,
            Self::PS512 => Algorithm::PS512,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
            Self::HS256 => Algorithm::HS256,
            Self::HS384 => Algorithm::HS384,
            Self::HS512 => Algorithm::HS512,
        }
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an unknown algorithm name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signing algorithm {0:?}")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for SigningAlgorithm {
    type Err = UnknownAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_alg(s).ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

impl Serialize for SigningAlgorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SigningAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of algorithms (a bit set; copying it is free).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AlgorithmSet(u16);

impl AlgorithmSet {
    /// The default allow-list: every asymmetric algorithm (RS*, PS*, ES256, ES384, EdDSA).
    pub const ASYMMETRIC: Self = Self(
        SigningAlgorithm::RS256.bit()
            | SigningAlgorithm::RS384.bit()
            | SigningAlgorithm::RS512.bit()
            | SigningAlgorithm::PS256.bit()
            | SigningAlgorithm::PS384.bit()
            | SigningAlgorithm::PS512.bit()
            | SigningAlgorithm::ES256.bit()
            | SigningAlgorithm::ES384.bit()
            | SigningAlgorithm::EdDSA.bit(),
    );

    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// Whether `alg` is in the set.
    pub const fn contains(self, alg: SigningAlgorithm) -> bool {
        self.0 & alg.bit() != 0
    }

    /// The set with `alg` added.
    pub const fn with(self, alg: SigningAlgorithm) -> Self {
        Self(self.0 | alg.bit())
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms in the set, in [`SigningAlgorithm::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = SigningAlgorithm> {
        SigningAlgorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl FromIterator<SigningAlgorithm> for AlgorithmSet {
    fn from_iter<I: IntoIterator<Item = SigningAlgorithm>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

impl fmt::Debug for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_parsing_is_exact() {
        assert_eq!(
            SigningAlgorithm::from_alg("ES256"),
            Some(SigningAlgorithm::ES256)
        );
        for bad in [
            "none", "None", "NONE", "es256", "ES256 ", "", "ES512", "HS256\0",
        ] {
            assert_eq!(SigningAlgorithm::from_alg(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn asymmetric_set_has_no_hmac() {
        let set = AlgorithmSet::ASYMMETRIC;
        assert!(
            SigningAlgorithm::ALL
                .iter()
                .all(|a| set.contains(*a) != a.is_symmetric())
        );
    }
}
