//! Issuer metadata discovery (RFC 8414, then OpenID Connect Discovery) and [`DiscoveredKeys`].
//!
//! From an issuer identifier alone: first `/.well-known/oauth-authorization-server` inserted
//! between the host and the issuer's path (RFC 8414 §3.1), then
//! `<issuer>/.well-known/openid-configuration`. The document's `issuer` must equal the configured
//! one exactly (RFC 8414 §3.3), else it is ignored: a document for another issuer must never
//! supply keys.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Fetches and validates the metadata of `issuer`. Each request is bounded only by the
/// client's own timeout; [`DiscoveredKeys`] adds its `fetch_timeout` on top.
pub async fn discover(issuer: &str, client: &dyn HttpClient) -> Result<IssuerMetadata, KeyError> {
    discover_within(issuer, client, None).await
}

async fn discover_within(
    issuer: &str,
    client: &dyn HttpClient,
    timeout: Option<Duration>,
) -> Result<IssuerMetadata, KeyError> {
    let issuer_url = parse_url(issuer, UrlRole::Remote("issuer"))
        .map_err(|e| KeyError::Unavailable(e.to_string()))?;
    let mut last = String::from("no metadata document found");
    for candidate in discovery_urls(&issuer_url) {
        let Ok(url) = Url::parse(&candidate) else {
            continue;
        };
        let get = client.get(&url);
        let result = match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, get).await {
                Ok(result) => result,
                Err(_) => {
                    last = format!("{candidate} timed out");
                    continue;
                }
            },
            None => get.await,
        };
        let response = match result {
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
            // RFC 8414 §3.3: such a document must not be used; try the next location.
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

/// What discovery found: the metadata, and the key set at its `jwks_uri` if it names one.
#[derive(Debug)]
struct Discovered {
    metadata: IssuerMetadata,
    jwks: Option<Arc<RemoteJwks>>,
}

/// Keys found through issuer discovery: the metadata is fetched on first use (and again after
/// a failure, at most once per cooldown, each location bounded by `fetch_timeout`), then its
/// `jwks_uri` behaves as a [`RemoteJwks`]. The same metadata gives the
/// `introspection_endpoint` to an
/// [`IntrospectionVerifier::discovered`](crate::token::IntrospectionVerifier::discovered).
#[derive(Debug)]
pub struct DiscoveredKeys {
    issuer: String,
    client: Arc<dyn HttpClient>,
    options: RemoteJwksOptions,
    discovered: tokio::sync::OnceCell<Discovered>,
    last_failure: Mutex<Option<Instant>>,
}

impl DiscoveredKeys {
    /// Keys of `issuer`, discovered with `client`.
    pub fn new(issuer: impl Into<String>, client: Arc<dyn HttpClient>) -> Self {
        Self::with_options(issuer, client, RemoteJwksOptions::default())
    }

    /// With a custom refresh policy for the discovered key set (its `cooldown` and
    /// `fetch_timeout` also apply to the metadata fetch).
    pub fn with_options(
        issuer: impl Into<String>,
        client: Arc<dyn HttpClient>,
        options: RemoteJwksOptions,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client,
            options,
            discovered: tokio::sync::OnceCell::new(),
            last_failure: Mutex::new(None),
        }
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn cooling_down(&self) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < self.options.cooldown)
    }

    async fn discovered(&self) -> Result<&Discovered, KeyError> {
        if let Some(discovered) = self.discovered.get() {
            return Ok(discovered);
        }
        let cooling_down = || {
            tracing::debug!(
                target: "tower_mcp_auth::keys",
                issuer = %self.issuer,
                "issuer discovery skipped: cooling down after a failure"
            );
            KeyError::Unavailable("issuer discovery failed recently".into())
        };
        if self.cooling_down() {
            return Err(cooling_down());
        }
        self.discovered
            .get_or_try_init(|| async {
                // Callers queued behind a failed attempt run this closure in turn: check the
                // cooldown again so that they do not each fetch.
                if self.cooling_down() {
                    return Err(cooling_down());
                }
                let attempt = discover_within(
                    &self.issuer,
                    &*self.client,
                    Some(self.options.fetch_timeout),
                )
                .await;
                let metadata = match attempt {
                    Ok(metadata) => metadata,
                    Err(err) => {
                        tracing::warn!(target: "tower_mcp_auth::keys", issuer = %self.issuer, error = %err, "issuer discovery failed");
                        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now());
                        return Err(err);
                    }
                };
                let jwks = match &metadata.jwks_uri {
                    Some(uri) => {
                        let url =
                            Url::parse(uri).map_err(|e| KeyError::Unavailable(e.to_string()))?;
                        Some(Arc::new(RemoteJwks::with_options(
                            url,
                            self.client.clone(),
                            self.options.clone(),
                        )))
                    }
                    None => None,
                };
                tracing::info!(
                    target: "tower_mcp_auth::keys",
                    issuer = %self.issuer,
                    jwks_uri = metadata.jwks_uri.as_deref().unwrap_or(""),
                    introspection_endpoint = metadata.introspection_endpoint.as_deref().unwrap_or(""),
                    "issuer metadata discovered"
                );
                Ok(Discovered { metadata, jwks })
            })
            .await
    }

    /// The issuer's metadata, discovered on first use (at most one attempt per cooldown after
    /// a failure).
    pub async fn metadata(&self) -> Result<&IssuerMetadata, KeyError> {
        Ok(&self.discovered().await?.metadata)
    }

    async fn jwks(&self) -> Result<&Arc<RemoteJwks>, KeyError> {
        self.discovered()
            .await?
            .jwks
            .as_ref()
            .ok_or_else(|| KeyError::Unavailable("the issuer metadata has no jwks_uri".into()))
    }
}

#[async_trait]
impl KeySource for DiscoveredKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.discovered.get()?.jwks.as_ref()?.current()
    }

    async fn refresh(&self, reason: RefreshReason<'_>) -> Result<Arc<KeySet>, KeyError> {
        self.jwks().await?.refresh(reason).await
    }

    fn stats(&self) -> Option<super::KeySourceStats> {
        self.discovered
            .get()
            .and_then(|d| d.jwks.as_ref())
            .map(|jwks| jwks.stats())
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
