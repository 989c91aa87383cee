//! TEMPORARY stub; replaced by the bounded delivery queue.
use super::event::AuditEvent;

/// Stub.
#[derive(Debug, Clone, Copy)]
pub struct Overflowed;
/// Stub.
#[derive(Debug, Clone)]
pub struct AuditEmitter;
/// Stub.
#[derive(Debug)]
pub struct AuditPermit;
impl AuditEmitter {
    /// Stub.
    pub async fn reserve(&self) -> Result<AuditPermit, Overflowed> {
        Ok(AuditPermit)
    }
}
impl AuditPermit {
    /// Stub.
    pub fn send(self, _event: AuditEvent) {}
}
