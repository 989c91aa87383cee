//! RFC 9728 protected resource metadata: the document and the tower service that serves it.
//!
//! MCP clients find the authorization server through this document: a 401 names its URL in the
//! `resource_metadata` challenge parameter, and clients also probe the well-known locations
//! (path-inserted first, then the root). The document is built from the same configuration as
//! the layers, so the two can never disagree.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tower_service::Service;
use url::Url;

/// The well-known path prefix (RFC 9728 §3).
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// An RFC 9728 §2 protected resource metadata document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProtectedResourceMetadata {
    /// The canonical resource identifier: the `aud` tokens must carry.
    pub resource: String,
    /// Issuers whose tokens this resource accepts.
    pub authorization_servers: Vec<String>,
    /// Scopes clients may request for basic use (MCP: the minimal set, not every scope).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// How tokens may be presented: only `header`.
    pub bearer_methods_supported: Vec<String>,
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// A URL of human-readable documentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_documentation: Option<String>,
    /// DPoP proof algorithms accepted (RFC 9728 §2), when DPoP is enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dpop_signing_alg_values_supported: Vec<String>,
    /// Whether only DPoP-bound tokens are accepted (omitted when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop_bound_access_tokens_required: bool,
    /// Whether certificate-bound tokens (RFC 8705) are supported (omitted when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_client_certificate_bound_access_tokens: bool,
}

impl ProtectedResourceMetadata {
    /// A document for `resource` trusting `authorization_servers`, header tokens only.
    pub fn new(resource: impl Into<String>, authorization_servers: Vec<String>) -> Self {
        Self {
            resource: resource.into(),
            authorization_servers,
            scopes_supported: Vec::new(),
            bearer_methods_supported: vec!["header".to_owned()],
            resource_name: None,
            resource_documentation: None,
            dpop_signing_alg_values_supported: Vec::new(),
            dpop_bound_access_tokens_required: false,
            tls_client_certificate_bound_access_tokens: false,
        }
    }
}

/// Where the document for `resource` is served: the path-inserted well-known path (RFC 9728
/// §3.1) and the root one. They are equal when the resource has no path.
pub fn well_known_paths(resource: &Url) -> [String; 2] {
    let path = resource.path().trim_end_matches('/');
    [
        format!("{WELL_KNOWN_PREFIX}{path}"),
        WELL_KNOWN_PREFIX.to_owned(),
    ]
}

/// The absolute URL of the path-inserted document: the `resource_metadata` challenge value.
pub fn metadata_url(resource: &Url) -> String {
    let [path, _] = well_known_paths(resource);
    let mut origin = resource.origin().ascii_serialization();
    origin.push_str(&path);
    origin
}

/// Serves one metadata document: `GET` and `HEAD` (200, JSON, CORS `*`), `OPTIONS` (204
/// preflight) and 405 with `Allow` for anything else. Mount it at both [`well_known_paths`], or
/// let [`McpAuthLayer`](crate::McpAuthLayer) route them for you.
#[derive(Debug, Clone)]
pub struct MetadataService {
    document: Bytes,
}

impl MetadataService {
    /// A service serving `metadata`.
    pub fn new(metadata: &ProtectedResourceMetadata) -> Self {
        let document = serde_json::to_vec(metadata).expect("metadata serializes");
        Self {
            document: document.into(),
        }
    }

    /// The response for a request with this method.
    pub fn respond(&self, method: &Method) -> Response<Full<Bytes>> {
        const ALLOWED: &str = "GET, HEAD, OPTIONS";
        let (status, body) = match *method {
            Method::GET => (StatusCode::OK, self.document.clone()),
            Method::HEAD => (StatusCode::OK, Bytes::new()),
            Method::OPTIONS => (StatusCode::NO_CONTENT, Bytes::new()),
            _ => (StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        match status {
            StatusCode::OK => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
                if *method == Method::HEAD {
                    headers.insert(http::header::CONTENT_LENGTH, self.document.len().into());
                }
            }
            StatusCode::NO_CONTENT => {
                headers.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOWED),
                );
                headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
                headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
            }
            _ => {
                headers.insert(ALLOW, HeaderValue::from_static(ALLOWED));
            }
        }
        response
    }
}

impl<B> Service<Request<B>> for MetadataService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_rfc9728_insertion() {
        let url: Url = "https://mcp.example.com/public/mcp".parse().unwrap();
        assert_eq!(
            well_known_paths(&url),
            [
                "/.well-known/oauth-protected-resource/public/mcp".to_owned(),
                "/.well-known/oauth-protected-resource".to_owned()
            ]
        );
        assert_eq!(
            metadata_url(&url),
            "https://mcp.example.com/.well-known/oauth-protected-resource/public/mcp"
        );
        let root: Url = "https://mcp.example.com:8443".parse().unwrap();
        assert_eq!(
            metadata_url(&root),
            "https://mcp.example.com:8443/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn document_matches_rfc9728_example_shape() {
        let mut doc = ProtectedResourceMetadata::new(
            "https://resource.example.com",
            vec![
                "https://as1.example.com".into(),
                "https://as2.example.net".into(),
            ],
        );
        doc.scopes_supported = vec!["profile".into(), "email".into()];
        doc.resource_documentation =
            Some("https://resource.example.com/resource_documentation.html".into());
        let json: serde_json::Value = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "resource": "https://resource.example.com",
                "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["profile", "email"],
                "resource_documentation": "https://resource.example.com/resource_documentation.html"
            })
        );
    }

    #[test]
    fn methods() {
        let svc = MetadataService::new(&ProtectedResourceMetadata::new("https://r", vec![]));
        assert_eq!(svc.respond(&Method::GET).status(), 200);
        assert_eq!(svc.respond(&Method::HEAD).status(), 200);
        assert_eq!(svc.respond(&Method::OPTIONS).status(), 204);
        let post = svc.respond(&Method::POST);
        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD, OPTIONS");
    }
}
