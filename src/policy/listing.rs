//! [`ListingBody`]: `tools/list`, `prompts/list` and `resources/list` results that show only what
//! the caller may use.
//!
//! The response to a listing request is rewritten on its way out: each item of `result.tools`,
//! `result.prompts` (by `name`) or `result.resources` (by `uri`) is kept only if the
//! [`ListingFilter`] says it is visible. Only responses whose `id` is one of the listing requests
//! are touched; every other byte passes through unchanged, and a rewritten response keeps every
//! other member verbatim (only the listing array itself is rebuilt, from the kept items' original
//! text).
//!
//! - `application/json`: the whole body (one response, or a batch array) is buffered up to the
//!   limit, then filtered.
//! - `text/event-stream`: events are filtered one at a time as their terminating blank line
//!   arrives, so a long-lived stream needs only one event's worth of memory. An event is held
//!   until it is complete; one with no listing response in it is forwarded byte for byte. A
//!   trailing event without its blank line at the end of the stream is filtered and forwarded
//!   like any other (clients discard it anyway).
//!
//! Everything fails closed: a body or event over the limit, a listing body that is not JSON (or,
//! on a stream, event data that is not JSON while a listing response is still awaited), a
//! matching response whose listing is not an array, or a matching response with duplicate `id`
//! members ends the body with an error instead of passing data that was not filtered. Items
//! without a string `name` (`uri`) are dropped.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which listing a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    const ALL: [ListKind; 3] = [ListKind::Tools, ListKind::Prompts, ListKind::Resources];

    /// The member of `result` that holds the items.
    fn member(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
        }
    }

    /// The member of an item that names it.
    fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Decides whether one listed item (tool/prompt name, resource URI) stays visible.
pub(crate) trait ListingFilter: Send + Sync + 'static {
    fn visible<'a>(
        &'a self,
        kind: ListKind,
        item: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// The list requests of one HTTP request: (JSON-RPC id serialized as compact JSON text, e.g. `1`
/// or `"abc"`, kind).
#[derive(Debug, Clone, Default)]
pub(crate) struct ListRequests(pub(crate) Vec<(String, ListKind)>);

pin_project! {
    /// A response body whose listing results are filtered, streaming for SSE.
    pub(crate) struct ListingBody<B> {
        #[pin]
        inner: B,
        // `None` when no listing was requested: frames pass through untouched.
        core: Option<Box<Core>>,
        trailers: Option<HeaderMap>,
        inner_done: bool,
        done: bool,
    }
}

impl<B> ListingBody<B> {
    /// `event_stream` = the response content type is text/event-stream (else JSON). `max_buffer`
    /// bounds the bytes held at once (the whole JSON body, or one SSE event); beyond it the body
    /// yields an error (fail closed, never pass unfiltered data).
    pub(crate) fn new(
        inner: B,
        event_stream: bool,
        requests: ListRequests,
        filter: Arc<dyn ListingFilter>,
        max_buffer: usize,
    ) -> Self {
        let requests = Requests::new(requests);
        let core = (!requests.ids.is_empty()).then(|| {
            let format = if event_stream {
                Format::Sse(Sse::default())
            } else {
                Format::Json(Json::default())
            };
            Box::new(Core {
                requests,
                filter,
                max_buffer,
                format,
                input_done: false,
                out: VecDeque::new(),
                job: None,
            })
        });
        Self {
            inner,
            core,
            trailers: None,
            inner_done: false,
            done: false,
        }
    }
}

impl<B> Body for ListingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(core) = this.core.as_deref_mut() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            if let Some(data) = core.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if core.job.is_some() {
                if let Err(error) = ready!(core.poll_job(cx)) {
                    *this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                continue;
            }
            if *this.inner_done {
                *this.done = true;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let step = match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    *this.inner_done = true;
                    core.finish()
                }
                Some(Err(error)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => core.push(data),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            *this.trailers = Some(trailers);
                            *this.inner_done = true;
                            core.finish()
                        }
                        // A frame kind this crate does not know: nothing to forward.
                        Err(_) => Ok(()),
                    },
                },
            };
            if let Err(error) = step {
                *this.done = true;
                core.out.clear();
                return Poll::Ready(Some(Err(error)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.core {
            None => self.inner.is_end_stream(),
            Some(_) => self.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.core {
            None => self.inner.size_hint(),
            // Filtering may change the length.
            Some(_) => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for ListingBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListingBody")
            .field("filtering", &self.core.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a listing body was cut off.
#[derive(Debug)]
struct ListingError(&'static str);

impl fmt::Display for ListingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ListingError {}

fn fail(reason: &'static str) -> BoxError {
    Box::new(ListingError(reason))
}

const OVER_LIMIT: &str = "listing response exceeds the buffer limit";
const NOT_JSON: &str = "listing response is not valid JSON";

/// The listing requests by canonical id.
struct Requests {
    ids: HashMap<String, Expected>,
    unanswered: usize,
}

struct Expected {
    /// [`ListKind::bit`]s: a (misbehaving) client may reuse an id within a batch.
    kinds: u8,
    answered: bool,
}

impl Requests {
    fn new(ListRequests(list): ListRequests) -> Self {
        let mut ids: HashMap<String, Expected> = HashMap::with_capacity(list.len());
        for (id, kind) in list {
            let id = canonical_id(&id).unwrap_or(id);
            ids.entry(id)
                .or_insert(Expected {
                    kinds: 0,
                    answered: false,
                })
                .kinds |= kind.bit();
        }
        let unanswered = ids.len();
        Self { ids, unanswered }
    }

    fn kinds(&self, id: &RawValue) -> u8 {
        canonical_id(id.get())
            .and_then(|id| self.ids.get(&id))
            .map_or(0, |e| e.kinds)
    }

    /// The kinds asked for under `id`, which is now answered.
    fn answer(&mut self, id: &RawValue) -> u8 {
        let Some(expected) = canonical_id(id.get()).and_then(|id| self.ids.get_mut(&id)) else {
            return 0;
        };
        if !expected.answered {
            expected.answered = true;
            self.unanswered -= 1;
        }
        expected.kinds
    }
}

/// The id as compact JSON compared by value, so `"a\u0062c"` and `"abc"`, or `7`, `7.0`,
/// `7e0` and ` 7` compare equal (servers re-serialize ids; an unmatched response would escape
/// filtering).
fn canonical_id(text: &str) -> Option<String> {
    let value = serde_json::from_str::<serde_json::Value>(text).ok()?;
    if let serde_json::Value::Number(n) = &value
        && n.as_i64().is_none()
        && n.as_u64().is_none()
        && let Some(f) = n.as_f64()
        && f.fract() == 0.0
        && f.abs() < 1.8e19
    {
        // An integral float: the integer it denotes (`-0` and `0` alike).
        return Some(format!("{}", f as i128));
    }
    Some(value.to_string())
}

/// The filtering state; boxed so that an unfiltered [`ListingBody`] stays small.
struct Core {
    requests: Requests,
    filter: Arc<dyn ListingFilter>,
    max_buffer: usize,
    format: Format,
    /// The inner body has no more data.
    input_done: bool,
    /// Output ready to be yielded, in order.
    out: VecDeque<Bytes>,
    /// A rewrite waiting for the filter's decisions; no input is processed meanwhile.
    job: Option<Pending>,
}

enum Format {
    Json(Json),
    Sse(Sse),
}

#[derive(Default)]
struct Json {
    buf: BytesMut,
    /// The body has been judged.
    judged: bool,
}

/// The event-stream scanner. Positions (`pos`, `line_start`, [`DataLine`]) are relative to `ev`,
/// the start of the current event in `buf`; `buf[..ev]` are complete events that pass unchanged
/// and have not been emitted yet.
#[derive(Default)]
struct Sse {
    buf: BytesMut,
    ev: usize,
    /// Bytes of the current event scanned so far.
    pos: usize,
    line_start: usize,
    /// The last byte scanned was a CR ending a line: an LF right after it belongs to it.
    after_cr: bool,
    /// The first line of the stream has been seen (it may start with a byte order mark).
    seen_first_line: bool,
    /// The `data` lines of the current event.
    lines: Vec<DataLine>,
}

/// One `data` line of an event: `start..value` is `data:` (and the optional space),
/// `value..content_end` the value, `content_end..end` the line ending.
#[derive(Debug, Clone, Copy)]
struct DataLine {
    start: usize,
    value: usize,
    content_end: usize,
    end: usize,
}

const BOM: &[u8] = "\u{feff}".as_bytes();

impl Sse {
    /// Scans on; the length of the current event once its blank line has been seen.
    fn scan(&mut self) -> Option<usize> {
        loop {
            let rest = self.buf.get(self.ev + self.pos..).unwrap_or_default();
            let first = *rest.first()?;
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                if let Some(last) = self.lines.last_mut()
                    && last.end == self.pos
                {
                    last.end += 1;
                }
                self.pos += 1;
                self.line_start = self.pos;
                continue;
            }
            let Some(n) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                self.pos += rest.len();
                return None;
            };
            self.after_cr = rest[n] == b'\r';
            let content_end = self.pos + n;
            self.pos = content_end + 1;
            let start = std::mem::replace(&mut self.line_start, self.pos);
            if self.end_line(start, content_end, self.pos) {
                return Some(self.pos);
            }
        }
    }

    /// At the end of the stream: takes an unterminated last line; the length of what is left.
    fn close(&mut self) -> usize {
        if self.line_start < self.pos {
            self.end_line(self.line_start, self.pos, self.pos);
            self.line_start = self.pos;
        }
        self.pos
    }

    /// Records a line; whether it is blank (the end of the event).
    fn end_line(&mut self, mut start: usize, content_end: usize, end: usize) -> bool {
        let event = self.buf.get(self.ev..).unwrap_or_default();
        let mut content = event.get(start..content_end).unwrap_or_default();
        if !std::mem::replace(&mut self.seen_first_line, true) && content.starts_with(BOM) {
            start += BOM.len();
            content = &content[BOM.len()..];
        }
        let Some(&first) = content.first() else {
            return true;
        };
        if first == b':' {
            return false;
        }
        let (field, value) = match content.iter().position(|&b| b == b':') {
            Some(colon) => {
                let space = usize::from(content.get(colon + 1) == Some(&b' '));
                (&content[..colon], start + colon + 1 + space)
            }
            None => (content, content_end),
        };
        if field == b"data" {
            self.lines.push(DataLine {
                start,
                value,
                content_end,
                end,
            });
        }
        false
    }

    /// Starts a new event after the current one, `len` bytes long, which stays in `buf`.
    fn skip_event(&mut self, len: usize) {
        self.ev += len;
        self.pos = 0;
        self.line_start = 0;
        self.lines.clear();
    }

    /// The complete events before the current one.
    fn take_passed(&mut self) -> Option<Bytes> {
        if self.ev == 0 {
            return None;
        }
        let passed = self.buf.split_to(self.ev).freeze();
        self.ev = 0;
        Some(passed)
    }
}

impl Core {
    fn push(&mut self, chunk: Bytes) -> Result<(), BoxError> {
        match &mut self.format {
            Format::Json(json) => {
                if json.buf.len().saturating_add(chunk.len()) > self.max_buffer {
                    return Err(fail(OVER_LIMIT));
                }
                json.buf.extend_from_slice(&chunk);
                Ok(())
            }
            Format::Sse(sse) => {
                sse.buf.extend_from_slice(&chunk);
                self.advance()
            }
        }
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.input_done = true;
        self.advance()
    }

    /// Drives the pending rewrite; once done, goes on with the buffered input.
    fn poll_job(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let Some(pending) = &mut self.job else {
            return Poll::Ready(Ok(()));
        };
        let decisions = pending
            .decisions
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let decisions = ready!(decisions.as_mut().poll(cx));
        let Some(pending) = self.job.take() else {
            return Poll::Ready(Ok(()));
        };
        let result = pending.job.finish(&decisions).and_then(|out| {
            self.emit(out);
            self.advance()
        });
        Poll::Ready(result)
    }

    fn emit(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out.push_back(bytes);
        }
    }

    /// Processes buffered input until it runs out or a rewrite must wait for the filter.
    fn advance(&mut self) -> Result<(), BoxError> {
        match &mut self.format {
            Format::Json(json) => {
                if self.job.is_some() || !self.input_done || json.judged {
                    return Ok(());
                }
                json.judged = true;
                let body = std::mem::take(&mut json.buf).freeze();
                match judge(&body, &mut self.requests, false)? {
                    Verdict::Keep => self.emit(body),
                    Verdict::Rewrite(plan) => self.start(Job {
                        text: body,
                        plan,
                        event: None,
                    })?,
                }
                Ok(())
            }
            Format::Sse(_) => self.advance_sse(),
        }
    }

    fn advance_sse(&mut self) -> Result<(), BoxError> {
        while self.job.is_none() {
            let Format::Sse(sse) = &mut self.format else {
                return Ok(());
            };
            let len = match sse.scan() {
                Some(len) => len,
                None if sse.pos > self.max_buffer => return Err(fail(OVER_LIMIT)),
                None if self.input_done && sse.pos > 0 => sse.close(),
                None => {
                    if let Some(passed) = sse.take_passed() {
                        self.emit(passed);
                    }
                    return Ok(());
                }
            };
            if len > self.max_buffer {
                return Err(fail(OVER_LIMIT));
            }
            let event = sse.buf.get(sse.ev..sse.ev + len).unwrap_or_default();
            let data = event_data(event, &sse.lines);
            let plan = match judge(&data, &mut self.requests, true)? {
                Verdict::Keep => {
                    sse.skip_event(len);
                    continue;
                }
                Verdict::Rewrite(plan) => plan,
            };
            // The data of a single line is a slice of the event; several are joined.
            let joined = match data {
                Cow::Borrowed(_) => None,
                Cow::Owned(joined) => Some(Bytes::from(joined)),
            };
            let passed = sse.take_passed();
            let event = sse.buf.split_to(len).freeze();
            let lines = std::mem::take(&mut sse.lines);
            sse.skip_event(0);
            let text = match (joined, lines.first()) {
                (Some(joined), _) => joined,
                (None, Some(line)) if event.get(line.value..line.content_end).is_some() => {
                    event.slice(line.value..line.content_end)
                }
                _ => return Err(fail(NOT_JSON)),
            };
            if let Some(passed) = passed {
                self.emit(passed);
            }
            self.start(Job {
                text,
                plan,
                event: Some((event, lines)),
            })?;
        }
        Ok(())
    }

    /// Asks the filter about the job's items, or finishes it at once if there is nothing to ask.
    fn start(&mut self, mut job: Job) -> Result<(), BoxError> {
        let queries = std::mem::take(&mut job.plan.queries);
        if queries.is_empty() {
            let out = job.finish(&[])?;
            self.emit(out);
        } else {
            self.job = Some(Pending {
                decisions: Mutex::new(decide(self.filter.clone(), queries)),
                job,
            });
        }
        Ok(())
    }
}

type Decisions = Pin<Box<dyn Future<Output = Vec<bool>> + Send>>;

/// The filter's answers, in order, for each `(kind, item)`.
fn decide(filter: Arc<dyn ListingFilter>, queries: Vec<(ListKind, String)>) -> Decisions {
    Box::pin(async move {
        let mut visible = Vec::with_capacity(queries.len());
        for (kind, item) in &queries {
            visible.push(filter.visible(*kind, item).await);
        }
        visible
    })
}

struct Pending {
    // In a mutex only so that the body is `Sync`: it is reached through `get_mut`, never locked.
    decisions: Mutex<Decisions>,
    job: Job,
}

/// One document to rewrite.
struct Job {
    /// The JSON text: the whole body, or an event's data.
    text: Bytes,
    plan: Plan,
    /// For an event: the event and its `data` lines.
    event: Option<(Bytes, Vec<DataLine>)>,
}

impl Job {
    fn finish(self, decisions: &[bool]) -> Result<Bytes, BoxError> {
        let text = std::str::from_utf8(&self.text).map_err(|_| fail(NOT_JSON))?;
        let rewritten = self.plan.apply(text, decisions)?;
        Ok(match (rewritten, self.event) {
            (None, Some((event, _))) => event,
            (None, None) => self.text,
            (Some(json), None) => Bytes::from(json),
            (Some(json), Some((event, lines))) => rewrite_event(&event, &lines, &json)?,
        })
    }
}

/// An event's data: its `data` values joined by LF.
fn event_data<'e>(event: &'e [u8], lines: &[DataLine]) -> Cow<'e, [u8]> {
    let value = |line: &DataLine| event.get(line.value..line.content_end).unwrap_or_default();
    match lines {
        [] => Cow::Borrowed(&[]),
        [line] => Cow::Borrowed(value(line)),
        lines => {
            let mut joined = Vec::new();
            for (n, line) in lines.iter().enumerate() {
                if n > 0 {
                    joined.push(b'\n');
                }
                joined.extend_from_slice(value(line));
            }
            Cow::Owned(joined)
        }
    }
}

/// The event with its `data` lines replaced by `data` (at the place of the first); every other
/// line, comment and line ending is kept.
fn rewrite_event(event: &[u8], lines: &[DataLine], data: &str) -> Result<Bytes, BoxError> {
    let part = |range: Range<usize>| event.get(range).ok_or_else(|| fail(NOT_JSON));
    let mut out = Vec::with_capacity(event.len());
    let mut cursor = 0;
    for (n, line) in lines.iter().enumerate() {
        out.extend_from_slice(part(cursor..line.start)?);
        if n == 0 {
            let ending = part(line.content_end..line.end)?;
            let separator: &[u8] = if ending.is_empty() { b"\n" } else { ending };
            let mut segments = data.split('\n').peekable();
            while let Some(segment) = segments.next() {
                // Always a space after the colon: a segment may itself start with one.
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(segment.as_bytes());
                let last = segments.peek().is_none();
                out.extend_from_slice(if last { ending } else { separator });
            }
        }
        cursor = line.end;
    }
    out.extend_from_slice(part(cursor..event.len())?);
    Ok(Bytes::from(out))
}

enum Verdict {
    Keep,
    Rewrite(Plan),
}

/// What to do with a JSON document: the body, or (`event`) one event's data.
fn judge(data: &[u8], requests: &mut Requests, event: bool) -> Result<Verdict, BoxError> {
    if data
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(Verdict::Keep);
    }
    // A client decodes an event stream lossily; a JSON body must be UTF-8.
    let (text, exact) = match std::str::from_utf8(data) {
        Ok(text) => (Cow::Borrowed(text), true),
        Err(_) if event => (String::from_utf8_lossy(data), false),
        Err(_) => return Err(fail(NOT_JSON)),
    };
    // Data this filter cannot parse may still parse for a lenient client (e.g. a lone surrogate
    // escape, which JavaScript accepts) and hide a second listing: fail closed, always.
    match plan_document(&text, requests) {
        Err(Failure::Syntax) => Err(fail(NOT_JSON)),
        Err(Failure::Shape(reason)) => Err(fail(reason)),
        Ok(plan) if plan.matched && !exact => {
            Err(fail("listing response in an event is not valid UTF-8"))
        }
        Ok(plan) if plan.arrays.is_empty() => Ok(Verdict::Keep),
        Ok(plan) => Ok(Verdict::Rewrite(plan)),
    }
}

enum Failure {
    Syntax,
    Shape(&'static str),
}

impl From<serde_json::Error> for Failure {
    fn from(_: serde_json::Error) -> Self {
        Failure::Syntax
    }
}

/// Where a document's listing arrays are, and which items to ask the filter about.
#[derive(Default)]
struct Plan {
    /// A response to a listing request was found.
    matched: bool,
    /// In document order.
    arrays: Vec<ArrayPlan>,
    /// `(kind, item)` of every item with `ask`, in document order.
    queries: Vec<(ListKind, String)>,
}

struct ArrayPlan {
    span: Range<usize>,
    items: Vec<ItemPlan>,
}

struct ItemPlan {
    span: Range<usize>,
    /// Named: its fate is the filter's next decision. Unnamed items are dropped.
    ask: bool,
}

impl Plan {
    /// `text` with the items the decisions hide removed, or `None` if nothing changes.
    fn apply(&self, text: &str, decisions: &[bool]) -> Result<Option<String>, BoxError> {
        let part = |range: Range<usize>| text.get(range).ok_or_else(|| fail(NOT_JSON));
        let mut decisions = decisions.iter().copied();
        let mut out = String::new();
        let mut cursor = 0;
        let mut changed = false;
        for array in &self.arrays {
            let kept: Vec<&Range<usize>> = array
                .items
                .iter()
                .filter(|item| item.ask && decisions.next().unwrap_or(false))
                .map(|item| &item.span)
                .collect();
            if kept.len() == array.items.len() {
                continue;
            }
            changed = true;
            out.push_str(part(cursor..array.span.start)?);
            out.push('[');
            for (n, span) in kept.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(part(span.clone())?);
            }
            out.push(']');
            cursor = array.span.end;
        }
        if !changed {
            return Ok(None);
        }
        out.push_str(part(cursor..text.len())?);
        Ok(Some(out))
    }
}

/// Finds the listing arrays of the responses in `text` (one message or a batch).
fn plan_document(text: &str, requests: &mut Requests) -> Result<Plan, Failure> {
    let document: &RawValue = serde_json::from_str(text)?;
    let mut plan = Plan::default();
    match document.get().as_bytes().first() {
        Some(b'{') => plan_message(text, document, requests, &mut plan)?,
        Some(b'[') => {
            let messages: Vec<&RawValue> = serde_json::from_str(document.get())?;
            for message in messages {
                if message.get().starts_with('{') {
                    plan_message(text, message, requests, &mut plan)?;
                }
            }
        }
        _ => {}
    }
    plan.arrays.sort_by_key(|array| array.span.start);
    Ok(plan)
}

fn plan_message(
    base: &str,
    message: &RawValue,
    requests: &mut Requests,
    plan: &mut Plan,
) -> Result<(), Failure> {
    let Members(members) = serde_json::from_str(message.get())?;
    let mut ids = Vec::new();
    let mut results = Vec::new();
    let mut settled = false;
    for (key, value) in members {
        match key.as_str() {
            "id" => ids.push(value),
            "result" => {
                results.push(value);
                settled = true;
            }
            "error" => settled = true,
            _ => {}
        }
    }
    if !settled {
        return Ok(());
    }
    let kinds = match ids.as_slice() {
        [] => 0,
        [id] => requests.answer(id),
        ids => {
            if ids.iter().any(|id| requests.kinds(id) != 0) {
                return Err(Failure::Shape("listing response has duplicate ids"));
            }
            0
        }
    };
    if kinds == 0 || results.is_empty() {
        return Ok(());
    }
    plan.matched = true;
    // Duplicate `result` members are all filtered: clients differ in which one they read.
    for result in results {
        if !result.get().starts_with('{') {
            return Err(Failure::Shape("listing result is not an object"));
        }
        let Members(fields) = serde_json::from_str(result.get())?;
        for (key, value) in fields {
            let kind = ListKind::ALL
                .into_iter()
                .find(|kind| kinds & kind.bit() != 0 && kind.member() == key);
            if let Some(kind) = kind {
                plan_array(base, kind, value, plan)?;
            }
        }
    }
    Ok(())
}

fn plan_array(base: &str, kind: ListKind, list: &RawValue, plan: &mut Plan) -> Result<(), Failure> {
    if !list.get().starts_with('[') {
        return Err(Failure::Shape("listing is not an array"));
    }
    let items: Vec<&RawValue> = serde_json::from_str(list.get())?;
    let mut planned = Vec::with_capacity(items.len());
    for item in items {
        let ask = match item_name(item, kind.key()) {
            Some(name) => {
                plan.queries.push((kind, name));
                true
            }
            None => false,
        };
        planned.push(ItemPlan {
            span: span_of(base, item.get())?,
            ask,
        });
    }
    plan.arrays.push(ArrayPlan {
        span: span_of(base, list.get())?,
        items: planned,
    });
    Ok(())
}

/// The item's `key` member if it is an object with exactly one, and that one a string.
fn item_name(item: &RawValue, key: &str) -> Option<String> {
    if !item.get().starts_with('{') {
        return None;
    }
    let Members(members) = serde_json::from_str(item.get()).ok()?;
    let mut named = members.into_iter().filter(|(k, _)| k == key);
    let (_, value) = named.next()?;
    if named.next().is_some() || !value.get().starts_with('"') {
        return None;
    }
    serde_json::from_str(value.get()).ok()
}

/// Where `part`, a value borrowed from `base` by the parser, lies in `base`.
fn span_of(base: &str, part: &str) -> Result<Range<usize>, Failure> {
    let start = part.as_ptr().addr().wrapping_sub(base.as_ptr().addr());
    match start.checked_add(part.len()) {
        Some(end) if end <= base.len() => Ok(start..end),
        _ => Err(Failure::Shape("listing response could not be located")),
    }
}

/// The members of a JSON object in document order, duplicates kept, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_compare_by_value() {
        use super::canonical_id as c;
        assert_eq!(c("7"), c("7.0"));
        assert_eq!(c("100"), c("1e2"));
        assert_eq!(c("1"), c("1E0"));
        assert_eq!(c("0"), c("-0"));
        assert_eq!(c("\"abc\""), c("\"a\\u0062c\""));
        assert_ne!(c("1"), c("\"1\""));
        assert_eq!(c("9007199254740993").unwrap(), "9007199254740993");
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use http_body_util::BodyExt;

    use super::*;

    /// Hides items whose name contains "admin" or "write".
    #[derive(Default)]
    struct Hide {
        /// Every decision is pending once before it is made.
        yield_first: bool,
        calls: AtomicUsize,
    }

    impl Hide {
        fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }
    }

    impl ListingFilter for Hide {
        fn visible<'a>(
            &'a self,
            _kind: ListKind,
            item: &'a str,
        ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::Relaxed);
                if self.yield_first {
                    YieldOnce(false).await;
                }
                !item.contains("admin") && !item.contains("write")
            })
        }
    }

    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// A body of given frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Frames {
        fn chunks<I: IntoIterator<Item = T>, T: Into<Bytes>>(chunks: I) -> Self {
            Frames(chunks.into_iter().map(|c| Frame::data(c.into())).collect())
        }

        /// One frame per byte.
        fn bytewise(body: &[u8]) -> Self {
            Frames::chunks(body.iter().map(|b| vec![*b]))
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn size_hint(&self) -> SizeHint {
            let len = self
                .0
                .iter()
                .filter_map(|f| f.data_ref())
                .map(|d| d.len() as u64)
                .sum();
            SizeHint::with_exact(len)
        }
    }

    fn requests(list: &[(&str, ListKind)]) -> ListRequests {
        ListRequests(list.iter().map(|(id, k)| ((*id).to_owned(), *k)).collect())
    }

    fn body<B>(
        inner: B,
        sse: bool,
        list: &[(&str, ListKind)],
        filter: Arc<Hide>,
    ) -> ListingBody<B> {
        ListingBody::new(inner, sse, requests(list), filter, 64 * 1024)
    }

    async fn collect<B>(body: ListingBody<B>) -> Result<String, BoxError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let bytes = body.collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).expect("utf-8 output"))
    }

    async fn json(body: &str, list: &[(&str, ListKind)]) -> Result<String, BoxError> {
        collect(self::body(
            Frames::chunks([body.to_owned()]),
            false,
            list,
            Hide::new(),
        ))
        .await
    }

    async fn sse(body: &[u8], list: &[(&str, ListKind)]) -> Result<String, BoxError> {
        collect(self::body(
            Frames::chunks([body.to_vec()]),
            true,
            list,
            Hide::new(),
        ))
        .await
    }

    const TOOLS: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read","description":"r"},{"name":"admin_reset"},{"name":"write_note","inputSchema":{"type":"object"}},{"name":"search"}]}}"#;
    const TOOLS_FILTERED: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read","description":"r"},{"name":"search"}]}}"#;

    #[tokio::test]
    async fn json_single_response_is_filtered() {
        let out = json(TOOLS, &[("1", ListKind::Tools)]).await.unwrap();
        assert_eq!(out, TOOLS_FILTERED);
    }

    #[tokio::test]
    async fn json_split_across_frames_is_filtered() {
        let filter = Hide::new();
        let out = collect(body(
            Frames::bytewise(TOOLS.as_bytes()),
            false,
            &[("1", ListKind::Tools)],
            filter.clone(),
        ))
        .await
        .unwrap();
        assert_eq!(out, TOOLS_FILTERED);
        assert_eq!(filter.calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn json_batch_is_filtered_per_response() {
        let batch = concat!(
            r#"[{"jsonrpc":"2.0","id":"p","result":{"prompts":[{"name":"admin_prompt"},{"name":"summary"}]}},"#,
            "\n",
            r#" {"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"admin"}]}},"#,
            r#"{"jsonrpc":"2.0","id":2,"result":{"resources":[{"uri":"file:///write/x"},{"uri":"file:///a"},{"name":"no-uri"}],"nextCursor":"c2"}}]"#,
        );
        let out = json(
            batch,
            &[("\"p\"", ListKind::Prompts), ("2", ListKind::Resources)],
        )
        .await
        .unwrap();
        let expected = concat!(
            r#"[{"jsonrpc":"2.0","id":"p","result":{"prompts":[{"name":"summary"}]}},"#,
            "\n",
            r#" {"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"admin"}]}},"#,
            r#"{"jsonrpc":"2.0","id":2,"result":{"resources":[{"uri":"file:///a"}],"nextCursor":"c2"}}]"#,
        );
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn json_other_ids_and_kinds_pass_byte_for_byte() {
        let other = "{ \"jsonrpc\" : \"2.0\", \"id\" : 2 ,\n \"result\": {\"tools\": [ {\"name\": \"admin\"} ]} }\n";
        assert_eq!(json(other, &[("1", ListKind::Tools)]).await.unwrap(), other);
        // The right id but another kind: `tools` is not what was asked for.
        let other_kind = TOOLS;
        assert_eq!(
            json(other_kind, &[("1", ListKind::Prompts)]).await.unwrap(),
            other_kind
        );
        // Everything visible: the original bytes, not a re-serialization.
        let visible =
            "{\"id\":1, \"result\": {\"tools\": [ {\"name\" : \"read\"} ], \"x\": 1.0e3}}";
        assert_eq!(
            json(visible, &[("1", ListKind::Tools)]).await.unwrap(),
            visible
        );
        // Errors and notifications are not results.
        let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"admin"}}"#;
        assert_eq!(json(error, &[("1", ListKind::Tools)]).await.unwrap(), error);
    }

    #[tokio::test]
    async fn json_rewrite_keeps_every_other_member_verbatim() {
        let body = concat!(
            "{\"result\" : {\"nextCursor\": \"abc\\u00e9\", \"tools\" :[{\"name\":\"admin\"}, {\"name\":\"b\\u0061r\", \"n\": 1.50}],",
            " \"_meta\": {\"k\": [1, 2]}}, \"id\": 1, \"jsonrpc\":\"2.0\"}"
        );
        let expected = concat!(
            "{\"result\" : {\"nextCursor\": \"abc\\u00e9\", \"tools\" :[{\"name\":\"b\\u0061r\", \"n\": 1.50}],",
            " \"_meta\": {\"k\": [1, 2]}}, \"id\": 1, \"jsonrpc\":\"2.0\"}"
        );
        assert_eq!(
            json(body, &[("1", ListKind::Tools)]).await.unwrap(),
            expected
        );
    }

    #[tokio::test]
    async fn ids_compare_as_json_values() {
        let body = r#"{"id":"a\u0062c","result":{"tools":[{"name":"admin"}]}}"#;
        let expected = r#"{"id":"a\u0062c","result":{"tools":[]}}"#;
        assert_eq!(
            json(body, &[("\"abc\"", ListKind::Tools)]).await.unwrap(),
            expected
        );
        // A number id does not answer a string id.
        let body = r#"{"id":1,"result":{"tools":[{"name":"admin"}]}}"#;
        assert_eq!(
            json(body, &[("\"1\"", ListKind::Tools)]).await.unwrap(),
            body
        );
    }

    #[tokio::test]
    async fn items_without_a_string_name_are_dropped() {
        let body = concat!(
            r#"{"id":1,"result":{"tools":[{"description":"no name"},{"name":5},{"name":"ok"},"#,
            r#"{"name":"a","name":"b"},"text",null,{"name":"also ok","x":{"name":"admin"}}]}}"#
        );
        let expected = r#"{"id":1,"result":{"tools":[{"name":"ok"},{"name":"also ok","x":{"name":"admin"}}]}}"#;
        assert_eq!(
            json(body, &[("1", ListKind::Tools)]).await.unwrap(),
            expected
        );
        // Resources are named by `uri`, not `name`.
        let body = r#"{"id":1,"result":{"resources":[{"name":"x","uri":"file:///admin"},{"name":"admin","uri":"file:///ok"},{"name":"y"}]}}"#;
        let expected = r#"{"id":1,"result":{"resources":[{"name":"admin","uri":"file:///ok"}]}}"#;
        assert_eq!(
            json(body, &[("1", ListKind::Resources)]).await.unwrap(),
            expected
        );
    }

    #[tokio::test]
    async fn json_fails_closed() {
        let list = &[("1", ListKind::Tools)];
        for bad in [
            "{\"id\":1,\"result\":{\"tools\":[{\"name\":\"admin\"}]}",
            "not json",
            "{\"id\":1,\"id\":1,\"result\":{\"tools\":[]}}",
            "{\"id\":1,\"result\":{\"tools\":{\"name\":\"admin\"}}}",
            "{\"id\":1,\"result\":[{\"name\":\"admin\"}]}",
        ] {
            assert!(json(bad, list).await.is_err(), "{bad}");
        }
        let invalid_utf8 = Frames::chunks([b"{\"id\":2,\"result\":{\"x\":\"\xff\"}}".to_vec()]);
        assert!(
            collect(body(invalid_utf8, false, list, Hide::new()))
                .await
                .is_err()
        );
        // An empty body carries nothing to filter.
        assert_eq!(json("", list).await.unwrap(), "");
    }

    #[tokio::test]
    async fn json_over_limit_is_an_error() {
        let inner = Frames::chunks([&TOOLS[..40], &TOOLS[40..]]);
        let listing = ListingBody::new(
            inner,
            false,
            requests(&[("1", ListKind::Tools)]),
            Hide::new(),
            50,
        );
        let error = collect(listing).await.unwrap_err();
        assert_eq!(error.to_string(), OVER_LIMIT);
        let inner = Frames::chunks([TOOLS]);
        let listing = ListingBody::new(
            inner,
            false,
            requests(&[("1", ListKind::Tools)]),
            Hide::new(),
            TOOLS.len(),
        );
        assert_eq!(collect(listing).await.unwrap(), TOOLS_FILTERED);
    }

    #[tokio::test]
    async fn trailers_pass_through_at_the_end() {
        for sse in [false, true] {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", "yes".parse().unwrap());
            let text = if sse {
                format!("data: {TOOLS}\n\n")
            } else {
                TOOLS.to_owned()
            };
            let mut frames = Frames::chunks([text]);
            frames.0.push_back(Frame::trailers(trailers.clone()));
            let collected = body(frames, sse, &[("1", ListKind::Tools)], Hide::new())
                .collect()
                .await
                .unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            let expected = if sse {
                format!("data: {TOOLS_FILTERED}\n\n")
            } else {
                TOOLS_FILTERED.to_owned()
            };
            assert_eq!(collected.to_bytes(), expected);
        }
    }

    #[tokio::test]
    async fn nothing_requested_is_a_pure_pass_through() {
        let inner = Frames::chunks([TOOLS]);
        let listing = body(inner, false, &[], Hide::new());
        assert_eq!(listing.size_hint().exact(), Some(TOOLS.len() as u64));
        assert_eq!(collect(listing).await.unwrap(), TOOLS);
        let listing = body(
            Frames::chunks([TOOLS]),
            false,
            &[("1", ListKind::Tools)],
            Hide::new(),
        );
        assert_eq!(listing.size_hint().exact(), None);
    }

    #[tokio::test]
    async fn sse_with_crlf_multiline_data_comments_and_ids() {
        let stream = concat!(
            ": keep-alive\r\n\r\n",
            "id: 0\r\ndata:\r\n\r\n",
            "event: message\r\n",
            "id: 17\r\n",
            ": a comment\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\r\n",
            "retry: 1000\r\n",
            "data:\"result\":{\"tools\":[{\"name\":\"admin\"},\r\n",
            "data:  {\"name\":\"read\"}],\"nextCursor\":\"n\"}}\r\n",
            "\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n",
        );
        let expected = concat!(
            ": keep-alive\r\n\r\n",
            "id: 0\r\ndata:\r\n\r\n",
            "event: message\r\n",
            "id: 17\r\n",
            ": a comment\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\r\n",
            "data: \"result\":{\"tools\":[{\"name\":\"read\"}],\"nextCursor\":\"n\"}}\r\n",
            "retry: 1000\r\n",
            "\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n",
        );
        let out = sse(stream.as_bytes(), &[("1", ListKind::Tools)])
            .await
            .unwrap();
        assert_eq!(out, expected);
        // What a client reads from the rewritten event.
        let data = "{\"jsonrpc\":\"2.0\",\"id\":1,\n\"result\":{\"tools\":[{\"name\":\"read\"}],\"nextCursor\":\"n\"}}";
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["result"]["tools"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn sse_with_lf_and_cr_line_endings() {
        for ending in ["\n", "\r", "\r\n"] {
            let stream = format!(
                "event: message{ending}data: {TOOLS}{ending}{ending}: tail{ending}{ending}"
            );
            let expected = format!(
                "event: message{ending}data: {TOOLS_FILTERED}{ending}{ending}: tail{ending}{ending}"
            );
            assert_eq!(
                sse(stream.as_bytes(), &[("1", ListKind::Tools)])
                    .await
                    .unwrap(),
                expected
            );
            let split = Frames::bytewise(stream.as_bytes());
            let out = collect(body(split, true, &[("1", ListKind::Tools)], Hide::new()))
                .await
                .unwrap();
            assert_eq!(out, expected, "{ending:?}");
        }
    }

    #[tokio::test]
    async fn sse_event_split_into_single_bytes_is_filtered() {
        // Split after `"id":1,`: a line break between tokens.
        let stream = format!(
            "id: 1\r\ndata: {}\r\ndata: {}\r\n\r\n",
            &TOOLS[..24],
            &TOOLS[24..]
        );
        let expected = format!(
            "id: 1\r\ndata: {}\r\ndata: {}\r\n\r\n",
            &TOOLS_FILTERED[..24],
            &TOOLS_FILTERED[24..]
        );
        let filter = Arc::new(Hide {
            yield_first: true,
            ..Hide::default()
        });
        let listing = body(
            Frames::bytewise(stream.as_bytes()),
            true,
            &[("1", ListKind::Tools)],
            filter,
        );
        assert_eq!(collect(listing).await.unwrap(), expected);
    }

    #[tokio::test]
    async fn sse_events_are_emitted_as_they_complete() {
        // Two events, then the stream stalls: both must come out before the end.
        let first = format!("data: {TOOLS}\n\n");
        let second = "data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n";
        let stalled = Stalled(Some(Bytes::from(format!("{first}{second}"))));
        let mut listing = body(stalled, true, &[("1", ListKind::Tools)], Hide::new());
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut listing).poll_frame(&mut cx) {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("data: {TOOLS_FILTERED}\n\n{second}")
        );
    }

    #[test]
    fn sse_events_ending_in_cr_are_emitted_before_the_next_byte() {
        for (ending, rest) in [("\r\r", "\n: after\n\n"), ("\r\n\r", "\n: after\r\n\r\n")] {
            let stream = format!("data: {TOOLS}{ending}");
            let mut listing = body(
                Stalled(Some(Bytes::from(stream))),
                true,
                &[("1", ListKind::Tools)],
                Hide::new(),
            );
            let mut cx = Context::from_waker(Waker::noop());
            let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut listing).poll_frame(&mut cx) else {
                panic!("the event is complete");
            };
            assert_eq!(
                frame.into_data().unwrap(),
                format!("data: {TOOLS_FILTERED}{ending}")
            );
            assert!(Pin::new(&mut listing).poll_frame(&mut cx).is_pending());
            // The LF that completes a CRLF (or starts the next event) is forwarded as it is.
            let core = listing.core.as_mut().unwrap();
            core.push(Bytes::from(rest)).unwrap();
            core.finish().unwrap();
            let out: Vec<Bytes> = core.out.drain(..).collect();
            assert_eq!(out.concat(), rest.as_bytes());
        }
    }

    /// One chunk, then pending forever.
    struct Stalled(Option<Bytes>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn pending_decisions_are_awaited() {
        let filter = Arc::new(Hide {
            yield_first: true,
            ..Hide::default()
        });
        let mut listing = body(
            Frames::chunks([TOOLS]),
            false,
            &[("1", ListKind::Tools)],
            filter.clone(),
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut listing).poll_frame(&mut cx).is_pending());
        let out = collect(listing).await.unwrap();
        assert_eq!(out, TOOLS_FILTERED);
        assert_eq!(filter.calls.load(Ordering::Relaxed), 4);
    }

    /// `total` events generated on demand, `per_chunk` to a frame; event `listing` answers id 1.
    struct Generated {
        next: usize,
        total: usize,
        per_chunk: usize,
        listing: usize,
    }

    fn generated_event(n: usize, listing: usize) -> String {
        if n == listing {
            format!("id: {n}\ndata: {TOOLS}\n\n")
        } else {
            format!(
                "id: {n}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progress\":{n}}}}}\n\n"
            )
        }
    }

    impl Body for Generated {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.next == self.total {
                return Poll::Ready(None);
            }
            let end = (self.next + self.per_chunk).min(self.total);
            let chunk: String = (self.next..end)
                .map(|n| generated_event(n, self.listing))
                .collect();
            self.next = end;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
        }
    }

    #[tokio::test]
    async fn long_streams_use_bounded_memory() {
        let (total, listing) = (10_000, 6_543);
        let inner = Generated {
            next: 0,
            total,
            per_chunk: 3,
            listing,
        };
        let mut body = ListingBody::new(
            inner,
            true,
            requests(&[("1", ListKind::Tools)]),
            Hide::new(),
            4096,
        );
        let mut expected = String::new();
        for n in 0..total {
            expected.push_str(&generated_event(n, listing).replace(TOOLS, TOOLS_FILTERED));
        }
        let mut out = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
            let core = body.core.as_ref().unwrap();
            let Format::Sse(sse) = &core.format else {
                unreachable!()
            };
            assert!(sse.buf.len() <= 4096, "{}", sse.buf.len());
            assert!(core.out.len() <= 2);
        }
        assert!(frames >= total / 3);
        assert_eq!(out.len(), expected.len());
        assert!(out == expected.as_bytes());
    }

    #[tokio::test]
    async fn over_limit_event_is_an_error() {
        let small = "data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n";
        let big = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":\"{}\"}}\n\n",
            "a".repeat(200)
        );
        // In one frame or byte by byte (never completed within the limit).
        for bytewise in [false, true] {
            let stream = format!("{small}{big}");
            let inner = if bytewise {
                Frames::bytewise(stream.as_bytes())
            } else {
                Frames::chunks([stream])
            };
            let listing = ListingBody::new(
                inner,
                true,
                requests(&[("1", ListKind::Tools)]),
                Hide::new(),
                128,
            );
            assert_eq!(collect(listing).await.unwrap_err().to_string(), OVER_LIMIT);
        }
        // Many small events in one big frame are fine.
        let stream = small.repeat(100);
        let listing = ListingBody::new(
            Frames::chunks([stream.clone()]),
            true,
            requests(&[("1", ListKind::Tools)]),
            Hide::new(),
            128,
        );
        assert_eq!(collect(listing).await.unwrap(), stream);
    }

    #[tokio::test]
    async fn sse_trailing_incomplete_event_is_filtered() {
        let stream = format!(": c\n\nid: 4\ndata: {TOOLS}");
        let expected = format!(": c\n\nid: 4\ndata: {TOOLS_FILTERED}");
        assert_eq!(
            sse(stream.as_bytes(), &[("1", ListKind::Tools)])
                .await
                .unwrap(),
            expected
        );
        let stream = format!("data: {TOOLS}\n");
        let expected = format!("data: {TOOLS_FILTERED}\n");
        assert_eq!(
            sse(stream.as_bytes(), &[("1", ListKind::Tools)])
                .await
                .unwrap(),
            expected
        );
    }

    #[tokio::test]
    async fn sse_byte_order_mark_does_not_hide_the_first_event() {
        let stream = format!("\u{feff}data: {TOOLS}\n\n");
        let expected = format!("\u{feff}data: {TOOLS_FILTERED}\n\n");
        assert_eq!(
            sse(stream.as_bytes(), &[("1", ListKind::Tools)])
                .await
                .unwrap(),
            expected
        );
    }

    #[tokio::test]
    async fn sse_field_variants() {
        // `data` without a colon is an empty data line; `data:x` has no space to strip; fields
        // other than `data` (here `datax`) are not data.
        let stream = concat!(
            "datax: {\"id\":1,\"result\":{\"tools\":[{\"name\":\"admin\"}]}}\n",
            "data\n",
            "data:{\"id\":1,\"result\":{\"tools\":[{\"name\":\"admin\"},{\"name\":\"ok\"}]}}\n\n",
        );
        let expected = concat!(
            "datax: {\"id\":1,\"result\":{\"tools\":[{\"name\":\"admin\"}]}}\n",
            "data: \n",
            "data: {\"id\":1,\"result\":{\"tools\":[{\"name\":\"ok\"}]}}\n\n",
        );
        assert_eq!(
            sse(stream.as_bytes(), &[("1", ListKind::Tools)])
                .await
                .unwrap(),
            expected
        );
    }

    #[tokio::test]
    async fn sse_batches_in_one_event_are_filtered() {
        let stream = format!("data: [{TOOLS},{{\"id\":9,\"result\":{{}}}}]\n\n");
        let expected = format!("data: [{TOOLS_FILTERED},{{\"id\":9,\"result\":{{}}}}]\n\n");
        assert_eq!(
            sse(stream.as_bytes(), &[("1", ListKind::Tools)])
                .await
                .unwrap(),
            expected
        );
    }

    #[tokio::test]
    async fn sse_invalid_utf8_and_non_json() {
        let list = &[("1", ListKind::Tools)];
        // Not a candidate: passes unchanged.
        let other = b"data: {\"id\":2,\"result\":{\"x\":\"\xff\"}}\n\n".to_vec();
        let mut stream = other.clone();
        stream.extend_from_slice(format!("data: {TOOLS}\n\n").as_bytes());
        let listing = body(Frames::chunks([stream]), true, list, Hide::new());
        let bytes = listing.collect().await.unwrap().to_bytes();
        let mut expected = other.clone();
        expected.extend_from_slice(format!("data: {TOOLS_FILTERED}\n\n").as_bytes());
        assert_eq!(bytes, expected);
        // A candidate with invalid UTF-8: error.
        let bad =
            b"data: {\"id\":1,\"result\":{\"tools\":[{\"name\":\"\xff admin\"}]}}\n\n".to_vec();
        assert!(sse(&bad, list).await.is_err());
        // Data that is not JSON fails the stream, before or after the listing: a lenient client
        // might still parse it (a lone surrogate escape) and find a second listing in it.
        assert!(sse(b"data: oops\n\n", list).await.is_err());
        let stream = format!("data: {TOOLS}\n\ndata: oops\n\n");
        assert!(sse(stream.as_bytes(), list).await.is_err());
        let surrogate = format!(
            "data: {TOOLS}\n\ndata: {{\"id\":1,\"result\":{{\"tools\":[{{\"name\":\"admin\"}}]}},\"\\ud800\":0}}\n\n"
        );
        assert!(sse(surrogate.as_bytes(), list).await.is_err());
    }

    /// A small deterministic generator (xorshift) for the chunking test.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[tokio::test]
    async fn output_does_not_depend_on_framing() {
        let pieces: &[&[u8]] = &[
            b"data: ",
            b"data:",
            b"id: 5",
            b"event: message",
            b": comment",
            b"retry: 10",
            b"\r",
            b"\n",
            b"\r\n",
            b"\n\n",
            b"\r\n\r\n",
            b"\xef\xbb\xbf",
            b"\xff",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"admin\"},{\"name\":\"x\"}]}}",
            b"{\"id\":2,\"result\":{\"prompts\":[{\"name\":\"write\"},{}]}}",
            b"[{\"id\":\"s\",\"result\":{\"resources\":[{\"uri\":\"admin:/\"},{\"uri\":\"u:/\"}]}}]",
            b"{\"id\":3,\"result\":{}}",
            b"{\"id\":1,",
            b"\"result\":{\"tools\":[",
            b"{\"name\":\"write\"}]}}",
            b"{\"method\":\"ping\"}",
            b"garbage",
        ];
        let messages: &[&[u8]] = &[
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\n\"result\":{\"tools\":[{\"name\":\"admin\"},\n{\"name\":\"x\"}]}}",
            b"{\"id\":2,\"result\":{\"prompts\":[{\"name\":\"write\"},{},{\"name\":\"p\"}],\n\"nextCursor\":\"c\"}}",
            b"[{\"id\":\"s\",\"result\":{\"resources\":[{\"uri\":\"admin:/\"},{\"uri\":\"u:/\"}]}},\n{\"id\":1,\"result\":{}}]",
            b"{\"method\":\"notifications/progress\",\n\"params\":{}}",
            b"{\"id\":9,\"result\":{\"tools\":[{\"name\":\"admin\"}]}}",
        ];
        let list = &[
            ("1", ListKind::Tools),
            ("2", ListKind::Prompts),
            ("\"s\"", ListKind::Resources),
        ];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // Passed, of which rewritten; failed.
        let mut outcomes = [0; 3];
        for round in 0..500 {
            let mut stream = Vec::new();
            for _ in 0..rng.below(12) {
                if rng.below(3) == 0 {
                    for _ in 0..rng.below(6) {
                        stream.extend_from_slice(pieces[rng.below(pieces.len())]);
                    }
                    continue;
                }
                // A well-formed event: some fields, then the data of a message split into lines
                // between tokens, all with one random line ending.
                let ending = ["\n", "\r", "\r\n"][rng.below(3)].as_bytes();
                for _ in 0..rng.below(3) {
                    stream.extend_from_slice(pieces[2 + rng.below(4)]);
                    stream.extend_from_slice(ending);
                }
                let message = messages[rng.below(messages.len())];
                for line in message.split(|&b| b == b'\n') {
                    stream.extend_from_slice(pieces[rng.below(2)]);
                    stream.extend_from_slice(line);
                    stream.extend_from_slice(ending);
                }
                stream.extend_from_slice(ending);
            }
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let len = 1 + rng.below(8);
                let end = (at + len).min(stream.len());
                chunks.push(stream[at..end].to_vec());
                at = end;
            }
            let max = 64 + rng.below(400);
            let whole = ListingBody::new(
                Frames::chunks([stream.clone()]),
                true,
                requests(list),
                Hide::new(),
                max,
            );
            let split = ListingBody::new(
                Frames::chunks(chunks),
                true,
                requests(list),
                Hide::new(),
                max,
            );
            let whole = whole
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string());
            let split = split
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string());
            assert_eq!(
                whole,
                split,
                "round {round}: {:?}",
                String::from_utf8_lossy(&stream)
            );
            match &whole {
                Ok(out) => {
                    outcomes[0] += 1;
                    outcomes[1] += usize::from(out[..] != stream[..]);
                    assert_nothing_hidden_reaches_a_client(out);
                }
                Err(_) => outcomes[2] += 1,
            }
            // JSON bodies of the same bytes never panic either.
            let json = ListingBody::new(
                Frames::chunks([stream.clone()]),
                false,
                requests(list),
                Hide::new(),
                max,
            );
            let _ = json.collect().await;
        }
        assert!(outcomes.iter().all(|&n| n > 20), "{outcomes:?}");
    }

    /// Reads `stream` as an event-stream client would (also taking a trailing unterminated
    /// event) and checks that no listing response shows a hidden or unnamed item.
    fn assert_nothing_hidden_reaches_a_client(stream: &[u8]) {
        let text = String::from_utf8_lossy(stream);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut data: Option<String> = None;
        let dispatch = |data: &mut Option<String>| {
            let Some(mut data) = data.take() else { return };
            data.pop();
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
                return;
            };
            let messages = match value {
                serde_json::Value::Array(messages) => messages,
                message => vec![message],
            };
            for message in messages {
                let kind = match message.get("id").map(|id| id.to_string()).as_deref() {
                    Some("1") => ListKind::Tools,
                    Some("2") => ListKind::Prompts,
                    Some("\"s\"") => ListKind::Resources,
                    _ => continue,
                };
                let Some(items) = message.get("result").and_then(|r| r.get(kind.member())) else {
                    continue;
                };
                for item in items.as_array().expect("an array") {
                    let name = item[kind.key()].as_str().expect("named");
                    assert!(!name.contains("admin") && !name.contains("write"), "{data}");
                }
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
                // Per the spec: value and LF appended, the last LF removed at dispatch.
                let buffer = data.get_or_insert_with(String::new);
                buffer.push_str(value);
                buffer.push('\n');
            }
        }
        dispatch(&mut data);
    }

    /// A chunk, then an error.
    struct Failing(Option<Bytes>);

    impl Body for Failing {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(match self.0.take() {
                Some(data) => Ok(Frame::data(data)),
                None => Err(std::io::Error::other("upstream broke")),
            }))
        }
    }

    #[tokio::test]
    async fn inner_errors_end_the_body() {
        let list = &[("1", ListKind::Tools)];
        let mut listing = body(
            Failing(Some(Bytes::from_static(b": c\n\ndata: {"))),
            true,
            list,
            Hide::new(),
        );
        let first = listing.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), ": c\n\n");
        let error = listing.frame().await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "upstream broke");
        assert!(listing.frame().await.is_none());
        assert!(listing.is_end_stream());
    }

    #[test]
    fn listing_body_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ListingBody<Frames>>();
    }
}
