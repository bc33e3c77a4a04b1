//! The end of every command: count it, log it, publish its result (and the
//! states HA says it changed), then release its acknowledgement.
//!
//! Every command, rejected at the door or finished by the queue, passes
//! through [`Publisher::finish`] exactly once; nothing else publishes
//! results. Its queue slot travels in the report and is freed there, when
//! the outcome is final (a report dropped anywhere else frees it too).
//! Results go out before the ack, so a crash between the two repeats a
//! command rather than losing its result.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::ack::AckMsg;
use crate::bounds::MAX_RESULT_BYTES;
use crate::command::ErrorCode;
use crate::metrics::Metrics;
use crate::mirror::StateOut;
use crate::state_json::RawState;
use crate::topic::TopicPrefix;
use crate::ui::Journal;

pub use crate::command::Report;

/// Reports that hold nothing but memory — rejections of QoS 0 messages: no
/// ack owed, no queue slot held — on their way to the publisher.
///
/// The publisher waits for rumqttc's request channel, which waits for the
/// broker, so a flood of invalid QoS 0 messages could pile up without bound
/// behind a slow broker. Each waiting one holds a place (an
/// `OwnedSemaphorePermit` in its [`Report`]); when none is free, ingress
/// drops the result and counts it (`results_dropped_total{reason="backlog"}`).
#[derive(Debug)]
pub struct Backlog {
    places: Arc<Semaphore>,
    /// The warning about dropped results.
    warned: Warnings,
}

impl Default for Backlog {
    fn default() -> Self {
        Self { places: Arc::new(Semaphore::new(Self::LIMIT)), warned: Warnings::default() }
    }
}

impl Backlog {
    /// As many as rumqttc's request channel holds (`ingress::REQUEST_CHANNEL`).
    pub const LIMIT: usize = 1024;

    /// A place for one more report, or `None` when `LIMIT` are waiting.
    pub fn place(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.places).try_acquire_owned().ok()
    }

    /// One result dropped at `now`: `Some(suppressed)` when it is time to log
    /// again (at most once per [`WARN_EVERY`]), with the drops not logged since.
    pub fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.warned.due(now)
    }
}

/// One kind of warning, logged at most once per [`WARN_EVERY`]; the ones in
/// between are counted and reported with the next.
#[derive(Debug, Default)]
pub struct Warnings {
    /// When it was last logged, and how many were suppressed since.
    last: Option<(Instant, u64)>,
}

impl Warnings {
    /// Whether to log one at `now`: `Some(suppressed since the last one)`.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match &mut self.last {
            Some((at, suppressed)) if now.duration_since(*at) < WARN_EVERY => {
                *suppressed += 1;
                None
            }
            last => Some(last.replace((now, 0)).map_or(0, |(_, suppressed)| suppressed)),
        }
    }
}

/// Whether an outcome is given up for good: such commands also go to
/// `<prefix>/dead_letter` for inspection and replay.
pub fn is_dead_letter(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Expired | ErrorCode::HaUnavailable | ErrorCode::HaTimeout | ErrorCode::HaUnauthorized)
}

/// The dead-letter payload: the original message, why, and how many tries.
pub fn dead_letter_payload(report: &Report, origin: &crate::command::Origin, code: ErrorCode) -> Value {
    let payload = match std::str::from_utf8(&origin.payload) {
        Ok(text) => json!(text),
        Err(_) => json!(origin.payload.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    };
    let mut m = Map::new();
    m.insert("topic".into(), json!(origin.topic.as_ref()));
    m.insert("payload".into(), payload);
    if std::str::from_utf8(&origin.payload).is_err() {
        m.insert("payload_encoding".into(), json!("hex"));
    }
    m.insert("reason".into(), json!(code.as_str()));
    m.insert("attempts".into(), json!(report.outcome.attempts));
    if let Some(status) = report.outcome.status {
        m.insert("status".into(), json!(status));
    }
    if let Some(route) = &report.route {
        m.insert("route".into(), json!(route.as_ref()));
    }
    if let Some(c) = &report.reply.correlation {
        m.insert("correlation".into(), c.clone());
    }
    Value::Object(m)
}

/// The dead letter as published: never over `max` bytes. The original
/// payload (escaped as JSON, or hex) can be several times its size; its
/// text is cut to fit and `"payload_truncated": true` says so.
pub fn dead_letter_bytes(mut v: Value, max: usize) -> Vec<u8> {
    let mut size = v.to_string().len();
    while size > max {
        let Some(text) = v.get("payload").and_then(Value::as_str) else { break };
        // The escaped text shrinks in proportion, at worst: cut a little more.
        let mut keep = (text.len() as u128 * max as u128 / size as u128) as usize;
        keep = keep.saturating_sub(64);
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        let cut = text[..keep].to_owned();
        v["payload"] = json!(cut);
        v["payload_truncated"] = json!(true);
        size = v.to_string().len();
    }
    v.to_string().into_bytes()
}

/// The result payload of the contract, in its documented key order,
/// borrowed from the report: serialised without an intermediate JSON tree.
#[derive(Debug, serde::Serialize)]
pub struct ResultPayload<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    changed: ChangedIds<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// Said in words for some errors: what the sender can change (the HA
    /// version, the limit). Other details stay in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
}

/// The entity ids of the states a call changed, the first `count` of them.
#[derive(Debug)]
struct ChangedIds<'a> {
    states: &'a [RawState],
    count: usize,
}

impl ChangedIds<'_> {
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.states.iter().filter_map(RawState::entity_id).take(self.count)
    }
}

impl serde::Serialize for ChangedIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ids())
    }
}

/// The result payload of the contract.
pub fn result_payload(report: &Report) -> ResultPayload<'_> {
    let o = &report.outcome;
    let message = match (o.error, &o.detail) {
        (Some(ErrorCode::ResponseUnsupported | ErrorCode::ResponseTooLarge), Some(detail)) => Some(detail.as_str()),
        _ => None,
    };
    ResultPayload {
        ok: o.ok(),
        status: o.status,
        changed: ChangedIds { states: &o.changed, count: usize::MAX },
        error: o.error.map(ErrorCode::as_str),
        message,
        correlation: report.reply.correlation.as_ref(),
        topic: if report.service.is_none() { report.topic.as_deref() } else { None },
        route: report.route.as_deref(),
        dry_run: report.call.is_some().then_some(true),
        call: report.call.as_ref(),
        response: o.response.as_ref(),
        truncated: None,
    }
}

fn to_bytes(payload: &ResultPayload<'_>) -> Vec<u8> {
    serde_json::to_vec(payload).expect("a result always serialises")
}

/// A result with a service response larger than `max` bytes goes out
/// without it, as `response_too_large` with HA's status and `changed`: the
/// service ran, only its response is not published.
pub fn fit_response(report: &mut Report, max: usize) {
    if report.outcome.response.is_none() {
        return;
    }
    let size = to_bytes(&result_payload(report)).len();
    if size <= max {
        return;
    }
    let o = &mut report.outcome;
    o.response = None;
    o.error = Some(ErrorCode::ResponseTooLarge);
    o.detail = Some(format!("the result with the service response is {size} bytes; limits.max_result_bytes is {max}"));
}

/// The result as published: never over `max` bytes (the MQTT packet cap
/// less room for topic and properties, where the broker or rumqttc would
/// drop it or the connection). Only what traffic can make large is cut: the
/// `changed` list keeps its first ids, a dry run's `call` goes, and
/// `"truncated": true` says so.
pub fn result_bytes(report: &Report, max: usize) -> Vec<u8> {
    let mut payload = result_payload(report);
    let bytes = to_bytes(&payload);
    if bytes.len() <= max {
        return bytes;
    }
    payload.call = None;
    payload.truncated = Some(true);
    let mut size = to_bytes(&payload).len();
    // Each id costs its JSON and a comma.
    let mut lengths: Vec<usize> =
        payload.changed.ids().map(|id| serde_json::to_vec(id).map_or(0, |b| b.len())).collect();
    while size > max {
        let Some(len) = lengths.pop() else { break };
        size -= len + usize::from(!lengths.is_empty());
    }
    payload.changed.count = lengths.len();
    to_bytes(&payload)
}

/// `domain.service` of a report, for logs; empty for an invalid topic.
struct ServiceName<'a>(&'a Report);

impl std::fmt::Display for ServiceName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.service {
            Some((domain, service)) => write!(f, "{domain}.{service}"),
            None => Ok(()),
        }
    }
}

pub struct Publisher {
    pub client: AsyncClient,
    pub prefix: TopicPrefix,
    pub states: Arc<StateOut>,
    pub metrics: Metrics,
    pub acks: mpsc::UnboundedSender<AckMsg>,
    /// `limits.max_result_bytes`: results with a larger service response go without it.
    pub max_result_bytes: usize,
    warned: HashMap<ErrorCode, Warnings>,
    /// The web console's record of outcomes (`[ui] enabled`).
    journal: Option<Arc<Journal>>,
}

/// At most one warning per error code in this interval; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Publisher {
    pub fn new(
        client: AsyncClient,
        prefix: TopicPrefix,
        states: Arc<StateOut>,
        metrics: Metrics,
        acks: mpsc::UnboundedSender<AckMsg>,
        max_result_bytes: usize,
    ) -> Self {
        Self { client, prefix, states, metrics, acks, max_result_bytes, warned: HashMap::new(), journal: None }
    }

    /// Also records every outcome for the web console.
    pub fn with_journal(mut self, journal: Option<Arc<Journal>>) -> Self {
        self.journal = journal;
        self
    }

    /// Runs until every sender of `input` is gone.
    pub async fn run(mut self, mut input: mpsc::UnboundedReceiver<Report>) {
        while let Some(report) = input.recv().await {
            self.finish(report).await;
        }
    }

    /// The single step: one command's end.
    pub async fn finish(&mut self, mut report: Report) {
        // The outcome is final: the queue slot is free for the next command.
        drop(report.slot.take());
        fit_response(&mut report, self.max_result_bytes);
        self.metrics.outcome(&report.outcome);
        self.metrics.command_latency.observe(report.received_at.elapsed().as_secs_f64());
        self.log(&report);
        match report.outcome.error {
            // Not final: unacked, so the broker redelivers it to the next session.
            Some(ErrorCode::ShuttingDown) => return self.record(report),
            // Flow control at work, not an error: counted, acked, no result.
            Some(ErrorCode::Debounced | ErrorCode::Throttled | ErrorCode::Coalesced) => {
                let _ = self.acks.send(AckMsg::Complete(report.seq));
                return self.record(report);
            }
            _ => {}
        }
        let got = report.get.then(|| report.outcome.changed.first().and_then(RawState::parse)).flatten();
        match got {
            Some(state) if report.outcome.ok() => {
                // A get answers with the state itself, published even if unchanged.
                self.states.touched(&state, true).await;
                if let Some(topic) = &report.reply.response_topic {
                    let payload = self.states.payload(&state);
                    self.publish(topic.clone(), false, payload, Some(self.reply_properties(&report))).await;
                }
            }
            _ => {
                self.publish_result(&report).await;
                if let (Some(code), Some(origin)) = (report.outcome.error, &report.origin) {
                    if is_dead_letter(code) {
                        self.metrics.dead_letters.inc();
                        let payload = dead_letter_bytes(dead_letter_payload(&report, origin, code), MAX_RESULT_BYTES);
                        self.publish(self.prefix.dead_letter(), false, payload, None).await;
                    }
                }
                for state in &report.outcome.changed {
                    // Parsed only when it will be published (usually not:
                    // the entity is not mirrored, or its event came first).
                    if self.states.wants_touched(&state.head()).await {
                        if let Some(state) = state.parse() {
                            self.states.touched(&state, false).await;
                        }
                    }
                }
            }
        }
        let _ = self.acks.send(AckMsg::Complete(report.seq));
        self.record(report);
    }

    /// Hands the finished report to the web console's journal, if it is on.
    fn record(&self, report: Report) {
        if let Some(journal) = &self.journal {
            let dead = report.origin.is_some() && report.outcome.error.is_some_and(is_dead_letter);
            journal.record(report, dead);
        }
    }

    async fn publish_result(&self, report: &Report) {
        let payload = result_bytes(report, MAX_RESULT_BYTES);
        let topic = match &report.service {
            Some((domain, service)) => self.prefix.result(domain, service),
            None => self.prefix.invalid_result(),
        };
        if let Some(response_topic) = &report.reply.response_topic {
            self.publish(response_topic.clone(), false, payload.clone(), Some(self.reply_properties(report))).await;
        }
        self.publish(topic, false, payload, None).await;
    }

    fn reply_properties(&self, report: &Report) -> PublishProperties {
        PublishProperties { correlation_data: report.reply.correlation_data.clone(), ..Default::default() }
    }

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>, properties: Option<PublishProperties>) {
        let r = match properties {
            Some(p) => self.client.publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, p).await,
            None => self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not queue a publish");
        }
    }

    fn log(&mut self, report: &Report) {
        let o = &report.outcome;
        let Some(code) = o.error else {
            // Formatted only when debug logging is on: this runs for every command.
            tracing::debug!(service = %ServiceName(report), seq = report.seq, status = o.status, "command done");
            return;
        };
        let service = ServiceName(report).to_string();
        tracing::debug!(service, seq = report.seq, error = %code, detail = o.detail.as_deref(), "command not done");
        if code == ErrorCode::ShuttingDown {
            return;
        }
        if let Some(suppressed) = self.warned.entry(code).or_default().due(Instant::now()) {
            tracing::warn!(
                service,
                error = %code,
                status = o.status,
                detail = o.detail.as_deref(),
                similar_suppressed = suppressed,
                "command not done"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Outcome, ReplyTo};
    use crate::topic::Slug;

    fn result_json(report: &Report) -> Value {
        serde_json::to_value(result_payload(report)).unwrap()
    }

    fn report(outcome: Outcome, correlation: Option<Value>) -> Report {
        Report {
            seq: 1,
            service: Some((Slug::parse("light").unwrap(), Slug::parse("turn_on").unwrap())),
            topic: None,
            reply: ReplyTo { correlation, ..Default::default() },
            outcome,
            received_at: Instant::now(),
            slot: None,
            get: false,
            route: None,
            call: None,
            origin: None,
            action: None,
            backlog: None,
        }
    }

    #[test]
    fn dropped_results_are_logged_at_most_every_interval() {
        let mut b = Backlog::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (seconds after t0, logged with this many suppressed?)
        let table: &[(u64, Option<u64>)] =
            &[(0, Some(0)), (1, None), (9, None), (10, Some(2)), (11, None), (25, Some(1)), (26, None)];
        for &(at, expected) in table {
            assert_eq!(b.dropped(t0 + s(at)), expected, "at {at} s");
        }
    }

    #[test]
    fn the_backlog_holds_at_most_its_limit_and_frees_on_drop() {
        let b = Backlog::default();
        let places: Vec<_> = (0..Backlog::LIMIT).map(|_| b.place().expect("room up to the limit")).collect();
        assert!(b.place().is_none(), "full");
        drop(places);
        assert!(b.place().is_some(), "a report done with gives its place back");
    }

    #[test]
    fn result_payloads_follow_the_contract() {
        let done = report(
            Outcome::done(200, vec![RawState::from_value(&json!({"entity_id":"light.a","state":"on"}))]),
            Some(json!("c-1")),
        );
        assert_eq!(result_json(&done), json!({"ok":true,"status":200,"changed":["light.a"],"correlation":"c-1"}));
        let denied = report(Outcome::failed(ErrorCode::ServiceDenied, None, None), None);
        assert_eq!(result_json(&denied), json!({"ok":false,"changed":[],"error":"service_denied"}));
        let mut invalid = report(Outcome::failed(ErrorCode::InvalidTopic, None, None), None);
        invalid.service = None;
        invalid.topic = Some("ha-gateway/call/Light/x".into());
        assert_eq!(
            result_json(&invalid),
            json!({"ok":false,"changed":[],"error":"invalid_topic","topic":"ha-gateway/call/Light/x"})
        );
    }

    fn responded(response: Value, changed: &[&str]) -> Report {
        let changed = changed.iter().map(|id| RawState::from_value(&json!({"entity_id": id, "state": "on"}))).collect();
        report(Outcome { response: Some(response), ..Outcome::done(200, changed) }, Some(json!(4)))
    }

    /// (response, limit) → the published result: the response, or none with
    /// `response_too_large` (the service ran: status and changed stay).
    #[test]
    fn responses_over_the_limit_are_left_out() {
        let small = json!({"weather.home": {"forecast": [{"temperature": 21}]}});
        let big = json!({"weather.home": {"forecast": "x".repeat(2000)}});
        let table = [
            (
                small.clone(),
                1024,
                json!({"ok":true,"status":200,"changed":["light.a"],"correlation":4,"response":small.clone()}),
            ),
            (
                big.clone(),
                1024,
                json!({"ok":false,"status":200,"changed":["light.a"],"error":"response_too_large","correlation":4}),
            ),
            (big.clone(), 4096, json!({"ok":true,"status":200,"changed":["light.a"],"correlation":4,"response":big})),
        ];
        for (response, max, expected) in table {
            let mut r = responded(response, &["light.a"]);
            fit_response(&mut r, max);
            let mut got = result_json(&r);
            if let Some(message) = got.as_object_mut().unwrap().remove("message") {
                assert!(message.as_str().unwrap().contains("limits.max_result_bytes is 1024"), "{message}");
            }
            assert_eq!(got, expected, "limit {max}");
            assert!(result_json(&r).to_string().len() <= max.max(expected.to_string().len()));
        }
        let mut plain = report(Outcome::done(200, vec![]), None);
        fit_response(&mut plain, 1024);
        assert_eq!(plain.outcome.error, None, "no response, nothing to fit");
    }

    /// Whatever a call changed, the published result fits the cap.
    #[test]
    fn results_never_exceed_the_packet_cap() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("light.lamp_number_{i:06}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut r = report(
            Outcome::done(200, refs.iter().map(|id| RawState::from_value(&json!({"entity_id": id}))).collect()),
            None,
        );
        r.call = Some(json!({"service": "light.turn_on", "data": {"x": "y".repeat(MAX_RESULT_BYTES)}}));
        let whole = result_json(&r).to_string().len();
        assert!(whole > MAX_RESULT_BYTES, "the test makes a result over the cap ({whole})");
        let bytes = result_bytes(&r, MAX_RESULT_BYTES);
        assert!(bytes.len() <= MAX_RESULT_BYTES, "{} bytes", bytes.len());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["truncated"], json!(true));
        let kept = v["changed"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < ids.len(), "{} ids kept", kept.len());
        assert_eq!(kept[0], json!("light.lamp_number_000000"), "the first ids are kept");
        assert!(v.get("call").is_none());
        let small = report(Outcome::done(200, vec![RawState::from_value(&json!({"entity_id": "light.a"}))]), None);
        assert_eq!(result_bytes(&small, MAX_RESULT_BYTES), result_json(&small).to_string().into_bytes());
    }

    /// A payload of control characters escapes to six times its size: the
    /// dead letter still fits, cut.
    #[test]
    fn dead_letters_never_exceed_the_packet_cap() {
        let origin = crate::command::Origin {
            topic: std::sync::Arc::from("ha-gateway/call/light/turn_on"),
            payload: bytes::Bytes::from(vec![1u8; crate::bounds::MAX_PAYLOAD_BYTES]),
        };
        let r = report(Outcome::failed(ErrorCode::Expired, None, None), Some(json!("c")));
        let whole = dead_letter_payload(&r, &origin, ErrorCode::Expired);
        assert!(whole.to_string().len() > MAX_RESULT_BYTES);
        let bytes = dead_letter_bytes(whole, MAX_RESULT_BYTES);
        assert!(bytes.len() <= MAX_RESULT_BYTES, "{}", bytes.len());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((v["payload_truncated"].clone(), v["reason"].clone()), (json!(true), json!("expired")));
        let small = dead_letter_payload(&r, &crate::command::Origin::default(), ErrorCode::Expired);
        assert_eq!(dead_letter_bytes(small.clone(), MAX_RESULT_BYTES), small.to_string().into_bytes());
    }
}
