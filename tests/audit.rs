//! The audit layer end to end (in process): delivery under overflow policies, shutdown flush,
//! delegation chains, argument redaction, schema validity and secret hygiene.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    JsonLinesSink, Overflow, SinkError,
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
    let schema: Value =
        serde_json::from_str(include_str!("../schema/audit-event-v1.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for event in events {
        let json = serde_json::to_value(event).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {json}");
    }
}

/// A sink that takes `delay` per write and counts events.
#[derive(Debug)]
struct SlowSink {
    delay: Duration,
    written: AtomicUsize,
}

#[async_trait]
impl AuditSink for SlowSink {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        self.written.fetch_add(events.len(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn wait_loses_nothing_with_a_slow_sink() {
    let dev = DevIssuer::new("https://as.example.com");
    let sink = Arc::new(SlowSink {
        delay: Duration::from_millis(5),
        written: AtomicUsize::new(0),
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
}

/// A sink whose writes never finish; it says when the first one started.
#[derive(Debug, Default)]
struct StuckSink {
    started: tokio::sync::Notify,
}

#[async_trait]
impl AuditSink for StuckSink {
    async fn write(&self, _events: &[AuditEvent]) -> Result<(), SinkError> {
        self.started.notify_one();
        std::future::pending().await
    }
}

/// Sends `n` sequential requests through a stack whose audit sink is stuck, with a queue of 2;
/// returns the statuses and the emitter's counters.
async fn through_a_stuck_sink(overflow: Overflow, n: usize) -> (Vec<u16>, audit::AuditStats) {
    let dev = DevIssuer::new("https://as.example.com");
    let sink = Arc::new(StuckSink::default());
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
    (statuses, handle.stats())
}

#[tokio::test]
async fn reject_answers_503_once_the_queue_is_full() {
    let (statuses, stats) = through_a_stuck_sink(Overflow::Reject, 6).await;
    // One event is stuck in the sink, two fill the queue; every later request is refused
    // before it is processed.
    assert_eq!(statuses, [200, 200, 200, 503, 503, 503]);
    assert_eq!(stats.accepted, 3);
    assert_eq!(stats.dropped, 0);
}

#[tokio::test]
async fn drop_counts_exactly_what_is_missing() {
    let (statuses, stats) = through_a_stuck_sink(Overflow::Drop, 10).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "drop mode never refuses"
    );
    assert_eq!(stats.accepted, 3);
    assert_eq!(stats.dropped, 7);
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
