//! Issuer metadata discovery (RFC 8414, then OpenID Connect Discovery) and [`DiscoveredKeys`].
//!
//! From an issuer identifier alone: first `/.well-known/oauth-authorization-server` inserted
//! between the host and the issuer's path (RFC 8414 §3.1), then
//! `<issuer>/.well-known/openid-configuration`. The document's `issuer` must equal the configured
//! one exactly (RFC 8414 §3.3), else it is ignored: a document for another issuer must never
//! supply keys.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use url::Url;

use super::remote::{RemoteJwks, RemoteJwksOptions};
use super::{KeyError, KeySet, KeySource, RefreshReason};
use crate::config::{UrlRole, parse_url};
use crate::http_client::HttpClient;

/// The authorization server metadata members this crate uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct IssuerMetadata {
    /// `issuer`, equal to the configured issuer.
    pub issuer: String,
    /// `jwks_uri`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// `introspection_endpoint` (RFC 7662).
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
}

/// The discovery URLs for `issuer`, in the order they are tried.
pub fn discovery_urls(issuer: &Url) -> [String; 2] {
    let origin = issuer.origin().ascii_serialization();
    let path = issuer.path().trim_end_matches('/');
    [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ]
}

/// Fetches and validates the metadata of `issuer`.
pub async fn discover(issuer: &str, client: &dyn HttpClient) -> Result<IssuerMetadata, KeyError> {
    let issuer_url = parse_url(issuer, UrlRole::Remote("issuer"))
        .map_err(|e| KeyError::Unavailable(e.to_string()))?;
    let mut last = String::from("no metadata document found");
    for candidate in discovery_urls(&issuer_url) {
        let Ok(url) = Url::parse(&candidate) else {
            continue;
        };
        let response = match client.get(&url).await {
            Ok(response) if response.status.is_success() => response,
            Ok(response) => {
                last = format!("{candidate} answered {}", response.status.as_u16());
                continue;
            }
            Err(e) => {
                last = format!("{candidate}: {e}");
                continue;
            }
        };
        let Ok(metadata) = serde_json::from_slice::<IssuerMetadata>(&response.body) else {
            last = format!("{candidate} is not an authorization server metadata document");
            continue;
        };
        if metadata.issuer != issuer {
            last = format!("{candidate} names another issuer");
            continue;
        }
        for endpoint in [&metadata.jwks_uri, &metadata.introspection_endpoint]
            .into_iter()
            .flatten()
        {
            parse_url(endpoint, UrlRole::Remote("discovered endpoint"))
                .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        }
        return Ok(metadata);
    }
    Err(KeyError::Unavailable(format!(
        "discovery for {issuer} failed: {last}"
    )))
}

/// Keys found through issuer discovery: the metadata is fetched on first use (and again after
/// a failure, at most once per cooldown), then its `jwks_uri` behaves as a [`RemoteJwks`].
#[derive(Debug)]
pub struct DiscoveredKeys {
    issuer: String,
    client: Arc<dyn HttpClient>,
    options: RemoteJwksOptions,
    jwks: tokio::sync::OnceCell<Arc<RemoteJwks>>,
    last_failure: Mutex<Option<Instant>>,
}

impl DiscoveredKeys {
    /// Keys of `issuer`, discovered with `client`.
    pub fn new(issuer: impl Into<String>, client: Arc<dyn HttpClient>) -> Self {
        Self::with_options(issuer, client, RemoteJwksOptions::default())
    }

    /// With a custom refresh policy for the discovered key set.
    pub fn with_options(
        issuer: impl Into<String>,
        client: Arc<dyn HttpClient>,
        options: RemoteJwksOptions,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client,
            options,
            jwks: tokio::sync::OnceCell::new(),
            last_failure: Mutex::new(None),
        }
    }

    async fn jwks(&self) -> Result<&Arc<RemoteJwks>, KeyError> {
        if let Some(jwks) = self.jwks.get() {
            return Ok(jwks);
        }
        let cooldown = self.options.cooldown;
        if let Some(at) = *self.last_failure.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < cooldown
        {
            return Err(KeyError::Unavailable(
                "issuer discovery failed recently".into(),
            ));
        }
        let result = self
            .jwks
            .get_or_try_init(|| async {
                let metadata = discover(&self.issuer, &*self.client).await?;
                let uri = metadata.jwks_uri.ok_or_else(|| {
                    KeyError::Unavailable("the issuer metadata has no jwks_uri".into())
                })?;
                let url = Url::parse(&uri).map_err(|e| KeyError::Unavailable(e.to_string()))?;
                tracing::info!(
                    target: "tower_mcp_auth::keys",
                    issuer = %self.issuer,
                    jwks_uri = %url,
                    "issuer metadata discovered"
                );
                Ok(Arc::new(RemoteJwks::with_options(
                    url,
                    self.client.clone(),
                    self.options.clone(),
                )))
            })
            .await;
        if let Err(err) = &result {
            tracing::warn!(target: "tower_mcp_auth::keys", issuer = %self.issuer, error = %err, "issuer discovery failed");
            *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        result
    }
}

#[async_trait]
impl KeySource for DiscoveredKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.jwks.get()?.current()
    }

    async fn refresh(&self, reason: RefreshReason<'_>) -> Result<Arc<KeySet>, KeyError> {
        self.jwks().await?.refresh(reason).await
    }

    fn stats(&self) -> Option<super::KeySourceStats> {
        self.jwks.get().map(|jwks| jwks.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_insertion() {
        let url: Url = "https://as.example.com/tenant/a".parse().unwrap();
        assert_eq!(
            discovery_urls(&url),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/a".to_owned(),
                "https://as.example.com/tenant/a/.well-known/openid-configuration".to_owned(),
            ]
        );
        let root: Url = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            discovery_urls(&root)[0],
            "http://127.0.0.1:9000/.well-known/oauth-authorization-server"
        );
    }
}
