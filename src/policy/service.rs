//! [`McpPolicy`]: the policy-checking service.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::value::RawValue;
use tower_service::Service;

use super::body::PolicyBody;
use super::classify::{Classified, Operation, classify};
use super::decide::{Decision, Policy, PolicyRequest, decide};
use super::layer::PolicyShared;
use super::listing::{ListKind, ListRequests, ListingBody, ListingFilter};
use super::session::{BindRefused, SessionKey, SessionOwner};
use super::tool_scopes::{BatchMode, DenialStyle};
use crate::audit::AuditRecord;
use crate::audit::event::PolicyProgress;
use crate::error::{AuthError, AuthErrorKind};
use crate::principal::Principal;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
/// `Mcp-Method` and `Mcp-Name` (protocol 2026-07-28). Named once: a `&str` name is re-parsed on
/// every lookup.
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The methods the MCP endpoint accepts (the `Allow` of a 405).
const ALLOWED_METHODS: &str = "GET, POST, DELETE, OPTIONS";

/// Seconds a client is told to wait when no session can be bound.
const SESSION_RETRY_AFTER_SECS: u32 = 30;

/// 503 when the store is full, 429 when the principal holds too many sessions.
fn bind_refused(refused: BindRefused) -> AuthError {
    let kind = match refused {
        BindRefused::OwnerLimit => AuthErrorKind::TooManySessions,
        _ => AuthErrorKind::SessionStoreFull,
    };
    AuthError::new(kind).with_retry_after(SESSION_RETRY_AFTER_SECS)
}

/// Authorizes each JSON-RPC message before calling `S`; built by
/// [`McpPolicyLayer`](super::McpPolicyLayer).
///
/// The checks finish after `call` returns (the body is read first), so each call's future owns
/// the service it calls: `call` moves the ready service out instead of leaving a clone behind.
/// Once its request has been handed to it, that service goes back to a shared pool (of at most
/// 64), and each `poll_ready` takes one from there; only an empty pool clones the copy kept at
/// construction, under the pool's lock. So while the pool has a spare, a server that clones the
/// stack per request (axum does), and the token layer cloning it to verify a token it has not
/// cached, clone no `S`. A service that was polled but not called (its request was refused) is
/// dropped, not pooled, so that whatever its readiness reserved is released.
///
/// A called service serves later requests, possibly on other connections, as the one service
/// behind a `tower::buffer::Buffer` does: `S` must not keep per-request state in itself (axum's
/// `Route` and rmcp's `StreamableHttpService` keep none), and up to 64 of them stay alive.
pub struct McpPolicy<S> {
    /// The service the next `call` uses: set by `poll_ready`, taken by `call`.
    ready: Option<S>,
    spares: Arc<Spares<S>>,
    shared: Arc<PolicyShared>,
}

/// Services already called once, to be polled for another call, and the template new ones are
/// cloned from. Behind a mutex so that `S` need not be `Sync`.
struct Spares<S> {
    pool: Mutex<Pool<S>>,
}

struct Pool<S> {
    template: S,
    idle: Vec<S>,
}

/// Spares kept at most: about as many requests as a server has between `poll_ready` and the
/// inner `call` at once. More are dropped.
const MAX_IDLE: usize = 64;

impl<S: Clone> Spares<S> {
    fn new(template: S) -> Self {
        Self {
            pool: Mutex::new(Pool {
                template,
                idle: Vec::new(),
            }),
        }
    }

    /// A service no call holds. A panic in a clone under the lock poisons nothing that
    /// matters: the template is only read and `idle` holds whole services.
    fn take(&self) -> S {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        match pool.idle.pop() {
            Some(service) => service,
            None => pool.template.clone(),
        }
    }

    /// Pools a service whose `call` has returned: it holds no readiness any more.
    fn give_back(&self, service: S) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.idle.len() < MAX_IDLE {
            pool.idle.push(service);
            return;
        }
        drop(pool);
        // Dropped outside the lock.
        drop(service);
    }
}

impl<S: Clone> McpPolicy<S> {
    pub(crate) fn new(inner: S, shared: Arc<PolicyShared>) -> Self {
        Self {
            spares: Arc::new(Spares::new(inner.clone())),
            ready: Some(inner),
            shared,
        }
    }

    /// Unwraps the inner service: the one at hand, or one from the pool.
    pub fn into_inner(self) -> S {
        match self.ready {
            Some(inner) => inner,
            None => self.spares.take(),
        }
    }
}

impl<S> Clone for McpPolicy<S> {
    fn clone(&self) -> Self {
        Self {
            // Taken from the pool if the clone is ever polled.
            ready: None,
            spares: Arc::clone(&self.spares),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for McpPolicy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpPolicy")
            .field("ready", &self.ready.is_some())
            .finish_non_exhaustive()
    }
}

type BoxResponse<B, E> = Pin<Box<dyn Future<Output = Result<Response<PolicyBody<B>>, E>> + Send>>;

/// Response future of [`McpPolicy`]. Boxed: it reads the body and awaits the policy.
pub struct ResponseFuture<B, E> {
    inner: BoxResponse<B, E>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<PolicyBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for McpPolicy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PolicyBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let spares = &self.spares;
        self.ready
            .get_or_insert_with(|| spares.take())
            .poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Without a `poll_ready` first (a caller's bug), an unpolled service from the pool is
        // called, as a plain clone-and-call middleware would call its unpolled clone.
        let ready = self.ready.take().unwrap_or_else(|| self.spares.take());
        ResponseFuture {
            inner: Box::pin(authorize(
                self.shared.clone(),
                ready,
                self.spares.clone(),
                req,
            )),
        }
    }
}

/// What the request phase learned that the response phase needs.
struct Plan {
    lists: Vec<(String, ListKind)>,
    initialize: bool,
    /// The `id` of the `initialize`, echoed when its session cannot be bound.
    initialize_id: Option<Box<RawValue>>,
}

/// The whole request: checks, then the inner call, then response handling.
async fn authorize<S, ReqBody, ResBody>(
    shared: Arc<PolicyShared>,
    mut inner: S,
    spares: Arc<Spares<S>>,
    req: Request<ReqBody>,
) -> Result<Response<PolicyBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    // Fail closed when the token layer is missing or placed inside this one.
    let Some(principal) = parts.extensions.get::<Principal>() else {
        return Ok(shared.reject(AuthErrorKind::NoPrincipal.into(), None));
    };
    // Only POST carries JSON-RPC; GET (SSE stream), DELETE (session end) and a CORS preflight
    // that got this far name no operation. Anything else would reach the server unclassified.
    let passthrough = match parts.method {
        Method::POST => false,
        Method::GET | Method::DELETE | Method::OPTIONS => true,
        _ => {
            let mut response = shared.reject(AuthErrorKind::MethodNotAllowed.into(), None);
            response
                .headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static(ALLOWED_METHODS));
            return Ok(response);
        }
    };
    let session = match session_key(&parts.headers) {
        Ok(session) => session,
        Err(error) => return Ok(shared.reject(error, None)),
    };
    let record = parts.extensions.get::<AuditRecord>().cloned();
    if let Some(record) = &record {
        record.set_policy(PolicyProgress::Deciding);
        if let Some(key) = &session {
            record.set_session(key.to_base64());
        }
    }
    let authorized = || {
        if let Some(record) = &record {
            record.set_policy(PolicyProgress::Authorized);
        }
    };
    if let (Some(store), Some(key)) = (&shared.sessions, &session) {
        // Fail closed: a session id this store does not know (never minted here, ended, expired)
        // is refused like another principal's. The `initialize` that mints a session carries
        // none; an `initialize` presenting an unknown id is refused too, or its response could
        // bind a live session the store forgot to whoever presented the id.
        let kind = match store.owner(key).await {
            Some(owner) if owner == SessionOwner::of(principal) => None,
            Some(_) => Some(AuthErrorKind::SessionNotOwned),
            None => Some(AuthErrorKind::UnknownSession),
        };
        if let Some(kind) = kind {
            return Ok(shared.reject(kind.into(), None));
        }
    }

    if passthrough {
        // The token (and, for a bound session, ownership) is all these need.
        let delete = parts.method == Method::DELETE;
        authorized();
        let response = inner.call(Request::from_parts(parts, body));
        spares.give_back(inner);
        let response = response.await?;
        if delete
            && response.status().is_success()
            && let (Some(store), Some(key)) = (&shared.sessions, &session)
        {
            store.remove(key).await;
        }
        return Ok(response.map(PolicyBody::inner));
    }

    if let Err(error) = check_content(&parts.headers) {
        return Ok(shared.reject(error, None));
    }
    let bytes = match read_body(body, &parts.headers, shared.max_body).await {
        Ok(bytes) => bytes,
        Err(error) => return Ok(shared.reject(error, None)),
    };
    let plan = {
        // Decide on exactly these bytes; they are what the server receives.
        let classified = match classify(&bytes, shared.max_depth) {
            Ok(classified) => classified,
            Err(error) => return Ok(shared.reject(error, None)),
        };
        if let Err(error) = check_mirrored_headers(&parts.headers, &classified) {
            return Ok(shared.reject(error, None));
        }
        if classified.batch && shared.batches == BatchMode::Refuse {
            return Ok(shared.reject(AuthErrorKind::BatchRefused.into(), None));
        }
        if let Some(record) = &record {
            for message in classified.messages() {
                let op = &message.operation;
                record.add_call(op.method(), op.target(), op.arguments());
            }
        }
        match evaluate(&shared, principal, &parts, &classified).await {
            Ok(plan) => plan,
            Err(response) => return Ok(response),
        }
    };

    // Refuse a new session before the server creates it when its binding could not be kept.
    let new_owner = plan
        .initialize
        .then(|| {
            shared
                .sessions
                .as_ref()
                .map(|_| SessionOwner::of(principal))
        })
        .flatten();
    if let (Some(store), Some(owner)) = (&shared.sessions, &new_owner)
        && let Err(refused) = store.has_room(owner).await
    {
        return Ok(shared.reject(bind_refused(refused), plan.initialize_id.as_deref()));
    }

    let filter = (shared.filter_listings && !plan.lists.is_empty()).then(|| PrincipalFilter {
        policy: shared.policy.clone(),
        principal: principal.clone(),
        parts: parts.clone(),
    });
    authorized();
    let response = inner.call(Request::from_parts(parts, ReqBody::from(bytes)));
    spares.give_back(inner);
    let response = response.await?;

    if plan.initialize
        && response.status().is_success()
        && let Some(store) = &shared.sessions
        && let Some(id) = response
            .headers()
            .get(&SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        && let Some(owner) = new_owner
        && let Err(refused) = store.bind(SessionKey::of(id), owner).await
    {
        // Lost a race for the last slot: the session id never reaches the client, so no
        // session exists that the store does not bind.
        return Ok(shared.reject(bind_refused(refused), plan.initialize_id.as_deref()));
    }

    match filter {
        Some(filter) if response.status().is_success() => {
            let event_stream = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| essence(ct).eq_ignore_ascii_case("text/event-stream"));
            let max = shared.max_body;
            Ok(response.map(|body| {
                PolicyBody::listing(ListingBody::new(
                    body,
                    event_stream,
                    ListRequests(plan.lists),
                    Arc::new(filter),
                    max,
                ))
            }))
        }
        _ => Ok(response.map(PolicyBody::inner)),
    }
}

/// Asks the policy about every message; one refusal refuses the whole body.
async fn evaluate<B>(
    shared: &PolicyShared,
    principal: &Principal,
    parts: &http::request::Parts,
    classified: &Classified<'_>,
) -> Result<Plan, Response<PolicyBody<B>>> {
    let mut plan = Plan {
        lists: Vec::new(),
        initialize: false,
        initialize_id: None,
    };
    let mut needed = BTreeSet::new();
    let mut refused_id: Option<Option<&RawValue>> = None;
    let mut refused_call = false;
    for message in classified.messages() {
        let kind = match message.operation {
            Operation::ListTools => Some(ListKind::Tools),
            Operation::ListPrompts => Some(ListKind::Prompts),
            Operation::ListResources => Some(ListKind::Resources),
            Operation::Initialize { .. } => {
                plan.initialize = true;
                plan.initialize_id = message.id.map(ToOwned::to_owned);
                None
            }
            _ => None,
        };
        if let (Some(kind), Some(id)) = (kind, message.id) {
            plan.lists.push((compact(id), kind));
        }
        let request = PolicyRequest::new(principal, &message.operation, parts);
        match decide(shared.policy.as_ref(), &request).await {
            Decision::Allow => {}
            Decision::NeedsScopes(scopes) => {
                needed.extend(scopes);
                refused_id.get_or_insert(message.id);
                refused_call |= matches!(message.operation, Operation::CallTool { .. });
            }
            Decision::Deny { reason } => {
                if let Some(record) = parts.extensions.get::<AuditRecord>() {
                    record.set_reason_detail(&reason);
                }
                tracing::debug!(
                    target: "tower_mcp_auth::policy",
                    method = message.operation.method(),
                    %reason,
                    "operation denied"
                );
                let error = AuthError::new(AuthErrorKind::AccessDenied);
                return Err(shared.reject(error, message.id));
            }
        }
    }
    let Some(id) = refused_id else {
        return Ok(plan);
    };
    let scope = needed.into_iter().collect::<Vec<_>>().join(" ");
    let error = AuthError::insufficient_scope(scope);
    if shared.denial == DenialStyle::ToolResult && refused_call && !classified.batch {
        return Err(shared.tool_result(&error, id));
    }
    Err(shared.reject(error, id))
}

/// `id` as compact JSON text (how list requests are matched in responses).
fn compact(id: &RawValue) -> String {
    serde_json::from_str::<serde_json::Value>(id.get())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| id.get().to_owned())
}

impl PolicyShared {
    /// A refusal: status and challenge from `error`, a JSON-RPC error body echoing `id`.
    fn reject<B>(&self, error: AuthError, id: Option<&RawValue>) -> Response<PolicyBody<B>> {
        tracing::debug!(
            target: "tower_mcp_auth::policy",
            reason = error.kind().as_str(),
            status = error.status().as_u16(),
            "request refused"
        );
        let code = match error.kind() {
            AuthErrorKind::HeaderMismatch => -32020,
            _ => -32600,
        };
        let mut err = serde_json::json!({ "code": code, "message": error.message() });
        if let Some(scope) = error.required_scope() {
            err["data"] = serde_json::json!({ "required_scope": scope });
        }
        let body = jsonrpc(id, "error", err);
        error
            .to_response_with_body(&self.challenge, body)
            .map(PolicyBody::local)
    }

    /// The opt-in 200 tool result carrying the challenge in `_meta["mcp/www_authenticate"]`.
    fn tool_result<B>(&self, error: &AuthError, id: Option<&RawValue>) -> Response<PolicyBody<B>> {
        let challenge = error.www_authenticate(&self.challenge).unwrap_or_default();
        let result = serde_json::json!({
            "content": [{ "type": "text", "text": error.message() }],
            "isError": true,
            "_meta": { "mcp/www_authenticate": [challenge] },
        });
        let mut response = Response::new(Full::new(jsonrpc(id, "result", result)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response.extensions_mut().insert(error.clone());
        response.map(PolicyBody::local)
    }
}

fn jsonrpc(id: Option<&RawValue>, member: &str, value: serde_json::Value) -> Bytes {
    let id = id.map_or("null", RawValue::get);
    let value = value.to_string();
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"{member}":{value}}}"#
    ))
}

fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The body must be uncompressed `application/json`.
fn check_content(headers: &HeaderMap) -> Result<(), AuthError> {
    let unsupported = || AuthError::new(AuthErrorKind::UnsupportedContent);
    if headers.contains_key(CONTENT_ENCODING) {
        return Err(unsupported());
    }
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(ct), None)
            if ct
                .to_str()
                .is_ok_and(|ct| essence(ct).eq_ignore_ascii_case("application/json")) =>
        {
            Ok(())
        }
        _ => Err(unsupported()),
    }
}

/// Reads the whole body, refusing more than `max` bytes (by `Content-Length` first).
async fn read_body<B>(body: B, headers: &HeaderMap, max: usize) -> Result<Bytes, AuthError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let too_large = || AuthError::new(AuthErrorKind::BodyTooLarge);
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(len) if len > max as u64 => return Err(too_large()),
            Some(_) => {}
            None => return Err(AuthError::new(AuthErrorKind::MalformedMessage)),
        }
    }
    // Frame by frame rather than `collect`: a body that arrives as one chunk (the usual case)
    // is kept as it is, with no buffer list allocated around it. Trailers are ignored, as
    // `Collected::to_bytes` ignores them.
    let mut body = std::pin::pin!(Limited::new(body, max));
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large());
            }
            Err(_) => return Err(AuthError::new(AuthErrorKind::MalformedMessage)),
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if !data.has_remaining() {
            // An empty frame (HTTP/2 often ends a body with one) must not force a copy.
            continue;
        }
        let chunk = data.copy_to_bytes(data.remaining());
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&chunk),
            None if whole.is_empty() => whole = chunk,
            None => {
                let mut buffer = BytesMut::with_capacity(whole.len() + chunk.len());
                buffer.extend_from_slice(&whole);
                buffer.extend_from_slice(&chunk);
                joined = Some(buffer);
            }
        }
    }
    Ok(joined.map_or(whole, BytesMut::freeze))
}

/// The `Mcp-Session-Id`, if exactly one is sent.
fn session_key(headers: &HeaderMap) -> Result<Option<SessionKey>, AuthError> {
    let mut values = headers.get_all(&SESSION_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => {
            Ok(Some(SessionKey::of(v.to_str().map_err(|_| {
                AuthError::new(AuthErrorKind::MalformedMessage)
            })?)))
        }
        _ => Err(AuthError::new(AuthErrorKind::MalformedMessage)),
    }
}

/// A mirrored header value: plain visible ASCII, or the `=?base64?…?=` sentinel (SEP-2243).
fn header_text(headers: &HeaderMap, name: HeaderName) -> Result<Option<String>, AuthError> {
    let mismatch = || AuthError::new(AuthErrorKind::HeaderMismatch);
    let mut values = headers.get_all(&name).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(v), None) => v.to_str().map_err(|_| mismatch())?,
        _ => return Err(mismatch()),
    };
    if let Some(encoded) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| mismatch())?;
        return String::from_utf8(bytes).map(Some).map_err(|_| mismatch());
    }
    Ok(Some(value.to_owned()))
}

/// `Mcp-Method` and `Mcp-Name` (protocol 2026-07-28), when sent, must agree with the body.
fn check_mirrored_headers(
    headers: &HeaderMap,
    classified: &Classified<'_>,
) -> Result<(), AuthError> {
    let method = header_text(headers, MCP_METHOD)?;
    let name = header_text(headers, MCP_NAME)?;
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    let mismatch = Err(AuthError::new(AuthErrorKind::HeaderMismatch));
    let [message] = classified.messages() else {
        return mismatch;
    };
    let op = &message.operation;
    if let Some(method) = method
        && (matches!(op, Operation::Response) || method != op.method())
    {
        return mismatch;
    }
    if let Some(name) = name {
        let named = matches!(
            op,
            Operation::CallTool { .. }
                | Operation::GetPrompt { .. }
                | Operation::ReadResource { .. }
        );
        if !named || op.target() != Some(name.as_str()) {
            return mismatch;
        }
    }
    Ok(())
}

/// Decides listing visibility as the policy would decide a call of each item.
struct PrincipalFilter {
    policy: Arc<dyn Policy>,
    principal: Principal,
    parts: http::request::Parts,
}

impl ListingFilter for PrincipalFilter {
    fn visible<'a>(
        &'a self,
        kind: ListKind,
        item: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let operation = match kind {
                ListKind::Tools => Operation::CallTool {
                    name: item.into(),
                    arguments: None,
                },
                ListKind::Prompts => Operation::GetPrompt {
                    name: item.into(),
                    arguments: None,
                },
                ListKind::Resources => Operation::ReadResource { uri: item.into() },
            };
            let request = PolicyRequest::new(&self.principal, &operation, &self.parts).as_listing();
            decide(self.policy.as_ref(), &request).await.is_allow()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    type Chunk = Result<Frame<Bytes>, std::io::Error>;
    /// (case, frames, `Content-Length`, expected)
    type Case = (
        &'static str,
        Vec<Chunk>,
        Option<&'static str>,
        Result<Bytes, AuthErrorKind>,
    );

    fn data(text: &'static str) -> Chunk {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    fn trailers() -> Chunk {
        Ok(Frame::trailers(HeaderMap::new()))
    }

    fn broken() -> Chunk {
        Err(std::io::Error::other("connection reset"))
    }

    async fn read(
        frames: Vec<Chunk>,
        content_length: Option<&str>,
    ) -> Result<Bytes, AuthErrorKind> {
        let mut headers = HeaderMap::new();
        if let Some(len) = content_length {
            headers.insert(CONTENT_LENGTH, len.parse().unwrap());
        }
        let body = StreamBody::new(futures_util::stream::iter(frames));
        read_body(body, &headers, 10).await.map_err(|e| e.kind())
    }

    #[tokio::test]
    async fn read_body_table() {
        use AuthErrorKind::*;
        let ok = |text: &str| Ok(Bytes::copy_from_slice(text.as_bytes()));
        let cases: Vec<Case> = vec![
            ("no frames", vec![], None, ok("")),
            ("one chunk", vec![data("abc")], Some("3"), ok("abc")),
            ("two chunks", vec![data("ab"), data("c")], None, ok("abc")),
            (
                "three chunks",
                vec![data("a"), data("b"), data("c")],
                None,
                ok("abc"),
            ),
            (
                "empty chunks",
                vec![data(""), data("ab"), data(""), data("c")],
                None,
                ok("abc"),
            ),
            (
                "trailers ignored",
                vec![data("ab"), trailers()],
                None,
                ok("ab"),
            ),
            (
                "exactly the limit",
                vec![data("12345"), data("67890")],
                None,
                ok("1234567890"),
            ),
            (
                "over the limit in chunks",
                vec![data("123456"), data("78901")],
                None,
                Err(BodyTooLarge),
            ),
            (
                "over the limit at once",
                vec![data("12345678901")],
                None,
                Err(BodyTooLarge),
            ),
            (
                "declared over the limit",
                vec![data("a")],
                Some("11"),
                Err(BodyTooLarge),
            ),
            (
                "declared length not a number",
                vec![data("a")],
                Some("x"),
                Err(MalformedMessage),
            ),
            (
                "broken after a chunk",
                vec![data("ab"), broken()],
                None,
                Err(MalformedMessage),
            ),
            (
                "broken at once",
                vec![broken()],
                None,
                Err(MalformedMessage),
            ),
        ];
        for (name, frames, content_length, expected) in cases {
            assert_eq!(read(frames, content_length).await, expected, "{name}");
        }
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_is_not_copied() {
        let chunk = Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}");
        // An empty frame before and after it, as HTTP/2 may send.
        let frames = [Bytes::new(), chunk.clone(), Bytes::new()]
            .map(|data| Ok::<_, std::io::Error>(Frame::data(data)));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let read = read_body(body, &HeaderMap::new(), 1024).await.unwrap();
        assert_eq!(read.as_ptr(), chunk.as_ptr());
    }

    /// Counts its clones and drops.
    struct Tracked(
        Arc<(
            std::sync::atomic::AtomicUsize,
            std::sync::atomic::AtomicUsize,
        )>,
    );

    impl Clone for Tracked {
        fn clone(&self) -> Self {
            self.0.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Self(Arc::clone(&self.0))
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_pool_keeps_at_most_max_idle_and_clones_only_when_empty() {
        use std::sync::atomic::Ordering::SeqCst;
        let counts = Arc::new(Default::default());
        let spares = Spares::new(Tracked(Arc::clone(&counts)));
        let clones = || counts.0.load(SeqCst);
        let drops = || counts.1.load(SeqCst);
        // An empty pool clones the template.
        let taken: Vec<Tracked> = (0..MAX_IDLE + 6).map(|_| spares.take()).collect();
        assert_eq!((clones(), drops()), (MAX_IDLE + 6, 0));
        // Handed back, MAX_IDLE stay and the rest are dropped.
        for service in taken {
            spares.give_back(service);
        }
        assert_eq!((clones(), drops()), (MAX_IDLE + 6, 6));
        // The kept ones are taken before any new clone.
        let again: Vec<Tracked> = (0..MAX_IDLE).map(|_| spares.take()).collect();
        assert_eq!(clones(), MAX_IDLE + 6);
        let _fresh = spares.take();
        assert_eq!(clones(), MAX_IDLE + 7);
        drop(again);
    }
}
