//! MCP-aware authorization: every JSON-RPC call is checked against a [`Policy`].
//!
//! [`McpPolicyLayer`] sits inside the token layer. On `POST` it reads the body (bounded),
//! classifies every JSON-RPC message ([`Operation`]), asks the policy about each one, and
//! forwards exactly the bytes it decided on. A missing scope is a step-up challenge
//! (403 `insufficient_scope` naming the scopes the operation needs); a denial no scope can cure
//! is a plain 403. `tools/list`, `prompts/list` and `resources/list` results are filtered to what
//! the caller may use. `Mcp-Session-Id`s are bound to the principal that initialized them.
//!
//! Anything the layer cannot read unambiguously is refused with 400 and a JSON-RPC error:
//! invalid UTF-8, a BOM, a repeated member among those it reads, a non-object message, a body
//! that is not uncompressed `application/json`, nesting beyond a bound, and `Mcp-Method` /
//! `Mcp-Name` headers that disagree with the body. A request without a verified
//! [`Principal`](crate::Principal) is refused (401), so a missing or misordered token layer never
//! widens access.
//!
//! [`ToolScopes`] is the built-in policy; write your own by implementing [`Policy`] (or with a
//! closure), and combine policies with [`all`], [`any`] and [`not`].
//!
//! # Writing a policy
//!
//! A policy sees the caller, the operation and, lazily, its arguments. This one lets callers
//! delete only their own notes, on top of the scope map:
//!
//! ```
//! use std::sync::Arc;
//! use tower_mcp_auth::policy::{Decision, Policy, PolicyRequest, ToolScopes, all};
//!
//! struct OwnNotesOnly;
//!
//! #[async_trait::async_trait]
//! impl Policy for OwnNotesOnly {
//!     async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
//!         #[derive(serde::Deserialize)]
//!         struct Args {
//!             owner: String,
//!         }
//!         if request.target() != Some("delete_note") {
//!             return Decision::Allow;
//!         }
//!         match request.arguments_as::<Args>() {
//!             Some(args) if args.owner == request.principal().subject() => Decision::Allow,
//!             _ => Decision::deny("only the owner may delete a note"),
//!         }
//!     }
//! }
//!
//! let scopes = ToolScopes::new()
//!     .tool("delete_note", ["notes:write"])
//!     .tool("list_notes", ["notes:read"]);
//! let policy = all(vec![Arc::new(scopes), Arc::new(OwnNotesOnly)]);
//! # let _ = tower_mcp_auth::McpAuth::builder().policy(policy);
//! ```
//!
//! A closure is a policy too: `|request: &PolicyRequest<'_>| Decision::Allow`.

mod body;
mod classify;
mod decide;
mod layer;
mod listing;
mod service;
mod session;
mod tool_scopes;

pub use body::PolicyBody;
pub use classify::{CompletionRef, Operation};
pub use decide::{All, Any, Decision, Not, Policy, PolicyRequest, all, any, not};
pub use layer::McpPolicyLayer;
pub use service::{McpPolicy, ResponseFuture};
pub use session::{InMemorySessionStore, SessionKey, SessionOwner, SessionStore};
pub use tool_scopes::{BatchMode, DenialStyle, PolicyConfig, ToolScopes, Unlisted};
