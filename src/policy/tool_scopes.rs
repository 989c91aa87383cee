//! [`ToolScopes`]: the built-in policy mapping tools, prompts and resources to scopes.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::classify::{CompletionRef, Operation};
use super::decide::{Decision, Policy, PolicyRequest};
use crate::config::{ConfigError, check_scope};

/// What to do with a tool, prompt or resource (or method) the map does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unlisted {
    /// Refuse (403, no scope can cure it). The default.
    #[default]
    Deny,
    /// Allow any valid token.
    Allow,
}

/// How the policy layer treats JSON-RPC batches (2025-03-26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BatchMode {
    /// Authorize every element; one refusal refuses the whole batch. The default.
    #[default]
    Authorize,
    /// Refuse every batch (400).
    Refuse,
}

/// How a missing scope on a `tools/call` is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DenialStyle {
    /// HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope"` (the MCP spec).
    #[default]
    Http,
    /// HTTP 200 with a tool result `isError: true` and `_meta["mcp/www_authenticate"]`, for
    /// clients that only read results. Other refusals stay HTTP 403.
    ToolResult,
}

/// The `[policy]` section of the configuration: the scope map and the policy layer settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// Scopes required per tool (all of them).
    pub tools: BTreeMap<String, Vec<String>>,
    /// Scopes required per prompt.
    pub prompts: BTreeMap<String, Vec<String>>,
    /// Scopes required per resource URI; a pattern ending in `*` matches by prefix, the longest
    /// matching pattern wins. Matching is on the raw URI string; URIs with dot segments or
    /// `%2e` are denied (see [`ToolScopes::resource`]).
    pub resources: BTreeMap<String, Vec<String>>,
    /// Scope hierarchy: a scope implies the listed ones (transitively), e.g.
    /// `"notes:admin" = ["notes:write"]`.
    pub implies: BTreeMap<String, Vec<String>>,
    /// Tools, prompts and resources not in the map.
    pub unlisted_targets: Unlisted,
    /// Methods this crate does not know.
    pub unknown_methods: Unlisted,
    /// Scopes needed for lifecycle methods (`initialize`, `ping`, notifications, responses,
    /// list methods, `logging/setLevel`, task methods); default none (any valid token).
    pub lifecycle_scopes: Vec<String>,
    /// Largest request body read, in bytes (default 4 MiB); larger → 413.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted (default 64).
    pub max_depth: usize,
    /// Batch handling.
    pub batches: BatchMode,
    /// Filter `tools/list`, `prompts/list`, `resources/list` results (default on).
    pub filter_listings: bool,
    /// How a missing scope on a tool call is reported.
    pub denial: DenialStyle,
    /// Bind `Mcp-Session-Id` to the principal that initialized it (default on). A session id
    /// the store does not know is then refused (404), and a full store refuses `initialize`
    /// (503).
    pub session_binding: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            tools: BTreeMap::new(),
            prompts: BTreeMap::new(),
            resources: BTreeMap::new(),
            implies: BTreeMap::new(),
            unlisted_targets: Unlisted::Deny,
            unknown_methods: Unlisted::Deny,
            lifecycle_scopes: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_depth: 64,
            batches: BatchMode::Authorize,
            filter_listings: true,
            denial: DenialStyle::Http,
            session_binding: true,
        }
    }
}

/// Required scopes per tool, prompt and resource, with an explicit scope hierarchy.
///
/// Scopes match exactly (case-sensitive, no prefixes). Lifecycle and list methods are allowed
/// for any valid token by default; unlisted tools, prompts, resources and unknown methods are
/// denied by default.
///
/// ```
/// use tower_mcp_auth::policy::ToolScopes;
///
/// let scopes = ToolScopes::new()
///     .tool("list_notes", ["notes:read"])
///     .tool("add_note", ["notes:write"])
///     .tool("delete_note", ["notes:admin"])
///     .resource("notes://*", ["notes:read"])
///     .implies("notes:admin", ["notes:write"])
///     .implies("notes:write", ["notes:read"]);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ToolScopes {
    tools: BTreeMap<String, BTreeSet<String>>,
    prompts: BTreeMap<String, BTreeSet<String>>,
    resources: Vec<(String, BTreeSet<String>)>,
    implies: BTreeMap<String, BTreeSet<String>>,
    unlisted_targets: Unlisted,
    unknown_methods: Unlisted,
    lifecycle: BTreeSet<String>,
}

fn set<I, S>(scopes: I) -> BTreeSet<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    scopes.into_iter().map(Into::into).collect()
}

impl ToolScopes {
    /// An empty map: every tool, prompt and resource is unlisted (denied).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the map from configuration, validating every scope.
    pub fn from_config(config: &PolicyConfig) -> Result<Self, ConfigError> {
        let all = config
            .tools
            .values()
            .chain(config.prompts.values())
            .chain(config.resources.values())
            .chain(config.implies.values())
            .flatten()
            .chain(config.implies.keys())
            .chain(&config.lifecycle_scopes);
        for scope in all {
            check_scope(scope)?;
        }
        let mut scopes = Self::new();
        for (tool, s) in &config.tools {
            scopes = scopes.tool(tool, s.iter().cloned());
        }
        for (prompt, s) in &config.prompts {
            scopes = scopes.prompt(prompt, s.iter().cloned());
        }
        for (pattern, s) in &config.resources {
            scopes = scopes.resource(pattern, s.iter().cloned());
        }
        for (scope, implied) in &config.implies {
            scopes = scopes.implies(scope, implied.iter().cloned());
        }
        scopes.unlisted_targets = config.unlisted_targets;
        scopes.unknown_methods = config.unknown_methods;
        scopes.lifecycle = set(config.lifecycle_scopes.iter().cloned());
        Ok(scopes)
    }

    /// The scopes `tools/call` of `name` requires (all of them).
    pub fn tool<I, S>(mut self, name: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tools.insert(name.into(), set(scopes));
        self
    }

    /// The scopes `prompts/get` of `name` requires.
    pub fn prompt<I, S>(mut self, name: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.prompts.insert(name.into(), set(scopes));
        self
    }

    /// The scopes reading (or subscribing to) resources matching `pattern` requires: an exact
    /// URI, or a prefix ending in `*`. The longest matching pattern wins.
    ///
    /// Patterns match the URI exactly as sent: no case folding, no percent-decoding, no
    /// dot-segment removal. So that `notes://x/../secret/1` cannot pass for `notes://x/*`, a
    /// URI with a `.` or `..` segment (between `/` or `\`, also after percent-decoding, once or
    /// more) or any `%2e` is refused outright, whatever the patterns and [`Unlisted`] setting
    /// say.
    pub fn resource<I, S>(mut self, pattern: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let pattern = pattern.into();
        self.resources.retain(|(p, _)| *p != pattern);
        self.resources.push((pattern, set(scopes)));
        self.resources
            .sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.len()));
        self
    }

    /// Declares that holding `scope` also grants `implied` (transitively).
    pub fn implies<I, S>(mut self, scope: impl Into<String>, implied: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.implies
            .entry(scope.into())
            .or_default()
            .extend(set(implied));
        self
    }

    /// What to do with tools, prompts and resources not in the map (default: deny).
    pub fn unlisted_targets(mut self, rule: Unlisted) -> Self {
        self.unlisted_targets = rule;
        self
    }

    /// What to do with methods this crate does not know (default: deny).
    pub fn unknown_methods(mut self, rule: Unlisted) -> Self {
        self.unknown_methods = rule;
        self
    }

    /// Scopes needed for lifecycle and list methods (default: none).
    pub fn lifecycle_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lifecycle = set(scopes);
        self
    }

    /// Every scope the map names, for documentation.
    pub fn all_scopes(&self) -> BTreeSet<&str> {
        self.tools
            .values()
            .chain(self.prompts.values())
            .chain(self.resources.iter().map(|(_, s)| s))
            .flatten()
            .map(String::as_str)
            .collect()
    }

    fn resource_scopes(&self, uri: &str) -> Option<&BTreeSet<String>> {
        self.resources
            .iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => uri.starts_with(prefix),
                None => uri == pattern,
            })
            .map(|(_, scopes)| scopes)
    }

    /// The scopes `operation` requires, or `None` when it is refused outright.
    pub fn required<'s>(&'s self, operation: &Operation<'_>) -> Option<&'s BTreeSet<String>> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        let unlisted = |rule: Unlisted| match rule {
            Unlisted::Deny => None,
            Unlisted::Allow => Some(&NONE),
        };
        match operation {
            Operation::CallTool { name, .. } => self
                .tools
                .get(&**name)
                .or_else(|| unlisted(self.unlisted_targets)),
            Operation::GetPrompt { name, .. }
            | Operation::Complete {
                reference: CompletionRef::Prompt { name },
            } => self
                .prompts
                .get(&**name)
                .or_else(|| unlisted(self.unlisted_targets)),
            Operation::ReadResource { uri }
            | Operation::SubscribeResource { uri }
            | Operation::UnsubscribeResource { uri }
            | Operation::Complete {
                reference: CompletionRef::Resource { uri },
            } => {
                // Refused outright, whatever `unlisted_targets` says.
                if ambiguous_uri(uri) {
                    return None;
                }
                self.resource_scopes(uri)
                    .or_else(|| unlisted(self.unlisted_targets))
            }
            Operation::Complete { .. } => unlisted(self.unlisted_targets),
            Operation::Other { .. } => unlisted(self.unknown_methods),
            _ => Some(&self.lifecycle),
        }
    }

    /// Whether `granted` (with the hierarchy applied) covers `scope`.
    fn covers(&self, granted: &BTreeSet<String>, scope: &str) -> bool {
        if granted.contains(scope) {
            return true;
        }
        // Walk the hierarchy from each granted scope; bounded by the map's size.
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = granted.iter().map(String::as_str).collect();
        while let Some(s) = stack.pop() {
            if !seen.insert(s) {
                continue;
            }
            if let Some(implied) = self.implies.get(s) {
                for i in implied {
                    if i == scope {
                        return true;
                    }
                    stack.push(i);
                }
            }
        }
        false
    }
}

/// Whether a resource URI could name something other than what its text says once a server
/// resolves it: a `.` or `..` segment (between `/` or `\`, also after percent-decoding, so
/// `%2F..%2F` counts, and after decoding again, so `%252e%252e` counts), or any
/// percent-encoded dot (`%2e`, which RFC 3986 §2.3 says is never needed). Patterns match the
/// raw string, so such URIs are refused outright: `notes://x/../secret/1` must not pass as
/// `notes://x/*`.
fn ambiguous_uri(uri: &str) -> bool {
    // Each round decodes one level of percent-encoding; a URI still changing after a few rounds
    // is refused too.
    const ROUNDS: usize = 4;
    let has_dot_segment = |bytes: &[u8]| {
        bytes
            .split(|&b| matches!(b, b'/' | b'\\' | b'?' | b'#'))
            .any(|segment| segment == b"." || segment == b"..")
    };
    // The common case, nothing percent-encoded: one scan of the borrowed bytes, no copy.
    if !uri.as_bytes().contains(&b'%') {
        return has_dot_segment(uri.as_bytes());
    }
    let mut current = uri.as_bytes().to_vec();
    for _ in 0..ROUNDS {
        let encoded_dot = current
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'e'));
        if encoded_dot || has_dot_segment(&current) {
            return true;
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            return false;
        }
        current = decoded;
    }
    true
}

/// Whether the operation's target is a resource URI.
fn uri_target(operation: &Operation<'_>) -> bool {
    matches!(
        operation,
        Operation::ReadResource { .. }
            | Operation::SubscribeResource { .. }
            | Operation::UnsubscribeResource { .. }
            | Operation::Complete {
                reference: CompletionRef::Resource { .. }
            }
    )
}

/// `%XX` decoded where `XX` is hex; everything else kept as is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            // Two hex digits: at most 0xff.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[async_trait]
impl Policy for ToolScopes {
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        self.decision(request)
    }

    fn decide_now(&self, request: &PolicyRequest<'_>) -> Option<Decision> {
        Some(self.decision(request))
    }
}

impl ToolScopes {
    /// The scope map needs no I/O: [`Policy::decide`] and [`Policy::decide_now`] both answer this.
    fn decision(&self, request: &PolicyRequest<'_>) -> Decision {
        let Some(required) = self.required(request.operation()) else {
            if uri_target(request.operation()) && request.target().is_some_and(ambiguous_uri) {
                return Decision::deny("resource URI with dot segments or encoded dots");
            }
            return Decision::deny(format!("{} is not in the scope map", request.method()));
        };
        let granted = request.principal().scopes();
        if required.iter().all(|s| self.covers(granted, s)) {
            Decision::Allow
        } else {
            Decision::NeedsScopes(required.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Binding, Principal, PrincipalParts};

    fn principal(scopes: &[&str]) -> Principal {
        Principal::new(PrincipalParts {
            issuer: "https://as".into(),
            subject: "u".into(),
            client_id: None,
            audience: vec![],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            delegation: vec![],
            expires_at: 0,
            issued_at: None,
            jti: None,
            token_thumbprint: String::new(),
            binding: Binding::Bearer,
            confirmation: None,
            claims: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        })
    }

    fn decide(policy: &ToolScopes, scopes: &[&str], op: Operation<'_>) -> Decision {
        let p = principal(scopes);
        let parts = http::Request::new(()).into_parts().0;
        let request = PolicyRequest::new(&p, &op, &parts);
        let decided = futures_lite_block_on(policy.decide(&request));
        // Every case of every table here also pins the synchronous answer to the same verdict.
        assert_eq!(policy.decide_now(&request), Some(decided.clone()), "{op:?}");
        decided
    }

    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn call(name: &str) -> Operation<'_> {
        Operation::CallTool {
            name: name.into(),
            arguments: None,
        }
    }

    #[test]
    fn scope_map_and_hierarchy() {
        let p = ToolScopes::new()
            .tool("read", ["notes:read"])
            .tool("write", ["notes:write"])
            .tool("both", ["a", "b"])
            .implies("notes:admin", ["notes:write"])
            .implies("notes:write", ["notes:read"]);
        assert_eq!(decide(&p, &["notes:read"], call("read")), Decision::Allow);
        assert_eq!(
            decide(&p, &["notes:read"], call("write")),
            Decision::needs_scopes(["notes:write"])
        );
        assert_eq!(decide(&p, &["notes:admin"], call("read")), Decision::Allow);
        assert_eq!(
            decide(&p, &["a"], call("both")),
            Decision::needs_scopes(["a", "b"])
        );
        // Exact matching: no prefixes, no case folding.
        for near in ["notes:rea", "notes:read:x", "NOTES:READ", "notes:reаd"] {
            assert!(!decide(&p, &[near], call("read")).is_allow(), "{near}");
        }
        assert!(matches!(
            decide(&p, &["notes:admin"], call("unknown")),
            Decision::Deny { .. }
        ));
        assert_eq!(decide(&p, &[], Operation::ListTools), Decision::Allow);
        assert!(matches!(
            decide(&p, &[], Operation::Other { method: "x".into() }),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn hierarchy_cycles_terminate() {
        let p = ToolScopes::new()
            .tool("t", ["z"])
            .implies("a", ["b"])
            .implies("b", ["a"]);
        assert!(!decide(&p, &["a"], call("t")).is_allow());
    }

    #[test]
    fn resource_patterns_longest_wins() {
        let p = ToolScopes::new()
            .resource("notes://*", ["notes:read"])
            .resource("notes://secret/*", ["notes:admin"]);
        let read = |uri: &'static str| Operation::ReadResource { uri: uri.into() };
        assert_eq!(
            decide(&p, &["notes:read"], read("notes://all")),
            Decision::Allow
        );
        assert_eq!(
            decide(&p, &["notes:read"], read("notes://secret/1")),
            Decision::needs_scopes(["notes:admin"])
        );
        assert!(matches!(
            decide(&p, &["notes:read"], read("files://x")),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn dot_segments_and_encoded_dots_are_denied() {
        let p = ToolScopes::new()
            .resource("notes://x/*", ["notes:read"])
            .resource("notes://x/a/b", ["notes:read"])
            .unlisted_targets(Unlisted::Allow);
        let read = |uri: &'static str| Operation::ReadResource { uri: uri.into() };
        // (uri, allowed with notes:read)
        let cases = [
            ("notes://x/1", true),
            ("notes://x/a/b", true),
            ("notes://x/a..b", true),
            ("notes://x/.hidden", true),
            ("notes://x/a%2Fb", true),
            ("notes://x/../secret/1", false),
            ("notes://x/./1", false),
            ("notes://x/..", false),
            ("notes://x/pub/..?q", false),
            ("notes://x/pub/..#f", false),
            ("notes://x/pub/..%3Fq", false),
            ("notes://x/.", false),
            ("notes://x/a/b/..", false),
            ("notes://x/%2e%2e/secret/1", false),
            ("notes://x/%2E%2E/secret/1", false),
            ("notes://x/.%2e/secret/1", false),
            ("notes://x/%2e/1", false),
            ("notes://x/a%2ejson", false),
            ("notes://x/..%2Fsecret/1", false),
            ("notes://x/%2F..%2Fsecret", false),
            ("notes://x/..\\secret", false),
            ("notes://x\\..\\secret", false),
            ("notes://x/%252e%252e/secret", false),
            ("notes://x/..%252Fsecret", false),
            ("notes://x/%25252e", false),
            ("notes://x/a%2520b", true),
            // Unlisted targets are allowed here, but not with dot segments.
            ("other://y/../z", false),
            ("other://y/z", true),
        ];
        for (uri, allowed) in cases {
            let decision = decide(&p, &["notes:read"], read(uri));
            if allowed {
                assert_eq!(decision, Decision::Allow, "{uri}");
            } else {
                assert!(
                    matches!(decision, Decision::Deny { .. }),
                    "{uri}: {decision:?}"
                );
            }
        }
        for op in [
            Operation::SubscribeResource {
                uri: "notes://x/../s".into(),
            },
            Operation::UnsubscribeResource {
                uri: "notes://x/../s".into(),
            },
            Operation::Complete {
                reference: CompletionRef::Resource {
                    uri: "notes://x/%2e%2e/s".into(),
                },
            },
        ] {
            assert!(p.required(&op).is_none(), "{op:?}");
        }
        // A tool name is not a URI: dots in it are just characters.
        let t = ToolScopes::new().tool("..", Vec::<String>::new());
        assert_eq!(decide(&t, &[], call("..")), Decision::Allow);
    }

    #[test]
    fn config_is_validated() {
        let mut config = PolicyConfig::default();
        config.tools.insert("t".into(), vec!["bad scope".into()]);
        assert!(ToolScopes::from_config(&config).is_err());
    }
}
