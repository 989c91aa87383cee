//! Helpers shared by the integration tests that audit their requests (`mod common;`): an audit
//! emitter into a channel, the event schema, and scans for leaked credentials.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tower_mcp_auth::audit::{
    self, AuditEmitter, AuditEvent, AuditHandle, AuditOptions, ChannelSink,
};

/// The JSON Schema of audit events (schema 1).
pub fn audit_schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("../../schema/audit-event-v1.json")).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// Every way `event` violates the schema.
pub fn schema_problems(schema: &jsonschema::Validator, event: &AuditEvent) -> Vec<String> {
    let json = serde_json::to_value(event).unwrap();
    schema
        .iter_errors(&json)
        .map(|e| format!("audit event violates the schema: {e} in {json}"))
        .collect()
}

/// Panics unless every event is valid against the schema.
pub fn assert_schema_valid(events: &[AuditEvent]) {
    let schema = audit_schema();
    for event in events {
        let problems = schema_problems(&schema, event);
        assert!(problems.is_empty(), "{problems:?}");
    }
}

/// The pieces of a credential that must never appear: the whole value and each `.`-separated
/// segment long enough not to match by chance.
pub fn secret_pieces(secret: &str) -> Vec<&str> {
    let mut pieces = vec![secret];
    pieces.extend(secret.split('.'));
    pieces.retain(|p| p.len() >= 8);
    pieces
}

/// The credentials (or pieces of them) that occur in `text`, described without repeating them.
pub fn leaks(text: &str, secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        for piece in secret_pieces(secret) {
            if text.contains(piece) {
                found.push(format!(
                    "{piece:.12}... of a {}-byte credential",
                    secret.len()
                ));
            }
        }
    }
    found
}

/// An emitter whose events arrive in a channel, with the schema to check them.
pub struct AuditCapture {
    pub handle: AuditHandle,
    pub events: mpsc::Receiver<AuditEvent>,
    pub schema: jsonschema::Validator,
}

impl AuditCapture {
    /// A fresh capture (default options, a channel of 1024) and the emitter for the stack.
    pub fn new() -> (AuditEmitter, Self) {
        let (sink, events) = ChannelSink::new(1024);
        let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
        let capture = Self {
            handle,
            events,
            schema: audit_schema(),
        };
        (emitter, capture)
    }

    /// Every event accepted so far (after a flush).
    pub async fn take(&mut self) -> Vec<AuditEvent> {
        self.handle.flush().await.unwrap();
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }

    /// The one event of the last request: problems if there is not exactly one, if it violates
    /// the schema, or if its JSON or `Debug` form contains any of `secrets`.
    pub async fn one(&mut self, secrets: &[String]) -> Result<AuditEvent, Vec<String>> {
        let mut events = self.take().await;
        if events.len() != 1 {
            return Err(vec![format!("{} audit events instead of 1", events.len())]);
        }
        let event = events.remove(0);
        let mut problems = schema_problems(&self.schema, &event);
        let text = format!("{} {event:?}", serde_json::to_string(&event).unwrap());
        for leak in leaks(&text, secrets) {
            problems.push(format!("audit event contains {leak}"));
        }
        if problems.is_empty() {
            Ok(event)
        } else {
            Err(problems)
        }
    }
}
