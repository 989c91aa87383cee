//! [`McpAuthConfig`]: the whole configuration, deserializable from TOML, and its validation.
//!
//! ```
//! use tower_mcp_auth::McpAuthConfig;
//!
//! let config = McpAuthConfig::from_toml_str(r#"
//!     resource = "https://mcp.example.com/mcp"
//!     scopes_supported = ["notes:read"]
//!
//!     [[issuers]]
//!     issuer = "https://auth.example.com"
//!     jwks_uri = "https://auth.example.com/jwks"
//!     algorithms = ["ES256"]
//!
//!     [token]
//!     leeway_secs = 30
//!     max_lifetime_secs = 3600
//! "#)?;
//! assert_eq!(config.issuers.len(), 1);
//! # Ok::<(), tower_mcp_auth::ConfigError>(())
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::dpop::{DpopConfig, DpopConfigError};
use crate::keys::{KeyError, SigningAlgorithm};
use crate::policy::PolicyConfig;
use crate::token::{CacheAdmission, RequiredClaims};

/// Everything [`McpAuth`](crate::McpAuth) needs, in one serde-friendly struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct McpAuthConfig {
    /// The canonical URI of the MCP endpoint (e.g. `https://mcp.example.com/mcp`): the `aud`
    /// every token must contain and the `resource` of the metadata document.
    pub resource: String,
    /// Trusted issuers and their keys.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// `authorization_servers` of the metadata document; defaults to the issuers.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// `scopes_supported` of the metadata document (the minimal set for basic use).
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// The `scope` sent in 401 challenges; defaults to `scopes_supported`.
    #[serde(default)]
    pub challenge_scope: Option<Vec<String>>,
    /// `resource_name` of the metadata document.
    #[serde(default)]
    pub resource_name: Option<String>,
    /// `resource_documentation` of the metadata document.
    #[serde(default)]
    pub resource_documentation: Option<String>,
    /// Token validation rules.
    #[serde(default)]
    pub token: TokenRules,
    /// The scope map and policy layer settings.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// DPoP (RFC 9449) settings; off by default.
    #[serde(default)]
    pub dpop: DpopConfig,
    /// Advertise support for certificate-bound tokens (RFC 8705) in the metadata
    /// (`tls_client_certificate_bound_access_tokens`); they are honoured either way.
    #[serde(default)]
    pub mtls: bool,
    /// RFC 7662 introspection for opaque tokens; off unless configured.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

/// Where and how to introspect opaque tokens. JWT-shaped tokens still go to the JWT verifier.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IntrospectionConfig {
    /// The introspection endpoint URL. Without it, the `introspection_endpoint` of the issuer
    /// metadata is used: that of `issuer` (or of the only issuer) configured with
    /// `discover = true`, found by the same discovery and exact-issuer rule as its keys.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The resource server's client id at the authorization server.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// `client_secret_basic` (default) or `client_secret_post`; `private_key_jwt` is configured
    /// in code with [`ClientAuth::PrivateKeyJwt`](crate::token::ClientAuth::PrivateKeyJwt).
    #[serde(default = "default_auth_method")]
    pub auth_method: String,
    /// The issuer whose tokens are introspected: every response must carry this `iss`
    /// exactly (a response without `iss` is refused). Defaults to the discovered issuer when
    /// `endpoint` is omitted; otherwise unset means `iss` is not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Longest an introspection verdict is cached, in seconds (default 60; never past `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_max_ttl_secs: u64,
    /// Which of `sub`, `client_id`, `iat`, `jti` responses must carry; default:
    /// `[token] required_claims` (all four unless relaxed). RFC 7662 makes them optional:
    /// relax this for an authorization server that omits them.
    #[serde(default)]
    pub required_claims: Option<RequiredClaims>,
}

fn default_auth_method() -> String {
    "client_secret_basic".to_owned()
}

fn default_introspection_ttl() -> u64 {
    60
}

impl IntrospectionConfig {
    /// Introspection at `endpoint` with `client_secret_basic`.
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Some(endpoint.into()),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            auth_method: default_auth_method(),
            issuer: None,
            cache_max_ttl_secs: default_introspection_ttl(),
            required_claims: None,
        }
    }

    /// Introspection at the `introspection_endpoint` discovered from the metadata of `issuer`,
    /// which must be configured with `discover = true`.
    pub fn discovered(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        let mut config = Self::new("", client_id, client_secret);
        config.endpoint = None;
        config.issuer = Some(issuer.into());
        config
    }
}

impl std::fmt::Debug for IntrospectionConfig {
    // The client secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("issuer", &self.issuer)
            .field("cache_max_ttl_secs", &self.cache_max_ttl_secs)
            .field("required_claims", &self.required_claims)
            .finish_non_exhaustive()
    }
}

impl McpAuthConfig {
    /// A configuration for `resource` with no issuers yet.
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            issuers: Vec::new(),
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
            challenge_scope: None,
            resource_name: None,
            resource_documentation: None,
            token: TokenRules::default(),
            policy: PolicyConfig::default(),
            dpop: DpopConfig::default(),
            mtls: false,
            introspection: None,
        }
    }

    /// Parses a TOML document.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        toml::from_str(toml).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a TOML file.
    pub fn from_toml_file(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::from_toml_str(&text)
    }
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IssuerConfig {
    /// The issuer identifier, matched exactly against `iss`.
    pub issuer: String,
    /// A JWK Set URL, fetched and refreshed at run time.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A JWK Set file read at startup.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set document inline.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Individual PEM keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Allowed algorithms; default: every asymmetric algorithm.
    #[serde(default)]
    pub algorithms: Option<Vec<SigningAlgorithm>>,
    /// Find `jwks_uri` through issuer metadata discovery (RFC 8414, then OpenID Connect).
    #[serde(default)]
    pub discover: bool,
    /// Claims this issuer's tokens must carry; default: `[token] required_claims`.
    #[serde(default)]
    pub required_claims: Option<RequiredClaims>,
    /// Refresh policy of a remote key set (`jwks_uri` or `discover`); unset members keep
    /// their defaults.
    #[serde(default)]
    pub jwks_refresh: Option<JwksRefreshConfig>,
}

/// `[issuers.jwks_refresh]`: how a remote key set is refreshed, in seconds (see
/// [`RemoteJwksOptions`](crate::keys::RemoteJwksOptions)). Validated at build time: every value
/// but `max_stale_secs` is non-zero, and `min_ttl_secs <= max_ttl_secs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JwksRefreshConfig {
    /// TTL of a set fetched without `Cache-Control: max-age` (default 300).
    pub default_ttl_secs: Option<u64>,
    /// Floor applied to `max-age` (default 60).
    pub min_ttl_secs: Option<u64>,
    /// Ceiling applied to `max-age` (default 86 400).
    pub max_ttl_secs: Option<u64>,
    /// At most one fetch (key set or issuer metadata) per this interval (default 30).
    pub cooldown_secs: Option<u64>,
    /// How long past its expiry a set still serves while fetches fail (default 3 600; 0: never
    /// serve an expired set).
    pub max_stale_secs: Option<u64>,
    /// Bound on one fetch, on top of the HTTP client's own timeout (default 10).
    pub timeout_secs: Option<u64>,
}

impl JwksRefreshConfig {
    /// The options these settings give, over the defaults; `Err` names what is wrong.
    pub fn to_options(&self) -> Result<crate::keys::RemoteJwksOptions, &'static str> {
        use std::time::Duration;
        let mut options = crate::keys::RemoteJwksOptions::default();
        let secs = |value: Option<u64>, default: Duration, name: &'static str| match value {
            Some(0) => Err(name),
            Some(v) => Ok(Duration::from_secs(v)),
            None => Ok(default),
        };
        options.default_ttl = secs(
            self.default_ttl_secs,
            options.default_ttl,
            "jwks_refresh.default_ttl_secs must not be 0",
        )?;
        options.min_ttl = secs(
            self.min_ttl_secs,
            options.min_ttl,
            "jwks_refresh.min_ttl_secs must not be 0",
        )?;
        options.max_ttl = secs(
            self.max_ttl_secs,
            options.max_ttl,
            "jwks_refresh.max_ttl_secs must not be 0",
        )?;
        options.cooldown = secs(
            self.cooldown_secs,
            options.cooldown,
            "jwks_refresh.cooldown_secs must not be 0",
        )?;
        options.fetch_timeout = secs(
            self.timeout_secs,
            options.fetch_timeout,
            "jwks_refresh.timeout_secs must not be 0",
        )?;
        if let Some(stale) = self.max_stale_secs {
            options.max_stale = Duration::from_secs(stale);
        }
        // Bounded so that no instant computed from them can overflow (no panic on any config).
        const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
        if [
            options.default_ttl,
            options.min_ttl,
            options.max_ttl,
            options.cooldown,
            options.max_stale,
        ]
        .iter()
        .any(|d| *d > WEEK)
        {
            return Err("jwks_refresh durations must not exceed 604800 s (7 days)");
        }
        if options.fetch_timeout > Duration::from_secs(300) {
            return Err("jwks_refresh.timeout_secs must not exceed 300");
        }
        if options.min_ttl > options.max_ttl {
            return Err("jwks_refresh.min_ttl_secs must not exceed max_ttl_secs");
        }
        if self.default_ttl_secs.is_none() {
            // The built-in default follows the configured floor and ceiling.
            options.default_ttl = options.default_ttl.clamp(options.min_ttl, options.max_ttl);
        } else if !(options.min_ttl..=options.max_ttl).contains(&options.default_ttl) {
            return Err(
                "jwks_refresh.default_ttl_secs must lie between min_ttl_secs and max_ttl_secs",
            );
        }
        Ok(options)
    }
}

impl IssuerConfig {
    /// An issuer with no keys yet.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_uri: None,
            jwks_file: None,
            jwks: None,
            keys: Vec::new(),
            algorithms: None,
            discover: false,
            required_claims: None,
            jwks_refresh: None,
        }
    }

    /// The refresh policy of a remote key set (`jwks_uri` or `discover`).
    pub fn jwks_refresh(mut self, refresh: JwksRefreshConfig) -> Self {
        self.jwks_refresh = Some(refresh);
        self
    }

    /// Keys from the `jwks_uri` found by issuer metadata discovery.
    pub fn discover(mut self) -> Self {
        self.discover = true;
        self
    }

    /// Keys from a JWK Set URL.
    pub fn jwks_uri(mut self, uri: impl Into<String>) -> Self {
        self.jwks_uri = Some(uri.into());
        self
    }

    /// Keys from an inline JWK Set document.
    pub fn jwks(mut self, document: impl Into<String>) -> Self {
        self.jwks = Some(document.into());
        self
    }

    /// Restricts the allowed algorithms.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = SigningAlgorithm>) -> Self {
        self.algorithms = Some(algorithms.into_iter().collect());
        self
    }
}

/// A PEM public key bound to one algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyConfig {
    /// The algorithm this key verifies.
    pub alg: SigningAlgorithm,
    /// The `kid` tokens name.
    #[serde(default)]
    pub kid: Option<String>,
    /// The PEM text.
    #[serde(default)]
    pub pem: Option<String>,
    /// A PEM file.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
}

/// Token validation rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TokenRules {
    /// Clock-skew leeway for `exp`, `nbf`, `iat`, in seconds (default 30).
    pub leeway_secs: u64,
    /// Refuse tokens whose `exp - iat` exceeds this many seconds.
    pub max_lifetime_secs: Option<u64>,
    /// Which RFC 9068 claims must be present.
    pub required_claims: RequiredClaims,
    /// Also accept tokens with no `typ` or the generic `typ` `JWT` (default false); any other
    /// `typ` than `at+jwt` stays refused (see [`JwtVerifier::accept_untyped_tokens`]).
    ///
    /// [`JwtVerifier::accept_untyped_tokens`]: crate::token::JwtVerifier::accept_untyped_tokens
    pub accept_untyped_tokens: bool,
    /// Longest token accepted, in bytes (default 8192).
    pub max_token_bytes: usize,
    /// Verified tokens cached (default 100 000; 0 turns the cache off).
    pub cache_max_entries: u64,
    /// Most memory the cached verdicts may hold, estimated, in bytes (default 256 MiB).
    pub cache_max_bytes: u64,
    /// Longest a verdict is cached, in seconds (default 300; never beyond the token's `exp`).
    pub cache_max_ttl_secs: u64,
    /// When a verified JWT enters the cache: `second_sight` (default) or `first_sight`.
    /// Introspection verdicts are always cached on first sight.
    pub cache_admission: CacheAdmission,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            leeway_secs: 30,
            max_lifetime_secs: None,
            required_claims: RequiredClaims::default(),
            accept_untyped_tokens: false,
            max_token_bytes: 8 * 1024,
            cache_max_entries: 100_000,
            cache_max_bytes: 256 * 1024 * 1024,
            cache_max_ttl_secs: 300,
            cache_admission: CacheAdmission::SecondSight,
        }
    }
}

/// A configuration that cannot work, found at build time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML document does not parse or has unknown fields.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A file could not be read.
    #[error("cannot read {}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A URL is unusable.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidUrl {
        /// Which setting.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// No resource URI was configured.
    #[error("no resource URI configured: set `resource` to the canonical URI of the MCP endpoint")]
    MissingResource,
    /// No issuer was configured.
    #[error("no trusted issuer configured")]
    NoIssuers,
    /// The same issuer was configured twice.
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// An issuer has no key source.
    #[error("issuer {0:?} has no keys: set jwks_uri, jwks_file, jwks, keys or discover")]
    NoKeys(String),
    /// An issuer's key cannot be loaded.
    #[error("issuer {issuer:?}: {source}")]
    Key {
        /// The issuer.
        issuer: String,
        /// The key problem.
        source: KeyError,
    },
    /// A configured key's algorithm is not in its issuer's allow-list.
    #[error(
        "issuer {issuer:?}: {} uses {alg}, which is not in the issuer's algorithms",
        describe_kid(.kid.as_deref())
    )]
    AlgorithmNotAllowed {
        /// The issuer.
        issuer: String,
        /// The key id.
        kid: Option<String>,
        /// The key's algorithm.
        alg: SigningAlgorithm,
    },
    /// An issuer's algorithm list is empty, or names HMAC without a shared secret.
    #[error("issuer {issuer:?}: {reason}")]
    InvalidAlgorithms {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An issuer's key sources conflict or are incomplete: `discover` together with keys,
    /// `jwks_uri` together with static keys, a PEM key with neither or both of `pem` and
    /// `pem_file`, or HMAC allowed for a key source holding no shared secret.
    #[error("issuer {issuer:?}: {reason}")]
    InvalidKeySource {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A scope is not a valid RFC 6749 scope-token.
    #[error(
        "invalid scope {0:?}: scopes are non-empty printable ASCII without spaces, quotes or backslashes"
    )]
    InvalidScope(String),
    /// The `[dpop]` section is unusable.
    #[error("invalid DPoP configuration: {0}")]
    Dpop(#[from] DpopConfigError),
    /// An issuer's `[issuers.jwks_refresh]` is unusable, or set for static keys.
    #[error("issuer {issuer:?}: {reason}")]
    InvalidJwksRefresh {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The `[introspection]` section is unusable.
    #[error("invalid introspection configuration: {0}")]
    Introspection(&'static str),
    /// A remote key set needs an HTTP client and none is available.
    #[error(
        "issuer {0:?} uses jwks_uri but no HTTP client is available: enable the `reqwest` feature or call McpAuthBuilder::http_client"
    )]
    NoHttpClient(String),
}

/// `key "k1"`, or `a key without kid`, for messages.
fn describe_kid(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("key {kid:?}"),
        None => "a key without kid".to_owned(),
    }
}

/// Which URL rule to apply.
#[derive(Clone, Copy)]
pub(crate) enum UrlRole {
    /// The canonical resource URI.
    Resource,
    /// An issuer identifier or a key set URL.
    Remote(&'static str),
}

/// Parses and validates a URL: absolute `https` (or `http` on a loopback host), no fragment, no
/// credentials; the resource must also be in canonical form and have no query.
pub(crate) fn parse_url(value: &str, role: UrlRole) -> Result<Url, ConfigError> {
    let field = match role {
        UrlRole::Resource => "resource",
        UrlRole::Remote(field) => field,
    };
    let err = |reason: &str| ConfigError::InvalidUrl {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(value).map_err(|e| err(&e.to_string()))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return Err(err("must have a host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(err(
                "must use https (http is allowed only for loopback hosts)",
            ));
        }
        _ => return Err(err("must be an https URL")),
    }
    if url.fragment().is_some() || value.contains('#') {
        return Err(err("must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err("must not contain credentials"));
    }
    if let UrlRole::Resource = role {
        if url.query().is_some() {
            return Err(err("must not have a query"));
        }
        let canonical = url.as_str();
        let same = canonical == value || (url.path() == "/" && canonical == format!("{value}/"));
        if !same {
            return Err(err(&format!(
                "is not in canonical form; use {:?}",
                canonical
                    .strip_suffix('/')
                    .filter(|_| url.path() == "/")
                    .unwrap_or(canonical)
            )));
        }
        if url.path() != "/" && url.path().ends_with('/') {
            return Err(err("should not end with a slash"));
        }
    }
    Ok(url)
}

/// RFC 6749 §3.3 scope-token: `1*( %x21 / %x23-5B / %x5D-7E )`.
pub(crate) fn check_scope(scope: &str) -> Result<(), ConfigError> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::InvalidScope(scope.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_urls() {
        let ok = [
            "https://mcp.example.com/mcp",
            "https://mcp.example.com",
            "https://mcp.example.com:8443",
            "http://127.0.0.1:8080/mcp",
            "http://localhost:3000/mcp",
            "http://[::1]:3000/mcp",
        ];
        for value in ok {
            parse_url(value, UrlRole::Resource).unwrap_or_else(|e| panic!("{value}: {e}"));
        }
        let bad = [
            "mcp.example.com",
            "https://mcp.example.com#fragment",
            "https://mcp.example.com/mcp?x=1",
            "http://mcp.example.com/mcp",
            "HTTPS://MCP.example.com/mcp",
            "https://mcp.example.com:443/mcp",
            "https://mcp.example.com/mcp/",
            "https://user:pw@mcp.example.com/mcp",
            "ftp://mcp.example.com/mcp",
            "",
        ];
        for value in bad {
            assert!(parse_url(value, UrlRole::Resource).is_err(), "{value}");
        }
    }

    #[test]
    fn scopes() {
        assert!(check_scope("notes:read").is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(check_scope(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let err =
            McpAuthConfig::from_toml_str("resource = \"https://x\"\naudience_optional = true")
                .unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)));
    }
}
