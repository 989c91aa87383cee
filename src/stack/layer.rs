//! [`McpAuthLayer`]: the whole stack as one layer.

use std::sync::Arc;

use tower_layer::Layer;

use super::service::McpAuthService;
use crate::audit::{Audit, AuditLayer};
use crate::dpop::DpopLayer;
use crate::metadata::MetadataService;
use crate::policy::McpPolicyLayer;
use crate::token::TokenLayer;

/// Wraps an MCP service (or a whole router) in the stack, in the one correct order (audit,
/// DPoP proof, token, policy), and answers the protected resource metadata paths. Get it from
/// [`McpAuth::layer`](crate::McpAuth::layer).
#[derive(Debug, Clone)]
#[must_use]
pub struct McpAuthLayer {
    pub(crate) audit: AuditLayer,
    pub(crate) dpop: DpopLayer,
    pub(crate) token: TokenLayer,
    pub(crate) policy: McpPolicyLayer,
    pub(crate) metadata: MetadataService,
    pub(crate) metadata_paths: Arc<[String; 2]>,
}

impl<S: Clone> Layer<S> for McpAuthLayer {
    type Service = Audit<McpAuthService<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.audit.layer(McpAuthService {
            inner: self.dpop.layer(self.token.layer(self.policy.layer(inner))),
            metadata: self.metadata.clone(),
            metadata_paths: self.metadata_paths.clone(),
        })
    }
}
