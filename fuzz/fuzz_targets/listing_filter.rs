//! `tools/list` responses through the whole stack: the inner service answers with arbitrary
//! bytes, which the policy layer must filter down to the tools the caller may use.
//!
//! The token may use the tool `visible` only (`hidden` needs the scope `admin`, anything else is
//! unlisted, so denied). Input: byte 0 is flags (bits 0-1: the response content type, one of
//! `CONTENT_TYPES`; bits 2-3: the request id, one of `IDS`); byte 1 is the chunk size the body is
//! split into (0: one chunk); the rest is the response body.
//!
//! Invariants: never panics; a 200; if the body completes without error, then read as a client
//! would (the whole body as JSON, or every event of an event stream as the WHATWG parser reads
//! it, including a trailing event without its blank line), every response whose `id` equals the
//! request's (as a JSON value) and has a `result.tools` lists only objects named `visible`.
//! "As a client would" includes JSON that JavaScript's `JSON.parse` reads and serde_json refuses:
//! lone surrogate escapes.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{ISSUER, RESOURCE};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::Layer;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "text/event-stream",
    "application/json; charset=utf-8",
    "Text/Event-Stream ; charset=utf-8",
];
const IDS: [&str; 4] = ["1", "\"x\"", "1.5", "-0"];

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
            .policy(
                ToolScopes::new()
                    .tool("visible", ["read"])
                    .tool("hidden", ["admin"]),
            )
            .build()
            .expect("config");
        let authorization = format!("Bearer {}", dev.token(RESOURCE).scope("read").sign());
        Harness {
            auth,
            authorization,
        }
    })
}

/// A response body of fixed chunks.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn same_id(id: &Value, expected: &Value) -> bool {
    match (id, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// The JSON text with every lone UTF-16 surrogate escape (`"\ud800"`) replaced by `\ufffd`, as
/// JavaScript's `JSON.parse` (the TypeScript MCP SDK) and Python's `json` read them; serde_json
/// refuses them. `None` if there is none.
fn without_lone_surrogates(data: &str) -> Option<String> {
    let b = data.as_bytes();
    let (mut out, mut last, mut i, mut in_string) = (String::new(), 0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                let Some(unit) = (b.get(i + 1) == Some(&b'u'))
                    .then(|| hex4(b, i + 2))
                    .flatten()
                else {
                    i += 2;
                    continue;
                };
                let low_follows = b.get(i + 6) == Some(&b'\\')
                    && b.get(i + 7) == Some(&b'u')
                    && hex4(b, i + 8).is_some_and(|low| (0xDC00..0xE000).contains(&low));
                match unit {
                    0xD800..0xDC00 if low_follows => i += 12,
                    0xD800..0xE000 => {
                        out.push_str(&data[last..i]);
                        out.push_str("\\ufffd");
                        i += 6;
                        last = i;
                    }
                    _ => i += 6,
                }
            }
            _ => i += 1,
        }
    }
    if last == 0 {
        return None;
    }
    out.push_str(&data[last..]);
    Some(out)
}

/// Checks one JSON document (a message or a batch) as a client reads it.
fn check_document(data: &str, id: &Value) {
    let value = match serde_json::from_str::<Value>(data) {
        Ok(value) => value,
        Err(_) => match without_lone_surrogates(data).map(|d| serde_json::from_str::<Value>(&d)) {
            Some(Ok(value)) => value,
            _ => return,
        },
    };
    let messages = match value {
        Value::Array(messages) => messages,
        message => vec![message],
    };
    for message in &messages {
        if !message.get("id").is_some_and(|m| same_id(m, id)) {
            continue;
        }
        let Some(tools) = message.get("result").and_then(|r| r.get("tools")) else {
            continue;
        };
        let tools = tools
            .as_array()
            .unwrap_or_else(|| panic!("passed a non-array listing: {data}"));
        for tool in tools {
            assert_eq!(
                tool.get("name").and_then(Value::as_str),
                Some("visible"),
                "passed a tool the caller may not see: {data}"
            );
        }
    }
}

/// Reads an event stream as the WHATWG parser does (lossy UTF-8, one leading BOM dropped, CRLF,
/// LF or CR line ends, `data` values joined by LF), also taking a trailing unterminated event.
fn check_stream(stream: &[u8], id: &Value) {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut data: Option<String> = None;
    let dispatch = |data: &mut Option<String>| {
        if let Some(mut data) = data.take() {
            data.pop();
            check_document(&data, id);
        }
    };
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(at) => {
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..at], &rest[at + skip..])
            }
            None => (rest, ""),
        };
        rest = next;
        if line.is_empty() {
            dispatch(&mut data);
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            let buffer = data.get_or_insert_with(String::new);
            buffer.push_str(value);
            buffer.push('\n');
        }
    }
    dispatch(&mut data);
}

fuzz_target!(|data: &[u8]| {
    let [flags, chunk, body @ ..] = data else {
        return;
    };
    let h = harness();
    let content_type = CONTENT_TYPES[usize::from(flags & 3)];
    let id_text = IDS[usize::from(flags >> 2) & 3];
    let id: Value = serde_json::from_str(id_text).expect("id");
    let chunks: VecDeque<Bytes> = match chunk {
        0 => VecDeque::from([Bytes::copy_from_slice(body)]),
        n => body
            .chunks(usize::from(*n))
            .map(Bytes::copy_from_slice)
            .collect(),
    };

    let inner = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let chunks = chunks.clone();
        async move {
            let mut response = Response::new(Chunks(chunks));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
            Ok::<_, Infallible>(response)
        }
    });
    let request = Request::post("/mcp")
        .header(AUTHORIZATION, &h.authorization)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id_text},"method":"tools/list"}}"#
        ))))
        .expect("request");
    let response = common::call(h.auth.layer().layer(inner), request);
    assert_eq!(response.status(), 200);
    let out = common::collect(response.into_body());
    common::trace(|| match &out {
        Ok(out) => format!("ok: {:?}", String::from_utf8_lossy(out)),
        Err(e) => format!("error: {e}"),
    });
    let Ok(out) = out else {
        return;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("text/event-stream") {
        check_stream(&out, &id);
    } else if let Ok(text) = std::str::from_utf8(&out) {
        check_document(text, &id);
    }
});
