//! Where verification keys come from: the [`KeySource`] trait, [`StaticKeys`] and
//! [`RemoteJwks`].
//!
//! A key is always bound to exactly one [`SigningAlgorithm`] (RFC 8725 §3.1): the algorithm a
//! token names must equal the algorithm of the key its `kid` selects. `kid` is only a lookup key;
//! `jku`, `x5u`, `x5c` and `jwk` headers are never used to find keys.
//!
//! ```
//! use tower_mcp_auth::keys::{KeySet, StaticKeys};
//!
//! let jwks = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1",
//!   "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
//!   "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
//! let keys = StaticKeys::new(KeySet::from_jwks_json(jwks)?);
//! # Ok::<(), tower_mcp_auth::keys::KeyError>(())
//! ```

mod algorithm;
mod discovery;
mod key;
mod remote;

use std::sync::Arc;

use async_trait::async_trait;

pub use algorithm::{AlgorithmSet, SigningAlgorithm, UnknownAlgorithm};
pub use discovery::{DiscoveredKeys, IssuerMetadata, discover, discovery_urls};
pub(crate) use key::{KeyLookupError, MAX_KID_LEN, ProofKey, proof_key};
pub use key::{KeySet, VerificationKey, jwk_thumbprint};
pub use remote::{KeySourceStats, RemoteJwks, RemoteJwksOptions};

/// Why keys could not be built or obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A PEM document could not be read as a public key for the algorithm.
    #[error("the PEM document is not a public key usable with {alg}")]
    InvalidPem {
        /// The algorithm the key was configured for.
        alg: SigningAlgorithm,
    },
    /// A JWK was refused.
    #[error("invalid JWK: {reason}")]
    InvalidJwk {
        /// Why.
        reason: &'static str,
    },
    /// A JWK Set document is not `{"keys":[...]}`.
    #[error("the document is not a JWK Set")]
    InvalidJwkSet,
    /// An HMAC algorithm was given a PEM key; HMAC needs [`VerificationKey::shared_secret`].
    #[error("HMAC algorithms need an explicitly configured shared secret")]
    SymmetricNeedsSecret,
    /// A shared secret was configured for a non-HMAC algorithm.
    #[error("a shared secret can only be used with HS256, HS384 or HS512, not {alg}")]
    SecretNeedsHmac {
        /// The algorithm given.
        alg: SigningAlgorithm,
    },
    /// The shared secret is shorter than 32 bytes.
    #[error("the shared secret is shorter than 32 bytes")]
    WeakSecret,
    /// Fetching a remote key set failed and no usable keys are cached.
    #[error("key set unavailable: {0}")]
    Unavailable(String),
}

/// Why the verifier asks a source to refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshReason<'a> {
    /// Nothing is loaded yet, or the loaded set has expired.
    Expired,
    /// A token names a `kid` (or needs an algorithm) the current set does not have.
    UnknownKey {
        /// The `kid`, if the token names one.
        kid: Option<&'a str>,
    },
}

/// A source of verification keys for one issuer.
///
/// [`current`](KeySource::current) is the hot path and must not do I/O;
/// [`refresh`](KeySource::refresh) may fetch, and must rate-limit itself (a flood of unknown
/// `kid`s must not turn into a flood of fetches).
#[async_trait]
pub trait KeySource: Send + Sync + std::fmt::Debug + 'static {
    /// The keys known now, or `None` when none are loaded or they have expired.
    fn current(&self) -> Option<Arc<KeySet>>;

    /// Loads keys again if the source's policy allows, returning the best set it has.
    async fn refresh(&self, reason: RefreshReason<'_>) -> Result<Arc<KeySet>, KeyError>;

    /// Counters for remote sources (`None` for static keys).
    fn stats(&self) -> Option<KeySourceStats> {
        None
    }
}

/// Keys fixed at startup (PEM, JWK or a JWK Set document).
#[derive(Debug, Clone)]
pub struct StaticKeys {
    keys: Arc<KeySet>,
}

impl StaticKeys {
    /// A source that always returns `keys`.
    pub fn new(keys: KeySet) -> Self {
        Self {
            keys: Arc::new(keys),
        }
    }

    /// A source with one key.
    pub fn single(key: VerificationKey) -> Self {
        Self::new(KeySet::new(vec![key]))
    }
}

#[async_trait]
impl KeySource for StaticKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        Some(self.keys.clone())
    }

    async fn refresh(&self, _reason: RefreshReason<'_>) -> Result<Arc<KeySet>, KeyError> {
        Ok(self.keys.clone())
    }
}
