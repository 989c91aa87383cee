//! Reading JSON-RPC messages: only what decisions need, and only if it is unambiguous.
//!
//! The body must be UTF-8 without a BOM, nested no deeper than a bound, and either one JSON
//! object or a non-empty array of objects (a 2025-03-26 batch). Each message must say
//! `"jsonrpc": "2.0"`; the members read (`jsonrpc`, `id`, `method`, `params`, `result`, `error`,
//! and inside `params` the `name`, `uri`, `arguments`, `ref`, and an `initialize`'s
//! `protocolVersion`) must not repeat. Strings are
//! unescaped exactly as the server will unescape them, so `"add\u005fnote"` is `add_note`.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
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
    if openers(bytes) <= max || within_depth(bytes, max) {
        return Ok(());
    }
    Err(malformed().with_detail("nested too deeply"))
}

/// The number of `{` and `[` bytes.
fn openers(bytes: &[u8]) -> usize {
    // Counted into a `u8` per chunk of at most 255 bytes (so it cannot overflow), which keeps
    // one count per byte lane of a SIMD register instead of widening each to a `usize`.
    bytes
        .chunks(255)
        .map(|chunk| {
            let n = chunk
                .iter()
                .fold(0u8, |n, &b| n + u8::from((b == b'{') | (b == b'[')));
            usize::from(n)
        })
        .sum()
}

/// Whether `bytes` nest no deeper than `max`, outside strings.
fn within_depth(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            // A string's bytes never count: jump to its closing quote, escapes and all.
            b'"' => match string_end(bytes, i + 1) {
                Some(end) => i = end,
                // Unterminated, which serde refuses; nothing after it can open a level.
                None => return true,
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// The index of the quote that ends the string whose contents start at `from`.
fn string_end(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', bytes.get(from..)?)?;
        if bytes[at] == b'"' {
            return Some(at);
        }
        // A backslash escapes the next byte, whatever it is.
        from = at + 2;
    }
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// An optional string, borrowed from the body unless it has escapes. (serde borrows a bare
/// `Cow<str>` field but copies one inside an `Option`.)
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Option::<Text<'de>>::deserialize(d).map(|text| text.map(|Text(text)| text))
}

/// A string, borrowed from the body unless it has escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// [`text`] as a value type, for reading a map member by member.
#[derive(Deserialize)]
struct OptionalText<'a>(#[serde(borrow, deserialize_with = "text")] Option<Cow<'a, str>>);

/// The envelope members read; any other member is skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Member {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    #[serde(other)]
    Other,
}

/// The envelope members read. A repeated one is refused, however it is escaped.
struct Envelope<'a> {
    jsonrpc: Cow<'a, str>,
    id: Option<&'a RawValue>,
    method: Option<Cow<'a, str>>,
    params: Option<Params<'a>>,
    result: bool,
    error: bool,
}

/// `params` as read in the envelope's one pass.
///
/// When `method` comes first (the usual order) the method's params are read there and then;
/// otherwise they are kept raw and read once the method is known. Both read the same bytes with
/// the same types, so the order of the members never changes what is accepted.
enum Params<'a> {
    /// Kept for reading once the method is known.
    Raw(&'a RawValue),
    /// A method whose params no decision reads: checked to be JSON, nothing more.
    Unread,
    Initialize(InitializeParams<'a>),
    Named(NamedParams<'a>),
    Uri(UriParams<'a>),
    Complete(CompleteParams<'a>),
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        fn once<T, E: de::Error>(slot: &Option<T>, name: &'static str) -> Result<(), E> {
            match slot {
                Some(_) => Err(E::duplicate_field(name)),
                None => Ok(()),
            }
        }
        let mut jsonrpc = None;
        let mut id = None;
        let mut method: Option<Option<Cow<'de, str>>> = None;
        let mut params = None;
        let mut result = None;
        let mut error = None;
        while let Some(member) = map.next_key::<Member>()? {
            match member {
                Member::Jsonrpc => {
                    once(&jsonrpc, "jsonrpc")?;
                    jsonrpc = Some(map.next_value::<Text<'de>>()?.0);
                }
                Member::Id => {
                    once(&id, "id")?;
                    id = Some(map.next_value::<&'de RawValue>()?);
                }
                Member::Method => {
                    once(&method, "method")?;
                    method = Some(map.next_value::<OptionalText<'de>>()?.0);
                }
                Member::Params => {
                    once(&params, "params")?;
                    params = Some(match method.as_ref().and_then(Option::as_deref) {
                        Some(method) => read_params(&mut map, method)?,
                        None => Params::Raw(map.next_value()?),
                    });
                }
                Member::Result => {
                    once(&result, "result")?;
                    result = Some(map.next_value::<IgnoredAny>()?);
                }
                Member::Error => {
                    once(&error, "error")?;
                    error = Some(map.next_value::<IgnoredAny>()?);
                }
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Envelope {
            jsonrpc: jsonrpc.ok_or_else(|| de::Error::missing_field("jsonrpc"))?,
            id,
            method: method.flatten(),
            params,
            result: result.is_some(),
            error: error.is_some(),
        })
    }
}

/// Reads `params` as `method` needs them.
fn read_params<'de, A: MapAccess<'de>>(map: &mut A, method: &str) -> Result<Params<'de>, A::Error> {
    Ok(match method {
        "initialize" => Params::Initialize(map.next_value::<Object<_>>()?.0),
        "tools/call" | "prompts/get" => Params::Named(map.next_value::<Object<_>>()?.0),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Params::Uri(map.next_value::<Object<_>>()?.0)
        }
        "completion/complete" => Params::Complete(map.next_value::<Object<_>>()?.0),
        _ => {
            map.next_value::<IgnoredAny>()?;
            Params::Unread
        }
    })
}

/// A `T` read from a JSON object only: serde would read a struct from an array positionally.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(StructAsMap(d)).map(Object)
    }
}

/// Hands a struct's visitor to `deserialize_map`, which refuses anything but an object.
struct StructAsMap<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for StructAsMap<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
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
    /// An object, as everywhere: never read positionally from an array.
    #[serde(rename = "ref", borrow)]
    reference: Object<RefParams<'a>>,
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

/// Params a method needs: read in the envelope's pass, or now from the raw value.
trait MethodParams<'a>: Deserialize<'a> {
    /// These params, if the envelope's pass read them as this type.
    fn take(params: Params<'a>) -> Option<Self>;
}

macro_rules! method_params {
    ($($ty:ident => $variant:ident),* $(,)?) => {$(
        impl<'a> MethodParams<'a> for $ty<'a> {
            fn take(params: Params<'a>) -> Option<Self> {
                match params {
                    Params::$variant(params) => Some(params),
                    _ => None,
                }
            }
        }
    )*};
}

method_params! {
    InitializeParams => Initialize,
    NamedParams => Named,
    UriParams => Uri,
    CompleteParams => Complete,
}

fn read<'a, T: MethodParams<'a>>(params: Params<'a>) -> Result<T, AuthError> {
    match params {
        Params::Raw(raw) => object(raw.get()),
        // Read for another method, which a message with one `method` cannot do: refuse.
        other => T::take(other).ok_or_else(malformed),
    }
}

fn required<'a, T: MethodParams<'a>>(params: Option<Params<'a>>) -> Result<T, AuthError> {
    read(params.ok_or_else(|| malformed().with_detail("missing params"))?)
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
                Some(p) => read::<InitializeParams<'_>>(p)?.protocol_version,
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
            let NamedParams { name, arguments } = required(p)?;
            Operation::CallTool { name, arguments }
        }
        "prompts/get" => {
            let NamedParams { name, arguments } = required(p)?;
            Operation::GetPrompt { name, arguments }
        }
        "resources/read" => Operation::ReadResource {
            uri: required::<UriParams<'_>>(p)?.uri,
        },
        "resources/subscribe" => Operation::SubscribeResource {
            uri: required::<UriParams<'_>>(p)?.uri,
        },
        "resources/unsubscribe" => Operation::UnsubscribeResource {
            uri: required::<UriParams<'_>>(p)?.uri,
        },
        "completion/complete" => {
            let CompleteParams {
                reference: Object(reference),
            } = required(p)?;
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

    /// `params` before `method` are kept raw and read once the method is known; after it, they
    /// are read in the envelope's pass. Every row gives the same verdict in both orders.
    #[test]
    fn member_order_never_changes_the_verdict() {
        // (method, params, the target when accepted or None when refused)
        let rows: &[(&str, &str, Option<Option<&str>>)] = &[
            (
                "tools/call",
                r#"{"name":"a","arguments":{"x":[1,{"y":2}]}}"#,
                Some(Some("a")),
            ),
            ("tools/call", r#"{"nam\u0065":"a"}"#, Some(Some("a"))),
            (
                "tools/call",
                r#"{"name":"a","extra":[[{}]]}"#,
                Some(Some("a")),
            ),
            ("tools/call", r#"{"name":"a","name":"b"}"#, None),
            ("tools/call", r#"{"name":"a","n\u0061me":"b"}"#, None),
            (
                "tools/call",
                r#"{"name":"a","arguments":{},"arguments":{}}"#,
                None,
            ),
            ("tools/call", r#"["a"]"#, None),
            ("tools/call", "null", None),
            ("tools/call", r#"{"name":7}"#, None),
            ("tools/call", "{}", None),
            (
                "prompts/get",
                r#"{"name":"p","arguments":{"k":"v"}}"#,
                Some(Some("p")),
            ),
            ("prompts/get", r#"["p",{}]"#, None),
            (
                "resources/read",
                r#"{"uri":"notes://all"}"#,
                Some(Some("notes://all")),
            ),
            ("resources/read", r#"{"uri":"a","uri":"b"}"#, None),
            ("resources/subscribe", r#"["notes://all"]"#, None),
            ("resources/unsubscribe", r#"{"uri":"u"}"#, Some(Some("u"))),
            (
                "initialize",
                r#"{"protocolVersion":"2025-11-25"}"#,
                Some(None),
            ),
            ("initialize", r#"["2025-11-25"]"#, None),
            ("initialize", "null", None),
            (
                "completion/complete",
                r#"{"ref":{"type":"ref/prompt","name":"p"}}"#,
                Some(Some("p")),
            ),
            (
                "completion/complete",
                r#"{"ref":{"type":"ref/resource","uri":"u"}}"#,
                Some(Some("u")),
            ),
            (
                "completion/complete",
                r#"{"ref":{"type":"ref/other"}}"#,
                Some(None),
            ),
            ("completion/complete", r#"{"ref":["ref/prompt","p"]}"#, None),
            (
                "completion/complete",
                r#"[{"type":"ref/prompt","name":"p"}]"#,
                None,
            ),
            ("ping", "[1,2]", Some(None)),
            ("tools/list", r#"{"cursor":"c"}"#, Some(None)),
            ("notifications/initialized", "null", Some(None)),
            ("x/y", r#"{"a":[{"b":[]}]}"#, Some(None)),
        ];
        for &(method, params, expected) in rows {
            let first =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
            let last =
                format!(r#"{{"params":{params},"id":1,"method":"{method}","jsonrpc":"2.0"}}"#);
            let verdicts = [one(&first), one(&last)].map(|verdict| match verdict {
                Ok(op) => {
                    assert_eq!(op.method(), method, "{method} {params}");
                    Ok((op.target().map(str::to_owned), format!("{op:?}")))
                }
                Err(kind) => Err(kind),
            });
            match expected {
                Some(target) => {
                    let Ok((got, _)) = &verdicts[0] else {
                        panic!("{method} {params}: {:?}", verdicts[0]);
                    };
                    assert_eq!(got.as_deref(), target, "{method} {params}");
                }
                None => assert_eq!(
                    verdicts[0],
                    Err(AuthErrorKind::MalformedMessage),
                    "{method} {params}"
                ),
            }
            assert_eq!(
                verdicts[0], verdicts[1],
                "{method} {params}: the orders disagree"
            );
        }
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

    /// The byte-at-a-time walk `within_depth` replaced, kept as its oracle.
    fn byte_walk(bytes: &[u8], max: usize) -> bool {
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

    proptest::proptest! {
        /// The opener count shortcut never changes the verdict of the exact walk.
        #[test]
        fn depth_shortcut_agrees_with_the_walk(
            bytes in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\a".to_vec()), 0..40),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(check_depth(&bytes, max).is_ok(), within_depth(&bytes, max));
        }

        /// The string-skipping walk agrees with the byte-at-a-time walk on any bytes,
        /// unterminated strings and trailing backslashes included.
        #[test]
        fn depth_walk_agrees_with_the_byte_walk(
            bytes in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\a".to_vec()), 0..64),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(within_depth(&bytes, max), byte_walk(&bytes, max));
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
    fn openers_are_counted_across_chunks() {
        for len in [0, 1, 254, 255, 256, 510, 511, 1000] {
            let all = vec![b'{'; len];
            assert_eq!(openers(&all), len, "{len}");
            let mixed: Vec<u8> = (0..len).map(|i| b"{a[\"]}"[i % 6]).collect();
            let expected = mixed.iter().filter(|&&b| b == b'{' || b == b'[').count();
            assert_eq!(openers(&mixed), expected, "{len}");
        }
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
