//! OAuth 2.1 resource-server authentication for MCP servers, as tower layers.
//!
//! An MCP server is the enforcement point for everything an AI agent does through it. This crate
//! makes that enforcement real: every request to the MCP endpoint must carry an access token
//! issued *for this server* (RFC 8707 audience), by a trusted issuer, signed with a trusted key and
//! an allowed algorithm; the verified caller reaches your tools as a [`Principal`]; refusals carry
//! the `WWW-Authenticate` challenges MCP clients understand; and the RFC 9728 metadata document
//! tells clients where to get a token.
//!
//! # Example
//!
//! ```no_run
//! use tower_mcp_auth::{IssuerConfig, McpAuth, SigningAlgorithm};
//!
//! # fn wrap<S: Clone>(mcp_service: S) -> Result<(), tower_mcp_auth::ConfigError> {
//! let auth = McpAuth::builder()
//!     .resource("https://mcp.example.com/mcp")
//!     .issuer(
//!         IssuerConfig::new("https://auth.example.com")
//!             .jwks_uri("https://auth.example.com/jwks")
//!             .algorithms([SigningAlgorithm::ES256]),
//!     )
//!     .scopes_supported(["notes:read"])
//!     .build()?;
//!
//! // Wrap the MCP service (or the whole axum Router) with the stack. The layer also serves
//! // /.well-known/oauth-protected-resource/mcp and /.well-known/oauth-protected-resource.
//! let protected = tower_layer::Layer::layer(&auth.layer(), mcp_service);
//! # let _ = protected; Ok(()) }
//! ```
//!
//! A tool reads the caller from the HTTP request parts rmcp forwards:
//!
//! ```
//! use rmcp::handler::server::tool::Extension;
//! use tower_mcp_auth::Principal;
//!
//! fn whoami(Extension(parts): Extension<http::request::Parts>) -> String {
//!     match parts.extensions.get::<Principal>() {
//!         Some(p) => format!("{} (client {:?}, scopes {:?})", p.subject(), p.client_id(), p.scopes()),
//!         None => "unauthenticated".to_owned(),
//!     }
//! }
//! ```
//!
//! # Features
//!
//! - `aws-lc-rs` (default) or `rust-crypto`: the signature backend. Exactly one is needed; with
//!   both, aws-lc-rs is used; with neither, the crate does not compile (it never reaches
//!   jsonwebtoken's run-time "no CryptoProvider" panic).
//! - `reqwest` (default): [`http_client::ReqwestHttpClient`] for remote key sets.
//! - `testing`: [`testing::DevIssuer`], which mints tokens for tests and local development.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod audit;
pub mod config;
mod crypto;
pub mod dpop;
pub mod error;
pub mod http_client;
mod jose;
mod json_text;
pub mod keys;
pub mod metadata;
pub mod mtls;
pub mod policy;
mod principal;
mod stack;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;

pub use config::{ConfigError, IssuerConfig, McpAuthConfig};
pub use error::{AuthError, AuthErrorKind};
pub use keys::SigningAlgorithm;
pub use principal::{Actor, Binding, Confirmation, Principal, PrincipalParts};
pub use stack::{McpAuth, McpAuthBuilder, McpAuthFuture, McpAuthLayer, McpAuthService};
