//! The [`Policy`] trait, its input [`PolicyRequest`], its output [`Decision`], and the
//! combinators [`all`], [`any`] and [`not`].

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::classify::Operation;
use crate::principal::Principal;

/// What a [`Policy`] is asked about: one JSON-RPC operation by one caller.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) operation: &'a Operation<'a>,
    pub(crate) parts: &'a http::request::Parts,
    pub(crate) listing: bool,
}

impl<'a> PolicyRequest<'a> {
    /// A request for `operation` by `principal`, for tests and custom compositions.
    pub fn new(
        principal: &'a Principal,
        operation: &'a Operation<'a>,
        parts: &'a http::request::Parts,
    ) -> Self {
        Self {
            principal,
            operation,
            parts,
            listing: false,
        }
    }

    /// This request as a listing check (see [`is_listing`](Self::is_listing)).
    #[must_use]
    pub fn as_listing(mut self) -> Self {
        self.listing = true;
        self
    }

    /// Whether the policy layer asks this to decide whether an item of a `tools/list`,
    /// `prompts/list` or `resources/list` result stays visible, rather than about a call.
    ///
    /// A listing check is phrased as a call of the item (`tools/call`, `prompts/get`,
    /// `resources/read`) **without arguments**, on the request parts of the list request. Only
    /// the identity of the item is known, so a rule that depends on the arguments cannot be
    /// decided: answer `Allow` when *some* call could be allowed (the call itself is still
    /// checked when it comes), or refuse to hide the item. A `Deny` or `NeedsScopes` hides
    /// the item. A real call that omits `arguments` is *not* a listing check: use this flag,
    /// never the absence of arguments, to tell them apart.
    pub fn is_listing(&self) -> bool {
        self.listing
    }

    /// The verified caller.
    pub fn principal(&self) -> &'a Principal {
        self.principal
    }

    /// The classified operation.
    pub fn operation(&self) -> &'a Operation<'a> {
        self.operation
    }

    /// The JSON-RPC method.
    pub fn method(&self) -> &'a str {
        self.operation.method()
    }

    /// The tool or prompt name, or resource URI.
    pub fn target(&self) -> Option<&'a str> {
        self.operation.target()
    }

    /// The raw `arguments` of a tool call or prompt, if any. Nothing is parsed until you ask.
    pub fn arguments(&self) -> Option<&'a RawValue> {
        self.operation.arguments()
    }

    /// The `arguments` deserialized into `T`; `None` when absent or not a `T`.
    pub fn arguments_as<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.arguments()?.get()).ok()
    }

    /// The protocol revision. For an `initialize`, its `params.protocolVersion` (what the server
    /// negotiates from, whatever headers say); otherwise the `MCP-Protocol-Version` header, if
    /// sent exactly once.
    pub fn protocol_version(&self) -> Option<&'a str> {
        if let Operation::Initialize {
            protocol_version: Some(version),
        } = self.operation
        {
            return Some(version);
        }
        let mut headers = self.parts.headers.get_all("mcp-protocol-version").iter();
        match (headers.next(), headers.next()) {
            (Some(value), None) => value.to_str().ok(),
            _ => None,
        }
    }

    /// The HTTP request parts (method, URI, headers, extensions).
    pub fn parts(&self) -> &'a http::request::Parts {
        self.parts
    }
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse; no scope would help (403 without `scope`). The reason is recorded, never sent.
    Deny {
        /// Why, for logs and audit.
        reason: Cow<'static, str>,
    },
    /// Refuse until the caller holds these scopes (403 `insufficient_scope` naming them).
    NeedsScopes(BTreeSet<String>),
}

impl Decision {
    /// A denial with a reason (recorded, never sent to the client).
    pub fn deny(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Deny {
            reason: reason.into(),
        }
    }

    /// A step-up: the operation needs these scopes.
    pub fn needs_scopes<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::NeedsScopes(scopes.into_iter().map(Into::into).collect())
    }

    /// Whether this is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// Decides whether a caller may perform an operation. Called for every JSON-RPC message the
/// policy layer forwards, and for every item of `tools/list`, `prompts/list` and
/// `resources/list` results (as a `tools/call`, `prompts/get` or `resources/read` without
/// arguments, with [`PolicyRequest::is_listing`] true): an item stays listed only if that
/// answer is `Allow`.
///
/// Closures `Fn(&PolicyRequest<'_>) -> Decision` are policies.
///
/// A policy that decides without I/O can also answer [`decide_now`](Policy::decide_now), which
/// spares the boxed future of [`decide`](Policy::decide) on every message.
#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// The decision for `request`.
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision;

    /// The decision for `request` if it needs no waiting, else `None`. The policy layer asks
    /// this first and awaits `decide` only on `None`, so each message gets one answer. `Some`
    /// must be what `decide` would answer. The default is `None`.
    fn decide_now(&self, request: &PolicyRequest<'_>) -> Option<Decision> {
        let _ = request;
        None
    }
}

#[async_trait]
impl<F> Policy for F
where
    F: Fn(&PolicyRequest<'_>) -> Decision + Send + Sync + 'static,
{
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        self(request)
    }

    fn decide_now(&self, request: &PolicyRequest<'_>) -> Option<Decision> {
        Some(self(request))
    }
}

/// One message's decision: [`Policy::decide_now`] if it answers, else [`Policy::decide`].
pub(crate) async fn decide<P: Policy + ?Sized>(
    policy: &P,
    request: &PolicyRequest<'_>,
) -> Decision {
    match policy.decide_now(request) {
        Some(decision) => decision,
        None => policy.decide(request).await,
    }
}

// Written out (not `#[async_trait]`) to hand back the inner policy's future instead of boxing
// it a second time.
impl Policy for Arc<dyn Policy> {
    fn decide<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: &'life1 PolicyRequest<'life2>,
    ) -> Pin<Box<dyn Future<Output = Decision> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        (**self).decide(request)
    }

    fn decide_now(&self, request: &PolicyRequest<'_>) -> Option<Decision> {
        (**self).decide_now(request)
    }
}

/// Allows only if every policy allows. Denial wins over step-up; step-ups are merged.
pub fn all(policies: Vec<Arc<dyn Policy>>) -> All {
    All(policies)
}

/// Allows if any policy allows; otherwise the first step-up, otherwise a denial.
pub fn any(policies: Vec<Arc<dyn Policy>>) -> Any {
    Any(policies)
}

/// Allows what `policy` refuses, and denies what it allows.
pub fn not(policy: Arc<dyn Policy>) -> Not {
    Not(policy)
}

/// See [`all`].
pub struct All(Vec<Arc<dyn Policy>>);
/// See [`any`].
pub struct Any(Vec<Arc<dyn Policy>>);
/// See [`not`].
pub struct Not(Arc<dyn Policy>);

#[async_trait]
impl Policy for All {
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        let mut needed = BTreeSet::new();
        for policy in &self.0 {
            match decide(policy.as_ref(), request).await {
                Decision::Allow => {}
                Decision::NeedsScopes(scopes) => needed.extend(scopes),
                deny @ Decision::Deny { .. } => return deny,
            }
        }
        if needed.is_empty() {
            Decision::Allow
        } else {
            Decision::NeedsScopes(needed)
        }
    }
}

#[async_trait]
impl Policy for Any {
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        let mut step_up = None;
        for policy in &self.0 {
            match decide(policy.as_ref(), request).await {
                Decision::Allow => return Decision::Allow,
                Decision::NeedsScopes(scopes) => {
                    step_up.get_or_insert(scopes);
                }
                Decision::Deny { .. } => {}
            }
        }
        match step_up {
            Some(scopes) => Decision::NeedsScopes(scopes),
            None => Decision::deny("no policy allowed the operation"),
        }
    }
}

#[async_trait]
impl Policy for Not {
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        negate(self.0.decide(request).await)
    }

    fn decide_now(&self, request: &PolicyRequest<'_>) -> Option<Decision> {
        self.0.decide_now(request).map(negate)
    }
}

fn negate(decision: Decision) -> Decision {
    match decision {
        Decision::Allow => Decision::deny("negated policy allowed the operation"),
        _ => Decision::Allow,
    }
}

impl fmt::Debug for All {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "All({} policies)", self.0.len())
    }
}

impl fmt::Debug for Any {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Any({} policies)", self.0.len())
    }
}

impl fmt::Debug for Not {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Not(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Binding, PrincipalParts};

    fn principal() -> Principal {
        Principal::new(PrincipalParts {
            issuer: "https://as".into(),
            subject: "u".into(),
            client_id: None,
            audience: vec![],
            scopes: Default::default(),
            delegation: vec![],
            expires_at: 0,
            issued_at: None,
            jti: None,
            token_thumbprint: String::new(),
            binding: Binding::Bearer,
            confirmation: None,
            claims: RawValue::from_string("{}".into()).unwrap(),
        })
    }

    #[test]
    fn protocol_version_initialize_body_then_header() {
        let p = principal();
        let with_header = http::Request::builder()
            .header("mcp-protocol-version", "2025-11-25")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let without = http::Request::new(()).into_parts().0;
        let repeated = http::Request::builder()
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-protocol-version", "2024-11-05")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let init = Operation::Initialize {
            protocol_version: Some("2025-06-18".into()),
        };
        let bare_init = Operation::Initialize {
            protocol_version: None,
        };
        let cases = [
            (&init, &without, Some("2025-06-18")),
            // The server negotiates from the body: a header cannot override it.
            (&init, &with_header, Some("2025-06-18")),
            (&bare_init, &without, None),
            (&bare_init, &with_header, Some("2025-11-25")),
            (&Operation::Ping, &without, None),
            (&Operation::Ping, &with_header, Some("2025-11-25")),
            // Two headers: ambiguous, so none.
            (&Operation::Ping, &repeated, None),
        ];
        for (op, parts, want) in cases {
            let request = PolicyRequest::new(&p, op, parts);
            assert_eq!(request.protocol_version(), want, "{op:?}");
            assert!(!request.is_listing());
            assert!(request.as_listing().is_listing());
        }
    }

    /// Only `decide`: no synchronous answer.
    struct Waits;

    #[async_trait]
    impl Policy for Waits {
        async fn decide(&self, _: &PolicyRequest<'_>) -> Decision {
            Decision::Allow
        }
    }

    #[test]
    fn decide_now_answers_only_when_nothing_waits() {
        let p = principal();
        let parts = http::Request::new(()).into_parts().0;
        let request = PolicyRequest::new(&p, &Operation::Ping, &parts);
        let allow: Arc<dyn Policy> = Arc::new(|_: &PolicyRequest<'_>| Decision::Allow);
        let waits: Arc<dyn Policy> = Arc::new(Waits);
        let denied = Decision::deny("negated policy allowed the operation");
        let cases: [(&str, Arc<dyn Policy>, Option<Decision>); 6] = [
            ("closure", allow.clone(), Some(Decision::Allow)),
            ("default", waits.clone(), None),
            ("not(closure)", Arc::new(not(allow.clone())), Some(denied)),
            (
                "not(not(closure))",
                Arc::new(not(Arc::new(not(allow.clone())))),
                Some(Decision::Allow),
            ),
            ("not(default)", Arc::new(not(waits.clone())), None),
            // Combinators of several answer through `decide` only, so that no member is asked
            // twice.
            ("all(closure)", Arc::new(all(vec![allow])), None),
        ];
        for (name, policy, expected) in cases {
            assert_eq!(policy.decide_now(&request), expected, "{name}");
        }
    }
}
