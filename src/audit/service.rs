//! [`AuditLayer`] and [`Audit`]: one event per request, emitted when the response head is known
//! (or, for a request dropped before it, when it is dropped).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::emitter::{AuditEmitter, AuditPermit, Overflowed};
use super::event::{
    AuditEvent, AuditRecord, CANCELLED_REASON, CANCELLED_STATUS, DecisionKind, HttpFacts, Outcome,
    PolicyProgress, PrincipalFacts, RedactArguments, SCHEMA_VERSION, TokenFacts,
};
use crate::error::{AuthError, AuthErrorKind};

/// Emits one [`AuditEvent`] per request through an [`AuditEmitter`]. Place it outermost (the
/// [`McpAuth`](crate::McpAuth) stack does).
#[derive(Clone)]
#[must_use]
pub struct AuditLayer {
    shared: Arc<AuditShared>,
}

struct AuditShared {
    emitter: Option<AuditEmitter>,
    resource: Arc<str>,
    redact: Option<Arc<dyn RedactArguments>>,
}

impl AuditLayer {
    /// Audits every request for `resource` through `emitter`.
    pub fn new(emitter: AuditEmitter, resource: impl Into<Arc<str>>) -> Self {
        Self {
            shared: Arc::new(AuditShared {
                emitter: Some(emitter),
                resource: resource.into(),
                redact: None,
            }),
        }
    }

    /// A layer that audits nothing (the stack without an emitter).
    pub(crate) fn disabled() -> Self {
        Self {
            shared: Arc::new(AuditShared {
                emitter: None,
                resource: Arc::from(""),
                redact: None,
            }),
        }
    }

    /// Records tool and prompt arguments in the redacted form `redact` returns. Off by default:
    /// arguments are not recorded.
    pub fn redact_arguments(self, redact: impl RedactArguments) -> Self {
        self.redact_arguments_shared(Arc::new(redact))
    }

    pub(crate) fn redact_arguments_shared(self, redact: Arc<dyn RedactArguments>) -> Self {
        Self {
            shared: Arc::new(AuditShared {
                emitter: self.shared.emitter.clone(),
                resource: self.shared.resource.clone(),
                redact: Some(redact),
            }),
        }
    }
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("enabled", &self.shared.emitter.is_some())
            .field("resource", &self.shared.resource)
            .field("redact", &self.shared.redact.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The auditing service; see [`AuditLayer`].
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    shared: Arc<AuditShared>,
}

impl<S> Audit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the event needs from the request.
struct Pending {
    record: AuditRecord,
    method: String,
    path: String,
    request_id: String,
    remote_addr: Option<String>,
    started: Instant,
    shared: Arc<AuditShared>,
}

type ReserveFuture = Pin<Box<dyn Future<Output = Result<AuditPermit, Overflowed>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(emitter) = &self.shared.emitter else {
            return ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(req),
                    guard: EventGuard::default(),
                },
            };
        };
        let started = Instant::now();
        let record = AuditRecord::new(self.shared.redact.clone());
        req.extensions_mut().insert(record.clone());
        let pending = Pending {
            record,
            method: req.method().as_str().to_owned(),
            path: req.uri().path().to_owned(),
            request_id: request_id(req.headers()),
            remote_addr: req
                .extensions()
                .get::<std::net::SocketAddr>()
                .map(ToString::to_string),
            started,
            shared: self.shared.clone(),
        };
        // Fast path: a free slot (or a decided overflow) needs no future.
        match emitter.try_reserve_now() {
            Some(Ok(permit)) => ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(req),
                    guard: EventGuard {
                        permit: Some(permit),
                        pending: Some(pending),
                    },
                },
            },
            Some(Err(Overflowed)) => {
                // Counted here, not when polled: a refused future dropped unpolled counts too.
                emitter.count_rejected();
                ResponseFuture {
                    state: State::Overflowed,
                }
            }
            None => {
                let emitter = emitter.clone();
                let reserve: ReserveFuture = Box::pin(async move { emitter.reserve().await });
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Reserving {
                        reserve,
                        request: Some(req),
                        service: Some(ready),
                        guard: EventGuard {
                            permit: None,
                            pending: Some(pending),
                        },
                    },
                }
            }
        }
    }
}

/// The one event of a request, until it is sent. Dropped while still holding the request's
/// facts (the response future was dropped before the response head: the client went away, a
/// timeout fired, a layer below panicked), it sends the event as
/// [`Outcome::Cancelled`]: every request that reached the audit layer gets exactly one event.
#[derive(Default)]
struct EventGuard {
    /// The reserved slot; `None` while waiting for one.
    permit: Option<AuditPermit>,
    /// The request's facts; `None` once the event is sent (or when auditing is off).
    pending: Option<Pending>,
}

impl EventGuard {
    /// Sends the event of a request whose response head is known.
    fn complete(&mut self, status: StatusCode, error: Option<&AuthError>) {
        if let (Some(permit), Some(pending)) = (self.permit.take(), self.pending.take()) {
            permit.send(event(pending, status.as_u16(), Outcome::Completed, error));
        }
    }

    /// Sends nothing: the request is refused without an event (counted as rejected).
    fn disarm(&mut self) -> Option<Pending> {
        self.permit = None;
        self.pending.take()
    }
}

impl Drop for EventGuard {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        // A panic unwinding through the audit layer usually ends as a 500 further out.
        let status = if std::thread::panicking() {
            StatusCode::INTERNAL_SERVER_ERROR.as_u16()
        } else {
            CANCELLED_STATUS
        };
        let emitter = pending.shared.emitter.clone();
        let event = event(pending, status, Outcome::Cancelled, None);
        match (self.permit.take(), emitter) {
            (Some(permit), _) => permit.send(event),
            // Cancelled while waiting for a slot (`Overflow::Wait`).
            (None, Some(emitter)) => emitter.send_detached(event),
            (None, None) => {}
        }
    }
}

pin_project! {
    /// Response future of [`Audit`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, S::Future, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, ReqBody> {
        Reserving {
            reserve: ReserveFuture,
            request: Option<Request<ReqBody>>,
            service: Option<S>,
            guard: EventGuard,
        },
        Calling {
            // Declared first, so dropped first: a cancelled event sees what the inner layers
            // recorded, and is sent once they are gone.
            #[pin]
            future: F,
            guard: EventGuard,
        },
        Overflowed,
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reserving {
                    reserve,
                    request,
                    service,
                    guard,
                } => {
                    let reserved = ready!(reserve.as_mut().poll(cx));
                    let (Some(request), Some(mut service)) = (request.take(), service.take())
                    else {
                        panic!("audit ResponseFuture polled after completion");
                    };
                    match reserved {
                        Ok(permit) => {
                            let future = service.call(request);
                            let mut guard = std::mem::take(guard);
                            guard.permit = Some(permit);
                            this.state.set(State::Calling { future, guard });
                        }
                        Err(Overflowed) => {
                            // Shut down while waiting: refused, like `Reject` on a full queue.
                            if let Some(emitter) =
                                guard.disarm().and_then(|p| p.shared.emitter.clone())
                            {
                                emitter.count_rejected();
                            }
                            this.state.set(State::Overflowed);
                            return Poll::Ready(Ok(overflow_response()));
                        }
                    }
                }
                StateProj::Overflowed => return Poll::Ready(Ok(overflow_response())),
                StateProj::Calling { future, guard } => {
                    let result = ready!(future.poll(cx));
                    let status = match &result {
                        Ok(response) => response.status(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    let error = result
                        .as_ref()
                        .ok()
                        .and_then(|r| r.extensions().get::<AuthError>());
                    guard.complete(status, error);
                    return Poll::Ready(result);
                }
            }
        }
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// 503 when the audit queue is full and the overflow policy is `Reject` (compliance mode).
fn overflow_response<B: Default>() -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
        .extensions_mut()
        .insert(AuthError::new(AuthErrorKind::AuditUnavailable));
    response
}

/// The event of `pending`. A completed request is denied iff a layer put an [`AuthError`] in
/// the response; a cancelled one is allowed iff the token layer had accepted the credential, no
/// layer had refused it, and a policy layer that saw it had forwarded it (not still deciding).
fn event(pending: Pending, status: u16, outcome: Outcome, error: Option<&AuthError>) -> AuditEvent {
    let data = pending.record.with(std::mem::take);
    let principal = data.principal.as_ref();
    let (decision, reason) = match (outcome, error) {
        (_, Some(error)) => (DecisionKind::Deny, Some(error.kind().as_str().to_owned())),
        (Outcome::Cancelled, None)
            if data.principal.is_none()
                || data.reason_detail.is_some()
                || data.policy == PolicyProgress::Deciding =>
        {
            (DecisionKind::Deny, Some(CANCELLED_REASON.to_owned()))
        }
        _ => (DecisionKind::Allow, None),
    };
    AuditEvent {
        schema: SCHEMA_VERSION,
        time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        event_id: unique_id(),
        request_id: pending.request_id,
        http: HttpFacts {
            method: pending.method,
            path: pending.path,
            status,
        },
        decision,
        reason,
        reason_detail: data.reason_detail,
        mcp: data.calls,
        session: data.session,
        principal: principal.map(PrincipalFacts::of),
        required_scopes: error
            .and_then(AuthError::required_scope)
            .map(|s| s.split(' ').map(str::to_owned).collect())
            .unwrap_or_default(),
        token: principal.map(TokenFacts::of),
        resource: pending.shared.resource.to_string(),
        remote_addr: pending.remote_addr,
        latency_us: u64::try_from(pending.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        arguments: (!data.arguments.is_empty()).then_some(data.arguments),
        outcome,
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The trace id of a W3C `traceparent`, else a sane `x-request-id`, else a new UUID.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(trace_id) = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return trace_id.to_ascii_lowercase();
    }
    if let Some(id) = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
    {
        return id.to_owned();
    }
    unique_id()
}

/// A UUID v4-shaped id, unique per process (random base, counter in the low bits): no system
/// call per event.
fn unique_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: OnceLock<u128> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    // The low 62 bits hold neither the version nor the variant bits.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & ((1 << 62) - 1);
    let mut text = uuid::Uuid::encode_buffer();
    String::from(
        uuid::Uuid::from_u128(base ^ u128::from(n))
            .hyphenated()
            .encode_lower(&mut text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(request_id(&h), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", "req-42".parse().unwrap());
        assert_eq!(request_id(&h), "req-42");
        h.insert("x-request-id", "bad id\"".parse().unwrap());
        assert_eq!(request_id(&h).len(), 36);
    }

    #[test]
    fn unique_ids_are_distinct_lowercase_uuid_v4() {
        let (a, b) = (unique_id(), unique_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let uuid = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, uuid.hyphenated().to_string(), "hyphenated lowercase");
        }
    }
}
