//! The small HTTP client trait used to fetch key sets (and, later, metadata and introspection).
//!
//! The crate has no HTTP stack of its own: implement [`HttpClient`] for the client you already
//! use, or enable the default `reqwest` feature for [`ReqwestHttpClient`] (rustls, timeouts,
//! response size limit, no redirects).

use std::fmt;
#[cfg(feature = "reqwest")]
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

/// Fetches key sets and metadata (GET) and calls introspection endpoints (POST of a form).
/// Implementations must bound time and response size, and must not follow redirects.
#[async_trait]
pub trait HttpClient: Send + Sync + fmt::Debug + 'static {
    /// GETs `url`, returning any status; non-2xx is for the caller to judge.
    async fn get(&self, url: &Url) -> Result<HttpResponse, HttpError>;

    /// POSTs `form` as `application/x-www-form-urlencoded` with extra `headers` (e.g.
    /// `Authorization: Basic …`). The default refuses: implement it to use introspection.
    async fn post_form(
        &self,
        url: &Url,
        headers: &HeaderMap,
        form: &[(&str, &str)],
    ) -> Result<HttpResponse, HttpError> {
        let _ = (url, headers, form);
        Err(HttpError::Transport(
            "this HttpClient does not implement post_form".into(),
        ))
    }
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
fn map_reqwest(e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::Timeout
    } else {
        HttpError::Transport(e.without_url().to_string())
    }
}

#[cfg(feature = "reqwest")]
#[async_trait]
impl HttpClient for ReqwestHttpClient {
    async fn get(&self, url: &Url) -> Result<HttpResponse, HttpError> {
        let request = self
            .client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json");
        self.send(request).await
    }

    async fn post_form(
        &self,
        url: &Url,
        headers: &HeaderMap,
        form: &[(&str, &str)],
    ) -> Result<HttpResponse, HttpError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = self
            .client
            .post(url.clone())
            .headers(headers.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        self.send(request).await
    }
}

#[cfg(feature = "reqwest")]
impl ReqwestHttpClient {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<HttpResponse, HttpError> {
        let map = map_reqwest;
        let mut response = request.send().await.map_err(map)?;
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
