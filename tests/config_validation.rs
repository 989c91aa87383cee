//! Startup validation: every configuration that cannot work is refused by `build()` (or by the
//! TOML parser) with the exact [`ConfigError`] variant and a message that says what to fix.
//! Each row is built twice where both forms exist: with the `McpAuth` builder and from TOML
//! through `McpAuthConfig::from_toml_str` + `McpAuth::from_config`.

use std::sync::Arc;

use tower_mcp_auth::config::IntrospectionConfig;
use tower_mcp_auth::dpop::DpopConfigError;
use tower_mcp_auth::keys::{KeyError, KeySet, StaticKeys, VerificationKey};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{ConfigError, IssuerConfig, McpAuth, McpAuthConfig, SigningAlgorithm};

/// A custom key source that has loaded nothing yet (a remote or lazy source before its first
/// fetch): it cannot show a shared secret at build time.
#[derive(Debug)]
struct NotLoadedYet;

#[async_trait::async_trait]
impl tower_mcp_auth::keys::KeySource for NotLoadedYet {
    fn current(&self) -> Option<Arc<KeySet>> {
        None
    }

    async fn refresh(
        &self,
        _reason: tower_mcp_auth::keys::RefreshReason<'_>,
    ) -> Result<Arc<KeySet>, KeyError> {
        Err(KeyError::InvalidJwk {
            reason: "never loads",
        })
    }
}

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://as.example.com";

/// One bad configuration: how it is built, the exact error, and words the message must hold.
struct Row {
    name: &'static str,
    result: Result<McpAuth, ConfigError>,
    expect: ConfigError,
    message: &'static [&'static str],
}

fn url_error(field: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidUrl {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A valid base (resource and one issuer with inline keys) for rows that break one thing.
fn base(dev: &DevIssuer) -> tower_mcp_auth::McpAuthBuilder {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
}

/// TOML: `resource`, then `rest` (top-level keys first, then tables).
fn toml(text: &str) -> Result<McpAuth, ConfigError> {
    McpAuthConfig::from_toml_str(text).and_then(McpAuth::from_config)
}

/// The inline-JWKS issuer table for `dev`, with `extra` lines.
fn issuer_table(dev: &DevIssuer, extra: &str) -> String {
    format!(
        "[[issuers]]\nissuer = \"{}\"\njwks = '{}'\n{extra}\n",
        dev.issuer(),
        dev.jwks_json()
    )
}

fn builder_rows(dev: &DevIssuer) -> Vec<Row> {
    let es256_keys = || {
        Arc::new(StaticKeys::new(
            KeySet::from_jwks_json(dev.jwks_json().as_bytes()).unwrap(),
        ))
    };
    vec![
        // ---- resource ------------------------------------------------------------------------
        Row {
            name: "builder: no resource",
            result: McpAuth::builder().issuer(dev.issuer_config()).build(),
            expect: ConfigError::MissingResource,
            message: &["no resource URI configured", "canonical URI"],
        },
        Row {
            name: "builder: empty resource",
            result: McpAuth::builder()
                .resource("")
                .issuer(dev.issuer_config())
                .build(),
            expect: ConfigError::MissingResource,
            message: &["no resource URI configured"],
        },
        Row {
            name: "builder: blank resource",
            result: McpAuth::builder()
                .resource("   ")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error("resource", "   ", "relative URL without a base"),
            message: &["invalid resource", "relative URL without a base"],
        },
        Row {
            name: "builder: relative resource",
            result: McpAuth::builder()
                .resource("/mcp")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error("resource", "/mcp", "relative URL without a base"),
            message: &["invalid resource \"/mcp\"", "relative URL without a base"],
        },
        Row {
            name: "builder: http resource, not loopback",
            result: McpAuth::builder()
                .resource("http://mcp.example.com/mcp")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "http://mcp.example.com/mcp",
                "must use https (http is allowed only for loopback hosts)",
            ),
            message: &["invalid resource", "must use https"],
        },
        Row {
            name: "builder: resource with a query",
            result: McpAuth::builder()
                .resource("https://mcp.example.com/mcp?tenant=1")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "https://mcp.example.com/mcp?tenant=1",
                "must not have a query",
            ),
            message: &["must not have a query"],
        },
        Row {
            name: "builder: resource with a fragment",
            result: McpAuth::builder()
                .resource("https://mcp.example.com/mcp#x")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "https://mcp.example.com/mcp#x",
                "must not have a fragment",
            ),
            message: &["must not have a fragment"],
        },
        Row {
            name: "builder: resource with credentials",
            result: McpAuth::builder()
                .resource("https://user:pw@mcp.example.com/mcp")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "https://user:pw@mcp.example.com/mcp",
                "must not contain credentials",
            ),
            message: &["must not contain credentials"],
        },
        Row {
            name: "builder: resource not in canonical form",
            result: McpAuth::builder()
                .resource("https://MCP.example.com:443/mcp")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "https://MCP.example.com:443/mcp",
                "is not in canonical form; use \"https://mcp.example.com/mcp\"",
            ),
            message: &[
                "not in canonical form",
                "use \"https://mcp.example.com/mcp\"",
            ],
        },
        Row {
            name: "builder: resource with a trailing slash",
            result: McpAuth::builder()
                .resource("https://mcp.example.com/mcp/")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "https://mcp.example.com/mcp/",
                "should not end with a slash",
            ),
            message: &["should not end with a slash"],
        },
        Row {
            name: "builder: ftp resource",
            result: McpAuth::builder()
                .resource("ftp://mcp.example.com/mcp")
                .issuer(dev.issuer_config())
                .build(),
            expect: url_error(
                "resource",
                "ftp://mcp.example.com/mcp",
                "must be an https URL",
            ),
            message: &["must be an https URL"],
        },
        // ---- issuers and keys ----------------------------------------------------------------
        Row {
            name: "builder: no issuer",
            result: McpAuth::builder().resource(RESOURCE).build(),
            expect: ConfigError::NoIssuers,
            message: &["no trusted issuer configured"],
        },
        Row {
            name: "builder: issuer without keys",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new(ISSUER))
                .build(),
            expect: ConfigError::NoKeys(ISSUER.into()),
            message: &["has no keys", "jwks_uri, jwks_file, jwks, keys or discover"],
        },
        Row {
            name: "builder: empty issuer",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new("").jwks(dev.jwks_json()))
                .build(),
            expect: url_error("issuer", "", "relative URL without a base"),
            message: &["invalid issuer \"\""],
        },
        Row {
            name: "builder: http issuer, not loopback",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new("http://as.example.com").jwks(dev.jwks_json()))
                .build(),
            expect: url_error(
                "issuer",
                "http://as.example.com",
                "must use https (http is allowed only for loopback hosts)",
            ),
            message: &["invalid issuer", "must use https"],
        },
        Row {
            name: "builder: http jwks_uri, not loopback",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new(ISSUER).jwks_uri("http://as.example.com/jwks"))
                .build(),
            expect: url_error(
                "jwks_uri",
                "http://as.example.com/jwks",
                "must use https (http is allowed only for loopback hosts)",
            ),
            message: &["invalid jwks_uri", "must use https"],
        },
        Row {
            name: "builder: relative jwks_uri",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new(ISSUER).jwks_uri("/jwks"))
                .build(),
            expect: url_error("jwks_uri", "/jwks", "relative URL without a base"),
            message: &["invalid jwks_uri \"/jwks\""],
        },
        Row {
            name: "builder: key algorithm not in the issuer's list",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(
                    IssuerConfig::new(ISSUER)
                        .jwks(dev.jwks_json())
                        .algorithms([SigningAlgorithm::RS256]),
                )
                .build(),
            expect: ConfigError::AlgorithmNotAllowed {
                issuer: ISSUER.into(),
                kid: Some(dev.kid().to_owned()),
                alg: SigningAlgorithm::ES256,
            },
            message: &["uses ES256, which is not in the issuer's algorithms"],
        },
        Row {
            name: "builder: empty algorithm list",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(
                    IssuerConfig::new(ISSUER)
                        .jwks(dev.jwks_json())
                        .algorithms(Vec::<SigningAlgorithm>::new()),
                )
                .build(),
            expect: ConfigError::InvalidAlgorithms {
                issuer: ISSUER.into(),
                reason: "the algorithm list is empty",
            },
            message: &["the algorithm list is empty"],
        },
        Row {
            name: "builder: HMAC for a key set (no shared secret)",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(
                    IssuerConfig::new(ISSUER)
                        .jwks(dev.jwks_json())
                        .algorithms([SigningAlgorithm::HS256]),
                )
                .build(),
            expect: ConfigError::InvalidAlgorithms {
                issuer: ISSUER.into(),
                reason: "HMAC algorithms need a shared secret configured in code \
                         (VerificationKey::shared_secret), never a key set",
            },
            message: &["HMAC algorithms need a shared secret"],
        },
        Row {
            name: "builder: HMAC allowed for a custom source with no shared secret",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer_with_keys(ISSUER, es256_keys(), [SigningAlgorithm::HS256])
                .build(),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "an HMAC algorithm is allowed but the key source holds no \
                         shared secret for it (VerificationKey::shared_secret)",
            },
            message: &["HMAC algorithm is allowed", "no shared secret"],
        },
        Row {
            name: "builder: HMAC allowed for a custom source whose keys are not loaded yet",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer_with_keys(ISSUER, Arc::new(NotLoadedYet), [SigningAlgorithm::HS256])
                .build(),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "an HMAC algorithm is allowed but the key source holds no \
                         shared secret for it (VerificationKey::shared_secret)",
            },
            message: &["HMAC algorithm is allowed", "no shared secret"],
        },
        Row {
            name: "builder: custom source with no algorithms",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer_with_keys(ISSUER, es256_keys(), [])
                .build(),
            expect: ConfigError::InvalidAlgorithms {
                issuer: ISSUER.into(),
                reason: "no algorithms allowed",
            },
            message: &["no algorithms allowed"],
        },
        Row {
            name: "builder: custom source with a bad issuer URL",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer_with_keys("as.example.com", es256_keys(), [SigningAlgorithm::ES256])
                .build(),
            expect: url_error("issuer", "as.example.com", "relative URL without a base"),
            message: &["invalid issuer \"as.example.com\""],
        },
        Row {
            name: "builder: duplicate issuer",
            result: base(dev).issuer(dev.issuer_config()).build(),
            expect: ConfigError::DuplicateIssuer(ISSUER.into()),
            message: &["is configured twice"],
        },
        Row {
            name: "builder: duplicate issuer (configured and custom)",
            result: base(dev)
                .issuer_with_keys(ISSUER, es256_keys(), [SigningAlgorithm::ES256])
                .build(),
            expect: ConfigError::DuplicateIssuer(ISSUER.into()),
            message: &["\"https://as.example.com\" is configured twice"],
        },
        Row {
            name: "builder: discover plus inline keys",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new(ISSUER).discover().jwks(dev.jwks_json()))
                .build(),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "use either discover or explicit keys, not both",
            },
            message: &["either discover or explicit keys"],
        },
        Row {
            name: "builder: discover plus jwks_uri",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(
                    IssuerConfig::new(ISSUER)
                        .discover()
                        .jwks_uri("https://as.example.com/jwks"),
                )
                .build(),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "use either discover or explicit keys, not both",
            },
            message: &["either discover or explicit keys"],
        },
        Row {
            name: "builder: jwks_uri plus inline keys",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(
                    IssuerConfig::new(ISSUER)
                        .jwks_uri("https://as.example.com/jwks")
                        .jwks(dev.jwks_json()),
                )
                .build(),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "use either jwks_uri or static keys, not both",
            },
            message: &["either jwks_uri or static keys"],
        },
        Row {
            name: "builder: inline JWKS that is not a key set",
            result: McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new(ISSUER).jwks("{\"kty\":\"EC\"}"))
                .build(),
            expect: ConfigError::Key {
                issuer: ISSUER.into(),
                source: KeyError::InvalidJwkSet,
            },
            message: &["the document is not a JWK Set"],
        },
        // ---- scopes and metadata -------------------------------------------------------------
        Row {
            name: "builder: scope with a space",
            result: base(dev).scopes_supported(["notes read"]).build(),
            expect: ConfigError::InvalidScope("notes read".into()),
            message: &["invalid scope \"notes read\"", "printable ASCII"],
        },
        Row {
            name: "builder: empty scope",
            result: base(dev).scopes_supported([""]).build(),
            expect: ConfigError::InvalidScope(String::new()),
            message: &["invalid scope \"\""],
        },
        Row {
            name: "builder: scope with a quote",
            result: base(dev).scopes_supported(["notes\"read"]).build(),
            expect: ConfigError::InvalidScope("notes\"read".into()),
            message: &["invalid scope"],
        },
        Row {
            name: "builder: non-ASCII scope",
            result: base(dev).scopes_supported(["notes:l\u{e9}ire"]).build(),
            expect: ConfigError::InvalidScope("notes:l\u{e9}ire".into()),
            message: &["invalid scope"],
        },
        // ---- introspection -------------------------------------------------------------------
        Row {
            name: "builder: introspection endpoint over http, not loopback",
            result: {
                let mut config = McpAuthConfig::new(RESOURCE);
                config.introspection = Some(IntrospectionConfig::new(
                    "http://as.example.com/introspect",
                    "rs",
                    "secret",
                ));
                McpAuth::builder().config(config).build()
            },
            expect: url_error(
                "introspection endpoint",
                "http://as.example.com/introspect",
                "must use https (http is allowed only for loopback hosts)",
            ),
            message: &["invalid introspection endpoint", "must use https"],
        },
    ]
}

fn toml_rows(dev: &DevIssuer) -> Vec<Row> {
    let issuer = issuer_table(dev, "");
    let pem = dev.public_key_pem();
    vec![
        Row {
            name: "toml: no resource",
            result: toml(&issuer),
            expect: ConfigError::Parse(String::new()),
            message: &["invalid configuration", "missing field `resource`"],
        },
        Row {
            name: "toml: empty resource",
            result: toml(&format!("resource = \"\"\n{issuer}")),
            expect: ConfigError::MissingResource,
            message: &["no resource URI configured"],
        },
        Row {
            name: "toml: no issuers",
            result: toml(&format!("resource = \"{RESOURCE}\"\n")),
            expect: ConfigError::NoIssuers,
            message: &["no trusted issuer configured"],
        },
        Row {
            name: "toml: issuer without keys",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n"
            )),
            expect: ConfigError::NoKeys(ISSUER.into()),
            message: &["has no keys"],
        },
        Row {
            name: "toml: PEM key whose algorithm is not allowed",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n\
                 algorithms = [\"RS256\", \"PS256\"]\n\
                 [[issuers.keys]]\nalg = \"ES256\"\nkid = \"k1\"\npem = '''\n{pem}'''\n"
            )),
            expect: ConfigError::AlgorithmNotAllowed {
                issuer: ISSUER.into(),
                kid: Some("k1".into()),
                alg: SigningAlgorithm::ES256,
            },
            message: &[
                "issuer \"https://as.example.com\": key \"k1\" uses ES256, which is not in the issuer's algorithms",
            ],
        },
        Row {
            name: "toml: PEM key without kid whose algorithm is not allowed",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n\
                 algorithms = [\"EdDSA\"]\n\
                 [[issuers.keys]]\nalg = \"ES256\"\npem = '''\n{pem}'''\n"
            )),
            expect: ConfigError::AlgorithmNotAllowed {
                issuer: ISSUER.into(),
                kid: None,
                alg: SigningAlgorithm::ES256,
            },
            message: &["a key without kid uses ES256"],
        },
        Row {
            name: "toml: PEM that is not a key for its algorithm",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n\
                 [[issuers.keys]]\nalg = \"RS256\"\npem = '''\n{pem}'''\n"
            )),
            expect: ConfigError::Key {
                issuer: ISSUER.into(),
                source: KeyError::InvalidPem {
                    alg: SigningAlgorithm::RS256,
                },
            },
            message: &["not a public key usable with RS256"],
        },
        Row {
            name: "toml: PEM key with both pem and pem_file",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n\
                 [[issuers.keys]]\nalg = \"ES256\"\npem_file = \"k1.pem\"\npem = '''\n{pem}'''\n"
            )),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "each key needs exactly one of `pem` and `pem_file`",
            },
            message: &["exactly one of `pem` and `pem_file`"],
        },
        Row {
            name: "toml: PEM key with neither pem nor pem_file",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n\
                 [[issuers.keys]]\nalg = \"ES256\"\n"
            )),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "each key needs exactly one of `pem` and `pem_file`",
            },
            message: &["exactly one of `pem` and `pem_file`"],
        },
        Row {
            name: "toml: HMAC algorithm (no shared secret in a file)",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{}",
                issuer_table(dev, "algorithms = [\"HS256\", \"ES256\"]")
            )),
            expect: ConfigError::InvalidAlgorithms {
                issuer: dev.issuer().into(),
                reason: "HMAC algorithms need a shared secret configured in code \
                         (VerificationKey::shared_secret), never a key set",
            },
            message: &["HMAC algorithms need a shared secret"],
        },
        Row {
            name: "toml: unknown algorithm",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{}",
                issuer_table(dev, "algorithms = [\"none\"]")
            )),
            expect: ConfigError::Parse(String::new()),
            message: &["invalid configuration", "none"],
        },
        Row {
            name: "toml: duplicate issuer",
            result: toml(&format!("resource = \"{RESOURCE}\"\n{issuer}{issuer}")),
            expect: ConfigError::DuplicateIssuer(ISSUER.into()),
            message: &["is configured twice"],
        },
        Row {
            name: "toml: discover plus jwks",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{}",
                issuer_table(dev, "discover = true")
            )),
            expect: ConfigError::InvalidKeySource {
                issuer: ISSUER.into(),
                reason: "use either discover or explicit keys, not both",
            },
            message: &["either discover or explicit keys"],
        },
        Row {
            name: "toml: http resource, not loopback",
            result: toml(&format!("resource = \"http://mcp.example.com/mcp\"\n{issuer}")),
            expect: url_error(
                "resource",
                "http://mcp.example.com/mcp",
                "must use https (http is allowed only for loopback hosts)",
            ),
            message: &["must use https"],
        },
        Row {
            name: "toml: relative resource",
            result: toml(&format!("resource = \"mcp\"\n{issuer}")),
            expect: url_error("resource", "mcp", "relative URL without a base"),
            message: &["relative URL without a base"],
        },
        Row {
            name: "toml: relative authorization server",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\nauthorization_servers = [\"as.example.com\"]\n{issuer}"
            )),
            expect: url_error(
                "authorization_servers",
                "as.example.com",
                "relative URL without a base",
            ),
            message: &["invalid authorization_servers"],
        },
        Row {
            name: "toml: http resource_documentation, not loopback",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\nresource_documentation = \"http://docs.example.com\"\n{issuer}"
            )),
            expect: url_error(
                "resource_documentation",
                "http://docs.example.com",
                "must use https (http is allowed only for loopback hosts)",
            ),
            message: &["invalid resource_documentation"],
        },
        Row {
            name: "toml: relative resource_documentation",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\nresource_documentation = \"docs.html\"\n{issuer}"
            )),
            expect: url_error(
                "resource_documentation",
                "docs.html",
                "relative URL without a base",
            ),
            message: &["invalid resource_documentation"],
        },
        Row {
            name: "toml: invalid challenge scope",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\nchallenge_scope = [\"a\\\\b\"]\n{issuer}"
            )),
            expect: ConfigError::InvalidScope("a\\b".into()),
            message: &["invalid scope"],
        },
        Row {
            name: "toml: invalid scope in the policy map",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{issuer}[policy]\ntools = {{ list_notes = [\"notes read\"] }}\n"
            )),
            expect: ConfigError::InvalidScope("notes read".into()),
            message: &["invalid scope \"notes read\""],
        },
        Row {
            name: "toml: DPoP htu that is not a URL",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{issuer}[dpop]\nmode = \"allowed\"\nhtu = \"mcp\"\n"
            )),
            expect: ConfigError::Dpop(DpopConfigError::InvalidHtu("mcp".into())),
            message: &["invalid DPoP configuration", "htu \"mcp\""],
        },
        Row {
            name: "toml: DPoP without algorithms",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{issuer}[dpop]\nmode = \"required\"\nalgorithms = []\n"
            )),
            expect: ConfigError::Dpop(DpopConfigError::InvalidAlgorithms),
            message: &["non-empty list of asymmetric algorithms"],
        },
        Row {
            name: "toml: unknown field (no audience opt-out exists)",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\naudience_optional = true\n{issuer}"
            )),
            expect: ConfigError::Parse(String::new()),
            message: &["unknown field `audience_optional`"],
        },
        Row {
            name: "toml: wrong type",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n{issuer}[token]\nleeway_secs = \"30\"\n"
            )),
            expect: ConfigError::Parse(String::new()),
            message: &["invalid configuration", "leeway_secs"],
        },
        Row {
            name: "toml: unknown introspection auth method",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[introspection]\nendpoint = \"https://as.example.com/i\"\n\
                 client_id = \"rs\"\nclient_secret = \"s\"\nauth_method = \"none\"\n"
            )),
            expect: ConfigError::Parse(
                "introspection auth_method \"none\": expected client_secret_basic or client_secret_post"
                    .into(),
            ),
            message: &["introspection auth_method \"none\""],
        },
        Row {
            name: "toml: jwks_file that does not exist",
            result: toml(&format!(
                "resource = \"{RESOURCE}\"\n[[issuers]]\nissuer = \"{ISSUER}\"\n\
                 jwks_file = \"/nonexistent/tower-mcp-auth/jwks.json\"\n"
            )),
            expect: ConfigError::Io {
                path: "/nonexistent/tower-mcp-auth/jwks.json".into(),
                message: String::new(),
            },
            message: &["cannot read /nonexistent/tower-mcp-auth/jwks.json"],
        },
    ]
}

/// Compares with `expect`; for `Parse` and `Io`, whose text comes from the TOML parser or the
/// OS, only the variant (and the path) is compared and the words are checked in the message.
fn matches(actual: &ConfigError, expect: &ConfigError) -> bool {
    match (actual, expect) {
        (ConfigError::Parse(a), ConfigError::Parse(e)) => e.is_empty() || a == e,
        (ConfigError::Io { path: a, .. }, ConfigError::Io { path: e, .. }) => a == e,
        _ => actual == expect,
    }
}

#[test]
fn bad_configurations_are_refused_with_the_exact_error() {
    let dev = DevIssuer::new(ISSUER);
    let rows: Vec<Row> = builder_rows(&dev)
        .into_iter()
        .chain(toml_rows(&dev))
        .collect();
    assert!(rows.len() >= 50, "only {} rows", rows.len());
    let mut failures = Vec::new();
    for row in rows {
        match &row.result {
            Ok(_) => failures.push(format!("[{}] built; expected {:?}", row.name, row.expect)),
            Err(err) => {
                if !matches(err, &row.expect) {
                    failures.push(format!(
                        "[{}] error {err:?}, expected {:?}",
                        row.name, row.expect
                    ));
                }
                let text = err.to_string();
                for words in row.message {
                    if !text.contains(words) {
                        failures.push(format!("[{}] message {text:?} lacks {words:?}", row.name));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The controls: the same building blocks, correctly combined, build.
#[test]
fn good_configurations_build() {
    let dev = DevIssuer::new(ISSUER);
    let secret = VerificationKey::shared_secret(SigningAlgorithm::HS256, &[7u8; 32]).unwrap();
    let controls: Vec<(&str, Result<McpAuth, ConfigError>)> = vec![
        ("builder: inline keys", base(&dev).build()),
        (
            "builder: loopback http resource and jwks_uri",
            McpAuth::builder()
                .resource("http://127.0.0.1:8080/mcp")
                .issuer(
                    IssuerConfig::new("http://localhost:9000").jwks_uri("http://[::1]:9000/jwks"),
                )
                .build(),
        ),
        (
            "builder: root resource",
            McpAuth::builder()
                .resource("https://mcp.example.com")
                .issuer(dev.issuer_config())
                .build(),
        ),
        (
            "builder: discovery alone",
            McpAuth::builder()
                .resource(RESOURCE)
                .issuer(IssuerConfig::new(ISSUER).discover())
                .build(),
        ),
        (
            "builder: HMAC with an explicit shared secret",
            McpAuth::builder()
                .resource(RESOURCE)
                .issuer_with_keys(
                    ISSUER,
                    Arc::new(StaticKeys::single(secret)),
                    [SigningAlgorithm::HS256],
                )
                .build(),
        ),
        ("builder: introspection alone (no JWT issuer)", {
            let mut config = McpAuthConfig::new(RESOURCE);
            config.introspection = Some(IntrospectionConfig::new(
                "https://as.example.com/introspect",
                "rs",
                "secret",
            ));
            McpAuth::builder().config(config).build()
        }),
        (
            "toml: inline keys, scopes, documentation, DPoP",
            toml(&format!(
                "resource = \"{RESOURCE}\"\nscopes_supported = [\"notes:read\"]\n\
                 resource_documentation = \"https://mcp.example.com/docs\"\n{}\
                 [dpop]\nmode = \"allowed\"\n",
                issuer_table(&dev, "algorithms = [\"ES256\"]")
            )),
        ),
    ];
    let failures: Vec<String> = controls
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|e| format!("[{name}] {e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
