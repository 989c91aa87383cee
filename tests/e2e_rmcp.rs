//! End to end, in process, over real loopback HTTP: an rmcp streamable-HTTP server (stateless,
//! JSON responses) mounted in axum behind `McpAuth::layer()`, driven by a raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use http::header::AUTHORIZATION;
use http::request::Parts;
use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, tool::Extension},
    model::{ServerCapabilities, ServerConfig},
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::never::NeverSessionManager,
    },
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::Principal;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

const PROTOCOL_VERSION: &str = "2025-11-25";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The MCP server: one `whoami` tool reporting the principal the layer attached.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct WhoAmI {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl WhoAmI {
    #[tool(description = "The verified caller, as JSON.")]
    async fn whoami(&self, Extension(parts): Extension<Parts>) -> Result<String, String> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .ok_or_else(|| "no principal on this request".to_owned())?;
        let chain: Vec<Value> = principal
            .delegation_chain()
            .iter()
            .map(|a| json!({"sub": a.subject, "iss": a.issuer, "client_id": a.client_id}))
            .collect();
        let me = json!({
            "subject": principal.subject(),
            "client_id": principal.client_id(),
            "scopes": principal.scopes(),
            "delegation_chain": chain,
            "saw_authorization_header": parts.headers.contains_key(AUTHORIZATION),
        });
        Ok(me.to_string())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WhoAmI {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// A running server: its address, resource URI and the issuer its tokens come from.
struct Server {
    addr: SocketAddr,
    resource: String,
    dev: DevIssuer,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resource = format!("http://127.0.0.1:{}/mcp", addr.port());
    let dev = DevIssuer::new(format!("http://127.0.0.1:{}/dev-issuer", addr.port()));
    let auth = McpAuth::builder()
        .resource(resource.clone())
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read"])
        // The policy layer denies unlisted tools; `whoami` needs `notes:read`.
        .policy(ToolScopes::new().tool("whoami", ["notes:read"]))
        .build()
        .unwrap();

    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts([addr.to_string(), format!("localhost:{}", addr.port())]);
    let svc = StreamableHttpService::new(
        || {
            Ok(WhoAmI {
                tool_router: WhoAmI::tool_router(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let app = Router::new().nest_service("/mcp", svc).layer(auth.layer());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        addr,
        resource,
        dev,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client: one request per connection, `Connection: close`.
// ---------------------------------------------------------------------------

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let value = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "more than one {name} header");
        value
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());

    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("HTTP exchange timed out");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of response head");
    let head = std::str::from_utf8(&raw[..split]).expect("response head is not UTF-8");
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("bad header line");
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("bad chunk size line");
        let size_line = std::str::from_utf8(&data[..eol]).unwrap();
        let size_hex = size_line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16).expect("bad chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// POSTs one JSON-RPC message to the MCP endpoint.
async fn mcp_post(server: &Server, token: Option<&str>, message: &Value) -> HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", PROTOCOL_VERSION),
    ];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    request(
        server.addr,
        "POST",
        "/mcp",
        &headers,
        Some(&message.to_string()),
    )
    .await
}

fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "0"}
        }
    })
}

fn call_whoami() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}
    })
}

fn assert_challenge(response: &HttpResponse, server: &Server) -> String {
    assert_eq!(response.status, 401);
    let challenge = response
        .header("WWW-Authenticate")
        .expect("401 without WWW-Authenticate")
        .to_owned();
    let metadata = format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
        server.addr.port()
    );
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(r#"scope="notes:read""#)
            && challenge.contains(&format!(r#"resource_metadata="{metadata}""#)),
        "{challenge}"
    );
    challenge
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

/// (a) A valid, delegated token initializes and calls `whoami`, which sees that token's
/// subject, client, scopes and delegation chain; (e) the tool never sees `Authorization`.
#[tokio::test]
async fn valid_token_reaches_the_tool_as_its_principal() {
    let server = start().await;
    let token = server
        .dev
        .token(&server.resource)
        .subject("alice")
        .client_id("notes-agent")
        .scope("notes:read")
        .claim(
            "act",
            json!({
                "sub": "agent-7",
                "client_id": "agent-client",
                "act": {"sub": "orchestrator", "iss": "https://orchestrator.example"}
            }),
        )
        .sign();

    let init = mcp_post(&server, Some(&token), &initialize()).await;
    assert_eq!(init.status, 200, "{}", String::from_utf8_lossy(&init.body));
    assert!(
        init.header("Content-Type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    let init = init.json();
    assert_eq!(init["id"], 1);
    assert!(init["result"]["protocolVersion"].is_string(), "{init}");

    let call = mcp_post(&server, Some(&token), &call_whoami()).await;
    assert_eq!(call.status, 200, "{}", String::from_utf8_lossy(&call.body));
    let call = call.json();
    assert_eq!(call["id"], 2);
    assert_ne!(call["result"]["isError"], true, "{call}");
    let text = call["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content: {call}"));
    let me: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        me,
        json!({
            "subject": "alice",
            "client_id": "notes-agent",
            "scopes": ["notes:read"],
            "delegation_chain": [
                {"sub": "agent-7", "iss": null, "client_id": "agent-client"},
                {"sub": "orchestrator", "iss": "https://orchestrator.example", "client_id": null}
            ],
            "saw_authorization_header": false,
        })
    );
}

/// (b) No token: 401 with a Bearer challenge naming the scope and the metadata URL, no error code.
#[tokio::test]
async fn missing_token_is_challenged() {
    let server = start().await;
    let response = mcp_post(&server, None, &initialize()).await;
    let challenge = assert_challenge(&response, &server);
    assert_eq!(
        challenge,
        format!(
            r#"Bearer scope="notes:read", resource_metadata="http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp""#,
            server.addr.port()
        )
    );
}

/// (c) The metadata URL from the challenge serves the RFC 9728 document, unauthenticated.
#[tokio::test]
async fn metadata_document_is_served() {
    let server = start().await;
    let response = request(
        server.addr,
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
        &[("Accept", "application/json")],
        None,
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("Content-Type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    let document = response.json();
    assert_eq!(document["resource"], server.resource.as_str());
    assert_eq!(
        document["authorization_servers"],
        json!([server.dev.issuer()])
    );
    assert_eq!(document["scopes_supported"], json!(["notes:read"]));
}

/// (d) An expired (otherwise valid) token: 401 with `error="invalid_token"`; the tool never runs.
#[tokio::test]
async fn expired_token_is_invalid_token() {
    let server = start().await;
    let now = now();
    let token = server
        .dev
        .token(&server.resource)
        .scope("notes:read")
        .claim("iat", now - 7200)
        .claim("exp", now - 3600)
        .sign();
    let response = mcp_post(&server, Some(&token), &call_whoami()).await;
    let challenge = assert_challenge(&response, &server);
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(response.json()["error"], "invalid_token");
}
