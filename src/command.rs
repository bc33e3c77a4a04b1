//! The vocabulary of the data path: a service call, a command that carries
//! one through the queue, and the outcome every command ends with.
//!
//! Plain data, no I/O. Error codes are a closed set: they appear in results,
//! logs and metric labels, so adding one is a contract change.

use tokio::sync::OwnedSemaphorePermit;

use crate::slots::Slot;

use std::time::Duration;

use std::fmt;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::state_json::RawState;
use crate::topic::{EntityId, Slug};

/// A Home Assistant service call: `POST /api/services/<domain>/<service>`
/// with `data` as the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCall {
    pub domain: Slug,
    pub service: Slug,
    pub data: Map<String, Value>,
    /// The command asked for HA's service response (`"return_response": true`
    /// in the payload, or the route key): it goes in the result's `response`.
    pub return_response: bool,
}

impl ServiceCall {
    /// A call that does not ask for a service response.
    pub fn new(domain: Slug, service: Slug, data: Map<String, Value>) -> Self {
        Self { domain, service, data, return_response: false }
    }

    /// The entity ids this call targets, as written in `entity_id` (a string,
    /// a comma-separated string or a list). Used for ordering and access.
    pub fn entity_ids(&self) -> Vec<&str> {
        match self.data.get("entity_id") {
            Some(Value::String(s)) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::trim).collect(),
            _ => Vec::new(),
        }
    }

    /// `domain.service`, for logs and access rules.
    pub fn name(&self) -> String {
        format!("{}.{}", self.domain, self.service)
    }

    /// Keys that serialise this call against others: its entities, or the
    /// service itself when it names none (a script, a notification).
    pub fn order_keys(&self) -> Vec<String> {
        let ids = self.entity_ids();
        if ids.is_empty() {
            vec![format!("service:{}", self.name())]
        } else {
            ids.into_iter().map(str::to_owned).collect()
        }
    }

    /// Whether sending this call twice could do something different from
    /// sending it once. A timed-out call that is not idempotent is never
    /// re-sent: Home Assistant keeps running a call after the client leaves.
    pub fn is_idempotent(&self) -> bool {
        const NEVER: &[&str] = &[
            "automation",
            "button",
            "counter",
            "hassio",
            "homeassistant",
            "input_button",
            "lock",
            "notify",
            "python_script",
            "pyscript",
            "rest_command",
            "script",
            "shell_command",
            "timer",
        ];
        const STEPS: &[&str] = &["brightness_step", "brightness_step_pct", "color_temp_step"];
        let service = self.service.as_str();
        let safe_service = matches!(
            service,
            "turn_on" | "turn_off" | "open_cover" | "close_cover" | "open_valve" | "close_valve" | "stop_cover"
        ) || service.starts_with("set_")
            || service.starts_with("select_");
        safe_service && !NEVER.contains(&self.domain.as_str()) && !STEPS.iter().any(|k| self.data.contains_key(*k))
    }
}

/// What a command asks Home Assistant for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `<prefix>/call/…` and `<prefix>/set/…`: a service call.
    Call(ServiceCall),
    /// `<prefix>/get/…`: read one entity's current state.
    Get(EntityId),
}

impl Action {
    /// Keys that serialise this action against others (a get waits for the
    /// calls before it on the same entity, so it sees their effect).
    pub fn order_keys(&self) -> Vec<String> {
        match self {
            Self::Call(call) => call.order_keys(),
            Self::Get(entity) => vec![entity.to_string()],
        }
    }

    pub fn is_idempotent(&self) -> bool {
        match self {
            Self::Call(call) => call.is_idempotent(),
            Self::Get(_) => true,
        }
    }

    /// `domain.service` (`light.get` for a get), for logs.
    pub fn name(&self) -> String {
        let (domain, service) = self.result_service();
        format!("{domain}.{service}")
    }

    /// The `<domain>/<service>` of the result topic.
    pub fn result_service(&self) -> (Slug, Slug) {
        match self {
            Self::Call(call) => (call.domain.clone(), call.service.clone()),
            Self::Get(entity) => (entity.domain.clone(), Slug::parse("get").expect("get is a valid slug")),
        }
    }
}

/// Where and how to answer a command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyTo {
    /// MQTT 5 response topic of the command, if any.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data of the command, echoed as-is.
    pub correlation_data: Option<Bytes>,
    /// The `correlation` field of the JSON payload, echoed in the result.
    pub correlation: Option<Value>,
}

/// A fixed, short reason for every command that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidTopic,
    InvalidJson,
    InvalidPayload,
    PayloadTooLarge,
    ServiceDenied,
    EntityDenied,
    QueueFull,
    Expired,
    /// HA answered 4xx: the call itself is wrong (unknown service, bad data).
    HaError,
    /// HA refused the token (401/403) until the command expired.
    HaUnauthorized,
    /// HA failed (5xx, 429) on every attempt, or its TLS certificate was refused.
    HaUnavailable,
    /// A non-idempotent call timed out: it may or may not have run.
    HaTimeout,
    /// The gateway stopped before the command could run; the broker redelivers QoS 1.
    ShuttingDown,
    /// The command was published with the retain flag: ignored, since it
    /// would replay at every restart.
    Retained,
    /// A route's template failed to render (or rendered no valid service).
    TemplateError,
    /// Route flow control: replaced by a later value before it was sent.
    Debounced,
    /// Route flow control: over the route's `throttle` rate.
    Throttled,
    /// Route flow control (`latest_wins`): replaced by a newer call while queued.
    Coalesced,
    /// A target other than plain entity ids (`area_id`, `entity_id: all`, a
    /// comma-separated string…) not in `access.allow_targets`.
    TargetDenied,
    /// JSON nested deeper, or with more keys, than `[limits]` allow.
    JsonTooComplex,
    /// A topic longer than `limits.max_topic_length`.
    TopicTooLong,
    /// A `correlation` larger than `limits.max_correlation_bytes`.
    CorrelationTooLarge,
    /// A `ts` field older than `queue.max_age` (or in the future).
    Stale,
    /// A command with the same correlation arrived within `queue.dedupe_window`.
    Duplicate,
    /// A service response was asked of a service that returns none, or the
    /// Home Assistant in use cannot return one over REST (before 2024.8).
    ResponseUnsupported,
    /// The service ran, but its response would make the result larger than
    /// `limits.max_result_bytes`: the result carries no response.
    ResponseTooLarge,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 26] = [
        Self::InvalidTopic,
        Self::InvalidJson,
        Self::InvalidPayload,
        Self::PayloadTooLarge,
        Self::ServiceDenied,
        Self::EntityDenied,
        Self::QueueFull,
        Self::Expired,
        Self::HaError,
        Self::HaUnauthorized,
        Self::HaUnavailable,
        Self::HaTimeout,
        Self::ShuttingDown,
        Self::Retained,
        Self::TemplateError,
        Self::Debounced,
        Self::Throttled,
        Self::Coalesced,
        Self::TargetDenied,
        Self::JsonTooComplex,
        Self::TopicTooLong,
        Self::CorrelationTooLarge,
        Self::Stale,
        Self::Duplicate,
        Self::ResponseUnsupported,
        Self::ResponseTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::InvalidJson => "invalid_json",
            Self::InvalidPayload => "invalid_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ServiceDenied => "service_denied",
            Self::EntityDenied => "entity_denied",
            Self::QueueFull => "queue_full",
            Self::Expired => "expired",
            Self::HaError => "ha_error",
            Self::HaUnauthorized => "ha_unauthorized",
            Self::HaUnavailable => "ha_unavailable",
            Self::HaTimeout => "ha_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Retained => "retained",
            Self::TemplateError => "template_error",
            Self::Debounced => "debounced",
            Self::Throttled => "throttled",
            Self::Coalesced => "coalesced",
            Self::TargetDenied => "target_denied",
            Self::JsonTooComplex => "json_too_complex",
            Self::TopicTooLong => "topic_too_long",
            Self::CorrelationTooLarge => "correlation_too_large",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::ResponseUnsupported => "response_unsupported",
            Self::ResponseTooLarge => "response_too_large",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// HTTP status of the last HA answer, if HA answered.
    pub status: Option<u16>,
    /// The states HA returned as changed by the call (full state objects,
    /// as HA's text).
    pub changed: Vec<RawState>,
    pub error: Option<ErrorCode>,
    /// A human-readable detail for the log (never the token, never a body
    /// larger than a line).
    pub detail: Option<String>,
    /// HTTP requests made for it.
    pub attempts: u32,
    /// HA's `service_response`, when the call asked for one (or the service
    /// only answers with one).
    pub response: Option<Value>,
}

impl Outcome {
    pub fn done(status: u16, changed: Vec<RawState>) -> Self {
        Self { status: Some(status), changed, error: None, detail: None, attempts: 0, response: None }
    }

    pub fn failed(error: ErrorCode, status: Option<u16>, detail: impl Into<Option<String>>) -> Self {
        Self { status, changed: Vec::new(), error: Some(error), detail: detail.into(), attempts: 0, response: None }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// A translated, admitted command on its way to Home Assistant.
#[derive(Debug)]
pub struct Command {
    /// Unique per command (one message can make several, through routes).
    pub id: u64,
    /// The message's sequence number: the acknowledgement handle.
    pub seq: u64,
    pub action: Action,
    pub reply: ReplyTo,
    pub received_at: Instant,
    /// Not executed after this instant (`queue.max_age`, MQTT 5 message expiry).
    pub deadline: Instant,
    /// The route that made it, if any.
    pub route: Option<std::sync::Arc<str>>,
    /// The route's flow control, with the key it applies per (route + target).
    pub flow: Option<(FlowSpec, String)>,
    /// The message it came from, for the dead-letter topic.
    pub origin: Origin,
    /// Its queue slot, held until its report is done with.
    pub slot: Slot,
}

/// The MQTT message a command came from (shared, not copied).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub topic: std::sync::Arc<str>,
    pub payload: bytes::Bytes,
}

/// Per-route flow control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowSpec {
    /// Wait until the value has been quiet this long; only the last call runs.
    pub debounce: Option<Duration>,
    /// At most one call per interval; the others are dropped.
    pub throttle: Option<Duration>,
    /// A newer call replaces one still waiting in the queue (idempotent targets only).
    pub latest_wins: bool,
}

impl FlowSpec {
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }
}

/// A command at its final outcome.
#[derive(Debug)]
pub struct Report {
    pub seq: u64,
    /// The service the command named; `None` when its topic was invalid.
    pub service: Option<(Slug, Slug)>,
    /// The topic it arrived on, echoed when that topic was invalid.
    pub topic: Option<String>,
    pub reply: ReplyTo,
    pub outcome: Outcome,
    pub received_at: Instant,
    /// Its queue slot, for commands that reached the queue: freed when the
    /// report is dropped (after the publisher is done with it).
    pub slot: Option<Slot>,
    /// A get: its state is the answer, no result unless it failed.
    pub get: bool,
    /// The route that made the command, if any.
    pub route: Option<std::sync::Arc<str>>,
    /// `--dry-run`: the call that would have been made.
    pub call: Option<Value>,
    /// The message it came from (commands that reached the queue).
    pub origin: Option<Origin>,
    /// What the command asked HA for (commands that reached the queue), for
    /// the web console's live view.
    pub action: Option<Action>,
    /// Its place in the publisher's `Backlog` (a rejection of a QoS 0 message), given
    /// back when the publisher is done with it.
    pub backlog: Option<OwnedSemaphorePermit>,
}

impl Report {
    /// A message refused before it became a command (it holds no queue slot).
    pub fn rejected(seq: u64, received_at: Instant, topic: String, code: ErrorCode, detail: String) -> Self {
        Self {
            seq,
            service: None,
            topic: Some(topic),
            reply: ReplyTo::default(),
            outcome: Outcome::failed(code, None, detail),
            received_at,
            slot: None,
            get: false,
            route: None,
            call: None,
            origin: None,
            action: None,
            backlog: None,
        }
    }
}
