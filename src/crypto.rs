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
