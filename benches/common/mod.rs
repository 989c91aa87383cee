//! What the benches share: the fixture issuer and stack, the inner service and the request.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

pub const RESOURCE: &str = "https://mcp.example.com/mcp";
pub const ISSUER: &str = "https://auth.example.com";
pub const CALL_WHOAMI: &[u8] =
    br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
pub const RESULT: &[u8] =
    br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"dev-user"}]}}"#;

/// A `tools/call` of `tool` of exactly 64 KiB: the arguments carry an array of small records
/// (the criterion `policy/large_64KiB` bench and the `*-64k` instruction modes).
pub fn large_call(tool: &str) -> Bytes {
    const SIZE: usize = 64 * 1024;
    let head = format!(
        r#"{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"query":"bulk import","records":["#
    );
    let tail = r#"]}}}"#;
    let mut body = head;
    for n in 0.. {
        let record = format!(
            r#"{}{{"line":{n},"text":"lorem ipsum dolor sit amet, consectetur adipiscing elit","tags":["a","b"]}}"#,
            if n == 0 { "" } else { "," }
        );
        if body.len() + record.len() + tail.len() > SIZE {
            break;
        }
        body.push_str(&record);
    }
    body.push_str(tail);
    // Pad the query string so the body is exactly SIZE bytes (still valid JSON).
    let pad = SIZE - body.len();
    let body = body.replacen("bulk import", &format!("bulk import{}", " ".repeat(pad)), 1);
    assert_eq!(body.len(), SIZE);
    Bytes::from(body)
}

/// The request and response body type.
pub type Body = Full<Bytes>;

/// jsonwebtoken picks its process-wide provider from its features; with both backends enabled
/// (`--all-features`) it cannot, so install the one this crate uses.
pub fn install_jsonwebtoken_provider() {
    #[cfg(feature = "aws-lc-rs")]
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// A dev issuer, a stack trusting it with `whoami` behind `notes:read`, and a token for it.
pub fn fixture() -> (DevIssuer, McpAuth, String) {
    let dev = DevIssuer::new(ISSUER);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .build()
        .expect("config");
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    (dev, auth, token)
}

/// A successful JSON-RPC result, as an MCP server would answer a tool call.
pub async fn ok_handler(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(RESULT)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A `POST /mcp` with `body`, an optional `Authorization` and an optional `DPoP` proof.
pub fn post(body: Bytes, authorization: &str, dpop: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/mcp")
        .header(http::header::HOST, "mcp.example.com")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header(http::header::AUTHORIZATION, authorization);
    if let Some(proof) = dpop {
        builder = builder.header("dpop", proof);
    }
    builder.body(Full::new(body)).expect("request")
}
