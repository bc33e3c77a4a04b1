//! The console's memory: the last `[ui] history` outcomes, the recent dead
//! letters, and the status series — each bounded, each fed by one call from
//! the data path that takes a short lock and formats nothing. Formatting
//! (JSON for the page) happens when a page asks.
//!
//! The publisher records every final outcome ([`Journal::record`]), ingress
//! the messages no route took ([`Journal::no_route`]). Live streams wait on
//! [`Journal::changed`]; with no page open nobody waits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::series::{Sample, Series};
use crate::command::{Action, ErrorCode, Report};
use crate::state_json::RawState;
use crate::topic::Slug;

/// Payload bytes kept for the live view's preview.
pub const PREVIEW_BYTES: usize = 256;
/// A call's data is kept whole when its message was at most this large;
/// beyond, only its target (the history must stay small).
pub const CALL_BYTES: usize = 4096;
/// Dead letters kept at most…
pub const DEAD_LETTERS: usize = 100;
/// …and their payloads' bytes at most (a dead letter's payload is kept whole, for replay).
pub const DEAD_LETTER_BYTES: usize = 4 << 20;
/// Entries one live event carries at most.
pub const BATCH: usize = 200;

/// Which rule a message met.
#[derive(Debug, Clone, PartialEq)]
pub enum Matched {
    /// A `call`, `set` or `get` topic (or one under the prefix that is none).
    Command,
    Route(Arc<str>),
    /// A route's topic, but every route skipped it (`when` false, no `map` entry).
    NoRoute,
}

/// One message's outcome (one per call a message made).
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub at: SystemTime,
    /// The message's sequence number (a replay's result is found by it).
    pub seq: u64,
    pub topic: Arc<str>,
    /// The first [`PREVIEW_BYTES`] of the payload.
    pub preview: Bytes,
    pub size: usize,
    pub matched: Matched,
    /// `domain.service` of the call or of the result topic.
    pub service: Option<(Slug, Slug)>,
    pub action: Option<Action>,
    /// The call's data was cut to its target ([`CALL_BYTES`]).
    pub call_cut: bool,
    pub error: Option<ErrorCode>,
    pub detail: Option<String>,
    pub status: Option<u16>,
    pub duration: Duration,
    pub attempts: u32,
    /// (entity id, new state) that HA reported changed.
    pub changed: Vec<(String, String)>,
}

impl Entry {
    fn entities(&self) -> Vec<&str> {
        match &self.action {
            Some(Action::Call(call)) => call.entity_ids(),
            Some(Action::Get(_)) | None => Vec::new(),
        }
    }

    /// The entry as the page reads it.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("at".into(), json!(millis(self.at)));
        m.insert("seq".into(), json!(self.seq));
        m.insert("topic".into(), json!(self.topic.as_ref()));
        m.insert("payload".into(), json!(String::from_utf8_lossy(&self.preview)));
        m.insert("size".into(), json!(self.size));
        m.insert("truncated".into(), json!(self.size > self.preview.len()));
        let matched = match &self.matched {
            Matched::Command => json!({"kind": "command"}),
            Matched::Route(name) => json!({"kind": "route", "name": name.as_ref()}),
            Matched::NoRoute => json!({"kind": "no_route"}),
        };
        m.insert("matched".into(), matched);
        m.insert("service".into(), json!(self.service.as_ref().map(|(d, s)| format!("{d}.{s}"))));
        let call = match &self.action {
            Some(Action::Call(c)) if self.call_cut => json!({"service": c.name(), "data": c.data, "cut": true}),
            Some(Action::Call(c)) => json!({"service": c.name(), "data": c.data}),
            Some(Action::Get(entity)) => {
                json!({"service": format!("{}.get", entity.domain), "entity_id": entity.to_string()})
            }
            None => Value::Null,
        };
        m.insert("call".into(), call);
        m.insert("outcome".into(), json!(outcome_name(self.error, &self.matched)));
        m.insert("detail".into(), json!(self.detail));
        m.insert("status".into(), json!(self.status));
        m.insert("duration_ms".into(), json!((self.duration.as_secs_f64() * 1e4).round() / 10.0));
        m.insert("attempts".into(), json!(self.attempts));
        m.insert("retries".into(), json!(self.attempts.saturating_sub(1)));
        let changed: Vec<Value> = self.changed.iter().map(|(e, s)| json!({"entity_id": e, "state": s})).collect();
        m.insert("changed".into(), Value::Array(changed));
        Value::Object(m)
    }
}

/// The first [`PREVIEW_BYTES`] of `payload`, copied: the history must not
/// keep whole messages alive.
fn preview(payload: &Bytes) -> Bytes {
    Bytes::copy_from_slice(&payload[..payload.len().min(PREVIEW_BYTES)])
}

/// (entity id, state) of a state HA reported changed.
fn entity_state(state: RawState) -> Option<(String, String)> {
    Some((state.entity_id()?.to_owned(), state.state().unwrap_or_default().to_owned()))
}

/// The action as the history keeps it: its data only when the message was
/// small, else just its target. Whether it was cut.
fn kept(action: Option<Action>, message_bytes: usize) -> (Option<Action>, bool) {
    match action {
        Some(Action::Call(mut call)) if message_bytes > CALL_BYTES => {
            call.data.retain(|k, _| k == "entity_id");
            (Some(Action::Call(call)), true)
        }
        other => (other, false),
    }
}

/// `ok`, `no_route` or the error code.
fn outcome_name(error: Option<ErrorCode>, matched: &Matched) -> &'static str {
    match (error, matched) {
        (Some(code), _) => code.as_str(),
        (None, Matched::NoRoute) => "no_route",
        (None, _) => "ok",
    }
}

/// Milliseconds since the Unix epoch (the page shows local time).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Serde helper: a `SystemTime` as Unix milliseconds.
pub fn unix_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(*t))
}

/// The live view's filters; each empty one matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    /// A part of the topic.
    pub topic: String,
    /// A part of a target entity id.
    pub entity: String,
    /// `ok`, `error` (anything but ok), `no_route`, or an error code.
    pub outcome: String,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        let outcome = outcome_name(e.error, &e.matched);
        let outcome_ok = match self.outcome.trim() {
            "" => true,
            "error" => e.error.is_some(),
            wanted => outcome == wanted,
        };
        outcome_ok
            && (self.topic.is_empty() || e.topic.contains(self.topic.trim()))
            && (self.entity.is_empty() || e.entities().iter().any(|id| id.contains(self.entity.trim())))
    }
}

/// A command given up (`<prefix>/dead_letter`), kept for the console.
#[derive(Debug)]
pub struct DeadLetter {
    pub id: u64,
    pub at: SystemTime,
    pub topic: Arc<str>,
    /// The original payload, whole: a replay sends it again.
    pub payload: Bytes,
    pub reason: ErrorCode,
    pub attempts: u32,
    pub status: Option<u16>,
    pub route: Option<Arc<str>>,
    pub detail: Option<String>,
}

impl DeadLetter {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "at": millis(self.at),
            "topic": self.topic.as_ref(),
            "payload": String::from_utf8_lossy(&self.payload[..self.payload.len().min(PREVIEW_BYTES)]),
            "size": self.payload.len(),
            "reason": self.reason.as_str(),
            "attempts": self.attempts,
            "status": self.status,
            "route": self.route.as_deref(),
            "detail": self.detail,
        })
    }
}

/// A ring bounded by count and by bytes: the oldest go first.
#[derive(Debug)]
pub struct Ring<T> {
    items: VecDeque<Arc<T>>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

impl<T> Ring<T> {
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self { items: VecDeque::new(), bytes: 0, max_items: max_items.max(1), max_bytes }
    }

    /// Adds `item` of `size` bytes; drops the oldest until both bounds hold
    /// (the newest stays, whatever its size).
    pub fn push(&mut self, item: Arc<T>, size: usize, size_of: impl Fn(&T) -> usize) {
        self.items.push_back(item);
        self.bytes += size;
        while self.items.len() > self.max_items || (self.bytes > self.max_bytes && self.items.len() > 1) {
            if let Some(old) = self.items.pop_front() {
                self.bytes -= size_of(&old);
            }
        }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<T>> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[derive(Debug)]
struct Inner {
    entries: Ring<Entry>,
    dead: Ring<DeadLetter>,
    series: Series,
    /// Final outcomes since start, by `ok` or error code (a closed set).
    outcomes: BTreeMap<&'static str, u64>,
    retries: u64,
    next_id: u64,
}

/// The console's bounded memory of recent traffic.
#[derive(Debug)]
pub struct Journal {
    inner: Mutex<Inner>,
    started: Instant,
    changed: Notify,
}

/// What a live stream sends next.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Arc<Entry>>,
    /// The last id looked at (filtered out or not): where to go on from.
    pub last: u64,
}

impl Journal {
    /// A journal keeping `history` outcomes.
    pub fn new(history: usize) -> Self {
        let inner = Inner {
            entries: Ring::new(history, usize::MAX),
            dead: Ring::new(DEAD_LETTERS, DEAD_LETTER_BYTES),
            series: Series::default(),
            outcomes: BTreeMap::new(),
            retries: 0,
            next_id: 0,
        };
        Self { inner: Mutex::new(inner), started: Instant::now(), changed: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds since the journal started: the series' clock.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// One final outcome, from the publisher once it is done with the
    /// report (its parts are moved here, not copied). `dead_letter`: it was
    /// given up and goes to the dead letters too.
    pub fn record(&self, report: Report, dead_letter: bool) {
        let Report { seq, service, topic, outcome, received_at, route, origin, action, .. } = report;
        let (topic, payload) = match origin {
            Some(origin) => (origin.topic, origin.payload),
            None => (Arc::from(topic.unwrap_or_default()), Bytes::new()),
        };
        let matched = match &route {
            Some(route) => Matched::Route(Arc::clone(route)),
            None => Matched::Command,
        };
        let sample = Sample { ok: outcome.error.is_none(), retries: outcome.attempts.saturating_sub(1), dead_letter };
        let dead = dead_letter.then(|| DeadLetter {
            id: 0,
            at: SystemTime::now(),
            topic: Arc::clone(&topic),
            payload: payload.clone(),
            reason: outcome.error.unwrap_or(ErrorCode::Expired),
            attempts: outcome.attempts,
            status: outcome.status,
            route,
            detail: outcome.detail.clone(),
        });
        let (action, call_cut) = kept(action, payload.len());
        let entry = Entry {
            id: 0,
            at: SystemTime::now(),
            seq,
            topic,
            preview: preview(&payload),
            size: payload.len(),
            matched,
            service,
            action,
            call_cut,
            error: outcome.error,
            detail: outcome.detail,
            status: outcome.status,
            duration: received_at.elapsed(),
            attempts: outcome.attempts,
            changed: outcome.changed.into_iter().filter_map(entity_state).collect(),
        };
        self.insert(entry, Some(sample), dead);
    }

    /// Adds an entry (and its dead letter), counts it, wakes the streams.
    fn insert(&self, mut entry: Entry, sample: Option<Sample>, dead: Option<DeadLetter>) {
        let second = self.now();
        let mut inner = self.lock();
        inner.next_id += 1;
        entry.id = inner.next_id;
        *inner.outcomes.entry(outcome_name(entry.error, &entry.matched)).or_default() += 1;
        if let Some(sample) = sample {
            inner.retries += u64::from(sample.retries);
            inner.series.add(second, sample);
        }
        inner.entries.push(Arc::new(entry), 0, |_| 0);
        if let Some(mut dead) = dead {
            dead.id = inner.next_id;
            let size = dead.payload.len();
            inner.dead.push(Arc::new(dead), size, |d| d.payload.len());
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// A message on a route's topic that no route turned into a call.
    pub fn no_route(&self, seq: u64, topic: &[u8], payload: &Bytes, received_at: Instant) {
        let entry = Entry {
            id: 0,
            at: SystemTime::now(),
            seq,
            topic: Arc::from(String::from_utf8_lossy(topic).as_ref()),
            preview: preview(payload),
            size: payload.len(),
            matched: Matched::NoRoute,
            service: None,
            action: None,
            call_cut: false,
            error: None,
            detail: Some("every route skipped it (when false, or no map entry)".into()),
            status: None,
            duration: received_at.elapsed(),
            attempts: 0,
            changed: Vec::new(),
        };
        self.insert(entry, None, None);
    }

    /// Woken after each new entry. Create (and `enable`) it before looking,
    /// so an entry recorded in between still wakes the waiter.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Entries after id `after` that match `filter`, at most [`BATCH`].
    pub fn since(&self, after: u64, filter: &Filter) -> Batch {
        let inner = self.lock();
        let mut batch = Batch { entries: Vec::new(), last: after };
        for e in inner.entries.iter().filter(|e| e.id > after) {
            if batch.entries.len() == BATCH {
                break;
            }
            batch.last = e.id;
            if filter.matches(e) {
                batch.entries.push(Arc::clone(e));
            }
        }
        batch
    }

    /// The newest entry's id (0 before any).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id
    }

    /// The newest `limit` entries matching `filter`, oldest first.
    pub fn recent(&self, filter: &Filter, limit: usize) -> Vec<Arc<Entry>> {
        let inner = self.lock();
        let mut out: Vec<Arc<Entry>> =
            inner.entries.iter().rev().filter(|e| filter.matches(e)).take(limit).cloned().collect();
        out.reverse();
        out
    }

    /// Entries of message `seq` recorded after id `after`.
    pub fn of_message(&self, seq: u64, after: u64) -> Vec<Arc<Entry>> {
        self.lock().entries.iter().filter(|e| e.id > after && e.seq == seq).cloned().collect()
    }

    /// The dead letters kept, newest first.
    pub fn dead_letters(&self) -> Vec<Arc<DeadLetter>> {
        self.lock().dead.iter().rev().cloned().collect()
    }

    pub fn dead_letter(&self, id: u64) -> Option<Arc<DeadLetter>> {
        self.lock().dead.iter().find(|d| d.id == id).cloned()
    }

    /// Counts for the status page: outcomes since start, retries, the
    /// rate over the last minute, dead letters in the last hour, the chart.
    pub fn stats(&self, chart_buckets: usize) -> Value {
        let now = self.now();
        let inner = self.lock();
        let chart: Vec<Value> = inner
            .series
            .chart(now, chart_buckets)
            .iter()
            .map(|(ago, b)| json!({"ago": ago, "ok": b.ok, "failed": b.failed}))
            .collect();
        json!({
            "outcomes": inner.outcomes,
            "retries": inner.retries,
            "commands_per_second": (inner.series.per_second(now) * 100.0).round() / 100.0,
            "dead_letters_last_hour": inner.series.dead_letters_last_hour(now),
            "chart": {"step_seconds": super::series::STEP, "points": chart},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Origin, Outcome, ServiceCall};

    fn report(topic: &str, payload: &str, entity: &str, outcome: Outcome) -> Report {
        let data = json!({"entity_id": entity}).as_object().unwrap().clone();
        let call = ServiceCall::new(Slug::parse("light").unwrap(), Slug::parse("toggle").unwrap(), data);
        Report {
            service: Some((call.domain.clone(), call.service.clone())),
            origin: Some(Origin { topic: Arc::from(topic), payload: Bytes::from(payload.to_owned()) }),
            action: Some(Action::Call(call)),
            outcome,
            ..Report::rejected(7, Instant::now(), topic.into(), ErrorCode::Expired, String::new())
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_within_count_and_bytes() {
        // (max items, max bytes, sizes pushed) → sizes kept
        let table: &[(usize, usize, &[usize], &[usize])] = &[
            (3, usize::MAX, &[1, 2, 3, 4, 5], &[3, 4, 5]),
            (10, 10, &[4, 4, 4], &[4, 4]),
            (10, 10, &[4, 20], &[20]),
            (1, 100, &[1, 2], &[2]),
        ];
        for (items, bytes, pushed, kept) in table {
            let mut ring = Ring::new(*items, *bytes);
            for size in pushed.iter() {
                ring.push(Arc::new(*size), *size, |s| *s);
            }
            let got: Vec<usize> = ring.iter().map(|s| **s).collect();
            assert_eq!(&got, kept, "{items} items, {bytes} bytes, pushed {pushed:?}");
        }
    }

    #[test]
    fn history_is_bounded_and_ids_grow() {
        let j = Journal::new(3);
        for i in 0..5 {
            j.record(report("z2m/b", &i.to_string(), "light.a", Outcome::done(200, vec![])), false);
        }
        let all = j.recent(&Filter::default(), 10);
        let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(j.since(3, &Filter::default()).entries.len(), 2);
        assert_eq!(j.since(5, &Filter::default()).last, 5);
    }

    /// (filter, entries kept of: ok light.kitchen on z2m/hall, expired light.hall on ha-gateway/call, no route on z2m/x)
    #[test]
    fn filters_by_topic_entity_and_outcome() {
        let j = Journal::new(10);
        j.record(report("z2m/hall", "{}", "light.kitchen", Outcome::done(200, vec![])), false);
        let failed = Outcome::failed(ErrorCode::Expired, None, None);
        j.record(report("ha-gateway/call/light/toggle", "{}", "light.hall", failed), true);
        j.no_route(9, b"z2m/x", &Bytes::from_static(b"1"), Instant::now());
        let f = |topic: &str, entity: &str, outcome: &str| Filter {
            topic: topic.into(),
            entity: entity.into(),
            outcome: outcome.into(),
        };
        let table = [
            (f("", "", ""), vec![1, 2, 3]),
            (f("z2m", "", ""), vec![1, 3]),
            (f("", "kitchen", ""), vec![1]),
            (f("", "", "ok"), vec![1]),
            (f("", "", "error"), vec![2]),
            (f("", "", "expired"), vec![2]),
            (f("", "", "no_route"), vec![3]),
            (f("z2m", "hall", ""), vec![]),
        ];
        for (filter, want) in table {
            let got: Vec<u64> = j.recent(&filter, 10).iter().map(|e| e.id).collect();
            assert_eq!(got, want, "{filter:?}");
        }
        let dead = j.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].reason, dead[0].topic.as_ref()), (ErrorCode::Expired, "ha-gateway/call/light/toggle"));
        let stats = j.stats(6);
        assert_eq!(stats["outcomes"], json!({"expired": 1, "no_route": 1, "ok": 1}));
        assert_eq!(stats["dead_letters_last_hour"], 1);
    }

    /// The history keeps a copy of the preview, not the message's buffer:
    /// 500 entries of 1 MiB payloads must not hold 500 MiB.
    #[test]
    fn history_holds_no_reference_to_payloads() {
        let j = Journal::new(10);
        let payload = Bytes::from(vec![b'x'; 100_000]);
        let mut r = report("t", "", "light.a", Outcome::done(200, vec![]));
        r.origin = Some(Origin { topic: Arc::from("t"), payload: payload.clone() });
        j.record(r, false);
        j.no_route(1, b"t", &payload, Instant::now());
        assert!(payload.try_into_mut().is_ok(), "the journal shares the payload's buffer");
    }

    #[test]
    fn previews_are_cut_and_say_so() {
        let j = Journal::new(2);
        let big = "x".repeat(PREVIEW_BYTES * 4);
        j.record(report("t", &big, "light.a", Outcome::done(200, vec![])), false);
        let v = j.recent(&Filter::default(), 1)[0].to_json();
        assert_eq!(v["payload"].as_str().unwrap().len(), PREVIEW_BYTES);
        assert_eq!((v["size"].clone(), v["truncated"].clone()), (json!(PREVIEW_BYTES * 4), json!(true)));
        assert_eq!(v["call"], json!({"service": "light.toggle", "data": {"entity_id": "light.a"}}));
        // A large message's call keeps its target only.
        let mut r = report("t", &"y".repeat(CALL_BYTES + 1), "light.b", Outcome::done(200, vec![]));
        if let Some(Action::Call(c)) = &mut r.action {
            c.data.insert("big".into(), json!("z".repeat(CALL_BYTES)));
        }
        j.record(r, false);
        let v = j.recent(&Filter::default(), 1)[0].to_json();
        assert_eq!(v["call"], json!({"service": "light.toggle", "data": {"entity_id": "light.b"}, "cut": true}));
    }
}
