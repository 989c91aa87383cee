//! Where audit events go: the [`AuditSink`] trait and the built-in sinks.
//!
//! A sink receives events in batches from the background task of an
//! [`AuditEmitter`](super::AuditEmitter), never from the request path, so it may do I/O. A failed
//! batch is retried as a whole: sinks deliver *at least once*, and a retry after a partial write
//! can repeat events (`event_id` identifies duplicates).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Mutex, mpsc};

use super::event::AuditEvent;

/// The `tracing` target of the events [`TracingSink`] logs. Stable.
pub const AUDIT_TRACING_TARGET: &str = "tower_mcp_auth::audit";

/// Why a sink could not take a batch (or flush).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// An I/O error, as text.
    #[error("audit sink I/O error: {0}")]
    Io(String),
    /// The destination is gone (a closed channel, a stopped emitter).
    #[error("audit sink closed")]
    Closed,
    /// Any other failure, including an event that cannot be serialized.
    #[error("audit sink error: {0}")]
    Other(String),
}

impl From<io::Error> for SinkError {
    fn from(err: io::Error) -> Self {
        Self::Io(err.to_string())
    }
}

/// A destination for audit events.
///
/// `write` gets whatever the emitter has queued (at most `max_batch` events), in the order the
/// events were sent. If it returns an error the emitter retries the *same* batch later, so an
/// implementation that fails part-way may see events again.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Writes a batch of events.
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError>;

    /// Makes everything written so far durable or visible. The default does nothing.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[async_trait]
impl<S: AuditSink + ?Sized> AuditSink for Arc<S> {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        (**self).write(events).await
    }

    async fn flush(&self) -> Result<(), SinkError> {
        (**self).flush().await
    }
}

fn serialize_error(err: serde_json::Error) -> SinkError {
    SinkError::Other(format!("cannot serialize audit event: {err}"))
}

/// Logs each event with `tracing::info!` under the target [`AUDIT_TRACING_TARGET`].
///
/// The field `event` holds the whole event as JSON; `event_id`, `request_id`, `decision` and
/// `reason` repeat the top-level members of that name when they are strings, for filtering.
/// Route the target to its own writer to keep an audit log apart from diagnostics.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct TracingSink;

impl TracingSink {
    /// A sink logging through `tracing`.
    pub fn new() -> Self {
        Self
    }
}

/// The top-level members [`TracingSink`] repeats as fields (absent or non-string: `None`).
#[derive(serde::Deserialize)]
struct Peek {
    event_id: Option<serde_json::Value>,
    request_id: Option<serde_json::Value>,
    decision: Option<serde_json::Value>,
    reason: Option<serde_json::Value>,
}

fn text(value: &Option<serde_json::Value>) -> Option<&str> {
    value.as_ref().and_then(serde_json::Value::as_str)
}

#[async_trait]
impl AuditSink for TracingSink {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        // Serialize the whole batch first: a failure then logs nothing, so a retry duplicates
        // nothing.
        let lines = events
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(serialize_error)?;
        for json in &lines {
            let peek = serde_json::from_str::<Peek>(json).ok();
            let peek = peek.as_ref();
            tracing::info!(
                target: AUDIT_TRACING_TARGET,
                event = %json,
                event_id = peek.and_then(|p| text(&p.event_id)),
                request_id = peek.and_then(|p| text(&p.request_id)),
                decision = peek.and_then(|p| text(&p.decision)),
                reason = peek.and_then(|p| text(&p.reason)),
                "audit event"
            );
        }
        Ok(())
    }
}

/// When [`JsonLinesSink::file`] calls `fsync` (`File::sync_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// Never: durability is left to the operating system.
    Never,
    /// On every sink flush (the emitter flushes every `flush_interval` and on demand).
    #[default]
    OnFlush,
    /// After every batch (and on every flush): a batch is on disk before it counts as written.
    EveryBatch,
}

/// Syncs the writer under a [`BufWriter`] to disk (only [`JsonLinesSink::file`] has one).
type SyncHook<W> = for<'a> fn(&'a W) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

fn sync_file(file: &tokio::fs::File) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
    Box::pin(file.sync_data())
}

struct LinesState<W> {
    writer: BufWriter<W>,
    /// A write failed part-way: the output may end inside a line.
    torn: bool,
}

/// Writes one JSON object per line (JSON Lines) through a buffer.
///
/// Each batch is serialized completely before any of it is written. If a write fails part-way,
/// the next write starts with a newline, so a torn line never merges with the next record
/// (readers should skip blank and unparsable lines). `flush` flushes the buffer; with
/// [`JsonLinesSink::file`] it also applies the [`FsyncPolicy`].
pub struct JsonLinesSink<W> {
    state: Mutex<LinesState<W>>,
    fsync: FsyncPolicy,
    sync: Option<SyncHook<W>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> JsonLinesSink<W> {
    /// Writes to `writer` (a socket, a pipe, stdout...). No fsync.
    pub fn new(writer: W) -> Self {
        Self {
            state: Mutex::new(LinesState {
                writer: BufWriter::new(writer),
                torn: false,
            }),
            fsync: FsyncPolicy::Never,
            sync: None,
        }
    }

    async fn flush_and_sync(&self, state: &mut LinesState<W>) -> Result<(), SinkError> {
        state.writer.flush().await?;
        if let Some(sync) = self.sync {
            sync(state.writer.get_ref()).await?;
        }
        Ok(())
    }
}

impl JsonLinesSink<tokio::fs::File> {
    /// Appends to the file at `path` (created if missing), syncing it as `fsync` says.
    ///
    /// Opens the file synchronously, so it can be called while building configuration.
    pub fn file(path: impl AsRef<Path>, fsync: FsyncPolicy) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?;
        let mut sink = Self::new(tokio::fs::File::from_std(file));
        sink.fsync = fsync;
        sink.sync = Some(sync_file);
        Ok(sink)
    }
}

impl<W> fmt::Debug for JsonLinesSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesSink")
            .field("fsync", &self.sync.map(|_| self.fsync))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> AuditSink for JsonLinesSink<W> {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(events.len().saturating_mul(1024));
        for event in events {
            event.write_json(&mut buf).map_err(serialize_error)?;
            buf.push(b'\n');
        }
        let mut state = self.state.lock().await;
        if state.torn {
            state.writer.write_all(b"\n").await?;
            state.torn = false;
        }
        if let Err(err) = state.writer.write_all(&buf).await {
            state.torn = true;
            return Err(err.into());
        }
        if self.fsync == FsyncPolicy::EveryBatch {
            self.flush_and_sync(&mut state).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let mut state = self.state.lock().await;
        match self.fsync {
            FsyncPolicy::OnFlush | FsyncPolicy::EveryBatch => self.flush_and_sync(&mut state).await,
            FsyncPolicy::Never => Ok(state.writer.flush().await?),
        }
    }
}

/// Sends each event into a [`mpsc`] channel, to ship events elsewhere.
///
/// Waits for channel capacity (never drops); fails with [`SinkError::Closed`] once the
/// receiver is gone. A batch that fails part-way is re-sent whole on retry.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    sender: mpsc::Sender<AuditEvent>,
}

impl ChannelSink {
    /// A sink and the receiver of its events; a `capacity` of 0 is taken as 1.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<AuditEvent>) {
        let capacity = capacity.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let (sender, receiver) = mpsc::channel(capacity);
        (Self { sender }, receiver)
    }

    /// A sink sending into an existing channel.
    pub fn from_sender(sender: mpsc::Sender<AuditEvent>) -> Self {
        Self { sender }
    }
}

#[async_trait]
impl AuditSink for ChannelSink {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        for event in events {
            self.sender
                .send(event.clone())
                .await
                .map_err(|_| SinkError::Closed)?;
        }
        Ok(())
    }
}

/// Writes every batch to several sinks, one after the other.
///
/// Every sink is tried even when one fails; the first error is returned. The emitter then
/// retries the batch on *all* sinks, so the sinks that succeeded receive it again: delivery is
/// at least once per sink.
#[derive(Debug, Clone)]
pub struct FanOut {
    sinks: Vec<Arc<dyn AuditSink>>,
}

impl FanOut {
    /// Fans out to `sinks` (none: events are discarded).
    pub fn new(sinks: Vec<Arc<dyn AuditSink>>) -> Self {
        Self { sinks }
    }
}

#[async_trait]
impl AuditSink for FanOut {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        let mut first = None;
        for sink in &self.sinks {
            if let Err(err) = sink.as_ref().write(events).await {
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let mut first = None;
        for sink in &self.sinks {
            if let Err(err) = sink.as_ref().flush().await {
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// An event that deserializes into the stand-in and the real event type alike.
    pub(crate) fn event(id: &str) -> AuditEvent {
        serde_json::from_value(serde_json::json!({
            "schema": 1,
            "time": "2026-01-01T00:00:00.000000Z",
            "event_id": id,
            "request_id": "req",
            "http": { "method": "POST", "path": "/mcp", "status": 200 },
            "decision": "allow",
            "mcp": [],
            "required_scopes": [],
            "resource": "https://mcp.example.com/mcp",
            "latency_us": 1,
        }))
        .expect("test event")
    }

    fn id_of(line: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        v["event_id"].as_str().expect("event_id").to_owned()
    }

    pub(crate) fn temp_path(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!(
            "tower-mcp-auth-{name}-{}-{}.jsonl",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    #[tokio::test]
    async fn json_lines_file_every_policy() {
        for policy in [
            FsyncPolicy::Never,
            FsyncPolicy::OnFlush,
            FsyncPolicy::EveryBatch,
        ] {
            let path = temp_path("lines");
            let sink = JsonLinesSink::file(&path, policy).unwrap();
            sink.write(&[event("a"), event("b")]).await.unwrap();
            sink.write(&[event("c")]).await.unwrap();
            if policy == FsyncPolicy::EveryBatch {
                // Already on disk without a flush.
                let text = std::fs::read_to_string(&path).unwrap();
                assert_eq!(text.lines().count(), 3, "{policy:?}");
            }
            sink.flush().await.unwrap();
            drop(sink);
            // Appends, never truncates.
            let sink = JsonLinesSink::file(&path, policy).unwrap();
            sink.write(&[event("d")]).await.unwrap();
            sink.flush().await.unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let ids: Vec<_> = text.lines().map(id_of).collect();
            assert_eq!(ids, ["a", "b", "c", "d"], "{policy:?}");
            for line in text.lines() {
                let back: AuditEvent = serde_json::from_str(line).unwrap();
                assert_eq!(back, event(&id_of(line)));
            }
            let _ = std::fs::remove_file(&path);
        }
        assert!(format!("{:?}", JsonLinesSink::new(tokio::io::sink())).contains("None"));
    }

    #[tokio::test]
    async fn json_lines_generic_writer() {
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let sink = JsonLinesSink::new(writer);
        sink.write(&[event("x"), event("y")]).await.unwrap();
        sink.flush().await.unwrap();
        drop(sink);
        let mut text = String::new();
        reader.read_to_string(&mut text).await.unwrap();
        let ids: Vec<_> = text.lines().map(id_of).collect();
        assert_eq!(ids, ["x", "y"]);
    }

    /// Accepts `budget` bytes, then fails once, then accepts everything.
    struct Flaky {
        data: Arc<std::sync::Mutex<Vec<u8>>>,
        budget: Option<usize>,
    }

    impl AsyncWrite for Flaky {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = match self.budget {
                Some(0) => {
                    self.budget = None;
                    return Poll::Ready(Err(io::Error::other("disk on fire")));
                }
                Some(budget) => {
                    let n = budget.min(buf.len());
                    self.budget = Some(budget - n);
                    n
                }
                None => buf.len(),
            };
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn torn_write_never_merges_lines() {
        let data = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = JsonLinesSink::new(Flaky {
            data: data.clone(),
            budget: Some(100),
        });
        // Far larger than the BufWriter buffer, so it goes to the writer and fails part-way.
        let batch: Vec<_> = (0..1000).map(|i| event(&format!("e{i:04}"))).collect();
        let err = sink.write(&batch).await.unwrap_err();
        assert!(matches!(err, SinkError::Io(_)), "{err:?}");
        sink.write(&batch).await.unwrap();
        sink.flush().await.unwrap();
        let text = String::from_utf8(data.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().filter(|l| !l.is_empty()).collect();
        let tail: Vec<_> = lines[lines.len() - batch.len()..]
            .iter()
            .map(|l| id_of(l))
            .collect();
        let want: Vec<_> = (0..1000).map(|i| format!("e{i:04}")).collect();
        assert_eq!(tail, want);
        // Exactly one torn line before the retried batch.
        let bad = lines
            .iter()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .count();
        assert_eq!(bad, 1);
    }

    #[tokio::test]
    async fn channel_sink_delivers_and_reports_closed() {
        let (sink, mut rx) = ChannelSink::new(0);
        let writer = tokio::spawn(async move {
            sink.write(&[event("1"), event("2"), event("3")]).await?;
            Ok::<_, SinkError>(sink)
        });
        for id in ["1", "2", "3"] {
            assert_eq!(rx.recv().await.unwrap(), event(id));
        }
        let sink = writer.await.unwrap().unwrap();
        drop(rx);
        assert_eq!(sink.write(&[event("4")]).await, Err(SinkError::Closed));
        assert_eq!(sink.write(&[]).await, Ok(()));
    }

    #[tokio::test]
    async fn fan_out_tries_every_sink() {
        let (a, mut rx_a) = ChannelSink::new(8);
        let (b, rx_b) = ChannelSink::new(8);
        let (c, mut rx_c) = ChannelSink::new(8);
        let fan = FanOut::new(vec![Arc::new(a), Arc::new(b), Arc::new(c)]);
        fan.write(&[event("1")]).await.unwrap();
        fan.flush().await.unwrap();
        assert_eq!(rx_a.recv().await.unwrap(), event("1"));
        assert_eq!(rx_c.recv().await.unwrap(), event("1"));
        drop(rx_b);
        assert_eq!(fan.write(&[event("2")]).await, Err(SinkError::Closed));
        // The sinks after the failing one still got the batch.
        assert_eq!(rx_a.recv().await.unwrap(), event("2"));
        assert_eq!(rx_c.recv().await.unwrap(), event("2"));
        assert_eq!(FanOut::new(Vec::new()).write(&[event("3")]).await, Ok(()));
    }

    #[tokio::test]
    async fn arc_sinks_are_sinks() {
        let (sink, mut rx) = ChannelSink::new(4);
        let shared: Arc<dyn AuditSink> = Arc::new(sink);
        let twice: Arc<Arc<dyn AuditSink>> = Arc::new(shared.clone());
        twice.write(&[event("1")]).await.unwrap();
        twice.flush().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), event("1"));
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn tracing_sink_logs_under_the_audit_target() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        TracingSink::new()
            .write(&[event("ev-1"), event("ev-2")])
            .await
            .unwrap();
        drop(guard);
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains(AUDIT_TRACING_TARGET), "{out}");
        assert!(lines[0].contains("event_id=\"ev-1\""), "{out}");
        assert!(lines[0].contains("decision=\"allow\""), "{out}");
        assert!(lines[1].contains(r#""event_id":"ev-2""#), "{out}");
    }

    #[test]
    fn errors_display() {
        let io: SinkError = io::Error::other("boom").into();
        assert_eq!(io.to_string(), "audit sink I/O error: boom");
        assert_eq!(SinkError::Closed.to_string(), "audit sink closed");
    }
}
