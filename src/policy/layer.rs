//! [`McpPolicyLayer`]: configuration of the policy layer.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::decide::Policy;
use super::service::McpPolicy;
use super::session::{InMemorySessionStore, SessionStore};
use super::tool_scopes::{BatchMode, DenialStyle, PolicyConfig};
use crate::error::ChallengeConfig;

/// Authorizes every JSON-RPC message with a [`Policy`]; see the [module docs](crate::policy).
#[derive(Clone)]
#[must_use]
pub struct McpPolicyLayer {
    pub(crate) shared: Arc<PolicyShared>,
}

#[derive(Clone)]
pub(crate) struct PolicyShared {
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) challenge: ChallengeConfig,
    pub(crate) max_body: usize,
    pub(crate) max_depth: usize,
    pub(crate) batches: BatchMode,
    pub(crate) filter_listings: bool,
    pub(crate) denial: DenialStyle,
    pub(crate) sessions: Option<Arc<dyn SessionStore>>,
}

impl McpPolicyLayer {
    /// A layer asking `policy`, challenging with `challenge`, with the default settings of
    /// [`PolicyConfig`] (4 MiB bodies, depth 64, batches authorized element by element, listings
    /// filtered, HTTP 403 step-up, in-memory session binding).
    pub fn new(policy: Arc<dyn Policy>, challenge: ChallengeConfig) -> Self {
        Self::from_config(policy, challenge, &PolicyConfig::default())
    }

    /// A layer with the settings of `config` (its scope map is not used: `policy` decides).
    pub fn from_config(
        policy: Arc<dyn Policy>,
        challenge: ChallengeConfig,
        config: &PolicyConfig,
    ) -> Self {
        let sessions: Option<Arc<dyn SessionStore>> = config
            .session_binding
            .then(|| Arc::new(InMemorySessionStore::default()) as Arc<dyn SessionStore>);
        Self {
            shared: Arc::new(PolicyShared {
                policy,
                challenge,
                max_body: config.max_body_bytes,
                max_depth: config.max_depth,
                batches: config.batches,
                filter_listings: config.filter_listings,
                denial: config.denial,
                sessions,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut PolicyShared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// Largest body read (413 beyond).
    pub fn max_body_bytes(self, max: usize) -> Self {
        self.with(|s| s.max_body = max)
    }

    /// Deepest JSON nesting accepted.
    pub fn max_depth(self, max: usize) -> Self {
        self.with(|s| s.max_depth = max)
    }

    /// Batch handling.
    pub fn batches(self, mode: BatchMode) -> Self {
        self.with(|s| s.batches = mode)
    }

    /// Whether list results are filtered to what the caller may use.
    pub fn filter_listings(self, on: bool) -> Self {
        self.with(|s| s.filter_listings = on)
    }

    /// How a missing scope on a tool call is reported.
    pub fn denial_style(self, style: DenialStyle) -> Self {
        self.with(|s| s.denial = style)
    }

    /// Where session bindings are kept; `None` turns session binding off. With a store, a
    /// request carrying an `Mcp-Session-Id` the store does not know is refused (404), so the
    /// store must not forget live bindings (see [`SessionStore`]).
    pub fn session_store(self, store: Option<Arc<dyn SessionStore>>) -> Self {
        self.with(|s| s.sessions = store)
    }
}

impl<S: Clone> Layer<S> for McpPolicyLayer {
    type Service = McpPolicy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        McpPolicy::new(inner, self.shared.clone())
    }
}

impl fmt::Debug for McpPolicyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("McpPolicyLayer")
            .field("max_body", &s.max_body)
            .field("max_depth", &s.max_depth)
            .field("batches", &s.batches)
            .field("filter_listings", &s.filter_listings)
            .field("denial", &s.denial)
            .field("sessions", &s.sessions)
            .finish_non_exhaustive()
    }
}
