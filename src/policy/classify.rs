//! Reading JSON-RPC messages: only what decisions need, and only if it is unambiguous.
//!
//! The body must be UTF-8 without a BOM, nested no deeper than a bound, and either one JSON
//! object or a non-empty array of objects (a 2025-03-26 batch). Each message must say
//! `"jsonrpc": "2.0"`; the members read (`jsonrpc`, `id`, `method`, `params`, `result`, `error`,
//! and inside `params` the `name`, `uri`, `arguments`, `ref`, and an `initialize`'s
//! `protocolVersion`) must not repeat. Strings are
//! unescaped exactly as the server will unescape them, so `"add\u005fnote"` is `add_note`.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::value::RawValue;

use crate::error::{AuthError, AuthErrorKind};
use crate::json_text::has_lone_surrogate_escape;

/// What a JSON-RPC message asks for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Operation<'a> {
    /// `initialize`.
    Initialize {
        /// `params.protocolVersion`, the revision the client asks for (an `initialize` carries
        /// no `MCP-Protocol-Version` header).
        protocol_version: Option<Cow<'a, str>>,
    },
    /// `ping`.
    Ping,
    /// Any `notifications/*` method.
    Notification {
        /// The method.
        method: Cow<'a, str>,
    },
    /// A client's response to a server request (no `method`).
    Response,
    /// `tools/list`.
    ListTools,
    /// `resources/list`.
    ListResources,
    /// `resources/templates/list`.
    ListResourceTemplates,
    /// `prompts/list`.
    ListPrompts,
    /// `tools/call`.
    CallTool {
        /// `params.name`.
        name: Cow<'a, str>,
        /// `params.arguments`, unparsed.
        arguments: Option<&'a RawValue>,
    },
    /// `resources/read`.
    ReadResource {
        /// `params.uri`.
        uri: Cow<'a, str>,
    },
    /// `resources/subscribe`.
    SubscribeResource {
        /// `params.uri`.
        uri: Cow<'a, str>,
    },
    /// `resources/unsubscribe`.
    UnsubscribeResource {
        /// `params.uri`.
        uri: Cow<'a, str>,
    },
    /// `prompts/get`.
    GetPrompt {
        /// `params.name`.
        name: Cow<'a, str>,
        /// `params.arguments`, unparsed.
        arguments: Option<&'a RawValue>,
    },
    /// `completion/complete`.
    Complete {
        /// What is being completed.
        reference: CompletionRef<'a>,
    },
    /// `logging/setLevel`.
    SetLoggingLevel,
    /// A task method (`tasks/get`, `tasks/result`, `tasks/cancel`, `tasks/list`).
    Task {
        /// The method.
        method: Cow<'a, str>,
    },
    /// Any other method.
    Other {
        /// The method.
        method: Cow<'a, str>,
    },
}

/// The `ref` of a `completion/complete` request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompletionRef<'a> {
    /// `ref/prompt` with its `name`.
    Prompt {
        /// The prompt.
        name: Cow<'a, str>,
    },
    /// `ref/resource` with its `uri` (template).
    Resource {
        /// The resource URI or template.
        uri: Cow<'a, str>,
    },
    /// Another reference type.
    Unknown,
}

impl Operation<'_> {
    /// The JSON-RPC method (`""` for a response).
    pub fn method(&self) -> &str {
        match self {
            Self::Initialize { .. } => "initialize",
            Self::Ping => "ping",
            Self::Notification { method } | Self::Task { method } | Self::Other { method } => {
                method
            }
            Self::Response => "",
            Self::ListTools => "tools/list",
            Self::ListResources => "resources/list",
            Self::ListResourceTemplates => "resources/templates/list",
            Self::ListPrompts => "prompts/list",
            Self::CallTool { .. } => "tools/call",
            Self::ReadResource { .. } => "resources/read",
            Self::SubscribeResource { .. } => "resources/subscribe",
            Self::UnsubscribeResource { .. } => "resources/unsubscribe",
            Self::GetPrompt { .. } => "prompts/get",
            Self::Complete { .. } => "completion/complete",
            Self::SetLoggingLevel => "logging/setLevel",
        }
    }

    /// The tool or prompt name, or the resource URI, the operation targets.
    pub fn target(&self) -> Option<&str> {
        match self {
            Self::CallTool { name, .. } | Self::GetPrompt { name, .. } => Some(name),
            Self::ReadResource { uri }
            | Self::SubscribeResource { uri }
            | Self::UnsubscribeResource { uri } => Some(uri),
            Self::Complete { reference } => match reference {
                CompletionRef::Prompt { name } => Some(name),
                CompletionRef::Resource { uri } => Some(uri),
                CompletionRef::Unknown => None,
            },
            _ => None,
        }
    }

    /// The raw `arguments` of a `tools/call` or `prompts/get`.
    pub fn arguments(&self) -> Option<&RawValue> {
        match self {
            Self::CallTool { arguments, .. } | Self::GetPrompt { arguments, .. } => *arguments,
            _ => None,
        }
    }
}

/// One classified message.
#[derive(Debug, Clone)]
pub(crate) struct Message<'a> {
    /// The raw `id`, if any (absent for notifications).
    pub(crate) id: Option<&'a RawValue>,
    pub(crate) operation: Operation<'a>,
}

/// A classified body.
#[derive(Debug)]
pub(crate) struct Classified<'a> {
    messages: Messages<'a>,
    pub(crate) batch: bool,
}

/// One message is held inline: the usual body is one request, and needs no `Vec`.
#[derive(Debug)]
enum Messages<'a> {
    One(Message<'a>),
    Batch(Vec<Message<'a>>),
}

impl<'a> Classified<'a> {
    /// The messages, in body order.
    pub(crate) fn messages(&self) -> &[Message<'a>] {
        match &self.messages {
            Messages::One(message) => std::slice::from_ref(message),
            Messages::Batch(messages) => messages,
        }
    }
}

fn malformed() -> AuthError {
    AuthError::new(AuthErrorKind::MalformedMessage)
}

/// Classifies a request body.
pub(crate) fn classify(body: &[u8], max_depth: usize) -> Result<Classified<'_>, AuthError> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(malformed().with_detail("byte order mark"));
    }
    let text = std::str::from_utf8(body).map_err(|_| malformed().with_detail("invalid UTF-8"))?;
    check_depth(text.as_bytes(), max_depth)?;
    // Even in `arguments`, which the inner server and policies read, not this parse.
    if has_lone_surrogate_escape(body) {
        return Err(malformed().with_detail("lone surrogate escape"));
    }
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        Some(b'{') => Ok(Classified {
            messages: Messages::One(message(text)?),
            batch: false,
        }),
        Some(b'[') => {
            let elements: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|_| malformed().with_detail("not JSON"))?;
            if elements.is_empty() {
                return Err(malformed().with_detail("empty batch"));
            }
            let messages = elements
                .into_iter()
                .map(|raw| message(raw.get()))
                .collect::<Result<_, _>>()?;
            Ok(Classified {
                messages: Messages::Batch(messages),
                batch: true,
            })
        }
        _ => Err(malformed().with_detail("not a JSON object")),
    }
}

/// Refuses JSON nested deeper than `max` (before serde sees it).
fn check_depth(bytes: &[u8], max: usize) -> Result<(), AuthError> {
    // Nesting never exceeds the number of `{` and `[` bytes. Counting them is one branch-free
    // (SIMD) pass; the structure is walked only when the count leaves room for doubt.
    let openers = bytes
        .iter()
        .fold(0usize, |n, &b| n + usize::from((b == b'{') | (b == b'[')));
    if openers <= max || within_depth(bytes, max) {
        return Ok(());
    }
    Err(malformed().with_detail("nested too deeply"))
}

/// Whether `bytes` nest no deeper than `max`, outside strings.
fn within_depth(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// An optional string, borrowed from the body unless it has escapes. (serde borrows a bare
/// `Cow<str>` field but copies one inside an `Option`.)
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Text<'de>>::deserialize(d).map(|text| text.map(|Text(text)| text))
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// The envelope members read. serde refuses a repeated member, however it is escaped.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "text")]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "raw")]
    params: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    result: bool,
    #[serde(default, deserialize_with = "present")]
    error: bool,
}

#[derive(Deserialize)]
struct NamedParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InitializeParams<'a> {
    #[serde(default, rename = "protocolVersion", borrow, deserialize_with = "text")]
    protocol_version: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UriParams<'a> {
    #[serde(borrow)]
    uri: Cow<'a, str>,
}

#[derive(Deserialize)]
struct CompleteParams<'a> {
    #[serde(rename = "ref", borrow)]
    reference: RefParams<'a>,
}

#[derive(Deserialize)]
struct RefParams<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "text")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    uri: Option<Cow<'a, str>>,
}

/// Parses `text` (one JSON object) as `T`, refusing arrays, which serde would read positionally.
fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, AuthError> {
    if !text.trim_start().starts_with('{') {
        return Err(malformed().with_detail("not a JSON object"));
    }
    serde_json::from_str(text).map_err(|_| malformed())
}

fn params<'a, T: Deserialize<'a>>(params: Option<&'a RawValue>) -> Result<T, AuthError> {
    object(
        params
            .ok_or_else(|| malformed().with_detail("missing params"))?
            .get(),
    )
}

fn message(text: &str) -> Result<Message<'_>, AuthError> {
    let envelope: Envelope<'_> = object(text)?;
    if envelope.jsonrpc != "2.0" {
        return Err(malformed().with_detail("jsonrpc is not \"2.0\""));
    }
    let Some(method) = envelope.method else {
        if envelope.result == envelope.error {
            return Err(malformed().with_detail("neither request nor response"));
        }
        return Ok(Message {
            id: envelope.id,
            operation: Operation::Response,
        });
    };
    if envelope.result || envelope.error {
        return Err(malformed().with_detail("both request and response"));
    }
    let p = envelope.params;
    let operation = match &*method {
        "initialize" => Operation::Initialize {
            // Optional here (the server judges a missing one), but read strictly when present.
            protocol_version: match p {
                Some(p) => object::<InitializeParams<'_>>(p.get())?.protocol_version,
                None => None,
            },
        },
        "ping" => Operation::Ping,
        "tools/list" => Operation::ListTools,
        "resources/list" => Operation::ListResources,
        "resources/templates/list" => Operation::ListResourceTemplates,
        "prompts/list" => Operation::ListPrompts,
        "logging/setLevel" => Operation::SetLoggingLevel,
        "tools/call" => {
            let NamedParams { name, arguments } = params(p)?;
            Operation::CallTool { name, arguments }
        }
        "prompts/get" => {
            let NamedParams { name, arguments } = params(p)?;
            Operation::GetPrompt { name, arguments }
        }
        "resources/read" => Operation::ReadResource {
            uri: params::<UriParams<'_>>(p)?.uri,
        },
        "resources/subscribe" => Operation::SubscribeResource {
            uri: params::<UriParams<'_>>(p)?.uri,
        },
        "resources/unsubscribe" => Operation::UnsubscribeResource {
            uri: params::<UriParams<'_>>(p)?.uri,
        },
        "completion/complete" => {
            let CompleteParams { reference } = params(p)?;
            let reference = match (&*reference.kind, reference.name, reference.uri) {
                ("ref/prompt", Some(name), _) => CompletionRef::Prompt { name },
                ("ref/resource", _, Some(uri)) => CompletionRef::Resource { uri },
                _ => CompletionRef::Unknown,
            };
            Operation::Complete { reference }
        }
        m if m.starts_with("notifications/") => Operation::Notification { method },
        m if m.starts_with("tasks/") => Operation::Task { method },
        _ => Operation::Other { method },
    };
    Ok(Message {
        id: envelope.id,
        operation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Operation<'_>, AuthErrorKind> {
        classify(body.as_bytes(), 64)
            .map(|c| match c.messages {
                Messages::One(message) => message.operation,
                Messages::Batch(mut messages) => messages.remove(0).operation,
            })
            .map_err(|e| e.kind())
    }

    #[test]
    fn operations() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add\u005fnote","arguments":{"text":"x"}}}"#;
        let op = one(call).unwrap();
        assert_eq!(op.target(), Some("add_note"));
        assert_eq!(op.arguments().unwrap().get(), r#"{"text":"x"}"#);
        let read = one(r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"notes://all"}}"#).unwrap();
        assert!(matches!(read, Operation::ReadResource { ref uri } if uri == "notes://all"));
        let note = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(note.method(), "notifications/initialized");
        assert!(matches!(note, Operation::Notification { .. }));
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#).unwrap(),
            Operation::Response
        ));
        let complete = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":"b"}}}"#;
        assert_eq!(one(complete).unwrap().target(), Some("p"));
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"x/y"}"#).unwrap(),
            Operation::Other { .. }
        ));
    }

    #[test]
    fn refusals() {
        let cases = [
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","m\u0065thod":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{},"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["a"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"["jsonrpc"]"#,
            "[]",
            "42",
            "",
            "{",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} trailing"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":"\ud800"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"x":"\uDC00"}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping","\udbff":0}]"#,
        ];
        for body in cases {
            assert_eq!(
                one(body).unwrap_err(),
                AuthErrorKind::MalformedMessage,
                "{body}"
            );
        }
        let invalid_utf8 = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffng\"}";
        assert!(classify(invalid_utf8, 64).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(classify(deep.as_bytes(), 64).is_err());
    }

    #[test]
    fn initialize_protocol_version() {
        let version = |body: &str| match one(body) {
            Ok(Operation::Initialize { protocol_version }) => {
                Ok(protocol_version.map(|v| v.into_owned()))
            }
            Ok(other) => panic!("{other:?}"),
            Err(kind) => Err(kind),
        };
        let init = |params: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{params}}}"#)
        };
        assert_eq!(
            version(&init(
                r#"{"protocolVersion":"2025-06-18","capabilities":{}}"#
            )),
            Ok(Some("2025-06-18".into()))
        );
        assert_eq!(
            version(&init(r#"{"protocolVers\u0069on":"2025-11-25"}"#)),
            Ok(Some("2025-11-25".into()))
        );
        assert_eq!(version(&init("{}")), Ok(None));
        assert_eq!(version(&init(r#"{"protocolVersion":null}"#)), Ok(None));
        assert_eq!(
            version(r#"{"jsonrpc":"2.0","id":0,"method":"initialize"}"#),
            Ok(None)
        );
        for params in [
            r#"{"protocolVersion":"2025-06-18","protocolVersion":"2024-11-05"}"#,
            r#"{"protocolVersion":"2025-06-18","protocolVers\u0069on":"2024-11-05"}"#,
            r#"{"protocolVersion":20250618}"#,
            r#"["2025-06-18"]"#,
        ] {
            assert_eq!(
                version(&init(params)),
                Err(AuthErrorKind::MalformedMessage),
                "{params}"
            );
        }
    }

    #[test]
    fn surrogate_pairs_and_escaped_backslashes_are_text() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":"\ud83d\ude00 \\ud800"}}}"#;
        assert!(matches!(
            one(body),
            Ok(Operation::CallTool { name, .. }) if name == "a"
        ));
    }

    proptest::proptest! {
        /// The opener count shortcut never changes the verdict of the exact walk.
        #[test]
        fn depth_shortcut_agrees_with_the_walk(
            bytes in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\a".to_vec()), 0..40),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(check_depth(&bytes, max).is_ok(), within_depth(&bytes, max));
        }
    }

    #[test]
    fn unescaped_strings_are_borrowed_and_escaped_ones_decoded() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#;
        let c = classify(body.as_bytes(), 8).unwrap();
        assert!(matches!(
            c.messages()[0].operation,
            Operation::CallTool {
                name: Cow::Borrowed("a"),
                ..
            }
        ));
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#;
        let c = classify(init.as_bytes(), 8).unwrap();
        assert!(matches!(
            c.messages()[0].operation,
            Operation::Initialize {
                protocol_version: Some(Cow::Borrowed("2025-11-25"))
            }
        ));
        let escaped = r#"{"jsonrpc":"2.0","method":"notifications\/x","params":{}}"#;
        let c = classify(escaped.as_bytes(), 8).unwrap();
        assert!(matches!(
            &c.messages()[0].operation,
            Operation::Notification { method: Cow::Owned(m) } if m == "notifications/x"
        ));
        // `null` stays "absent", as before.
        let null = r#"{"jsonrpc":"2.0","id":1,"method":null,"result":{}}"#;
        let c = classify(null.as_bytes(), 8).unwrap();
        assert!(matches!(c.messages()[0].operation, Operation::Response));
        let num = r#"{"jsonrpc":"2.0","id":1,"method":7}"#;
        assert!(classify(num.as_bytes(), 8).is_err());
    }

    #[test]
    fn depth_is_exact_at_the_bound() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_depth(nested(4).as_bytes(), 4).is_ok());
        assert!(check_depth(nested(5).as_bytes(), 4).is_err());
        // More openers than the bound, but side by side: walked, and accepted.
        assert!(check_depth(b"[[],[],[],[],[]]", 2).is_ok());
        assert!(check_depth(b"[[],[],[[[]]],[]]", 3).is_err());
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"[[[[\"{{{{","arguments":{}}}"#;
        assert!(classify(body.as_bytes(), 3).is_ok());
    }

    #[test]
    fn batches() {
        let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}]"#;
        let c = classify(body.as_bytes(), 64).unwrap();
        assert!(c.batch);
        assert_eq!(c.messages().len(), 2);
        assert_eq!(c.messages()[1].id.unwrap().get(), "2");
        let bad = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}, 3]"#;
        assert!(classify(bad.as_bytes(), 64).is_err());
    }
}
