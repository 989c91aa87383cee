//! Strict JOSE plumbing shared by access tokens and DPoP proofs: compact JWS splitting with
//! strict base64url, JSON objects only, and claim deserializers that refuse wrong types.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny};
use sha2::{Digest, Sha256};

use crate::error::{AuthError, AuthErrorKind};
use crate::json_text::has_lone_surrogate_escape;

/// A compact JWS split into its three non-empty segments (not yet decoded).
pub(crate) struct CompactJws<'t> {
    header: &'t str,
    payload: &'t str,
    signature: &'t str,
    signing_input: &'t str,
}

impl<'t> CompactJws<'t> {
    /// Exactly three non-empty dot-separated segments, or `None`.
    pub(crate) fn split(token: &'t str) -> Option<Self> {
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return None;
        };
        // An empty signature is caught when decoded, after the header checks, so that
        // `alg: none` tokens are reported as such.
        if header.is_empty() || payload.is_empty() {
            return None;
        }
        Some(Self {
            header,
            payload,
            signature,
            signing_input: &token[..header.len() + 1 + payload.len()],
        })
    }

    /// `header.payload`, the bytes the signature covers.
    pub(crate) fn signing_input(&self) -> &'t str {
        self.signing_input
    }

    /// The decoded JOSE header.
    pub(crate) fn header(&self) -> Result<Vec<u8>, AuthError> {
        decode(self.header)
    }

    /// The decoded payload.
    pub(crate) fn payload(&self) -> Result<Vec<u8>, AuthError> {
        decode(self.payload)
    }

    /// The decoded signature.
    pub(crate) fn signature(&self) -> Result<Vec<u8>, AuthError> {
        if self.signature.is_empty() {
            return Err(AuthError::new(AuthErrorKind::MalformedToken));
        }
        decode(self.signature)
    }
}

/// Strict base64url: URL alphabet, no padding, no stray trailing bits.
fn decode(segment: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::new(AuthErrorKind::MalformedToken))
}

/// Parses a JSON object (not an array, which serde would accept for a struct).
/// A JSON type error maps to `data_error`; anything else is a malformed token.
///
/// A lone UTF-16 surrogate escape (`"\ud800"`) is malformed too, even in a member this crate
/// ignores (see [`crate::json_text`]).
pub(crate) fn json_object<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    data_error: AuthErrorKind,
) -> Result<T, AuthError> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(AuthErrorKind::MalformedToken.into());
    }
    if has_lone_surrogate_escape(bytes) {
        return Err(AuthErrorKind::MalformedToken.into());
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AuthError::new(data_error),
        _ => AuthError::new(AuthErrorKind::MalformedToken),
    })
}

pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// A string; `null` and other types are errors (so "present but wrong" never reads as absent).
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// A string, borrowed from the input where it holds no escapes; `null` and other types are
/// errors, as with [`string`].
pub(crate) fn borrowed_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    d.deserialize_str(Visitor).map(Some)
}

/// An RFC 7519 NumericDate: a non-negative JSON number (fractions truncated). Strings, booleans
/// and `null` are errors.
pub(crate) fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative NumericDate")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("negative NumericDate"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            if v.is_finite() && (0.0..9.0e15).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom("NumericDate out of range"))
            }
        }
    }
    d.deserialize_any(Visitor).map(Some)
}

/// base64url(SHA-256(token)): the token's correlation id, and the DPoP `ath`.
pub fn thumbprint(token: &str) -> String {
    thumbprint_of_digest(&Sha256::digest(token.as_bytes()).into())
}

/// The [`thumbprint`] of a value whose SHA-256 is `digest`.
pub(crate) fn thumbprint_of_digest(digest: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(digest)
}

/// Seconds since the Unix epoch on the system clock (0 before 1970).
pub(crate) fn unix_now() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `expected` is [`thumbprint`]`(value)`, without allocating.
pub(crate) fn is_thumbprint_of(expected: &str, value: &str) -> bool {
    let mut encoded = [0u8; 43];
    URL_SAFE_NO_PAD
        .encode_slice(Sha256::digest(value.as_bytes()), &mut encoded)
        .is_ok_and(|n| &encoded[..n] == expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{is_thumbprint_of, thumbprint};

    #[test]
    fn thumbprint_comparison_matches_the_encoding() {
        for value in ["", "a", "eyJ.eyJ.sig", &"x".repeat(5000)] {
            let t = thumbprint(value);
            assert!(is_thumbprint_of(&t, value));
            assert!(!is_thumbprint_of(&t[..42], value));
            assert!(!is_thumbprint_of(&format!("{t}A"), value));
            assert!(!is_thumbprint_of(&thumbprint("other"), value));
        }
    }
}
