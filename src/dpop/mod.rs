//! Sender-constrained tokens with DPoP (RFC 9449).
//!
//! A DPoP-bound access token carries `cnf.jkt`, the thumbprint of a key only the client holds.
//! With each request the client sends `Authorization: DPoP <token>` and a `DPoP` header holding a
//! fresh proof signed with that key. [`DpopLayer`] checks the proof, in this order: size; a
//! compact JWS; `typ` `dpop+jwt`; `alg` in the allow-list (asymmetric only: never `none` or
//! HMAC); a public `jwk` matching `alg` (private members, `oct` keys and non-canonical
//! encodings refused); the signature; `htm` equals the method; `htu` equals the configured
//! public URL after RFC 3986 normalization (query and fragment ignored; never derived from
//! `Host`); `iat` within the window (default 60 s old, 10 s ahead); `ath` equals the token's
//! hash; a `jti`; and, with nonces on, a valid server nonce. It then attaches [`DpopEvidence`];
//! the token layer accepts the token only if `cnf.jkt` equals the evidence's thumbprint, and
//! records the proof's (key, `jti`) in the [`ReplayStore`] last, after every other check.
//!
//! A client's key, once it has verified a proof's signature, is remembered by the exact text of
//! the proof's `jwk` ([`DpopConfig::key_cache_capacity`]): its later proofs skip the `jwk`
//! checks, the thumbprint and key parsing, never the signature.
//!
//! Time comes from a [`Clock`] ([`SystemClock`] by default; [`DpopLayer::with_clock`] or
//! [`McpAuthBuilder::dpop_clock`](crate::McpAuthBuilder::dpop_clock) replace it), read once per
//! request for both the `iat` window and the nonce time step.
//!
//! Failures: a missing or repeated `DPoP` header is 400 `invalid_request`; a bad or replayed
//! proof 401 `invalid_dpop_proof`; a key mismatch 401 `invalid_token`; a missing nonce 401
//! `use_dpop_nonce` with a `DPoP-Nonce` header; a bound token presented as `Bearer` 401
//! `invalid_token` (RFC 9449 §7.2). Challenges name the DPoP algorithms:
//! `WWW-Authenticate: DPoP algs="ES256 …"`, after the Bearer challenge.

mod htu;
mod key_cache;
mod layer;
mod nonce;
mod proof;
mod replay;

pub use crate::keys::jwk_thumbprint;
pub use htu::normalize_htu;
pub use layer::{
    Clock, Dpop, DpopConfig, DpopConfigError, DpopEvidence, DpopLayer, DpopMode, ResponseFuture,
    SystemClock,
};
pub use nonce::NonceIssuer;
pub use replay::{InMemoryReplayStore, ReplayError, ReplayKey, ReplayStore};
