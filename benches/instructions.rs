//! A fixed number of warm requests, for counting instructions with callgrind: unlike wall-clock
//! medians on a noisy machine, the count is the same run after run, so a change of a few hundred
//! instructions per request shows.
//!
//! `scripts/instructions` runs it; by hand:
//!
//! ```text
//! instructions-<hash> stack 4000   # the whole stack, same token every time (cache hit)
//! instructions-<hash> bare 4000    # the bare service
//! instructions-<hash> sha256 4000  # only the SHA-256 of the token (the cache key)
//! ```
//!
//! Under `cargo bench` (no mode given) it prints this usage and exits.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://auth.example.com";
const CALL_WHOAMI: &[u8] =
    br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
const RESULT: &[u8] =
    br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"dev-user"}]}}"#;

async fn ok_handler(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(RESULT)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The same request as the `warm/*` criterion group sends.
fn post(authorization: &str) -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header(http::header::HOST, "mcp.example.com")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header(http::header::AUTHORIZATION, authorization)
        .body(Full::new(Bytes::from_static(CALL_WHOAMI)))
        .expect("request")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mode, n) = match (
        args.next(),
        args.next().and_then(|n| n.parse::<usize>().ok()),
    ) {
        (Some(mode), Some(n)) if ["stack", "bare", "sha256"].contains(&mode.as_str()) => (mode, n),
        _ => {
            println!("instructions: run by scripts/instructions (modes: stack|bare|sha256 N)");
            return;
        }
    };
    #[cfg(feature = "aws-lc-rs")]
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .build()
        .expect("config");
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let bearer = format!("Bearer {token}");
    let mut stack = auth.layer().layer(tower::service_fn(ok_handler));
    let mut bare = tower::service_fn(ok_handler);
    rt.block_on(async {
        // Verifies and caches the token: every counted request is a cache hit.
        let first = stack
            .ready()
            .await
            .unwrap()
            .call(post(&bearer))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        for _ in 0..n {
            match mode.as_str() {
                "stack" => {
                    let svc = stack.ready().await.unwrap();
                    let response = svc.call(black_box(post(&bearer))).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    drop(black_box(response));
                }
                "bare" => {
                    let svc = bare.ready().await.unwrap();
                    let response = svc.call(black_box(post(&bearer))).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    drop(black_box(response));
                }
                _ => drop(black_box(Sha256::digest(black_box(token.as_bytes())))),
            }
        }
    });
}
