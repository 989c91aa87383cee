//! Arbitrary bytes as a JSON-RPC POST body through the whole stack, with a valid token and a
//! `ToolScopes` policy allowing only the tool `safe` (tests/policy_properties.rs is the same
//! property as a proptest).
//!
//! Invariants: never a 5xx; a refusal is 400, 403 or 413; if the inner service is reached, the
//! status is 200, the bytes it received are exactly the body, and an independent
//! `serde_json::Value` parse of them shows only methods the policy allows: lifecycle and list
//! methods, `notifications/*`, `tasks/*`, and `tools/call` naming `safe` (never `prompts/get`,
//! `resources/read`, `completion/complete`, unknown methods, or another tool).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::sync::OnceLock;

use bytes::Bytes;
use common::{ISSUER, RESOURCE, Seen};
use http::Request;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::Layer;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

struct Harness {
    auth: McpAuth,
    authorization: String,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dev = DevIssuer::new(ISSUER);
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .policy(ToolScopes::new().tool("safe", Vec::<String>::new()))
            .build()
            .expect("config");
        let authorization = format!("Bearer {}", dev.token(RESOURCE).sign());
        Harness {
            auth,
            authorization,
        }
    })
}

const LIFECYCLE: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "logging/setLevel",
];

fn check_forwarded(bytes: &[u8]) {
    let value: Value = serde_json::from_slice(bytes).expect("forwarded bytes are JSON");
    let messages = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    for message in &messages {
        let Some(method) = message.get("method") else {
            continue;
        };
        let method = method.as_str().expect("a forwarded method is a string");
        if method == "tools/call" {
            assert_eq!(
                message.get("params").and_then(|p| p.get("name")),
                Some(&Value::from("safe")),
                "forwarded a call of another tool: {message}"
            );
        } else {
            assert!(
                LIFECYCLE.contains(&method)
                    || method.starts_with("notifications/")
                    || method.starts_with("tasks/"),
                "forwarded a refused method: {message}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let request = Request::post("/mcp")
        .header(AUTHORIZATION, &h.authorization)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(data)))
        .expect("request");
    let seen = Seen::default();
    let service = h.auth.layer().layer(common::recorder(seen.clone()));
    let response = common::call(service, request);
    let status = response.status().as_u16();
    let forwarded = seen.take();
    common::trace(|| format!("status {status}, reached: {}", !forwarded.is_empty()));
    assert!(status < 500, "status {status}");
    match forwarded.as_slice() {
        [] => assert!(matches!(status, 400 | 403 | 413), "status {status}"),
        [(_, bytes)] => {
            assert_eq!(&bytes[..], data, "forwarded bytes differ from the body");
            assert_eq!(status, 200);
            check_forwarded(bytes);
        }
        _ => panic!("the inner service was called {} times", forwarded.len()),
    }
});
