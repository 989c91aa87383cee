//! The small HTTP client trait used to fetch key sets (and, later, metadata and introspection).
//!
//! The crate has no HTTP stack of its own: implement [`HttpClient`] for the client you already
//! use, or enable the default `reqwest` feature for [`ReqwestHttpClient`] (rustls, timeouts,
//! response size limit, no redirects).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use url::Url;

/// A response as far as this crate needs it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers (for `Cache-Control`).
    pub headers: HeaderMap,
    /// The whole body, already bounded by the client's size limit.
    pub body: Bytes,
}

/// Why a fetch failed. Messages never contain credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request did not complete in time.
    #[error("request timed out")]
    Timeout,
    /// The body exceeded the configured limit.
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Connection, TLS or protocol failure.
    #[error("transport error: {0}")]
    Transport(String),
}

/// Fetches a URL with GET. Implementations must bound time and response size.
#[async_trait]
pub trait HttpClient: Send + Sync + fmt::Debug + 'static {
    /// GETs `url`, returning any status; non-2xx is for the caller to judge.
    async fn get(&self, url: &Url) -> Result<HttpResponse, HttpError>;
}

/// The default client: reqwest with rustls, no redirects, a timeout and a body limit.
#[cfg(feature = "reqwest")]
#[derive(Debug, Clone)]
pub struct ReqwestHttpClient {
    client: reqwest::Client,
    max_body: usize,
}

#[cfg(feature = "reqwest")]
impl ReqwestHttpClient {
    /// Default limits: 5 s timeout, 512 KiB bodies.
    pub fn new() -> Result<Self, HttpError> {
        Self::with_limits(Duration::from_secs(5), 512 * 1024)
    }

    /// Custom timeout and body limit.
    pub fn with_limits(timeout: Duration, max_body: usize) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HttpError::Transport(e.to_string()))?;
        Ok(Self { client, max_body })
    }
}

#[cfg(feature = "reqwest")]
#[async_trait]
impl HttpClient for ReqwestHttpClient {
    async fn get(&self, url: &Url) -> Result<HttpResponse, HttpError> {
        let map = |e: reqwest::Error| {
            if e.is_timeout() {
                HttpError::Timeout
            } else {
                HttpError::Transport(e.without_url().to_string())
            }
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(map)?;
        let too_large = HttpError::TooLarge {
            limit: self.max_body,
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.max_body as u64)
        {
            return Err(too_large);
        }
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(map)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body: body.into(),
        })
    }
}
