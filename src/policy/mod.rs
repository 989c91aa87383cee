//! MCP-aware authorization: every JSON-RPC call is checked against a [`Policy`].
//!
//! [`McpPolicyLayer`] sits inside the token layer. On `POST` it reads the body (bounded),
//! classifies every JSON-RPC message ([`Operation`]), asks the policy about each one, and
//! forwards exactly the bytes it decided on. A missing scope is a step-up challenge
//! (403 `insufficient_scope` naming the scopes the operation needs); a denial no scope can cure
//! is a plain 403. `tools/list`, `prompts/list` and `resources/list` results are filtered to what
//! the caller may use. `Mcp-Session-Id`s are bound to the principal that initialized them; a
//! session id the store does not know is refused (404), and a full store refuses new
//! `initialize`s (503) rather than forget a binding. `GET` and `DELETE` need only the token
//! (and session ownership); methods other than `GET`, `POST`, `DELETE` and `OPTIONS` get 405.
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
//! delete only their own notes, on top of the scope map. The owner comes from the server's own
//! records (a store the policy shares with the notes handlers), keyed by the note id in the
//! arguments: an `owner` sent by the caller would prove nothing.
//!
//! Listing visibility: `tools/list` (and `prompts/list`, `resources/list`) results keep an item
//! only if the policy allows a call of it *without arguments*, asked with
//! [`PolicyRequest::is_listing`] true. Argument rules cannot be decided there, so this policy
//! answers `Allow` for the listing check and decides each real call on its arguments; a real
//! call without arguments is not a listing check, and is refused here.
//!
//! ```
#![doc = include_str!("own_notes_example.rs")]
//! # use tower::{Layer, ServiceExt};
//! # use tower_mcp_auth::McpAuth;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let dev = tower_mcp_auth::testing::DevIssuer::new("https://as.example.com");
//! # let resource = "https://mcp.example.com/mcp";
//! use tower_mcp_auth::policy::{ToolScopes, all};
//!
//! let owners = NoteOwners::default(); // the notes handlers record each new note here
//! let scopes = ToolScopes::new()
//!     .tool("delete_note", ["notes:write"])
//!     .tool("list_notes", ["notes:read"]);
//! let own = OwnNotesOnly { owners: owners.clone() };
//! let auth = McpAuth::builder()
//!     /* resource, issuer … */
//! #   .resource(resource)
//! #   .issuer(dev.issuer_config())
//!     .policy(all(vec![Arc::new(scopes), Arc::new(own)]))
//!     .build()?;
//! # owners.insert(1, dev.issuer(), "alice");
//! # let server = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
//! #     let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"delete_note"},{"name":"list_notes"}]}}"#;
//! #     Ok::<_, std::convert::Infallible>(http::Response::builder()
//! #         .header("content-type", "application/json")
//! #         .body(http_body_util::Full::new(bytes::Bytes::from(body)))
//! #         .unwrap())
//! # });
//! # let send = |subject: &str, body: &str| {
//! #     let token = dev.token(resource).subject(subject).scope("notes:write").sign();
//! #     let request = http::Request::post("/mcp")
//! #         .header("authorization", format!("Bearer {token}"))
//! #         .header("content-type", "application/json")
//! #         .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
//! #         .unwrap();
//! #     auth.layer().layer(server.clone()).oneshot(request)
//! # };
//! # let delete = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_note","arguments":{"id":1}}}"#;
//! # assert_eq!(send("bob", delete).await?.status(), 403);
//! # assert_eq!(send("alice", delete).await?.status(), 200);
//! # let list = send("bob", r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).await?;
//! # let listed = http_body_util::BodyExt::collect(list.into_body()).await.unwrap().to_bytes();
//! # assert!(std::str::from_utf8(&listed)?.contains("delete_note"));
//! # Ok(()) }
//! # fn main() { tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap() }
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
pub use session::{BindRefused, InMemorySessionStore, SessionKey, SessionOwner, SessionStore};
pub use tool_scopes::{BatchMode, DenialStyle, PolicyConfig, ToolScopes, Unlisted};
