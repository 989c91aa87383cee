//! Audit: one structured, attributable event per request, delivered without silent loss.
//!
//! [`AuditLayer`] sits outermost. It opens an [`AuditRecord`] in the request extensions, which
//! the token and policy layers fill in (principal, operations, denial detail, session), and when
//! the response head is known it sends exactly one [`AuditEvent`] through an [`AuditEmitter`]: a
//! bounded queue drained by a background task into an [`AuditSink`]. The request path only
//! enqueues. When the queue is full the [`Overflow`] policy applies: wait (backpressure,
//! default), reject (503, before the request is processed), or drop (counted and reported).
//! A request whose future is dropped before the response head (client gone, timeout) still
//! gets its one event, with [`Outcome::Cancelled`].
//!
//! Events never contain tokens, proofs, keys or secrets: tokens appear only as their SHA-256
//! thumbprint. Tool arguments are recorded only through an explicit redaction hook.

mod emitter;
mod encode;
pub(crate) mod event;
mod service;
mod sink;

pub use emitter::*;
pub use event::{
    ActorFacts, AuditEvent, AuditRecord, CANCELLED_REASON, CANCELLED_STATUS, DecisionKind,
    HttpFacts, McpCall, Outcome, PrincipalFacts, RedactArguments, SCHEMA_VERSION, TokenFacts,
};
pub use service::{Audit, AuditLayer, ResponseFuture};
pub use sink::*;
