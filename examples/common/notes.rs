//! The notes MCP server (rmcp handler, tools, prompt, resource and scope map), shared by the
//! `notes_server` and `mtls_notes_server` examples and by `tests/mtls.rs` through
//! `#[path = "…/common/notes.rs"] mod notes;`. Not an example itself: Cargo builds only
//! `examples/*.rs` and `examples/*/main.rs` as examples.
//!
//! | capability                                     | scope             |
//! |------------------------------------------------|-------------------|
//! | `list_notes`, `notes://all`, `summarize_notes` | `notes:read`      |
//! | `add_note`                                     | `notes:write`     |
//! | `delete_note`                                  | `notes:admin`     |
//! | `whoami`                                       | any valid token   |

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use http::request::Parts;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    handler::server::{
        router::{prompt::PromptRouter, tool::ToolRouter},
        tool::Extension,
        wrapper::Parameters,
    },
    model::{
        GetPromptResult, Implementation, ListResourcesResult, PaginatedRequestParams,
        PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
        Resource, ResourceContents, Role, ServerCapabilities, ServerConfig,
    },
    prompt, prompt_handler, prompt_router,
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower_mcp_auth::Principal;
use tower_mcp_auth::policy::ToolScopes;

// ---------------------------------------------------------------------------
// The scope map. The policy layer enforces it before any handler runs: a caller
// without the scope gets 403 `insufficient_scope` naming it, and `tools/list`
// shows only the tools the caller may call. Handlers need no checks of their own.
// ---------------------------------------------------------------------------

/// The scope map, with the hierarchy admin ⊃ write ⊃ read.
pub fn notes_scopes() -> ToolScopes {
    ToolScopes::new()
        .tool("whoami", Vec::<String>::new())
        .tool("list_notes", ["notes:read"])
        .tool("add_note", ["notes:write"])
        .tool("delete_note", ["notes:admin"])
        .prompt("summarize_notes", ["notes:read"])
        .resource("notes://all", ["notes:read"])
        .implies("notes:admin", ["notes:write"])
        .implies("notes:write", ["notes:read"])
}

/// The caller, as established by the token layer.
pub fn identity(parts: &Parts) -> Result<&Principal, String> {
    parts
        .extensions
        .get::<Principal>()
        .ok_or_else(|| "unauthenticated: no principal on this request".to_owned())
}

// ---------------------------------------------------------------------------
// The notes server.
// ---------------------------------------------------------------------------

const ALL_NOTES_URI: &str = "notes://all";

#[derive(Debug, Clone, Serialize)]
struct Note {
    id: u64,
    text: String,
}

/// State shared by every request. rmcp builds one `NotesServer` per request in
/// stateless mode, so the store lives behind `Arc`s.
#[derive(Debug, Clone, Default)]
pub struct NotesStore {
    notes: Arc<Mutex<Vec<Note>>>,
    next_id: Arc<AtomicU64>,
}

impl NotesStore {
    fn all(&self) -> Vec<Note> {
        self.notes.lock().unwrap().clone()
    }

    fn add(&self, text: String) -> Note {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let note = Note { id, text };
        self.notes.lock().unwrap().push(note.clone());
        note
    }

    fn delete(&self, id: u64) -> bool {
        let mut notes = self.notes.lock().unwrap();
        let before = notes.len();
        notes.retain(|note| note.id != id);
        notes.len() != before
    }

    fn all_as_json(&self) -> String {
        serde_json::to_string_pretty(&self.all()).expect("notes serialize")
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddNoteArgs {
    /// The text of the note.
    text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct DeleteNoteArgs {
    /// The id of the note to delete.
    id: u64,
}

#[derive(Clone)]
pub struct NotesServer {
    store: NotesStore,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

impl NotesServer {
    pub fn new(store: NotesStore) -> Self {
        Self {
            store,
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }
}

// `Extension<Parts>` is rmcp's extractor for the HTTP request parts; it fails
// the request with `invalid_params` if the server is not running over HTTP.
#[tool_router]
impl NotesServer {
    #[tool(
        description = "Show who the server thinks is calling and how its token was bound, as JSON."
    )]
    async fn whoami(&self, Extension(parts): Extension<Parts>) -> Result<String, String> {
        let principal = identity(&parts)?;
        let chain: Vec<_> = principal
            .delegation_chain()
            .iter()
            .map(|actor| serde_json::json!({"sub": actor.subject, "iss": actor.issuer, "client_id": actor.client_id}))
            .collect();
        let me = serde_json::json!({
            "issuer": principal.issuer(),
            "subject": principal.subject(),
            "client_id": principal.client_id(),
            "scopes": principal.scopes(),
            "delegation_chain": chain,
            "token_thumbprint": principal.token_thumbprint(),
            // `bearer`, `dpop` (DPoP-bound token and proof) or `mtls` (certificate-bound token).
            "binding": principal.binding().as_str(),
            // The proof key's `jkt`, or the client certificate's `x5t#S256`.
            "key_thumbprint": principal.key_thumbprint(),
        });
        Ok(serde_json::to_string_pretty(&me).expect("identity serializes"))
    }

    #[tool(description = "List all notes as JSON. Requires scope notes:read.")]
    async fn list_notes(&self) -> Result<String, String> {
        Ok(self.store.all_as_json())
    }

    #[tool(description = "Add a note and return it as JSON. Requires scope notes:write.")]
    async fn add_note(
        &self,
        Parameters(AddNoteArgs { text }): Parameters<AddNoteArgs>,
    ) -> Result<String, String> {
        let note = self.store.add(text);
        Ok(serde_json::to_string_pretty(&note).expect("note serializes"))
    }

    #[tool(description = "Delete a note by id. Requires scope notes:admin.")]
    async fn delete_note(
        &self,
        Parameters(DeleteNoteArgs { id }): Parameters<DeleteNoteArgs>,
    ) -> Result<String, String> {
        if self.store.delete(id) {
            Ok(format!("deleted note {id}"))
        } else {
            Err(format!("no note with id {id}"))
        }
    }
}

#[prompt_router]
impl NotesServer {
    #[prompt(description = "Ask the model to summarize all notes. Requires scope notes:read.")]
    async fn summarize_notes(&self) -> Result<GetPromptResult, ErrorData> {
        let text = format!(
            "Summarize the following notes in a few bullet points:\n\n{}",
            self.store.all_as_json()
        );
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                .with_description("Summarize all notes"),
        )
    }
}

// Resources have no router macro, so `list_resources` and `read_resource`
// are written by hand.
#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for NotesServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        // `ServerConfig::new` fills in rmcp's own crate name and version.
        .with_server_info(Implementation::new(
            "notes-server",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions("An in-memory notes store. Each capability requires a notes:* scope.")
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(ALL_NOTES_URI, "all-notes")
                .with_description("Every note, as JSON. Requires scope notes:read.")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != ALL_NOTES_URI {
            return Err(ErrorData::resource_not_found(
                format!("no resource at {}", request.uri),
                None,
            ));
        }
        let contents = ResourceContents::text(self.store.all_as_json(), request.uri)
            .with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
