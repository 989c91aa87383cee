//! [`Principal`]: who is calling, as established by a verified access token.
//!
//! The token layer inserts a `Principal` into the request extensions. An rmcp tool reads it from
//! the HTTP request parts that rmcp forwards:
//!
//! ```
//! use rmcp::handler::server::tool::Extension;
//! use tower_mcp_auth::Principal;
//!
//! fn caller(Extension(parts): Extension<http::request::Parts>) -> Option<String> {
//!     let principal = parts.extensions.get::<Principal>()?;
//!     Some(format!("{} via {}", principal.subject(), principal.client_id().unwrap_or("-")))
//! }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

/// How the token was presented and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Binding {
    /// A bearer token: possession is enough.
    Bearer,
    /// A DPoP-bound token with a verified proof (RFC 9449).
    Dpop,
    /// A certificate-bound token with a matching client certificate (RFC 8705).
    Mtls,
}

impl Binding {
    /// `bearer`, `dpop` or `mtls`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Dpop => "dpop",
            Self::Mtls => "mtls",
        }
    }
}

/// The token's confirmation (`cnf`, RFC 7800): the key or certificate it is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confirmation {
    /// `cnf.jkt`: the RFC 7638 SHA-256 thumbprint of a DPoP key (RFC 9449).
    pub jkt: Option<String>,
    /// `cnf.x5t#S256`: base64url SHA-256 of a client certificate (RFC 8705).
    pub x5t_s256: Option<String>,
}

/// One party in a delegation chain (an RFC 8693 `act` claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The actor's `sub`.
    pub subject: String,
    /// The actor's `iss`, when the claim names one.
    pub issuer: Option<String>,
    /// The actor's `client_id`, when the claim names one.
    pub client_id: Option<String>,
}

/// The verified caller. Cheap to clone (reference counts, no copying).
#[derive(Clone)]
pub struct Principal {
    /// What the token says; shared with the verified-token cache.
    verified: Arc<Inner>,
    /// How this request presented the token (set by the token layer, per request).
    binding: Binding,
    /// The verified proof key's thumbprint, for bound tokens.
    key_thumbprint: Option<Arc<str>>,
}

struct Inner {
    issuer: String,
    subject: String,
    client_id: Option<String>,
    audience: Vec<String>,
    scopes: BTreeSet<String>,
    delegation: Vec<Actor>,
    expires_at: u64,
    issued_at: Option<u64>,
    jti: Option<String>,
    token_thumbprint: String,
    confirmation: Option<Confirmation>,
    claims: Box<serde_json::value::RawValue>,
}

/// Everything a verifier knows about a token, used to build a [`Principal`].
#[derive(Debug)]
pub struct PrincipalParts {
    /// `iss`.
    pub issuer: String,
    /// `sub` (empty when absent and not required).
    pub subject: String,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `aud`, as a list.
    pub audience: Vec<String>,
    /// Granted scopes (`scope` and `scp`).
    pub scopes: BTreeSet<String>,
    /// Delegation chain, current actor first.
    pub delegation: Vec<Actor>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `iat`, seconds since the epoch.
    pub issued_at: Option<u64>,
    /// `jti`.
    pub jti: Option<String>,
    /// base64url(SHA-256(token)).
    pub token_thumbprint: String,
    /// How the token was bound.
    pub binding: Binding,
    /// The token's `cnf`, if it is sender-constrained.
    pub confirmation: Option<Confirmation>,
    /// The whole claim set, as JSON.
    pub claims: Box<serde_json::value::RawValue>,
}

impl Principal {
    /// Builds a principal; verifiers call this once every check has passed.
    pub fn new(parts: PrincipalParts) -> Self {
        Self {
            verified: Arc::new(Inner {
                issuer: parts.issuer,
                subject: parts.subject,
                client_id: parts.client_id,
                audience: parts.audience,
                scopes: parts.scopes,
                delegation: parts.delegation,
                expires_at: parts.expires_at,
                issued_at: parts.issued_at,
                jti: parts.jti,
                token_thumbprint: parts.token_thumbprint,
                confirmation: parts.confirmation,
                claims: parts.claims,
            }),
            binding: parts.binding,
            key_thumbprint: None,
        }
    }

    /// The same principal, with the binding the token layer established. The claims stay
    /// shared (a cached verdict is never copied).
    pub(crate) fn bound(mut self, binding: Binding, key_thumbprint: Option<Arc<str>>) -> Self {
        self.binding = binding;
        self.key_thumbprint = key_thumbprint;
        self
    }

    /// Roughly how many bytes this principal holds (for the verified-token cache's memory bound).
    pub(crate) fn estimated_bytes(&self) -> usize {
        /// The fixed parts, allocation headers and the cache's own bookkeeping per entry.
        const OVERHEAD: usize = 512;
        /// A `BTreeSet` / `Vec` element's share of its node, beyond the string itself.
        const PER_ITEM: usize = 48;
        let v = &self.verified;
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        OVERHEAD
            + v.issuer.len()
            + v.subject.len()
            + text(&v.client_id)
            + text(&v.jti)
            + v.token_thumbprint.len()
            + v.claims.get().len()
            + v.audience.iter().map(|a| a.len() + PER_ITEM).sum::<usize>()
            + v.scopes.iter().map(|s| s.len() + PER_ITEM).sum::<usize>()
            + v.delegation
                .iter()
                .map(|a| a.subject.len() + text(&a.issuer) + text(&a.client_id) + 3 * PER_ITEM)
                .sum::<usize>()
            + v.confirmation
                .as_ref()
                .map_or(0, |c| text(&c.jkt) + text(&c.x5t_s256) + PER_ITEM)
    }

    /// The token's confirmation (`cnf`), if it is sender-constrained.
    pub fn confirmation(&self) -> Option<&Confirmation> {
        self.verified.confirmation.as_ref()
    }

    /// The verified proof key's thumbprint (DPoP `jkt`, or the certificate's `x5t#S256`).
    pub fn key_thumbprint(&self) -> Option<&str> {
        self.key_thumbprint.as_deref()
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.verified.issuer
    }

    /// The subject (`sub`): the resource owner, or the client itself for client credentials.
    pub fn subject(&self) -> &str {
        &self.verified.subject
    }

    /// The OAuth client the token was issued to (`client_id`).
    pub fn client_id(&self) -> Option<&str> {
        self.verified.client_id.as_deref()
    }

    /// The audiences (`aud`); always includes this server's resource URI.
    pub fn audience(&self) -> &[String] {
        &self.verified.audience
    }

    /// The granted scopes, from `scope` and `scp`.
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.verified.scopes
    }

    /// Whether `scope` was granted (exact, case-sensitive match).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.verified.scopes.contains(scope)
    }

    /// The delegation chain from nested `act` claims, current (outermost) actor first.
    pub fn delegation_chain(&self) -> &[Actor] {
        &self.verified.delegation
    }

    /// The current actor (the outermost `act`), if the token records delegation.
    pub fn actor(&self) -> Option<&Actor> {
        self.verified.delegation.first()
    }

    /// Expiry (`exp`), seconds since the Unix epoch.
    pub fn expires_at_unix(&self) -> u64 {
        self.verified.expires_at
    }

    /// Expiry as a [`SystemTime`].
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.verified.expires_at)
    }

    /// Issue time (`iat`), seconds since the Unix epoch.
    pub fn issued_at_unix(&self) -> Option<u64> {
        self.verified.issued_at
    }

    /// The token identifier (`jti`).
    pub fn jti(&self) -> Option<&str> {
        self.verified.jti.as_deref()
    }

    /// base64url(SHA-256(access token)): correlates logs and audit events without the token. It
    /// equals the DPoP `ath` of proofs made for this token.
    pub fn token_thumbprint(&self) -> &str {
        &self.verified.token_thumbprint
    }

    /// How the token was presented.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// The whole verified claim set as raw JSON.
    pub fn raw_claims(&self) -> &str {
        self.verified.claims.get()
    }

    /// Deserializes the whole claim set into `T` (your own claims struct).
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.verified.claims.get())
    }

    /// Deserializes one claim into `T`; `Ok(None)` when the claim is absent.
    pub fn claim<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, serde_json::Error> {
        let map: std::collections::HashMap<&str, &serde_json::value::RawValue> =
            serde_json::from_str(self.verified.claims.get())?;
        map.get(name)
            .map(|raw| serde_json::from_str(raw.get()))
            .transpose()
    }
}

impl fmt::Debug for Principal {
    // The claim set is left out: custom claims may be sensitive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("issuer", &self.verified.issuer)
            .field("subject", &self.verified.subject)
            .field("client_id", &self.verified.client_id)
            .field("scopes", &self.verified.scopes)
            .field("delegation", &self.verified.delegation)
            .field("expires_at", &self.verified.expires_at)
            .field("jti", &self.verified.jti)
            .field("token_thumbprint", &self.verified.token_thumbprint)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}
