//! The bounded queue between the request path and an [`AuditSink`].
//!
//! [`spawn`] starts one background task that takes events off the queue, writes them to the sink
//! in batches, retries failed batches with exponential backoff and flushes the sink
//! periodically. The request path never touches I/O: it reserves a slot with
//! [`AuditEmitter::reserve`] when the request arrives (this is where the [`Overflow`] policy
//! applies) and fills it with [`AuditPermit::send`] when the response head is known, which never
//! blocks. An accepted request therefore never loses its event to a full queue.
//!
//! Call [`AuditHandle::shutdown`] before the runtime stops: events still queued when the runtime
//! drops the task are lost.

use std::fmt;
use std::future::{Future, poll_fn};
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::event::AuditEvent;
use super::sink::{AuditSink, SinkError};

/// The `tracing` target of the emitter's own diagnostics (drops, sink failures). Distinct from
/// the audit records' target, so routing audit records never captures these.
const LOG_TARGET: &str = "tower_mcp_auth::emitter";

/// What [`AuditEmitter::reserve`] does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overflow {
    /// Wait for room: backpressure on requests, no event lost.
    #[default]
    Wait,
    /// Refuse at once: the audit layer answers 503 before processing the request.
    Reject,
    /// Accept the request and drop its event; drops are counted and reported.
    Drop,
}

/// Tuning of [`spawn`]. Zero sizes are taken as 1 and zero intervals as 1 ms.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditOptions {
    /// Queue capacity in events, counting reserved permits. Default 4096.
    pub capacity: usize,
    /// What to do when the queue is full. Default [`Overflow::Wait`].
    pub overflow: Overflow,
    /// Most events handed to the sink in one `write`. Default 256.
    pub max_batch: usize,
    /// How often the sink is flushed when something was written. Default 1 s.
    pub flush_interval: Duration,
    /// First delay before retrying a failed batch; doubles on each retry. Default 50 ms.
    pub retry_initial: Duration,
    /// Longest delay between retries. Default 5 s.
    pub retry_max: Duration,
    /// Retries of a failed batch before it is dropped (counted, logged). Default 10.
    pub max_retries: u32,
    /// How often a warning reports dropped events and rejected requests, when there are new
    /// ones (also once on shutdown). Default 10 s.
    pub drop_report_interval: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            capacity: 4096,
            overflow: Overflow::Wait,
            max_batch: 256,
            flush_interval: Duration::from_secs(1),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            max_retries: 10,
            drop_report_interval: Duration::from_secs(10),
        }
    }
}

impl AuditOptions {
    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets [`overflow`](Self::overflow).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets [`max_batch`](Self::max_batch).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Sets [`flush_interval`](Self::flush_interval).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Sets [`retry_initial`](Self::retry_initial) and [`retry_max`](Self::retry_max).
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max;
        self
    }

    /// Sets [`max_retries`](Self::max_retries).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets [`drop_report_interval`](Self::drop_report_interval).
    pub fn drop_report_interval(mut self, interval: Duration) -> Self {
        self.drop_report_interval = interval;
        self
    }
}

/// Counters of an emitter since it was spawned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStats {
    /// Events sent through a permit into the queue.
    pub accepted: u64,
    /// Events the sink took.
    pub written: u64,
    /// Events lost: refused by a full queue under [`Overflow::Drop`], in a batch given up after
    /// `max_retries`, or of a request cancelled while it waited for room when no room came
    /// (the emitter was shut down).
    pub dropped: u64,
    /// Requests the audit layer answered 503 without an event, because no event could be
    /// queued: a full queue under [`Overflow::Reject`], or an emitter already shut down.
    pub rejected: u64,
    /// Failed sink writes and flushes.
    pub sink_errors: u64,
    /// Retried batch writes.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    sink_errors: AtomicU64,
    retries: AtomicU64,
}

/// State shared by the emitter, its permits, the handle and the task.
#[derive(Debug, Default)]
struct Shared {
    closed: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn stats(&self) -> AuditStats {
        let c = &self.counters;
        AuditStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The queue is full ([`Overflow::Reject`]) or the emitter is shut down: refuse the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit queue is full or shut down")]
pub struct Overflowed;

/// The sending side of the audit queue. Cheap to clone.
#[derive(Clone)]
pub struct AuditEmitter {
    inner: Arc<EmitterInner>,
}

struct EmitterInner {
    sender: mpsc::Sender<AuditEvent>,
    overflow: Overflow,
    shared: Arc<Shared>,
    /// Tasks waiting to queue a cancelled request's event; at most `capacity` at once.
    detached: AtomicUsize,
    capacity: usize,
}

impl AuditEmitter {
    /// Reserves a queue slot for one event, as the [`Overflow`] policy says.
    ///
    /// - [`Overflow::Wait`]: waits for room; `Err` once the emitter is shut down.
    /// - [`Overflow::Reject`]: `Err` at once when the queue is full or shut down.
    /// - [`Overflow::Drop`]: never fails; when the queue is full or shut down the permit is
    ///   empty and sending through it counts a drop.
    pub async fn reserve(&self) -> Result<AuditPermit, Overflowed> {
        let inner = &*self.inner;
        if inner.shared.closed.load(Ordering::Acquire) {
            return match inner.overflow {
                Overflow::Drop => Ok(self.permit(None)),
                Overflow::Wait | Overflow::Reject => Err(Overflowed),
            };
        }
        let sender = inner.sender.clone();
        match inner.overflow {
            Overflow::Wait => match sender.reserve_owned().await {
                Ok(slot) => Ok(self.permit(Some(slot))),
                Err(_) => Err(Overflowed),
            },
            Overflow::Reject => match sender.try_reserve_owned() {
                Ok(slot) => Ok(self.permit(Some(slot))),
                Err(_) => Err(Overflowed),
            },
            Overflow::Drop => Ok(self.permit(sender.try_reserve_owned().ok())),
        }
    }

    /// [`reserve`](Self::reserve) without waiting: `None` only when the policy is
    /// [`Overflow::Wait`] and the queue is full (then call `reserve`). The audit layer's fast
    /// path: no future, no allocation beyond the permit.
    pub(crate) fn try_reserve_now(&self) -> Option<Result<AuditPermit, Overflowed>> {
        let inner = &*self.inner;
        if inner.shared.closed.load(Ordering::Acquire) {
            return Some(match inner.overflow {
                Overflow::Drop => Ok(self.permit(None)),
                Overflow::Wait | Overflow::Reject => Err(Overflowed),
            });
        }
        match (inner.sender.clone().try_reserve_owned(), inner.overflow) {
            (Ok(slot), _) => Some(Ok(self.permit(Some(slot)))),
            (Err(tokio::sync::mpsc::error::TrySendError::Closed(_)), Overflow::Drop) => {
                Some(Ok(self.permit(None)))
            }
            (Err(tokio::sync::mpsc::error::TrySendError::Closed(_)), _) => Some(Err(Overflowed)),
            (Err(_), Overflow::Wait) => None,
            (Err(_), Overflow::Reject) => Some(Err(Overflowed)),
            (Err(_), Overflow::Drop) => Some(Ok(self.permit(None))),
        }
    }

    /// Counts a request answered 503 because no event could be queued ([`AuditStats::rejected`]).
    pub(crate) fn count_rejected(&self) {
        add(&self.inner.shared.counters.rejected, 1);
    }

    /// Queues `event` of a request that no longer holds a permit (it was cancelled while it
    /// waited for room under [`Overflow::Wait`]). Never blocks: with room it is queued at once;
    /// without, a task on the current Tokio runtime waits for room as the request would have.
    /// It counts a drop when no room can come (the emitter is shut down) or no runtime is
    /// current.
    pub(crate) fn send_detached(&self, event: AuditEvent) {
        match self.try_reserve_now() {
            Some(Ok(permit)) => permit.send(event),
            Some(Err(Overflowed)) => self.permit(None).send(event),
            None => match tokio::runtime::Handle::try_current() {
                // Bounded: beyond `capacity` waiting tasks the event is a counted drop, so a
                // stuck sink and clients timing out cannot pile up tasks without limit.
                Ok(runtime)
                    if self.inner.detached.fetch_add(1, Ordering::AcqRel) < self.inner.capacity =>
                {
                    let emitter = self.clone();
                    runtime.spawn(async move {
                        match emitter.reserve().await {
                            Ok(permit) => permit.send(event),
                            Err(Overflowed) => emitter.permit(None).send(event),
                        }
                        emitter.inner.detached.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Ok(_) => {
                    self.inner.detached.fetch_sub(1, Ordering::AcqRel);
                    self.permit(None).send(event);
                }
                Err(_) => self.permit(None).send(event),
            },
        }
    }

    fn permit(&self, slot: Option<OwnedPermit<AuditEvent>>) -> AuditPermit {
        AuditPermit {
            slot,
            shared: self.inner.shared.clone(),
        }
    }

    /// The overflow policy this emitter applies.
    pub fn overflow(&self) -> Overflow {
        self.inner.overflow
    }

    /// Whether [`AuditHandle::shutdown`] was called (or the task is gone).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire) || self.inner.sender.is_closed()
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        self.inner.shared.stats()
    }
}

impl fmt::Debug for AuditEmitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEmitter")
            .field("overflow", &self.inner.overflow)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A reserved queue slot for one event. Dropping it unused frees the slot.
pub struct AuditPermit {
    /// `None`: an "empty" permit ([`Overflow::Drop`] with a full queue).
    slot: Option<OwnedPermit<AuditEvent>>,
    shared: Arc<Shared>,
}

impl AuditPermit {
    /// Queues `event`. Never blocks; an empty permit counts a drop instead.
    pub fn send(self, event: AuditEvent) {
        match self.slot {
            Some(slot) => {
                add(&self.shared.counters.accepted, 1);
                slot.send(event);
            }
            None => add(&self.shared.counters.dropped, 1),
        }
    }

    /// Whether sending through this permit will drop the event.
    pub fn is_empty(&self) -> bool {
        self.slot.is_none()
    }
}

impl fmt::Debug for AuditPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditPermit")
            .field("empty", &self.is_empty())
            .finish()
    }
}

enum Control {
    Flush(oneshot::Sender<Result<(), SinkError>>),
    Shutdown(oneshot::Sender<Result<(), SinkError>>),
}

/// Controls the background task: flush, shut down, read counters.
///
/// Dropping the handle does not stop delivery: the task ends once every [`AuditEmitter`] and
/// permit is gone and the queue is written out.
pub struct AuditHandle {
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl AuditHandle {
    /// Returns once every event sent through a permit before this call has been handed to the
    /// sink and the sink flushed.
    ///
    /// `Err` if the sink's flush failed, or if events were dropped after `max_retries` since the
    /// previous flush or shutdown completed (the sink's last error; [`AuditStats::dropped`]
    /// counts them). [`SinkError::Closed`] if the task is gone.
    pub async fn flush(&self) -> Result<(), SinkError> {
        let (ack, done) = oneshot::channel();
        if self.control.send(Control::Flush(ack)).is_err() {
            return Err(SinkError::Closed);
        }
        done.await.unwrap_or(Err(SinkError::Closed))
    }

    /// Stops accepting events (later reserves fail, or give empty permits under
    /// [`Overflow::Drop`]), waits for the permits still held to be sent or dropped, writes
    /// everything accepted, flushes the sink and ends the task.
    ///
    /// Waits as long as a permit is held and as long as a failing sink is retried; bound it with
    /// `tokio::time::timeout` if needed (the task then finishes on its own). Errors as
    /// [`flush`](Self::flush).
    pub async fn shutdown(self) -> Result<(), SinkError> {
        self.shared.closed.store(true, Ordering::Release);
        let (ack, done) = oneshot::channel();
        let result = if self.control.send(Control::Shutdown(ack)).is_ok() {
            done.await.unwrap_or(Err(SinkError::Closed))
        } else {
            Err(SinkError::Closed)
        };
        match self.task.await {
            Ok(()) => result,
            Err(_) => result.and(Err(SinkError::Closed)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        self.shared.stats()
    }
}

impl fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Starts the delivery task for `sink` and returns the emitter (for the audit layer) and the
/// handle (for flush, shutdown and counters).
///
/// # Panics
///
/// Outside a Tokio runtime, like `tokio::spawn`.
pub fn spawn(sink: Arc<dyn AuditSink>, options: AuditOptions) -> (AuditEmitter, AuditHandle) {
    const MIN_INTERVAL: Duration = Duration::from_millis(1);
    let capacity = options
        .capacity
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let (sender, events) = mpsc::channel(capacity);
    let (control, control_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let now = Instant::now();
    let flush_interval = options.flush_interval.max(MIN_INTERVAL);
    let drop_report_interval = options.drop_report_interval.max(MIN_INTERVAL);
    let next_flush = after(now, flush_interval);
    let next_report = after(now, drop_report_interval);
    let worker = Worker {
        sink,
        events,
        events_open: true,
        control: control_rx,
        control_open: true,
        shared: shared.clone(),
        max_batch: options.max_batch.max(1),
        flush_interval,
        retry_initial: options.retry_initial,
        retry_max: options.retry_max,
        max_retries: options.max_retries,
        drop_report_interval,
        batch: Vec::new(),
        dirty: false,
        lost: 0,
        last_error: None,
        reported_drops: 0,
        reported_rejections: 0,
        next_flush,
        next_report,
        timer: Box::pin(tokio::time::sleep_until(next_flush.min(next_report))),
    };
    let task = tokio::spawn(worker.run());
    let emitter = AuditEmitter {
        inner: Arc::new(EmitterInner {
            sender,
            overflow: options.overflow,
            shared: shared.clone(),
            detached: AtomicUsize::new(0),
            capacity,
        }),
    };
    let handle = AuditHandle {
        control,
        shared,
        task,
    };
    (emitter, handle)
}

/// `now + d`, saturating far in the future instead of overflowing.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The delay before retry number `attempt + 1`.
fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(max)
}

/// Runs a sink call in its own task, so a panicking sink is a failed write, not a dead emitter.
async fn isolated<F>(call: F) -> Result<(), SinkError>
where
    F: Future<Output = Result<(), SinkError>> + Send + 'static,
{
    match tokio::spawn(call).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(SinkError::Other("audit sink panicked".to_owned())),
        Err(_) => Err(SinkError::Other("audit sink call cancelled".to_owned())),
    }
}

enum Wake {
    Control(Control),
    Events,
    EventsClosed,
    Timer,
    Done,
}

struct Worker {
    sink: Arc<dyn AuditSink>,
    events: mpsc::Receiver<AuditEvent>,
    /// `false` once every sender is gone and the queue is empty.
    events_open: bool,
    control: mpsc::UnboundedReceiver<Control>,
    /// `false` once the handle is gone.
    control_open: bool,
    shared: Arc<Shared>,
    max_batch: usize,
    flush_interval: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    max_retries: u32,
    drop_report_interval: Duration,
    /// Events received but not yet written.
    batch: Vec<AuditEvent>,
    /// Something was written since the last successful flush.
    dirty: bool,
    /// Events given up on since the last flush or shutdown acknowledgement.
    lost: u64,
    last_error: Option<SinkError>,
    reported_drops: u64,
    reported_rejections: u64,
    next_flush: Instant,
    next_report: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            match poll_fn(|cx| self.poll_wake(cx)).await {
                Wake::Events => self.write_batch().await,
                Wake::EventsClosed => {
                    if self.dirty {
                        self.periodic_flush().await;
                    }
                }
                Wake::Timer => self.on_timer().await,
                Wake::Control(Control::Flush(ack)) => {
                    let result = self.barrier().await;
                    let _ = ack.send(result);
                }
                Wake::Control(Control::Shutdown(ack)) => {
                    let result = self.shutdown().await;
                    let _ = ack.send(result);
                    return;
                }
                Wake::Done => {
                    if self.dirty {
                        self.periodic_flush().await;
                    }
                    self.report_drops();
                    return;
                }
            }
        }
    }

    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if self.control_open {
            match self.control.poll_recv(cx) {
                Poll::Ready(Some(control)) => return Poll::Ready(Wake::Control(control)),
                Poll::Ready(None) => self.control_open = false,
                Poll::Pending => {}
            }
        }
        if self.events_open {
            match self
                .events
                .poll_recv_many(cx, &mut self.batch, self.max_batch)
            {
                Poll::Ready(0) => {
                    self.events_open = false;
                    return Poll::Ready(Wake::EventsClosed);
                }
                Poll::Ready(_) => return Poll::Ready(Wake::Events),
                Poll::Pending => {}
            }
        }
        if !self.events_open && !self.control_open {
            return Poll::Ready(Wake::Done);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Wake::Timer),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes `self.batch` (retrying; dropping it after `max_retries`) and empties it.
    async fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = Arc::new(mem::take(&mut self.batch));
        let n = batch.len() as u64;
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let mut attempt = 0u32;
        loop {
            let sink = self.sink.clone();
            let events = batch.clone();
            match self
                .reporting(isolated(async move { sink.as_ref().write(&events).await }))
                .await
            {
                Ok(()) => {
                    add(&counters.written, n);
                    self.dirty = true;
                    break;
                }
                Err(err) => {
                    add(&counters.sink_errors, 1);
                    if attempt >= self.max_retries {
                        add(&counters.dropped, n);
                        self.lost = self.lost.saturating_add(n);
                        tracing::error!(
                            target: LOG_TARGET,
                            events = n,
                            attempts = u64::from(attempt) + 1,
                            error = %err,
                            "audit sink kept failing; dropping the batch"
                        );
                        self.last_error = Some(err);
                        break;
                    }
                    let delay = backoff(self.retry_initial, self.retry_max, attempt);
                    if attempt == 0 {
                        tracing::warn!(
                            target: LOG_TARGET,
                            events = n,
                            error = %err,
                            "audit sink write failed; retrying"
                        );
                    } else {
                        tracing::debug!(
                            target: LOG_TARGET,
                            events = n,
                            attempt,
                            error = %err,
                            "audit sink write failed again"
                        );
                    }
                    attempt += 1;
                    add(&counters.retries, 1);
                    self.reporting(tokio::time::sleep(delay)).await;
                }
            }
        }
        // Reuse the allocation when the sink task has let go of it.
        if let Ok(mut events) = Arc::try_unwrap(batch) {
            events.clear();
            self.batch = events;
        }
    }

    async fn flush_sink(&mut self) -> Result<(), SinkError> {
        let sink = self.sink.clone();
        let result = self
            .reporting(isolated(async move { sink.as_ref().flush().await }))
            .await;
        match &result {
            Ok(()) => self.dirty = false,
            Err(_) => add(&self.shared.counters.sink_errors, 1),
        }
        result
    }

    async fn periodic_flush(&mut self) {
        if let Err(err) = self.flush_sink().await {
            tracing::warn!(target: LOG_TARGET, error = %err, "audit sink flush failed");
        }
    }

    /// Writes every event queued before the flush request arrived, then flushes the sink.
    async fn barrier(&mut self) -> Result<(), SinkError> {
        // Everything sent before the request is counted in `len` (a send still in progress is
        // waited for by `try_recv`). Later events may come along, but at most this many.
        let mut budget = self.events.len();
        while budget > 0 {
            let Ok(event) = self.events.try_recv() else {
                break;
            };
            budget -= 1;
            self.batch.push(event);
            if self.batch.len() >= self.max_batch {
                self.write_batch().await;
            }
        }
        self.write_batch().await;
        let flushed = self.flush_sink().await;
        self.settle(flushed)
    }

    async fn shutdown(&mut self) -> Result<(), SinkError> {
        self.shared.closed.store(true, Ordering::Release);
        // Refuses new reservations; permits already held can still send, and `recv_many`
        // returns 0 only once they are all used or dropped and the queue is empty.
        self.events.close();
        self.write_batch().await;
        while self.events.recv_many(&mut self.batch, self.max_batch).await > 0 {
            self.write_batch().await;
        }
        self.events_open = false;
        let flushed = self.flush_sink().await;
        self.report_drops();
        self.settle(flushed)
    }

    /// The result of a flush or shutdown: lost events first, then the flush error.
    fn settle(&mut self, flushed: Result<(), SinkError>) -> Result<(), SinkError> {
        let lost = mem::take(&mut self.lost);
        let last = self.last_error.take();
        match last {
            Some(err) if lost > 0 => Err(err),
            _ => flushed,
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if now >= self.next_flush {
            if self.dirty {
                self.periodic_flush().await;
            }
            self.next_flush = after(Instant::now(), self.flush_interval);
        }
        if now >= self.next_report {
            self.report_drops();
            self.next_report = after(now, self.drop_report_interval);
        }
        let next = self.next_flush.min(self.next_report);
        self.timer.as_mut().reset(next);
    }

    /// Awaits `call` (a sink call or a retry delay) while still reporting drops on schedule:
    /// events are dropped when the sink is slow or stuck, which is when the report matters.
    async fn reporting<T>(&mut self, call: impl Future<Output = T>) -> T {
        let mut call = std::pin::pin!(call);
        loop {
            let mut tick = std::pin::pin!(tokio::time::sleep_until(self.next_report));
            let done = poll_fn(|cx| {
                if let Poll::Ready(out) = call.as_mut().poll(cx) {
                    return Poll::Ready(Some(out));
                }
                tick.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match done {
                Some(out) => return out,
                None => {
                    self.report_drops();
                    self.next_report = after(Instant::now(), self.drop_report_interval);
                }
            }
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.shared.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_drops {
            tracing::warn!(
                target: LOG_TARGET,
                dropped = dropped - self.reported_drops,
                dropped_total = dropped,
                "audit events were dropped"
            );
            self.reported_drops = dropped;
        }
        let rejected = self.shared.counters.rejected.load(Ordering::Relaxed);
        if rejected > self.reported_rejections {
            tracing::warn!(
                target: LOG_TARGET,
                rejected = rejected - self.reported_rejections,
                rejected_total = rejected,
                "requests were refused with 503: the audit queue was full or shut down"
            );
            self.reported_rejections = rejected;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    use tokio::time::timeout;

    use super::super::sink::tests::event;
    use super::super::sink::{ChannelSink, FanOut, FsyncPolicy, JsonLinesSink};
    use super::*;

    fn id_of(event: &AuditEvent) -> String {
        let v = serde_json::to_value(event).unwrap();
        v["event_id"].as_str().unwrap().to_owned()
    }

    /// Records what it is given; can be slow, gated, failing or panicking.
    #[derive(Debug, Default)]
    struct TestSink {
        events: Mutex<Vec<AuditEvent>>,
        delay: Duration,
        /// Writes wait for a read lock: hold the write lock to stall the sink.
        gate: tokio::sync::RwLock<()>,
        /// Fail this many writes first.
        fail: AtomicU32,
        /// Panic on this many writes first.
        panic: AtomicU32,
        /// Fail every write.
        broken: bool,
        writes: AtomicU32,
        flushes: AtomicU32,
    }

    impl TestSink {
        fn ids(&self) -> Vec<String> {
            self.events.lock().unwrap().iter().map(id_of).collect()
        }

        fn len(&self) -> usize {
            self.events.lock().unwrap().len()
        }
    }

    #[async_trait::async_trait]
    impl AuditSink for TestSink {
        async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
            let _open = self.gate.read().await;
            self.writes.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let take = |n: &AtomicU32| {
                n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            };
            if take(&self.panic) {
                panic!("test sink panics");
            }
            if self.broken || take(&self.fail) {
                return Err(SinkError::Io("test failure".to_owned()));
            }
            self.events.lock().unwrap().extend_from_slice(events);
            Ok(())
        }

        async fn flush(&self) -> Result<(), SinkError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn fast_retries() -> AuditOptions {
        AuditOptions::default().retry_backoff(Duration::from_millis(1), Duration::from_millis(4))
    }

    async fn send(emitter: &AuditEmitter, id: &str) -> bool {
        match emitter.reserve().await {
            Ok(permit) => {
                permit.send(event(id));
                true
            }
            Err(Overflowed) => false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn wait_never_loses_with_a_slow_sink() {
        let sink = Arc::new(TestSink {
            delay: Duration::from_millis(2),
            ..TestSink::default()
        });
        let options = AuditOptions::default().capacity(8).max_batch(4);
        let (emitter, handle) = spawn(sink.clone(), options);
        let mut producers = Vec::new();
        for p in 0..8 {
            let emitter = emitter.clone();
            producers.push(tokio::spawn(async move {
                for i in 0..50 {
                    assert!(send(&emitter, &format!("{p}-{i}")).await);
                }
            }));
        }
        for producer in producers {
            producer.await.unwrap();
        }
        handle.flush().await.unwrap();
        let stats = handle.stats();
        assert_eq!(stats.accepted, 400);
        assert_eq!(stats.written, 400);
        assert_eq!(stats.dropped, 0);
        assert_eq!(sink.len(), 400);
        // Per producer, order is kept.
        let ids = sink.ids();
        for p in 0..8 {
            let mine: Vec<_> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("{p}-")))
                .cloned()
                .collect();
            let want: Vec<_> = (0..50).map(|i| format!("{p}-{i}")).collect();
            assert_eq!(mine, want);
        }
        assert!(
            sink.writes.load(Ordering::SeqCst) >= 100,
            "batches of at most 4"
        );
        handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn reject_refuses_the_fifth_reservation_at_once() {
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default()
            .capacity(4)
            .overflow(Overflow::Reject);
        let (emitter, handle) = spawn(sink.clone(), options);
        assert_eq!(emitter.overflow(), Overflow::Reject);
        let mut permits = Vec::new();
        for _ in 0..4 {
            permits.push(emitter.reserve().await.unwrap());
        }
        let fifth = timeout(Duration::from_millis(500), emitter.reserve())
            .await
            .expect("Reject never waits");
        assert_eq!(fifth.unwrap_err(), Overflowed);
        // Dropping a permit frees its slot.
        drop(permits.pop());
        permits.push(emitter.reserve().await.unwrap());
        for (i, permit) in permits.into_iter().enumerate() {
            assert!(!permit.is_empty());
            permit.send(event(&i.to_string()));
        }
        handle.flush().await.unwrap();
        assert_eq!(sink.len(), 4);
        let stats = handle.stats();
        assert_eq!((stats.accepted, stats.written, stats.dropped), (4, 4, 0));
        handle.shutdown().await.unwrap();
        assert!(emitter.is_closed());
        assert_eq!(emitter.reserve().await.unwrap_err(), Overflowed);
    }

    #[tokio::test]
    async fn drop_counts_exactly_what_the_sink_misses() {
        let sink = Arc::new(TestSink::default());
        let stall = sink.gate.write().await;
        let options = AuditOptions::default().capacity(2).overflow(Overflow::Drop);
        let (emitter, handle) = spawn(sink.clone(), options);
        let mut empty = 0;
        for i in 0..50 {
            let permit = emitter.reserve().await.unwrap();
            empty += usize::from(permit.is_empty());
            permit.send(event(&i.to_string()));
            tokio::task::yield_now().await;
        }
        // An unused empty permit is no drop.
        let unused = emitter.reserve().await.unwrap();
        assert!(unused.is_empty());
        drop(unused);
        drop(stall);
        handle.flush().await.unwrap();
        let stats = handle.stats();
        assert!(stats.dropped > 0);
        assert_eq!(stats.dropped as usize, empty);
        assert_eq!(stats.dropped as usize, 50 - sink.len());
        assert_eq!(stats.accepted, stats.written);
        assert_eq!(stats.written as usize, sink.len());
        // After shutdown, Drop mode still accepts requests and counts their events.
        handle.shutdown().await.unwrap();
        let permit = emitter.reserve().await.unwrap();
        assert!(permit.is_empty());
        permit.send(event("late"));
        assert_eq!(emitter.stats().dropped, stats.dropped + 1);
    }

    #[tokio::test]
    async fn failing_sink_is_retried_without_loss() {
        let sink = Arc::new(TestSink {
            fail: AtomicU32::new(3),
            ..TestSink::default()
        });
        let (emitter, handle) = spawn(sink.clone(), fast_retries());
        for i in 0..5 {
            assert!(send(&emitter, &i.to_string()).await);
        }
        handle.flush().await.unwrap();
        let stats = handle.stats();
        assert_eq!(stats.retries, 3);
        assert_eq!(stats.sink_errors, 3);
        assert_eq!((stats.accepted, stats.written, stats.dropped), (5, 5, 0));
        assert_eq!(sink.ids(), ["0", "1", "2", "3", "4"]);
        handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_sink_is_a_failed_write() {
        let sink = Arc::new(TestSink {
            panic: AtomicU32::new(1),
            ..TestSink::default()
        });
        let (emitter, handle) = spawn(sink.clone(), fast_retries());
        assert!(send(&emitter, "a").await);
        handle.flush().await.unwrap();
        assert!(send(&emitter, "b").await);
        handle.shutdown().await.unwrap();
        assert_eq!(sink.ids(), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_dead_sink_drops_after_max_retries() {
        let sink = Arc::new(TestSink {
            broken: true,
            ..TestSink::default()
        });
        let (emitter, handle) = spawn(sink.clone(), fast_retries().max_retries(2));
        for i in 0..3 {
            assert!(send(&emitter, &i.to_string()).await);
        }
        let err = handle.flush().await.unwrap_err();
        assert_eq!(err, SinkError::Io("test failure".to_owned()));
        let stats = handle.stats();
        assert_eq!(stats.accepted, 3);
        assert_eq!(stats.written, 0);
        assert_eq!(stats.dropped, 3);
        assert_eq!(stats.retries % 2, 0);
        assert_eq!(stats.sink_errors, stats.retries / 2 * 3);
        // The loss was reported once.
        handle.flush().await.unwrap();
        handle.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_writes_everything_to_a_file() {
        let path = std::env::temp_dir().join(format!(
            "tower-mcp-auth-emitter-{}-{:?}.jsonl",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let sink = JsonLinesSink::file(&path, FsyncPolicy::EveryBatch).unwrap();
        let options = AuditOptions::default().capacity(64).max_batch(16);
        let (emitter, handle) = spawn(Arc::new(sink), options);
        for i in 0..1000 {
            assert!(send(&emitter, &format!("e{i}")).await);
        }
        handle.shutdown().await.unwrap();
        assert_eq!(emitter.reserve().await.unwrap_err(), Overflowed);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let ids: Vec<_> = text
            .lines()
            .map(|l| id_of(&serde_json::from_str(l).unwrap()))
            .collect();
        let want: Vec<_> = (0..1000).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want);
        let stats = emitter.stats();
        assert_eq!(
            (stats.accepted, stats.written, stats.dropped),
            (1000, 1000, 0)
        );
    }

    #[tokio::test]
    async fn shutdown_waits_for_held_permits() {
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default().capacity(1);
        let (emitter, handle) = spawn(sink.clone(), options);
        let held = emitter.reserve().await.unwrap();
        // A request waiting for room is refused once shutdown begins.
        let waiting = tokio::spawn({
            let emitter = emitter.clone();
            async move { emitter.reserve().await.map(drop) }
        });
        tokio::task::yield_now().await;
        let shutdown = tokio::spawn(handle.shutdown());
        assert_eq!(waiting.await.unwrap(), Err(Overflowed));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!shutdown.is_finished());
        held.send(event("in-flight"));
        shutdown.await.unwrap().unwrap();
        assert_eq!(sink.ids(), ["in-flight"]);
    }

    #[tokio::test]
    async fn flush_is_a_barrier() {
        let sink = Arc::new(TestSink {
            delay: Duration::from_millis(5),
            ..TestSink::default()
        });
        let options = AuditOptions::default()
            .max_batch(3)
            .flush_interval(Duration::from_secs(3600));
        let (emitter, handle) = spawn(sink.clone(), options);
        for i in 0..20 {
            assert!(send(&emitter, &i.to_string()).await);
        }
        handle.flush().await.unwrap();
        assert_eq!(sink.len(), 20);
        assert_eq!(sink.flushes.load(Ordering::SeqCst), 1);
        // A held permit (not yet sent) is not waited for by flush.
        let held = emitter.reserve().await.unwrap();
        timeout(Duration::from_secs(5), handle.flush())
            .await
            .unwrap()
            .unwrap();
        held.send(event("20"));
        handle.flush().await.unwrap();
        assert_eq!(sink.len(), 21);
        handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn periodic_flush() {
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default().flush_interval(Duration::from_millis(10));
        let (emitter, handle) = spawn(sink.clone(), options);
        assert!(send(&emitter, "a").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.len(), 1);
        assert!(sink.flushes.load(Ordering::SeqCst) >= 1);
        // Idle: no further flushes.
        let flushes = sink.flushes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sink.flushes.load(Ordering::SeqCst), flushes);
        handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn fan_out_to_two_channels() {
        let (a, mut rx_a) = ChannelSink::new(16);
        let (b, mut rx_b) = ChannelSink::new(16);
        let fan = FanOut::new(vec![Arc::new(a), Arc::new(b)]);
        let (emitter, handle) = spawn(Arc::new(fan), AuditOptions::default());
        for i in 0..10 {
            assert!(send(&emitter, &i.to_string()).await);
        }
        handle.shutdown().await.unwrap();
        for rx in [&mut rx_a, &mut rx_b] {
            let mut ids = Vec::new();
            while let Some(event) = rx.recv().await {
                ids.push(id_of(&event));
            }
            let want: Vec<_> = (0..10).map(|i| i.to_string()).collect();
            assert_eq!(ids, want);
        }
    }

    #[tokio::test]
    async fn the_task_ends_when_everything_is_dropped() {
        let (sink, mut rx) = ChannelSink::new(16);
        let (emitter, handle) = spawn(Arc::new(sink), AuditOptions::default());
        let permit = emitter.reserve().await.unwrap();
        drop(handle);
        drop(emitter);
        permit.send(event("last"));
        // The task writes the last event, then drops the sink (closing the channel).
        assert_eq!(id_of(&rx.recv().await.unwrap()), "last");
        assert!(
            timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn degenerate_options_do_not_panic() {
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions {
            capacity: 0,
            max_batch: 0,
            flush_interval: Duration::ZERO,
            drop_report_interval: Duration::MAX,
            retry_initial: Duration::MAX,
            retry_max: Duration::MAX,
            max_retries: u32::MAX,
            ..AuditOptions::default()
        };
        let (emitter, handle) = spawn(sink.clone(), options);
        assert!(send(&emitter, "a").await);
        assert!(send(&emitter, "b").await);
        handle.shutdown().await.unwrap();
        assert_eq!(sink.ids(), ["a", "b"]);
        assert_eq!(
            backoff(Duration::MAX, Duration::MAX, u32::MAX),
            Duration::MAX
        );
        assert_eq!(
            backoff(Duration::from_millis(50), Duration::from_secs(5), 3),
            Duration::from_millis(400)
        );
        assert_eq!(
            backoff(Duration::from_millis(50), Duration::from_secs(5), 40),
            Duration::from_secs(5)
        );
    }

    /// What `tracing` prints while it is the thread's default subscriber.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// The lines of the emitter's warnings, in order.
        fn warnings(&self) -> Vec<String> {
            self.text()
                .lines()
                .filter(|l| l.contains("WARN") && l.contains(LOG_TARGET))
                .map(str::to_owned)
                .collect()
        }
    }

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

    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Waits (virtual time keeps running on the current-thread runtime) until `f` holds.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    // Current-thread runtime: the task and the sink calls run on this thread, under the
    // subscriber set here.
    #[tokio::test]
    async fn drops_are_reported_in_a_periodic_warning_even_while_the_sink_is_stuck() {
        let (logs, _default) = capture();
        let sink = Arc::new(TestSink::default());
        let stall = sink.gate.write().await;
        let options = AuditOptions::default()
            .capacity(1)
            .max_batch(1)
            .overflow(Overflow::Drop)
            .drop_report_interval(Duration::from_millis(20));
        let (emitter, handle) = spawn(sink.clone(), options);
        // The first event is taken by the stuck sink, the second fills the queue, the rest are
        // dropped.
        for i in 0..6 {
            let permit = emitter.reserve().await.unwrap();
            permit.send(event(&i.to_string()));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let dropped = emitter.stats().dropped;
        assert!(dropped >= 4, "dropped {dropped}");
        let first = format!("dropped={dropped} dropped_total={dropped}");
        eventually("the first drop warning", || {
            logs.warnings().iter().any(|l| l.contains(&first))
        })
        .await;
        assert_eq!(sink.len(), 0, "the sink is still stuck");
        let warnings = logs.warnings();
        assert_eq!(
            warnings.len(),
            1,
            "one warning for one batch of drops: {warnings:?}"
        );
        assert!(warnings[0].contains("audit events were dropped"));
        // Two more drops: the next warning reports the two new ones and the total.
        for i in 6..8 {
            emitter.reserve().await.unwrap().send(event(&i.to_string()));
        }
        let second = format!("dropped=2 dropped_total={}", dropped + 2);
        eventually("the second drop warning", || {
            logs.warnings().iter().any(|l| l.contains(&second))
        })
        .await;
        // Nothing new: no further warning.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(logs.warnings().len(), 2, "{:?}", logs.warnings());
        drop(stall);
        handle.shutdown().await.unwrap();
        assert_eq!(sink.len() as u64 + dropped + 2, 8);
    }

    #[tokio::test]
    async fn shutdown_reports_drops_not_yet_reported() {
        let (logs, _default) = capture();
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default()
            .overflow(Overflow::Drop)
            .drop_report_interval(Duration::from_secs(3600));
        let (emitter, handle) = spawn(sink.clone(), options);
        handle.flush().await.unwrap();
        // Refused after shutdown begins: an empty permit.
        let held = emitter.reserve().await.unwrap();
        let shutdown = tokio::spawn(handle.shutdown());
        eventually("shutdown to begin", || emitter.is_closed()).await;
        emitter.reserve().await.unwrap().send(event("late"));
        held.send(event("held"));
        shutdown.await.unwrap().unwrap();
        assert_eq!(sink.ids(), ["held"]);
        assert_eq!(emitter.stats().dropped, 1);
        let warnings = logs.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("dropped=1 dropped_total=1"),
            "{warnings:?}"
        );
    }

    #[tokio::test]
    async fn rejections_are_counted_and_reported() {
        let (logs, _default) = capture();
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default()
            .capacity(1)
            .overflow(Overflow::Reject)
            .drop_report_interval(Duration::from_millis(20));
        let (emitter, handle) = spawn(sink.clone(), options);
        let held = emitter.reserve().await.unwrap();
        for _ in 0..3 {
            assert!(matches!(emitter.try_reserve_now(), Some(Err(Overflowed))));
            emitter.count_rejected();
        }
        assert_eq!(emitter.stats().rejected, 3);
        eventually("the rejection warning", || {
            logs.warnings()
                .iter()
                .any(|l| l.contains("rejected=3 rejected_total=3"))
        })
        .await;
        held.send(event("a"));
        handle.shutdown().await.unwrap();
        let stats = emitter.stats();
        assert_eq!((stats.accepted, stats.dropped, stats.rejected), (1, 0, 3));
    }

    #[tokio::test]
    async fn detached_events_wait_for_room_or_count_a_drop() {
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default().capacity(1);
        let (emitter, handle) = spawn(sink.clone(), options);
        let held = emitter.reserve().await.unwrap();
        // No room: a task waits for it, as the request would have.
        emitter.send_detached(event("detached"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(emitter.stats().accepted, 0);
        held.send(event("held"));
        handle.flush().await.unwrap();
        eventually("the detached event", || sink.len() == 2).await;
        assert_eq!(sink.ids(), ["held", "detached"]);
        handle.shutdown().await.unwrap();
        // Shut down: no room will come; counted as a drop.
        emitter.send_detached(event("late"));
        let stats = emitter.stats();
        assert_eq!((stats.accepted, stats.written, stats.dropped), (2, 2, 1));
    }

    #[tokio::test]
    async fn detached_waiters_are_bounded_by_the_queue_capacity() {
        let sink = Arc::new(TestSink::default());
        let options = AuditOptions::default().capacity(2);
        let (emitter, handle) = spawn(sink.clone(), options);
        let held = [
            emitter.reserve().await.unwrap(),
            emitter.reserve().await.unwrap(),
        ];
        // The queue is full: two tasks may wait for room, every further event is a counted drop.
        for i in 0..10 {
            emitter.send_detached(event(&format!("cancelled-{i}")));
        }
        assert_eq!(emitter.stats().dropped, 8);
        assert_eq!(emitter.inner.detached.load(Ordering::Acquire), 2);
        for (permit, id) in held.into_iter().zip(["a", "b"]) {
            permit.send(event(id));
        }
        handle.flush().await.unwrap();
        eventually("the two waiting events", || sink.len() == 4).await;
        eventually("the waiters to finish", || {
            emitter.inner.detached.load(Ordering::Acquire) == 0
        })
        .await;
        handle.shutdown().await.unwrap();
        let stats = emitter.stats();
        assert_eq!((stats.accepted, stats.dropped), (4, 8));
    }

    #[test]
    fn types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<AuditEmitter>();
        send_sync::<AuditPermit>();
        send_sync::<AuditHandle>();
        let (sink, _rx) = ChannelSink::new(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (emitter, _handle) = spawn(Arc::new(sink), AuditOptions::default());
            let reserve = emitter.reserve();
            send(&reserve);
        });
    }

    #[test]
    fn overflow_config_names() {
        let o: Overflow = serde_json::from_str("\"reject\"").unwrap();
        assert_eq!(o, Overflow::Reject);
        assert_eq!(serde_json::to_string(&Overflow::Drop).unwrap(), "\"drop\"");
        assert_eq!(Overflow::default(), Overflow::Wait);
    }
}
