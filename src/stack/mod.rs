//! [`McpAuth`]: one configuration, the whole ordered stack and the metadata service.

mod layer;
mod service;

use std::sync::Arc;
use std::time::Duration;

pub use layer::McpAuthLayer;
pub use service::{McpAuthFuture, McpAuthService};
use url::Url;

use crate::audit::{AuditEmitter, AuditLayer, RedactArguments};
use crate::config::{
    ConfigError, IntrospectionConfig, IssuerConfig, McpAuthConfig, UrlRole, check_scope, parse_url,
};
use crate::dpop::{Clock, DpopConfig, DpopLayer, DpopMode, ReplayStore};
use crate::error::{ChallengeConfig, ShapeRejection};
use crate::http_client::HttpClient;
use crate::keys::{
    AlgorithmSet, DiscoveredKeys, KeySet, KeySource, RemoteJwks, SigningAlgorithm, StaticKeys,
    VerificationKey,
};
use crate::metadata::{MetadataService, ProtectedResourceMetadata, metadata_url, well_known_paths};
use crate::policy::{McpPolicyLayer, Policy, ToolScopes};
use crate::token::{
    CacheAdmission, CacheLimits, CacheStats, CachingVerifier, ClientAuth, IntrospectionVerifier,
    JwtVerifier, RevocationList, RoutingVerifier, TokenLayer, TokenVerifier, TrustedIssuer,
};

/// The assembled authentication stack for one MCP endpoint.
///
/// Build it with [`McpAuth::builder`] or [`McpAuth::from_config`], then wrap your MCP service
/// with [`McpAuth::layer`].
#[derive(Debug, Clone)]
pub struct McpAuth {
    resource: Url,
    metadata: ProtectedResourceMetadata,
    metadata_paths: Arc<[String; 2]>,
    verifier: JwtVerifier,
    cache: Option<Arc<CachingVerifier>>,
    introspection_cache: Option<Arc<CachingVerifier>>,
    token_layer: TokenLayer,
    policy_layer: McpPolicyLayer,
    audit_layer: AuditLayer,
    dpop_layer: DpopLayer,
}

impl McpAuth {
    /// Starts a builder.
    pub fn builder() -> McpAuthBuilder {
        McpAuthBuilder::default()
    }

    /// Builds from a configuration (for example one read with
    /// [`McpAuthConfig::from_toml_file`]).
    pub fn from_config(config: McpAuthConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// The layer to wrap the MCP service (or the whole router) with. It answers the metadata
    /// paths itself, unauthenticated, and authenticates every other request.
    pub fn layer(&self) -> McpAuthLayer {
        McpAuthLayer {
            audit: self.audit_layer.clone(),
            dpop: self.dpop_layer.clone(),
            token: self.token_layer.clone(),
            policy: self.policy_layer.clone(),
            metadata: MetadataService::new(&self.metadata),
            metadata_paths: self.metadata_paths.clone(),
        }
    }

    /// The policy layer alone, for custom compositions (place it inside the token layer).
    pub fn policy_layer(&self) -> McpPolicyLayer {
        self.policy_layer.clone()
    }

    /// The token layer alone, for custom compositions.
    pub fn token_layer(&self) -> TokenLayer {
        self.token_layer.clone()
    }

    /// The metadata service alone, to mount at [`McpAuth::metadata_paths`] yourself.
    pub fn metadata_service(&self) -> MetadataService {
        MetadataService::new(&self.metadata)
    }

    /// The RFC 9728 document.
    pub fn metadata(&self) -> &ProtectedResourceMetadata {
        &self.metadata
    }

    /// The path-inserted and root well-known paths of the metadata document.
    pub fn metadata_paths(&self) -> &[String; 2] {
        &self.metadata_paths
    }

    /// The canonical resource URI.
    pub fn resource(&self) -> &Url {
        &self.resource
    }

    /// Key-source counters per issuer (fetches, failures, stale serves), for remote sources.
    pub fn key_stats(&self) -> Vec<(String, crate::keys::KeySourceStats)> {
        self.verifier
            .issuers()
            .iter()
            .filter_map(|i| Some((i.issuer().to_owned(), i.key_stats()?)))
            .collect()
    }

    /// Verified-token cache counters (`None` when the cache is off).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Introspection verdict cache counters (`None` without introspection or when the cache
    /// is off): hits are requests answered without calling the introspection endpoint.
    pub fn introspection_cache_stats(&self) -> Option<CacheStats> {
        self.introspection_cache.as_ref().map(|c| c.stats())
    }

    /// The JWT verifier, e.g. to verify tokens outside HTTP.
    pub fn verifier(&self) -> &JwtVerifier {
        &self.verifier
    }
}

/// Builder for [`McpAuth`]. Every setting is validated in [`build`](McpAuthBuilder::build).
#[derive(Default)]
#[must_use]
pub struct McpAuthBuilder {
    config: Option<McpAuthConfig>,
    resource: Option<String>,
    custom_issuers: Vec<(String, Arc<dyn KeySource>, AlgorithmSet)>,
    http_client: Option<Arc<dyn HttpClient>>,
    shape: Option<Arc<dyn ShapeRejection>>,
    policy: Option<Arc<dyn Policy>>,
    audit: Option<AuditEmitter>,
    redact: Option<Arc<dyn RedactArguments>>,
    replay_store: Option<Arc<dyn ReplayStore>>,
    dpop_clock: Option<Arc<dyn Clock>>,
    revocation: Option<Arc<dyn RevocationList>>,
    introspection: Option<Arc<dyn TokenVerifier>>,
    allow_cors_preflight: bool,
}

impl McpAuthBuilder {
    fn config_mut(&mut self) -> &mut McpAuthConfig {
        self.config.get_or_insert_with(|| McpAuthConfig::new(""))
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: McpAuthConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The canonical URI of the MCP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Trusts an issuer configured by URL or key material.
    pub fn issuer(mut self, issuer: IssuerConfig) -> Self {
        self.config_mut().issuers.push(issuer);
        self
    }

    /// Trusts an issuer whose keys come from your own [`KeySource`], with these algorithms.
    pub fn issuer_with_keys(
        mut self,
        issuer: impl Into<String>,
        keys: Arc<dyn KeySource>,
        algorithms: impl IntoIterator<Item = SigningAlgorithm>,
    ) -> Self {
        self.custom_issuers
            .push((issuer.into(), keys, algorithms.into_iter().collect()));
        self
    }

    /// `scopes_supported` in the metadata (and the default 401 `scope`).
    pub fn scopes_supported<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config_mut().scopes_supported = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// A human-readable name for the metadata document.
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.config_mut().resource_name = Some(name.into());
        self
    }

    /// Clock-skew leeway (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.config_mut().token.leeway_secs = leeway.as_secs();
        self
    }

    /// Maximum token lifetime (`exp - iat`).
    pub fn max_token_lifetime(mut self, max: Duration) -> Self {
        self.config_mut().token.max_lifetime_secs = Some(max.as_secs());
        self
    }

    /// Accept tokens without `typ: at+jwt`; see
    /// [`JwtVerifier::accept_untyped_tokens`].
    pub fn accept_untyped_tokens(mut self, accept: bool) -> Self {
        self.config_mut().token.accept_untyped_tokens = accept;
        self
    }

    /// The policy deciding every JSON-RPC call. Default: a [`ToolScopes`] built from the
    /// configuration's `[policy]` section, which denies every tool, prompt and resource it does
    /// not name.
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Replaces the `[policy]` section (scope map and policy layer settings).
    pub fn policy_config(mut self, policy: crate::policy::PolicyConfig) -> Self {
        self.config_mut().policy = policy;
        self
    }

    /// DPoP (RFC 9449) settings: mode, algorithms, window, nonces; see [`crate::dpop`].
    pub fn dpop(mut self, dpop: DpopConfig) -> Self {
        self.config_mut().dpop = dpop;
        self
    }

    /// Where used DPoP proofs are remembered (default: in memory, bounded). A shared store keeps
    /// replay protection across server instances.
    pub fn replay_store(mut self, store: Arc<dyn ReplayStore>) -> Self {
        self.replay_store = Some(store);
        self
    }

    /// The time source of the DPoP layer (`iat` window and nonce steps); default: the system
    /// clock. See [`DpopLayer::with_clock`]. Token `exp`/`nbf` checks are not affected.
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn dpop_clock(mut self, clock: impl crate::dpop::Clock) -> Self {
        self.dpop_clock = Some(Arc::new(clock));
        self
    }

    /// Verifies opaque (non-JWT) tokens with `verifier`, typically an
    /// [`IntrospectionVerifier`](crate::token::IntrospectionVerifier) (e.g. with
    /// `private_key_jwt`); overrides the configuration's `[introspection]`.
    pub fn introspection(mut self, verifier: Arc<dyn TokenVerifier>) -> Self {
        self.introspection = Some(verifier);
        self
    }

    /// Checks every request's token, cached or not, against `list` (see
    /// [`InMemoryRevocationList`](crate::token::InMemoryRevocationList)).
    pub fn revocation_list(mut self, list: Arc<dyn RevocationList>) -> Self {
        self.revocation = Some(list);
        self
    }

    /// Audits every request through `emitter` (see [`crate::audit`]). Without it, nothing is
    /// audited.
    pub fn audit(mut self, emitter: AuditEmitter) -> Self {
        self.audit = Some(emitter);
        self
    }

    /// Records tool arguments in audit events, in the form `redact` returns.
    pub fn redact_arguments(mut self, redact: impl RedactArguments) -> Self {
        self.redact = Some(Arc::new(redact));
        self
    }

    /// The HTTP client for remote key sets (default: reqwest, with the `reqwest` feature).
    pub fn http_client(mut self, client: Arc<dyn HttpClient>) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Reshapes the token layer's rejections (missing, malformed or invalid credentials, keys
    /// unavailable): the body and extra headers are the hook's, while the status,
    /// `WWW-Authenticate`, `Cache-Control`, `Retry-After`, `DPoP-Nonce` and the [`AuthError`]
    /// extension stay as computed; see [`ShapeRejection`]. The policy layer's JSON-RPC errors
    /// and the DPoP layer's proof refusals are not passed to the hook.
    ///
    /// [`AuthError`]: crate::AuthError
    pub fn shape_rejection(mut self, shape: impl ShapeRejection) -> Self {
        self.shape = Some(Arc::new(shape));
        self
    }

    /// Lets CORS preflight requests reach the inner service without a token; see
    /// [`TokenLayer::allow_cors_preflight`].
    pub fn allow_cors_preflight(mut self, allow: bool) -> Self {
        self.allow_cors_preflight = allow;
        self
    }

    /// Validates everything and builds the stack.
    pub fn build(mut self) -> Result<McpAuth, ConfigError> {
        let mut config = self.config.take().unwrap_or_else(|| McpAuthConfig::new(""));
        if let Some(resource) = self.resource.take() {
            config.resource = resource;
        }
        if config.resource.is_empty() {
            return Err(ConfigError::MissingResource);
        }
        let resource = parse_url(&config.resource, UrlRole::Resource)?;
        for scope in config
            .scopes_supported
            .iter()
            .chain(config.challenge_scope.iter().flatten())
        {
            check_scope(scope)?;
        }

        let mut issuers = Vec::new();
        let mut discovered = Vec::new();
        for issuer in &config.issuers {
            let (trusted, discovery) = self.trusted_issuer(issuer)?;
            issuers.push(trusted);
            discovered.extend(discovery);
        }
        for (issuer, keys, algorithms) in self.custom_issuers.drain(..) {
            parse_url(&issuer, UrlRole::Remote("issuer"))?;
            if algorithms.is_empty() {
                return Err(ConfigError::InvalidAlgorithms {
                    issuer,
                    reason: "no algorithms allowed",
                });
            }
            // HMAC is only for a shared secret configured explicitly: a source whose keys are
            // known now must hold one for every HMAC algorithm it is allowed.
            // A source whose keys are not known yet (remote, lazy) cannot show a shared secret,
            // so HMAC is refused for it rather than trusted to whatever it loads later.
            let missing = match keys.current() {
                Some(current) => algorithms.iter().any(|alg| {
                    alg.is_symmetric() && !current.keys().iter().any(|k| k.algorithm() == alg)
                }),
                None => algorithms.iter().any(|alg| alg.is_symmetric()),
            };
            if missing {
                return Err(ConfigError::InvalidKeySource {
                    issuer,
                    reason: "an HMAC algorithm is allowed but the key source holds no \
                             shared secret for it (VerificationKey::shared_secret)",
                });
            }
            issuers.push(TrustedIssuer::new(issuer, keys).algorithms(algorithms));
        }
        if issuers.is_empty() && config.introspection.is_none() && self.introspection.is_none() {
            return Err(ConfigError::NoIssuers);
        }
        for (i, a) in issuers.iter().enumerate() {
            if issuers[..i].iter().any(|b| b.issuer() == a.issuer()) {
                return Err(ConfigError::DuplicateIssuer(a.issuer().to_owned()));
            }
        }

        let authorization_servers = if config.authorization_servers.is_empty() {
            issuers.iter().map(|i| i.issuer().to_owned()).collect()
        } else {
            for server in &config.authorization_servers {
                parse_url(server, UrlRole::Remote("authorization_servers"))?;
            }
            config.authorization_servers.clone()
        };
        let dpop = &config.dpop;
        let dpop_algs: Vec<String> = match dpop.mode {
            DpopMode::Off => Vec::new(),
            _ => dpop
                .algorithms
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
        };
        let mut metadata = ProtectedResourceMetadata::new(&config.resource, authorization_servers);
        metadata.dpop_signing_alg_values_supported = dpop_algs.clone();
        metadata.dpop_bound_access_tokens_required = dpop.mode == DpopMode::Required;
        metadata.tls_client_certificate_bound_access_tokens = config.mtls;
        metadata.scopes_supported = config.scopes_supported.clone();
        metadata.resource_name = config.resource_name.clone();
        if let Some(documentation) = &config.resource_documentation {
            parse_url(documentation, UrlRole::Remote("resource_documentation"))?;
        }
        metadata.resource_documentation = config.resource_documentation.clone();

        let rules = &config.token;
        let verifier = JwtVerifier::new(&config.resource, issuers)
            .leeway(Duration::from_secs(rules.leeway_secs))
            .required_claims(rules.required_claims)
            .max_lifetime(rules.max_lifetime_secs.map(Duration::from_secs))
            .accept_untyped_tokens(rules.accept_untyped_tokens)
            .max_token_len(rules.max_token_bytes);

        let challenge_scope = config
            .challenge_scope
            .as_ref()
            .unwrap_or(&config.scopes_supported);
        let mut challenge = ChallengeConfig::new(metadata_url(&resource));
        if !challenge_scope.is_empty() {
            challenge = challenge.with_scope(challenge_scope.join(" "));
        }
        if !dpop_algs.is_empty() {
            challenge = challenge.with_dpop_algs(dpop_algs.join(" "));
        }
        let dpop_layer = match dpop.mode {
            DpopMode::Off => DpopLayer::disabled(),
            _ => {
                let htu = dpop.htu.as_deref().unwrap_or(&config.resource);
                let store = self
                    .replay_store
                    .take()
                    .unwrap_or_else(|| DpopLayer::default_store(dpop));
                let layer = DpopLayer::new(dpop, htu, challenge.clone(), store)?;
                match self.dpop_clock.take() {
                    Some(clock) => layer.with_shared_clock(clock),
                    None => layer,
                }
            }
        };
        let policy: Arc<dyn Policy> = match self.policy.take() {
            Some(policy) => policy,
            None => Arc::new(ToolScopes::from_config(&config.policy)?),
        };
        let policy_layer = McpPolicyLayer::from_config(policy, challenge.clone(), &config.policy);
        let jwt: Arc<dyn TokenVerifier> = Arc::new(verifier.clone());
        // Every verdict goes through a cache (a zero-size one when caching is off), so the
        // revocation list is checked on every request.
        let cached = |inner: Arc<dyn TokenVerifier>, max_ttl: u64, admission: CacheAdmission| {
            let limits = CacheLimits {
                max_entries: rules.cache_max_entries,
                max_bytes: rules.cache_max_bytes,
                max_ttl: Duration::from_secs(max_ttl),
                leeway: Duration::from_secs(rules.leeway_secs),
                admission,
            };
            let mut cache = CachingVerifier::new(inner, limits);
            if let Some(list) = &self.revocation {
                cache = cache.with_revocation(list.clone());
            }
            Arc::new(cache)
        };
        let cache = cached(jwt, rules.cache_max_ttl_secs, rules.cache_admission);
        let opaque: Option<Arc<CachingVerifier>> =
            match (self.introspection.take(), &config.introspection) {
                (Some(verifier), config) => {
                    let ttl = config.as_ref().map_or(60, |c| c.cache_max_ttl_secs);
                    Some(cached(verifier, ttl, CacheAdmission::FirstSight))
                }
                (None, Some(introspection)) => {
                    let verifier = self.introspection_verifier(
                        introspection,
                        &config.resource,
                        rules,
                        &discovered,
                    )?;
                    Some(cached(
                        verifier,
                        introspection.cache_max_ttl_secs,
                        CacheAdmission::FirstSight,
                    ))
                }
                (None, None) => None,
            };
        let introspection_cache = opaque.clone().filter(|_| rules.cache_max_entries > 0);
        let token_verifier: Arc<dyn TokenVerifier> = match opaque {
            Some(opaque) => Arc::new(RoutingVerifier::new(cache.clone(), opaque)),
            None => cache.clone(),
        };
        let cache = (rules.cache_max_entries > 0).then_some(cache);
        let mut token_layer = TokenLayer::new(token_verifier, challenge)
            .max_authorization_len(rules.max_token_bytes + 16)
            .require_dpop(dpop.mode == DpopMode::Required)
            .allow_cors_preflight(self.allow_cors_preflight);
        if let Some(shape) = self.shape.take() {
            token_layer = token_layer.shape_rejection_shared(shape);
        }
        let audit_layer = match self.audit.take() {
            Some(emitter) => {
                let layer = AuditLayer::new(emitter, config.resource.as_str());
                match self.redact.take() {
                    Some(redact) => layer.redact_arguments_shared(redact),
                    None => layer,
                }
            }
            None => AuditLayer::disabled(),
        };
        Ok(McpAuth {
            audit_layer,
            dpop_layer,
            metadata_paths: Arc::new(well_known_paths(&resource)),
            resource,
            metadata,
            verifier,
            cache,
            introspection_cache,
            token_layer,
            policy_layer,
        })
    }

    /// The issuer, and its discovery when it is configured with `discover`.
    fn trusted_issuer(
        &self,
        config: &IssuerConfig,
    ) -> Result<(TrustedIssuer, Option<Arc<DiscoveredKeys>>), ConfigError> {
        let name = &config.issuer;
        parse_url(name, UrlRole::Remote("issuer"))?;
        let refresh = config
            .jwks_refresh
            .map(|r| r.to_options())
            .transpose()
            .map_err(|reason| ConfigError::InvalidJwksRefresh {
                issuer: name.clone(),
                reason,
            })?;
        if refresh.is_some() && !config.discover && config.jwks_uri.is_none() {
            return Err(ConfigError::InvalidJwksRefresh {
                issuer: name.clone(),
                reason: "jwks_refresh applies only to a remote key set (jwks_uri or discover)",
            });
        }
        let options = refresh.unwrap_or_default();
        let key_err = |source| ConfigError::Key {
            issuer: name.clone(),
            source,
        };
        let algorithms = match &config.algorithms {
            Some(list) if list.is_empty() => {
                return Err(ConfigError::InvalidAlgorithms {
                    issuer: name.clone(),
                    reason: "the algorithm list is empty",
                });
            }
            Some(list) if list.iter().any(|a| a.is_symmetric()) => {
                return Err(ConfigError::InvalidAlgorithms {
                    issuer: name.clone(),
                    reason: "HMAC algorithms need a shared secret configured in code \
                             (VerificationKey::shared_secret), never a key set",
                });
            }
            Some(list) => list.iter().copied().collect(),
            None => AlgorithmSet::ASYMMETRIC,
        };

        let mut static_keys = Vec::new();
        if let Some(document) = &config.jwks {
            static_keys.extend_from_slice(
                KeySet::from_jwks_json(document.as_bytes())
                    .map_err(key_err)?
                    .keys(),
            );
        }
        if let Some(path) = &config.jwks_file {
            let bytes = read(path)?;
            static_keys.extend_from_slice(KeySet::from_jwks_json(&bytes).map_err(key_err)?.keys());
        }
        for key in &config.keys {
            let pem = match (&key.pem, &key.pem_file) {
                (Some(pem), None) => pem.as_bytes().to_vec(),
                (None, Some(path)) => read(path)?,
                _ => {
                    return Err(ConfigError::InvalidKeySource {
                        issuer: name.clone(),
                        reason: "each key needs exactly one of `pem` and `pem_file`",
                    });
                }
            };
            let mut vk = VerificationKey::from_pem(key.alg, &pem).map_err(key_err)?;
            if let Some(kid) = &key.kid {
                vk = vk.with_kid(kid.as_str());
            }
            static_keys.push(vk);
        }
        for key in &static_keys {
            if !algorithms.contains(key.algorithm()) {
                return Err(ConfigError::AlgorithmNotAllowed {
                    issuer: name.clone(),
                    kid: key.kid().map(str::to_owned),
                    alg: key.algorithm(),
                });
            }
        }

        if config.discover {
            if config.jwks_uri.is_some() || !static_keys.is_empty() {
                return Err(ConfigError::InvalidKeySource {
                    issuer: name.clone(),
                    reason: "use either discover or explicit keys, not both",
                });
            }
            let client = self.client(name)?;
            let discovery = Arc::new(DiscoveredKeys::with_options(name.clone(), client, options));
            let source: Arc<dyn KeySource> = discovery.clone();
            let trusted = TrustedIssuer::new(name.clone(), source).algorithms(algorithms);
            let trusted = match config.required_claims {
                Some(required) => trusted.required_claims(required),
                None => trusted,
            };
            return Ok((trusted, Some(discovery)));
        }
        let source: Arc<dyn KeySource> = match (&config.jwks_uri, static_keys.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::InvalidKeySource {
                    issuer: name.clone(),
                    reason: "use either jwks_uri or static keys, not both",
                });
            }
            (Some(uri), true) => {
                let url = parse_url(uri, UrlRole::Remote("jwks_uri"))?;
                let client = self.client(name)?;
                Arc::new(RemoteJwks::with_options(url, client, options))
            }
            (None, false) => Arc::new(StaticKeys::new(KeySet::new(static_keys))),
            (None, true) => return Err(ConfigError::NoKeys(name.clone())),
        };
        let trusted = TrustedIssuer::new(name.clone(), source).algorithms(algorithms);
        let trusted = match config.required_claims {
            Some(required) => trusted.required_claims(required),
            None => trusted,
        };
        Ok((trusted, None))
    }

    fn introspection_verifier(
        &self,
        config: &IntrospectionConfig,
        resource: &str,
        rules: &crate::config::TokenRules,
        discovered: &[Arc<DiscoveredKeys>],
    ) -> Result<Arc<dyn TokenVerifier>, ConfigError> {
        let auth = match config.auth_method.as_str() {
            "client_secret_basic" => ClientAuth::SecretBasic {
                client_id: config.client_id.clone(),
                secret: config.client_secret.clone(),
            },
            "client_secret_post" => ClientAuth::SecretPost {
                client_id: config.client_id.clone(),
                secret: config.client_secret.clone(),
            },
            _ => {
                return Err(ConfigError::Parse(format!(
                    "introspection auth_method {:?}: expected client_secret_basic or client_secret_post",
                    config.auth_method
                )));
            }
        };
        let mut verifier = match &config.endpoint {
            Some(endpoint) => {
                let url = parse_url(endpoint, UrlRole::Remote("introspection endpoint"))?;
                let client = self.client(endpoint)?;
                let mut verifier = IntrospectionVerifier::new(url, auth, resource, client);
                if let Some(issuer) = &config.issuer {
                    verifier = verifier.issuer(issuer);
                }
                verifier
            }
            None => {
                // The introspection endpoint of a discovered issuer: the one named, or the
                // only one.
                let discovery = match &config.issuer {
                    Some(issuer) => discovered.iter().find(|d| d.issuer() == issuer),
                    None if discovered.len() == 1 => discovered.first(),
                    None => None,
                }
                .ok_or(ConfigError::Introspection(
                    "no endpoint: set `endpoint`, or `issuer` naming an issuer configured with \
                     `discover = true` (the only such issuer is used when `issuer` is unset)",
                ))?;
                let client = self.client(discovery.issuer())?;
                IntrospectionVerifier::discovered(discovery.clone(), auth, resource, client)
            }
        };
        verifier = verifier
            .leeway(Duration::from_secs(rules.leeway_secs))
            .required_claims(config.required_claims.unwrap_or(rules.required_claims));
        Ok(Arc::new(verifier))
    }

    fn client(&self, issuer: &str) -> Result<Arc<dyn HttpClient>, ConfigError> {
        if let Some(client) = &self.http_client {
            return Ok(client.clone());
        }
        #[cfg(feature = "reqwest")]
        {
            let client = crate::http_client::ReqwestHttpClient::new()
                .map_err(|_| ConfigError::NoHttpClient(issuer.to_owned()))?;
            Ok(Arc::new(client))
        }
        #[cfg(not(feature = "reqwest"))]
        Err(ConfigError::NoHttpClient(issuer.to_owned()))
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl std::fmt::Debug for McpAuthBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpAuthBuilder")
            .field("config", &self.config)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}
