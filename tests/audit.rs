//! The audit layer end to end (in process): delivery under overflow policies, shutdown flush,
//! cancelled requests, delegation chains, argument redaction, schema validity and secret
//! hygiene.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::audit::{
    self, AuditEvent, AuditOptions, AuditSink, ChannelSink, DecisionKind, FsyncPolicy,
    JsonLinesSink, Outcome, Overflow, SinkError,
};
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::DevIssuer;

const RESOURCE: &str = "https://mcp.example.com/mcp";

fn inner() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    })
}

fn auth(dev: &DevIssuer, emitter: audit::AuditEmitter) -> McpAuth {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(
            ToolScopes::new()
                .tool("list_notes", ["notes:read"])
                .tool("add_note", ["notes:write"]),
        )
        .audit(emitter)
        .build()
        .unwrap()
}

fn call(token: &str, tool: &str) -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"secret text","id":7}}}}}}"#
        ))))
        .unwrap()
}

fn validate(events: &[AuditEvent]) {
    common::assert_schema_valid(events);
}

/// A sink that takes `delay` per write and keeps the events.
#[derive(Debug)]
struct SlowSink {
    delay: Duration,
    written: AtomicUsize,
    events: Mutex<Vec<AuditEvent>>,
}

#[async_trait]
impl AuditSink for SlowSink {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        self.written.fetch_add(events.len(), Ordering::SeqCst);
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

#[tokio::test]
async fn wait_loses_nothing_with_a_slow_sink() {
    let dev = DevIssuer::new("https://as.example.com");
    let sink = Arc::new(SlowSink {
        delay: Duration::from_millis(5),
        written: AtomicUsize::new(0),
        events: Mutex::new(Vec::new()),
    });
    let (emitter, handle) = audit::spawn(
        sink.clone(),
        AuditOptions::default().capacity(2).max_batch(1),
    );
    let service = auth(&dev, emitter).layer().layer(inner());
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let service = service.clone();
        let request = call(&token, "list_notes");
        tasks.push(tokio::spawn(async move {
            service.oneshot(request).await.unwrap().status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    handle.shutdown().await.unwrap();
    assert_eq!(sink.written.load(Ordering::SeqCst), 20);
    let events = sink.events.lock().unwrap().clone();
    validate(&events);
    assert!(events.iter().all(|e| e.decision == DecisionKind::Allow));
}

/// A sink whose writes wait until the test opens its gate; it keeps the events and says when
/// the first write started.
#[derive(Debug)]
struct GatedSink {
    started: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
    events: Mutex<Vec<AuditEvent>>,
}

impl Default for GatedSink {
    fn default() -> Self {
        Self {
            started: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            events: Mutex::new(Vec::new()),
        }
    }
}

impl GatedSink {
    fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait]
impl AuditSink for GatedSink {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        self.started.notify_one();
        let _open = self.gate.acquire().await.map_err(|_| SinkError::Closed)?;
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// The inner service of the cancellation tests: answers 200, except that a request with
/// `x-test: hang` says it arrived and never answers, and one with `x-test: panic` panics.
#[derive(Clone, Default)]
struct Inner {
    calls: Arc<AtomicUsize>,
    reached: Arc<tokio::sync::Notify>,
}

impl Service<Request<Full<Bytes>>> for Inner {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let reached = self.reached.clone();
        let test = req
            .headers()
            .get("x-test")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        Box::pin(async move {
            match test.as_deref() {
                Some("hang") => {
                    reached.notify_one();
                    std::future::pending().await
                }
                Some("panic") => panic!("inner service panics"),
                _ => Ok(Response::new(Full::new(Bytes::from_static(b"{}")))),
            }
        })
    }
}

fn with_test(mut request: Request<Full<Bytes>>, test: &'static str) -> Request<Full<Bytes>> {
    request
        .headers_mut()
        .insert("x-test", http::HeaderValue::from_static(test));
    request
}

/// Sends `n` sequential requests through a stack whose audit sink is stuck (until the end),
/// with a queue of 2; returns the statuses, the emitter's counters before the sink is released,
/// and every event written once it is.
async fn through_a_stuck_sink(
    overflow: Overflow,
    n: usize,
) -> (Vec<u16>, audit::AuditStats, Vec<AuditEvent>) {
    let dev = DevIssuer::new("https://as.example.com");
    let sink = Arc::new(GatedSink::default());
    let options = AuditOptions::default()
        .capacity(2)
        .max_batch(1)
        .overflow(overflow);
    let (emitter, handle) = audit::spawn(sink.clone(), options);
    let mut service = auth(&dev, emitter).layer().layer(inner());
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let mut statuses = Vec::new();
    for i in 0..n {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(call(&token, "list_notes"))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if i == 0 {
            // The first event is taken by the stuck sink; the queue is empty again.
            tokio::time::timeout(Duration::from_secs(10), sink.started.notified())
                .await
                .unwrap();
        }
    }
    let stats = handle.stats();
    sink.open();
    handle.shutdown().await.unwrap();
    let events = sink.events();
    validate(&events);
    (statuses, stats, events)
}

#[tokio::test]
async fn wait_holds_the_request_until_the_sink_drains() {
    let dev = DevIssuer::new("https://as.example.com");
    let sink = Arc::new(GatedSink::default());
    let options = AuditOptions::default().capacity(1).max_batch(1);
    let (emitter, handle) = audit::spawn(sink.clone(), options);
    let inner = Inner::default();
    let service = auth(&dev, emitter).layer().layer(inner.clone());
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    // The first event is taken by the stuck sink, the second fills the queue of 1.
    let first = service.clone().oneshot(call(&token, "list_notes")).await;
    assert_eq!(first.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(10), sink.started.notified())
        .await
        .unwrap();
    let second = service.clone().oneshot(call(&token, "list_notes")).await;
    assert_eq!(second.unwrap().status(), 200);
    // The third waits for room, before anything processes it.
    let third = tokio::spawn(service.clone().oneshot(call(&token, "list_notes")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "with a full queue the request waits");
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "nor is it processed");
    sink.open();
    let third = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the request proceeds once the sink drains");
    assert_eq!(third.unwrap().unwrap().status(), 200);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    handle.shutdown().await.unwrap();
    let events = sink.events();
    assert_eq!(events.len(), 3);
    validate(&events);
    assert!(events.iter().all(|e| e.outcome == Outcome::Completed));
}

#[tokio::test]
async fn reject_answers_503_once_the_queue_is_full() {
    let (statuses, stats, events) = through_a_stuck_sink(Overflow::Reject, 6).await;
    // One event is stuck in the sink, two fill the queue; every later request is refused
    // before it is processed, and counted.
    assert_eq!(statuses, [200, 200, 200, 503, 503, 503]);
    assert_eq!(stats.accepted, 3);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.rejected, 3);
    assert_eq!(events.len(), 3, "every accepted request has its event");
    assert!(events.iter().all(|e| e.http.status == 200));
}

#[tokio::test]
async fn drop_counts_exactly_what_is_missing() {
    let (statuses, stats, events) = through_a_stuck_sink(Overflow::Drop, 10).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "drop mode never refuses"
    );
    assert_eq!(stats.accepted, 3);
    assert_eq!(stats.dropped, 7);
    assert_eq!(stats.rejected, 0);
    assert_eq!(events.len() as u64, 10 - stats.dropped);
}

async fn drain(
    handle: &audit::AuditHandle,
    rx: &mut tokio::sync::mpsc::Receiver<AuditEvent>,
) -> Vec<AuditEvent> {
    handle.flush().await.unwrap();
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    validate(&events);
    events
}

#[tokio::test]
async fn a_request_dropped_before_its_response_has_exactly_one_event() {
    let dev = DevIssuer::new("https://as.example.com");
    let (sink, mut rx) = ChannelSink::new(64);
    let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
    let inner = Inner::default();
    let mut service = auth(&dev, emitter).layer().layer(inner.clone());
    let token = dev.token(RESOURCE).scope("notes:read").sign();

    // Dropped before it was ever polled: nothing was decided.
    let future = service
        .ready()
        .await
        .unwrap()
        .call(call(&token, "list_notes"));
    drop(future);
    let events = drain(&handle, &mut rx).await;
    assert_eq!(events.len(), 1, "one event for a future dropped unpolled");
    let e = &events[0];
    assert_eq!(e.outcome, Outcome::Cancelled);
    assert_eq!(e.http.status, audit::CANCELLED_STATUS);
    assert_eq!(e.decision, DecisionKind::Deny);
    assert_eq!(e.reason.as_deref(), Some(audit::CANCELLED_REASON));
    assert!(e.principal.is_none() && e.mcp.is_empty());

    // Dropped while the MCP service works on it (the client went away): the layers had
    // allowed it, and the event says who called what.
    let task = tokio::spawn(
        service
            .clone()
            .oneshot(with_test(call(&token, "list_notes"), "hang")),
    );
    tokio::time::timeout(Duration::from_secs(10), inner.reached.notified())
        .await
        .unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let events = drain(&handle, &mut rx).await;
    assert_eq!(
        events.len(),
        1,
        "one event for a request cancelled in the service"
    );
    let e = &events[0];
    assert_eq!(e.outcome, Outcome::Cancelled);
    assert_eq!(e.http.status, 499);
    assert_eq!(e.decision, DecisionKind::Allow);
    assert_eq!(e.reason, None);
    assert_eq!(e.principal.as_ref().unwrap().subject, "dev-user");
    assert_eq!(e.mcp[0].target.as_deref(), Some("list_notes"));
    assert!(e.token.is_some());

    // A panic below the audit layer: one event, status 500.
    let task = tokio::spawn(
        service
            .clone()
            .oneshot(with_test(call(&token, "list_notes"), "panic")),
    );
    assert!(task.await.unwrap_err().is_panic());
    let events = drain(&handle, &mut rx).await;
    assert_eq!(
        events.len(),
        1,
        "one event for a request whose service panicked"
    );
    assert_eq!(events[0].outcome, Outcome::Cancelled);
    assert_eq!(events[0].http.status, 500);
    assert_eq!(events[0].decision, DecisionKind::Allow);

    // Completed, then the (finished) future dropped: still exactly one event.
    let mut future = Box::pin(
        service
            .ready()
            .await
            .unwrap()
            .call(call(&token, "list_notes")),
    );
    let response = (&mut future).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(future);
    drop(response);
    // A refused request, completed: one event, no cancellation.
    let refused = service
        .clone()
        .oneshot(call("not-a-token", "list_notes"))
        .await;
    assert_eq!(refused.unwrap().status(), 401);
    let events = drain(&handle, &mut rx).await;
    assert_eq!(events.len(), 2, "no second event for a completed request");
    assert!(events.iter().all(|e| e.outcome == Outcome::Completed));
    assert_eq!(events[0].decision, DecisionKind::Allow);
    assert_eq!(events[1].reason.as_deref(), Some("malformed_token"));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    let stats = handle.stats();
    assert_eq!((stats.accepted, stats.dropped, stats.rejected), (5, 0, 0));
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_dropped_while_waiting_for_room_still_gets_its_event() {
    let dev = DevIssuer::new("https://as.example.com");
    let sink = Arc::new(GatedSink::default());
    let options = AuditOptions::default().capacity(1).max_batch(1);
    let (emitter, handle) = audit::spawn(sink.clone(), options);
    let inner = Inner::default();
    let service = auth(&dev, emitter).layer().layer(inner.clone());
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    for i in 0..2 {
        let response = service.clone().oneshot(call(&token, "list_notes")).await;
        assert_eq!(response.unwrap().status(), 200);
        if i == 0 {
            tokio::time::timeout(Duration::from_secs(10), sink.started.notified())
                .await
                .unwrap();
        }
    }
    // The queue is full: the third request waits for room; the client gives up.
    let waiting = tokio::spawn(service.clone().oneshot(call(&token, "list_notes")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "never processed");
    // Its event waits for room as the request would have, and is written once there is.
    sink.open();
    for _ in 0..500 {
        if handle.stats().accepted == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await.unwrap();
    let events = sink.events();
    assert_eq!(events.len(), 3, "exactly one event per request");
    validate(&events);
    let cancelled: Vec<_> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Cancelled)
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].decision, DecisionKind::Deny);
    assert_eq!(cancelled[0].reason.as_deref(), Some("cancelled"));
    assert_eq!(cancelled[0].http.status, 499);
}

#[tokio::test]
async fn shutdown_flushes_every_event_to_disk() {
    let dev = DevIssuer::new("https://as.example.com");
    let dir = std::env::temp_dir().join(format!("tma-audit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let sink = JsonLinesSink::file(&path, FsyncPolicy::OnFlush).unwrap();
    let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
    let service = auth(&dev, emitter).layer().layer(inner());
    let read = dev.token(RESOURCE).scope("notes:read").sign();
    let mut tokens = vec![read.clone()];
    const N: usize = 150;
    for i in 0..N {
        let request = match i % 3 {
            0 => call(&read, "list_notes"),
            1 => call(&read, "add_note"),
            _ => {
                let token = dev
                    .token(RESOURCE)
                    .expires_in(Duration::ZERO)
                    .claim("exp", 1)
                    .sign();
                tokens.push(token.clone());
                call(&token, "list_notes")
            }
        };
        service.clone().oneshot(request).await.unwrap();
    }
    handle.shutdown().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<AuditEvent> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), N);
    validate(&events);
    let denied = events
        .iter()
        .filter(|e| e.decision == DecisionKind::Deny)
        .count();
    assert_eq!(denied, 2 * N / 3);
    let step_up = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("insufficient_scope"))
        .unwrap();
    assert_eq!(step_up.required_scopes, ["notes:write"]);
    assert_eq!(step_up.mcp[0].target.as_deref(), Some("add_note"));
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("expired") && e.principal.is_none())
    );
    // Hygiene: no token, signature, or argument text in the log.
    for token in &tokens {
        assert!(!text.contains(token.as_str()));
        assert!(!text.contains(token.rsplit('.').next().unwrap()));
    }
    assert!(!text.contains("Bearer"));
    assert!(
        !text.contains("secret text"),
        "arguments are not recorded by default"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn delegation_chain_and_redacted_arguments() {
    let dev = DevIssuer::new("https://as.example.com");
    let (sink, mut rx) = ChannelSink::new(16);
    let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("list_notes", ["notes:read"]))
        .audit(emitter)
        .redact_arguments(|tool: &str, args: &serde_json::value::RawValue| {
            let mut value: Value = serde_json::from_str(args.get()).ok()?;
            value["text"] = json!("[redacted]");
            Some(json!({ "tool": tool, "arguments": value }))
        })
        .build()
        .unwrap();
    let token = dev
        .token(RESOURCE)
        .scope("notes:read")
        .claim(
            "act",
            json!({"sub": "agent-2", "client_id": "orchestrator",
                   "act": {"sub": "agent-1", "act": {"sub": "human-ui", "iss": "https://idp"}}}),
        )
        .sign();
    let response = auth
        .layer()
        .layer(inner())
        .oneshot(
            Request::post("/mcp")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .body(Full::new(Bytes::from_static(
                    br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","arguments":{"text":"secret text","id":7}}}"#,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    handle.flush().await.unwrap();
    let event = rx.try_recv().unwrap();
    validate(std::slice::from_ref(&event));
    assert!(rx.try_recv().is_err(), "exactly one event");
    assert_eq!(event.request_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(event.decision, DecisionKind::Allow);
    let principal = event.principal.unwrap();
    let chain: Vec<&str> = principal
        .delegation_chain
        .iter()
        .map(|a| a.subject.as_str())
        .collect();
    assert_eq!(chain, ["agent-2", "agent-1", "human-ui"]);
    assert_eq!(
        principal.delegation_chain[0].client_id.as_deref(),
        Some("orchestrator")
    );
    assert_eq!(
        principal.delegation_chain[2].issuer.as_deref(),
        Some("https://idp")
    );
    let token_facts = event.token.unwrap();
    assert_eq!(token_facts.binding, "bearer");
    assert_eq!(token_facts.thumbprint.len(), 43);
    assert_eq!(
        event.arguments.unwrap(),
        [json!({"tool": "list_notes", "arguments": {"text": "[redacted]", "id": 7}})]
    );
}

/// What `tracing` prints while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every output of the audit path, for requests carrying bearer tokens, DPoP tokens and proofs
/// (valid, replayed, mismatched), a client secret (Basic, form body) and a token in the query:
/// the JSON-lines file, the channel's events (JSON and `Debug`), everything `tracing` printed
/// (the `TracingSink` and every layer's diagnostics), and the `Debug` form of the sinks, the
/// emitter, its handle and stats, the layer, the stack and the record the inner service sees.
/// None contains any credential, whole or by segment.
// Current-thread runtime: the emitter task and the sinks run on this thread, under the
// subscriber set here.
#[tokio::test]
async fn no_credential_in_any_audit_output() {
    use base64::Engine as _;
    use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
    use tower_mcp_auth::testing::DevDpopKey;

    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let dev = DevIssuer::new("https://as.example.com");
    let dir = std::env::temp_dir().join(format!("tma-audit-hygiene-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let file = Arc::new(JsonLinesSink::file(&path, FsyncPolicy::OnFlush).unwrap());
    let (channel, mut rx) = ChannelSink::new(64);
    let channel = Arc::new(channel);
    let tracing_sink = Arc::new(audit::TracingSink::new());
    let fan = Arc::new(audit::FanOut::new(vec![
        file.clone(),
        channel.clone(),
        tracing_sink.clone(),
    ]));
    let (emitter, handle) = audit::spawn(fan.clone(), AuditOptions::default());
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(
            ToolScopes::new()
                .tool("list_notes", ["notes:read"])
                .tool("add_note", ["notes:write"]),
        )
        .dpop(DpopConfig::with_mode(DpopMode::Allowed))
        .audit(emitter.clone())
        .build()
        .unwrap();
    let records = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = records.clone();
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        let record = req.extensions().get::<audit::AuditRecord>();
        seen.lock().unwrap().push(format!("{record:?}"));
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}")))) }
    });
    let service = auth.layer().layer(inner);

    const CLIENT_SECRET: &str = "cl1ent-Secret-Value-9f2b7c";
    let read = dev.token(RESOURCE).scope("notes:read").sign();
    let expired = dev
        .token(RESOURCE)
        .scope("notes:read")
        .claim("exp", 1)
        .sign();
    let key = DevDpopKey::new();
    let other = DevDpopKey::new();
    let bound = dev
        .token(RESOURCE)
        .scope("notes:read")
        .dpop_bound(key.jkt())
        .sign();
    let proof = key.proof("POST", RESOURCE, &bound);
    let wrong_key = other.proof("POST", RESOURCE, &bound);
    let fresh = key.proof("POST", RESOURCE, &bound);
    let mut forged = read.rsplit_once('.').unwrap().0.to_owned();
    forged.push_str(".c2lnbmF0dXJlLW9mLWFuLWF0dGFja2Vy");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("dev-client:{CLIENT_SECRET}"));
    let secrets: Vec<String> = vec![
        read.clone(),
        expired.clone(),
        bound.clone(),
        proof.clone(),
        wrong_key.clone(),
        fresh.clone(),
        forged.clone(),
        CLIENT_SECRET.to_owned(),
        basic.clone(),
    ];

    let body = |tool: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"secret text"}}}}}}"#
        )
    };
    let post = |authorization: Option<String>, dpop: &[&str], tool: &str| {
        let mut b = Request::post(RESOURCE).header("content-type", "application/json");
        if let Some(value) = authorization {
            b = b.header("authorization", value);
        }
        for proof in dpop {
            b = b.header("dpop", *proof);
        }
        b.body(Full::new(Bytes::from(body(tool)))).unwrap()
    };
    let requests = vec![
        post(Some(format!("Bearer {read}")), &[], "list_notes"),
        post(Some(format!("Bearer {read}")), &[], "add_note"),
        post(Some(format!("Bearer {expired}")), &[], "list_notes"),
        post(Some(format!("Bearer {forged}")), &[], "list_notes"),
        post(Some(format!("DPoP {bound}")), &[&proof], "list_notes"),
        post(Some(format!("DPoP {bound}")), &[&proof], "list_notes"),
        post(Some(format!("DPoP {bound}")), &[&wrong_key], "list_notes"),
        post(
            Some(format!("DPoP {bound}")),
            &[&fresh, &wrong_key],
            "list_notes",
        ),
        post(Some(format!("Bearer {bound}")), &[], "list_notes"),
        post(Some(format!("Basic {basic}")), &[], "list_notes"),
        Request::post(RESOURCE)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "access_token={read}&client_secret={CLIENT_SECRET}"
            ))))
            .unwrap(),
        Request::post(format!("{RESOURCE}?access_token={read}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body("list_notes"))))
            .unwrap(),
    ];
    let n = requests.len();
    let mut statuses = Vec::new();
    for request in requests {
        let response = service.clone().oneshot(request).await.unwrap();
        statuses.push(response.status().as_u16());
    }
    // And one cancelled before its response, with a valid token and proof.
    let cancelled = key.proof("POST", RESOURCE, &bound);
    let mut secrets = secrets;
    secrets.push(cancelled.clone());
    let future = service.clone().ready_oneshot().await.unwrap().call(post(
        Some(format!("DPoP {bound}")),
        &[&cancelled],
        "list_notes",
    ));
    drop(future);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );

    let mut outputs = vec![
        format!("{fan:?} {file:?} {channel:?} {tracing_sink:?}"),
        format!("{emitter:?} {handle:?} {:?}", handle.stats()),
        format!("{:?}", audit::AuditLayer::new(emitter.clone(), RESOURCE)),
        format!("{auth:?}"),
    ];
    handle.shutdown().await.unwrap();
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        outputs.push(format!("{event:?}"));
        outputs.push(serde_json::to_string(&event).unwrap());
        events.push(event);
    }
    assert_eq!(events.len(), n + 1, "one event per request");
    validate(&events);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.outcome == Outcome::Cancelled)
            .count(),
        1
    );
    let file_text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(file_text.lines().count(), n + 1);
    outputs.push(file_text);
    let records = records.lock().unwrap().clone();
    assert_eq!(
        records.len(),
        2,
        "the inner service saw the record of each allowed request"
    );
    outputs.extend(records);
    let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert_eq!(
        log_text.matches("audit event").count(),
        n + 1,
        "the tracing sink logged every event"
    );
    outputs.push(log_text);

    let reasons: Vec<Option<&str>> = events.iter().map(|e| e.reason.as_deref()).collect();
    assert_eq!(
        reasons,
        [
            None,
            Some("insufficient_scope"),
            Some("expired"),
            Some("invalid_signature"),
            None,
            Some("dpop_replay"),
            Some("dpop_key_mismatch"),
            Some("multiple_dpop_proofs"),
            Some("missing_proof_of_possession"),
            Some("missing_credentials"),
            Some("form_encoded_body"),
            Some("token_in_query"),
            Some("cancelled"),
        ]
    );
    let all = outputs.join("\n");
    assert!(
        !common::leaks(&format!("x{proof}y"), &secrets).is_empty(),
        "the scan finds a proof"
    );
    let leaks = common::leaks(&all, &secrets);
    assert!(
        leaks.is_empty(),
        "audit output contains credentials: {leaks:?}"
    );
    for needle in [
        "Bearer ",
        "DPoP ey",
        "Basic ",
        "secret text",
        "client_secret",
    ] {
        assert!(!all.contains(needle), "audit output contains {needle:?}");
    }
}

/// A policy that says it was asked and never answers (a slow remote policy engine).
struct HangingPolicy(Arc<tokio::sync::Notify>);

#[async_trait]
impl tower_mcp_auth::policy::Policy for HangingPolicy {
    async fn decide(
        &self,
        _request: &tower_mcp_auth::policy::PolicyRequest<'_>,
    ) -> tower_mcp_auth::policy::Decision {
        self.0.notify_one();
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_request_cancelled_while_the_policy_decides_is_a_denial() {
    let dev = DevIssuer::new("https://as.example.com");
    let (sink, mut rx) = ChannelSink::new(64);
    let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
    let asked = Arc::new(tokio::sync::Notify::new());
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(HangingPolicy(asked.clone()))
        .audit(emitter)
        .build()
        .unwrap();
    let inner = Inner::default();
    let service = auth.layer().layer(inner.clone());
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let task = tokio::spawn(service.oneshot(call(&token, "list_notes")));
    tokio::time::timeout(Duration::from_secs(10), asked.notified())
        .await
        .unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let events = drain(&handle, &mut rx).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.outcome, Outcome::Cancelled);
    // The token was valid, but nothing authorized the call: a denial, never an allow.
    assert_eq!(e.decision, DecisionKind::Deny);
    assert_eq!(e.reason.as_deref(), Some(audit::CANCELLED_REASON));
    assert!(e.principal.is_some(), "the caller is still attributed");
    assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
}
