//! Shared by the fuzz targets (each includes it with `#[path = "../common/mod.rs"] mod common;`).
//!
//! Keys are random per process (`DevIssuer::new`), so seeds cannot hold signed tokens. Inputs
//! name them with placeholders instead (`TOKEN`, `NOW`, ...), which each target replaces before
//! use; see fuzz/README.md.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tower::{Service, ServiceExt};

pub const RESOURCE: &str = "https://mcp.example.com/mcp";
pub const ISSUER: &str = "https://as.example.com";
/// The `jsonrpc` body sent where the body does not matter (any valid token may ping).
pub const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// One current-thread runtime per process.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("tokio runtime")
        })
        .block_on(future)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// base64url(SHA-256(s)), computed here rather than by the crate (the DPoP `ath`).
pub fn sha256_b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

/// What reached the inner service: the request head and its body bytes.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(http::request::Parts, Bytes)>>>);

impl Seen {
    pub fn take(&self) -> Vec<(http::request::Parts, Bytes)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A trivial inner service: records the request, answers 200 `{}`.
pub fn recorder(
    seen: Seen,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            seen.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((parts, bytes));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    })
}

/// Calls `service` once with `req`; the service errors are `Infallible` in every target.
pub fn call<S, B>(service: S, req: Request<Full<Bytes>>) -> Response<B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Debug,
{
    block_on(service.oneshot(req)).expect("the stack never fails the service call")
}

/// Collects a response body; `Err` with the error's text if the body failed.
pub fn collect<B>(body: B) -> Result<Bytes, String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    block_on(body.collect())
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// Replaces each `(placeholder, value)` in turn.
pub fn expand(input: &str, substitutions: &[(&str, &str)]) -> String {
    let mut out = input.to_owned();
    for (from, to) in substitutions {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

/// With `FUZZ_TRACE` set, prints each input's outcome to stderr (to check that seeds reach the
/// paths they are meant for: `FUZZ_TRACE=1 fuzz/target/…/<target> -runs=0 fuzz/seeds/<target>`).
pub fn trace(message: impl FnOnce() -> String) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("FUZZ_TRACE {}", message());
    }
}
