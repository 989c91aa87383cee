//! Proof keys remembered by the exact text of their `jwk` header member.
//!
//! A client signs every proof with the same key, so its proofs carry the same `jwk` text. The
//! cache maps that text to the key already checked, thumbprinted and parsed for one algorithm;
//! a hit skips all three. Only keys that have verified a proof's signature are inserted, the
//! lookup compares the whole text (never a hash of it alone), and an entry is used only for the
//! algorithm it was prepared for. Each proof's signature is still verified.

use std::fmt;
use std::sync::Arc;

use crate::keys::{ProofKey, SigningAlgorithm};

/// A bounded map from `jwk` text to a prepared proof key; capacity 0 disables it.
pub(crate) struct ProofKeyCache {
    cache: Option<moka::sync::Cache<Arc<str>, Arc<ProofKey>>>,
}

impl ProofKeyCache {
    /// At most `capacity` keys (least recently and frequently used ones are evicted first).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            cache: (capacity > 0)
                .then(|| moka::sync::Cache::new(u64::try_from(capacity).unwrap_or(u64::MAX))),
        }
    }

    /// The key prepared for `alg` from exactly this `jwk` text, if remembered.
    pub(crate) fn get(&self, jwk: &str, alg: SigningAlgorithm) -> Option<Arc<ProofKey>> {
        self.cache.as_ref()?.get(jwk).filter(|key| key.alg == alg)
    }

    /// Remembers `key` for `jwk` (call only once the key has verified a signature).
    pub(crate) fn insert(&self, jwk: &str, key: Arc<ProofKey>) {
        if let Some(cache) = &self.cache {
            cache.insert(Arc::from(jwk), key);
        }
    }
}

impl fmt::Debug for ProofKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofKeyCache")
            .field(
                "capacity",
                &self.cache.as_ref().and_then(|c| c.policy().max_capacity()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::proof_key;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    fn rsa_jwk() -> String {
        use base64::Engine as _;
        let mut n = vec![0xC3u8; 256];
        n[255] |= 1;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n);
        format!(r#"{{"kty":"RSA","n":"{n}","e":"AQAB"}}"#)
    }

    #[test]
    fn hits_only_for_the_same_text_and_algorithm() {
        let cache = ProofKeyCache::new(16);
        assert!(cache.get(EC, SigningAlgorithm::ES256).is_none());
        let key = Arc::new(proof_key(EC, SigningAlgorithm::ES256).unwrap());
        cache.insert(EC, key.clone());
        let hit = cache.get(EC, SigningAlgorithm::ES256).expect("remembered");
        assert!(Arc::ptr_eq(&hit, &key));
        assert!(cache.get(EC, SigningAlgorithm::ES384).is_none());
        // The same key written differently is another entry.
        assert!(
            cache
                .get(&EC.replace(':', ": "), SigningAlgorithm::ES256)
                .is_none()
        );

        // One RSA JWK serves several algorithms: each entry is for the one it was prepared for.
        let rsa = rsa_jwk();
        cache.insert(
            &rsa,
            Arc::new(proof_key(&rsa, SigningAlgorithm::RS256).unwrap()),
        );
        assert!(cache.get(&rsa, SigningAlgorithm::RS256).is_some());
        assert!(cache.get(&rsa, SigningAlgorithm::PS256).is_none());
        cache.insert(
            &rsa,
            Arc::new(proof_key(&rsa, SigningAlgorithm::PS256).unwrap()),
        );
        assert_eq!(
            cache.get(&rsa, SigningAlgorithm::PS256).unwrap().alg,
            SigningAlgorithm::PS256
        );
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = ProofKeyCache::new(0);
        cache.insert(
            EC,
            Arc::new(proof_key(EC, SigningAlgorithm::ES256).unwrap()),
        );
        assert!(cache.get(EC, SigningAlgorithm::ES256).is_none());
    }
}
