use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tower_mcp_auth::policy::{Decision, Policy, PolicyRequest};

/// Who owns each note, as the server recorded it when the note was created: (issuer, subject).
/// The policy never trusts an owner the caller claims in the arguments.
#[derive(Clone, Default)]
pub struct NoteOwners(Arc<RwLock<HashMap<u64, (String, String)>>>);

impl NoteOwners {
    /// Records that the caller `(issuer, subject)` owns note `id`.
    pub fn insert(&self, id: u64, issuer: &str, subject: &str) {
        if let Ok(mut owners) = self.0.write() {
            owners.insert(id, (issuer.to_owned(), subject.to_owned()));
        }
    }

    fn owner(&self, id: u64) -> Option<(String, String)> {
        self.0.read().ok()?.get(&id).cloned()
    }
}

/// `delete_note` only for the note's owner, on top of the scope map.
pub struct OwnNotesOnly {
    pub owners: NoteOwners,
}

#[async_trait::async_trait]
impl Policy for OwnNotesOnly {
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        if request.target() != Some("delete_note") {
            return Decision::Allow;
        }
        // `tools/list` asks about every tool as a call without arguments. The caller may own
        // some note, so keep the tool listed; each real call is checked below.
        if request.is_listing() {
            return Decision::Allow;
        }
        #[derive(serde::Deserialize)]
        struct Args {
            id: u64,
        }
        let Some(Args { id }) = request.arguments_as::<Args>() else {
            return Decision::deny("delete_note without a readable note id");
        };
        let caller = request.principal();
        match self.owners.owner(id) {
            Some((issuer, subject)) if issuer == caller.issuer() && subject == caller.subject() => {
                Decision::Allow
            }
            // Someone else's note, or no such note: no scope would help.
            _ => Decision::deny("only the owner may delete a note"),
        }
    }
}
