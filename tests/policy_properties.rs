//! Property tests for the policy layer: the decision is made on exactly the bytes forwarded,
//! and no body makes the layer panic or forward something it did not classify.
//!
//! The check is differential: whatever reaches the inner service is re-read with an independent
//! parser (`serde_json::Value`), and every `tools/call` in it must name the one allowed tool.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

const RESOURCE: &str = "https://mcp.example.com/mcp";

type Seen = Arc<Mutex<Vec<Bytes>>>;

struct Harness {
    runtime: tokio::runtime::Runtime,
    token: String,
    auth: McpAuth,
}

fn harness() -> Harness {
    harness_with(ToolScopes::new().tool("safe", Vec::<String>::new()))
}

fn harness_with(policy: ToolScopes) -> Harness {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(policy)
        .build()
        .unwrap();
    Harness {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        token: dev.token(RESOURCE).sign(),
        auth,
    }
}

/// Sends `body`; returns the status and what the inner service received, if anything.
fn send(h: &Harness, body: Vec<u8>) -> (u16, Option<Bytes>) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        let record = record.clone();
        async move {
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            record.lock().unwrap().push(bytes);
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    });
    let mut service = h.auth.layer().layer(inner);
    let request = Request::post("/mcp")
        .header("authorization", format!("Bearer {}", h.token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = h.runtime.block_on(async {
        service.ready().await.unwrap();
        service.call(request).await.unwrap()
    });
    let status = response.status().as_u16();
    let forwarded = seen.lock().unwrap().pop();
    (status, forwarded)
}

/// Every tool call in `body`, read by an independent parser.
fn tool_calls(body: &[u8]) -> Vec<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(body).expect("forwarded bytes are JSON");
    let messages = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    messages
        .into_iter()
        .filter(|m| m.get("method").and_then(|m| m.as_str()) == Some("tools/call"))
        .map(|m| m["params"]["name"].clone())
        .collect()
}

fn json_rpc_message() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("safe".to_owned()),
        Just("unsafe".to_owned()),
        Just("s\\u0061fe".to_owned()),
        Just("saf\\u0065\\u0000".to_owned()),
        "[a-z\\\\\"]{0,6}",
    ];
    let method = prop_oneof![
        Just("tools/call"),
        Just("tools/list"),
        Just("ping"),
        Just("tools/c\\u0061ll"),
        Just("resources/read"),
        Just("x/y"),
    ];
    let extra = prop_oneof![
        Just(String::new()),
        Just(r#","method":"tools/call""#.to_owned()),
        Just(r#","params":{"name":"unsafe"}"#.to_owned()),
        Just(r#","jsonrpc":"2.0""#.to_owned()),
        Just(r#","id":2"#.to_owned()),
    ];
    (method, name, extra).prop_map(|(method, name, extra)| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"name":"{name}","uri":"x://y"}}{extra}}}"#
        )
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_rpc_message().prop_map(String::into_bytes),
        prop::collection::vec(json_rpc_message(), 1..4).prop_map(|ms| format!(
            "[{}]",
            ms.join(",")
        )
        .into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        json_rpc_message().prop_flat_map(|m| {
            let len = m.len();
            (Just(m), 0..len, any::<u8>()).prop_map(|(m, i, b)| {
                let mut bytes = m.into_bytes();
                bytes[i] = b;
                bytes
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn decisions_are_made_on_the_forwarded_bytes(body in body()) {
        let h = HARNESS.with(|h| h.clone());
        let (status, forwarded) = send(&h, body.clone());
        prop_assert!(status < 500, "status {status}");
        match forwarded {
            Some(bytes) => {
                prop_assert_eq!(&bytes[..], &body[..], "forwarded bytes differ from the body");
                prop_assert_eq!(status, 200);
                for name in tool_calls(&bytes) {
                    prop_assert_eq!(name, serde_json::json!("safe"));
                }
            }
            None => prop_assert!(matches!(status, 400 | 403 | 413), "status {status}"),
        }
    }
}

thread_local! {
    static HARNESS: Arc<Harness> = Arc::new(harness());
    static URI_HARNESS: Arc<Harness> = Arc::new(uri_harness());
}

/// `notes://x/*` readable by anyone; nothing else mapped.
fn uri_harness() -> Harness {
    harness_with(ToolScopes::new().resource("notes://x/*", Vec::<String>::new()))
}

/// An independent, pessimistic reading of what a server might open for `uri`: everything after
/// `notes://` as a path, percent-decoded until stable, `\` as `/`, dot segments removed
/// (RFC 3986 §5.2.4).
fn resolved_path(uri: &str) -> String {
    let mut text = uri.strip_prefix("notes://").unwrap_or(uri).to_owned();
    for _ in 0..8 {
        let decoded = percent_decode(&text);
        if decoded == text {
            break;
        }
        text = decoded;
    }
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split(['/', '\\']) {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn resource_uri() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%2E"),
        Just("%25"),
        Just("2e"),
        Just("%2f"),
        Just("%2F"),
        Just("%5c"),
        Just("\\"),
        Just("/"),
        Just("a"),
        Just("x"),
        Just("secret"),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| format!("notes://x/{}", pieces.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever a resource URI hides in dots and escapes, an allowed read of `notes://x/*`
    /// resolves under `x/`.
    #[test]
    fn allowed_resource_uris_resolve_under_their_pattern(uri in resource_uri()) {
        let h = URI_HARNESS.with(|h| h.clone());
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": { "uri": uri },
        });
        let (status, forwarded) = send(&h, body.to_string().into_bytes());
        if forwarded.is_some() {
            prop_assert_eq!(status, 200);
            let path = resolved_path(&uri);
            prop_assert!(path.starts_with("x/"), "{uri} allowed but resolves to {path}");
        } else {
            prop_assert_eq!(status, 403, "{}", uri);
        }
    }
}

#[test]
fn plain_resource_uris_under_the_pattern_are_allowed() {
    let h = uri_harness();
    for uri in [
        "notes://x/a",
        "notes://x/a/b",
        "notes://x/a.b",
        "notes://x/%25",
        "notes://x/2e",
    ] {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": { "uri": uri },
        });
        assert_eq!(send(&h, body.to_string().into_bytes()).0, 200, "{uri}");
    }
}

#[test]
fn allowed_and_denied_controls() {
    let h = harness();
    let allowed =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s\u0061fe"}}"#;
    assert_eq!(send(&h, allowed.to_vec()).0, 200);
    let denied = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"unsafe"}}"#;
    let (status, forwarded) = send(&h, denied.to_vec());
    assert_eq!(status, 403);
    assert!(forwarded.is_none());
}
