//! [`AuditEvent`] (schema v1) and the [`AuditRecord`] the inner layers fill in.
//!
//! The JSON Schema of the event is `schema/audit-event-v1.json` in the repository. Field names
//! and reason codes are stable within a schema version.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::principal::Principal;

/// The schema version of [`AuditEvent`].
pub const SCHEMA_VERSION: u32 = 1;

/// One decision about one HTTP request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// When the response head was known (for a cancelled request: when it was cancelled),
    /// RFC 3339 UTC with microseconds.
    pub time: String,
    /// A unique id for this event (UUID v4).
    pub event_id: String,
    /// The trace id of `traceparent`, else `x-request-id`, else a generated UUID.
    pub request_id: String,
    /// HTTP facts.
    pub http: HttpFacts,
    /// `allow` or `deny`. For a [cancelled](Outcome::Cancelled) request, what the layers had
    /// decided when it was cancelled: `allow` once the token layer had accepted the credential
    /// and no layer had refused the request, else `deny` with reason `cancelled`.
    pub decision: DecisionKind,
    /// For denials: the stable reason code ([`AuthErrorKind::as_str`]), or `cancelled` for a
    /// request cancelled before any layer let it through.
    ///
    /// [`AuthErrorKind::as_str`]: crate::AuthErrorKind::as_str
    pub reason: Option<String>,
    /// A policy's own explanation of a denial (server-side only; never sent to the client).
    pub reason_detail: Option<String>,
    /// The JSON-RPC operations in the body (several for a batch).
    pub mcp: Vec<McpCall>,
    /// base64url(SHA-256(`Mcp-Session-Id`)), when a session id was sent.
    pub session: Option<String>,
    /// The verified caller, when the token was valid.
    pub principal: Option<PrincipalFacts>,
    /// The scopes the refused operation needed (step-up), if any.
    pub required_scopes: Vec<String>,
    /// Facts about the presented token, when it was valid.
    pub token: Option<TokenFacts>,
    /// The protected resource (canonical URI).
    pub resource: String,
    /// The peer address, when the server put a `SocketAddr` in the request extensions.
    pub remote_addr: Option<String>,
    /// Microseconds from the request reaching the audit layer to the response head leaving it
    /// (for a cancelled request: to the cancellation). It includes the time spent waiting for
    /// a queue slot under [`Overflow::Wait`](crate::audit::Overflow::Wait), in the DPoP, token
    /// and policy layers, and, for an allowed request, in the inner service until it produced
    /// the response head; not the streaming of the response body.
    pub latency_us: u64,
    /// Redacted tool arguments, only when the opt-in redaction hook is configured.
    pub arguments: Option<Vec<serde_json::Value>>,
    /// Whether a response head was produced (`completed`) or the request was dropped before
    /// one (`cancelled`). Added in schema 1 after its first release: an event without it was
    /// completed.
    #[serde(default)]
    pub outcome: Outcome,
}

/// How a request ended, as the audit layer saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// A response head was produced, by a layer or by the service: `http.status` is its status.
    #[default]
    Completed,
    /// The request's future was dropped before a response head: the client disconnected, a
    /// timeout fired, the server shut down, or a layer below panicked. No response was sent
    /// through the audit layer: `http.status` is [`CANCELLED_STATUS`] (500 when a panic
    /// unwound through the audit layer).
    Cancelled,
}

/// `http.status` of a [cancelled](Outcome::Cancelled) request: 499, "client closed request"
/// (the nginx convention); no response with this status was sent.
pub const CANCELLED_STATUS: u16 = 499;

/// `reason` of a [cancelled](Outcome::Cancelled) request that no layer had let through.
pub const CANCELLED_REASON: &str = "cancelled";

/// HTTP facts of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HttpFacts {
    /// The request method.
    pub method: String,
    /// The request path (no query: it may carry secrets).
    pub path: String,
    /// The response status.
    pub status: u16,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The request reached the MCP service (for a cancelled request: no layer had refused it,
    /// and the credential was accepted).
    Allow,
    /// The request was refused by a layer (or cancelled before any layer let it through).
    Deny,
}

/// One JSON-RPC operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct McpCall {
    /// The method (`""` for a client response).
    pub method: String,
    /// The tool or prompt name, or resource URI.
    pub target: Option<String>,
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PrincipalFacts {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: Option<String>,
    /// Delegation chain, current (outermost) actor first.
    pub delegation_chain: Vec<ActorFacts>,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

/// One actor of a delegation chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActorFacts {
    /// The actor's `sub`.
    pub subject: String,
    /// The actor's `iss`.
    pub issuer: Option<String>,
    /// The actor's `client_id`.
    pub client_id: Option<String>,
}

/// Facts about the token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenFacts {
    /// `jti`.
    pub jti: Option<String>,
    /// base64url(SHA-256(token)).
    pub thumbprint: String,
    /// `bearer`, `dpop` or `mtls`.
    pub binding: String,
    /// The RFC 7638 thumbprint of the proof key, for sender-constrained tokens.
    pub key_thumbprint: Option<String>,
}

impl PrincipalFacts {
    pub(crate) fn of(principal: &Principal) -> Self {
        Self {
            issuer: principal.issuer().to_owned(),
            subject: principal.subject().to_owned(),
            client_id: principal.client_id().map(str::to_owned),
            delegation_chain: principal
                .delegation_chain()
                .iter()
                .map(|actor| ActorFacts {
                    subject: actor.subject.clone(),
                    issuer: actor.issuer.clone(),
                    client_id: actor.client_id.clone(),
                })
                .collect(),
            scopes: principal.scopes().iter().cloned().collect(),
        }
    }
}

impl TokenFacts {
    pub(crate) fn of(principal: &Principal) -> Self {
        Self {
            jti: principal.jti().map(str::to_owned),
            thumbprint: principal.token_thumbprint().to_owned(),
            binding: principal.binding().as_str().to_owned(),
            key_thumbprint: principal.key_thumbprint().map(str::to_owned),
        }
    }
}

/// Turns tool arguments into what the audit log may keep: return `None` to keep nothing.
/// Called with the tool (or prompt) name and the raw arguments.
pub trait RedactArguments: Send + Sync + 'static {
    /// The redacted form of `arguments` for `target`.
    fn redact(
        &self,
        target: &str,
        arguments: &serde_json::value::RawValue,
    ) -> Option<serde_json::Value>;
}

impl<F> RedactArguments for F
where
    F: Fn(&str, &serde_json::value::RawValue) -> Option<serde_json::Value> + Send + Sync + 'static,
{
    fn redact(
        &self,
        target: &str,
        arguments: &serde_json::value::RawValue,
    ) -> Option<serde_json::Value> {
        self(target, arguments)
    }
}

/// The record the audit layer opens in the request extensions; the token and policy layers
/// fill it in. Cheap to clone.
#[derive(Clone)]
pub struct AuditRecord(Arc<Mutex<RecordData>>);

/// How far the policy layer got with a request (for cancelled requests' decision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum PolicyProgress {
    /// No policy layer has seen the request (none in the stack, or not reached yet).
    #[default]
    NotSeen,
    /// The policy layer is deciding: nothing is authorized yet.
    Deciding,
    /// The policy layer forwarded the request.
    Authorized,
}

#[derive(Default)]
pub(crate) struct RecordData {
    pub(crate) principal: Option<Principal>,
    pub(crate) policy: PolicyProgress,
    pub(crate) calls: Vec<McpCall>,
    pub(crate) reason_detail: Option<String>,
    pub(crate) session: Option<String>,
    pub(crate) arguments: Vec<serde_json::Value>,
    pub(crate) redact: Option<Arc<dyn RedactArguments>>,
}

impl AuditRecord {
    pub(crate) fn new(redact: Option<Arc<dyn RedactArguments>>) -> Self {
        Self(Arc::new(Mutex::new(RecordData {
            redact,
            ..RecordData::default()
        })))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut RecordData) -> R) -> R {
        let mut data = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut data)
    }

    /// Records the verified caller.
    pub(crate) fn set_principal(&self, principal: &Principal) {
        self.with(|d| d.principal = Some(principal.clone()));
    }

    /// Records one operation (and, with a redaction hook, its redacted arguments).
    pub(crate) fn add_call(
        &self,
        method: &str,
        target: Option<&str>,
        arguments: Option<&serde_json::value::RawValue>,
    ) {
        self.with(|d| {
            d.calls.push(McpCall {
                method: bounded(method).to_owned(),
                target: target.map(|t| bounded(t).to_owned()),
            });
            if let (Some(redact), Some(target), Some(arguments)) = (&d.redact, target, arguments)
                && let Some(kept) = redact.redact(target, arguments)
            {
                d.arguments.push(kept);
            }
        });
    }

    /// Records a policy's explanation of a denial.
    pub(crate) fn set_reason_detail(&self, detail: &str) {
        self.with(|d| d.reason_detail = Some(detail.to_owned()));
    }

    /// Records the hashed session id.
    pub(crate) fn set_session(&self, hash: String) {
        self.with(|d| d.session = Some(hash));
    }

    /// Records how far the policy layer got.
    pub(crate) fn set_policy(&self, progress: PolicyProgress) {
        self.with(|d| d.policy = progress);
    }
}

/// At most 256 bytes of client-chosen text per field (on a character boundary), so a hostile
/// body cannot bloat the log.
fn bounded(text: &str) -> &str {
    const MAX: usize = 256;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl std::fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditRecord").finish_non_exhaustive()
    }
}
