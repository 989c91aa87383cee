//! Stateless DPoP server nonces (RFC 9449 §8–9): `base64url(step ‖ HMAC(secret, step)[..16])`.
//!
//! A nonce is valid during its time step and the next one, so a client holding the nonce from
//! its last response keeps working across one rotation. Nothing is stored; several servers
//! sharing the secret accept each other's nonces.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Issues and checks nonces.
#[derive(Clone)]
pub struct NonceIssuer {
    secret: [u8; 32],
    step_secs: u64,
}

impl NonceIssuer {
    /// Nonces that rotate every `step_secs` seconds, signed with `secret`.
    pub fn new(secret: [u8; 32], step_secs: u64) -> Self {
        Self {
            secret,
            step_secs: step_secs.max(1),
        }
    }

    /// A random secret (from the OS), rotating every `step_secs` seconds.
    pub fn random(step_secs: u64) -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self::new(secret, step_secs)
    }

    fn mac(&self, step: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"tower-mcp-auth dpop nonce v1");
        mac.update(&step.to_be_bytes());
        mac
    }

    fn for_step(&self, step: u64) -> String {
        let tag = self.mac(step).finalize().into_bytes();
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&step.to_be_bytes());
        raw[8..].copy_from_slice(&tag[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce of the current step.
    pub fn current(&self, now: u64) -> String {
        self.for_step(now / self.step_secs)
    }

    /// Whether `nonce` was issued for the current or the previous step.
    pub fn is_valid(&self, nonce: &str, now: u64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 24 {
            return false;
        }
        let step = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let current = now / self.step_secs;
        if step != current && step.checked_add(1) != Some(current) {
            return false;
        }
        // Constant-time comparison of the truncated tag.
        self.mac(step).verify_truncated_left(&raw[8..]).is_ok()
    }
}

impl fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("step_secs", &self.step_secs)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let issuer = NonceIssuer::new([7; 32], 60);
        let nonce = issuer.current(1_000_000);
        assert!(issuer.is_valid(&nonce, 1_000_000));
        assert!(
            issuer.is_valid(&nonce, 1_000_000 + 60),
            "one rotation of grace"
        );
        assert!(!issuer.is_valid(&nonce, 1_000_000 + 180), "stale");
        assert!(!issuer.is_valid(&nonce, 1_000_000 - 120), "from the future");
        let other = NonceIssuer::new([8; 32], 60);
        assert!(
            !other.is_valid(&nonce, 1_000_000),
            "forged with another secret"
        );
        let mut tampered = nonce.clone().into_bytes();
        tampered[30] ^= 1;
        assert!(!issuer.is_valid(&String::from_utf8_lossy(&tampered), 1_000_000));
        assert!(!issuer.is_valid("", 1_000_000));
        assert!(!issuer.is_valid("not base64!", 1_000_000));
    }
}
