//! Admission: what one registered MQTT message becomes — the calls to queue
//! and the rejections to report — decided by [`decide`], a pure function of
//! the message, the rules and limits in force, and the dedupe window.
//!
//! Owns: topic length, command-topic parsing, retained commands,
//! translation, `ts` staleness, the dedupe window, `[access]`, `[state]
//! exclude` for gets, and route evaluation. Does not own: queue slots (a
//! side effect ingress applies after the decision), the ack tracker,
//! metrics, channels or the socket.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::time::Instant;

use crate::access::AccessPolicy;
use crate::command::{Action, Command, ErrorCode, FlowSpec, Origin, ReplyTo, Report};
use crate::mirror::StateFilter;
use crate::routes::{RouteResult, RouteTable};
use crate::slots::Slot;
use crate::topic::{CommandTopic, Slug, TopicPrefix};
use crate::translate::{translate, Limits};

/// What a reload can change without a restart.
#[derive(Debug, Clone)]
pub struct Rules {
    pub access: AccessPolicy,
    pub routes: Arc<RouteTable>,
}

/// Everything admission reads, none of which it changes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub prefix: &'a TopicPrefix,
    pub rules: &'a Rules,
    pub limits: &'a Limits,
    /// `[state] exclude` also refuses gets.
    pub state_filter: &'a StateFilter,
    pub max_age: Duration,
}

/// The message being admitted.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub publish: &'a Publish,
    /// Its sequence number in the ack tracker.
    pub seq: u64,
    pub received_at: Instant,
    /// The route filters it was delivered for (MQTT 5 subscription
    /// identifiers); `None`: every route whose filter matches.
    pub only: Option<&'a HashSet<String>>,
}

/// The `messages_received_total` kind of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call,
    Set,
    Get,
    Route,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Set => "set",
            Self::Get => "get",
            Self::Route => "route",
            Self::Other => "other",
        }
    }
}

/// A call that passed admission and waits for a queue slot.
#[derive(Debug)]
pub struct Admitted {
    pub action: Action,
    pub reply: ReplyTo,
    pub deadline: Instant,
    pub route: Option<Arc<str>>,
    pub flow: Option<(FlowSpec, String)>,
    pub origin: Origin,
}

impl Admitted {
    /// The queued command, holding `slot`.
    pub fn into_command(self, id: u64, seq: u64, received_at: Instant, slot: Slot) -> Command {
        let Self { action, reply, deadline, route, flow, origin } = self;
        Command { id, seq, action, reply, received_at, deadline, route, flow, origin, slot }
    }

    /// Refused after all (no queue slot for a QoS 0 message).
    pub fn refused(self, seq: u64, received_at: Instant, code: ErrorCode, detail: String) -> Report {
        Report {
            service: Some(self.action.result_service()),
            reply: self.reply,
            route: self.route,
            ..Report::rejected(seq, received_at, self.origin.topic.to_string(), code, detail)
        }
    }
}

/// What becomes of one message.
#[derive(Debug)]
pub struct Decision {
    pub kind: Kind,
    /// To the queue, in order.
    pub admitted: Vec<Admitted>,
    /// To the publisher.
    pub rejected: Vec<Report>,
    /// Refused by the dedupe window (`duplicates_total`).
    pub duplicate: bool,
    /// Routes that matched and made nothing of it, and why (`when`, `map`,
    /// `event_type`): for the web console's route tester.
    pub skipped: Vec<(Arc<str>, &'static str)>,
}

impl Decision {
    fn one(kind: Kind, report: Report) -> Self {
        Self { kind, admitted: Vec::new(), rejected: vec![report], duplicate: false, skipped: Vec::new() }
    }

    /// Final outcomes the message's ack waits for; 0: ack it now (no route applied).
    pub fn parts(&self) -> usize {
        self.admitted.len() + self.rejected.len()
    }
}

/// The single step of admission.
pub fn decide(ctx: &Context<'_>, dedupe: Option<&mut Dedupe>, msg: &Message<'_>, now: SystemTime) -> Decision {
    let publish = msg.publish;
    if publish.topic.len() > ctx.limits.max_topic_length {
        let topic = String::from_utf8_lossy(&publish.topic);
        let shown: String = topic.chars().take(64).collect();
        let detail = format!("topic of {} bytes", topic.len());
        let report = Report::rejected(msg.seq, msg.received_at, format!("{shown}…"), ErrorCode::TopicTooLong, detail);
        return Decision::one(Kind::Other, report);
    }
    if is_command_topic(ctx.prefix, &publish.topic) {
        decide_command(ctx, dedupe, msg, now)
    } else {
        decide_routed(ctx, msg)
    }
}

/// Whether `topic` is under the command prefix (else it is a route's).
pub fn is_command_topic(prefix: &TopicPrefix, topic: &[u8]) -> bool {
    let prefix = prefix.as_str().as_bytes();
    topic.len() > prefix.len() && topic.starts_with(prefix) && topic[prefix.len()] == b'/'
}

/// A message on a `call`, `set` or `get` topic.
fn decide_command(ctx: &Context<'_>, dedupe: Option<&mut Dedupe>, msg: &Message<'_>, now: SystemTime) -> Decision {
    let publish = msg.publish;
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let parsed = ctx.prefix.parse_command(&topic);
    let kind = match &parsed {
        Ok(CommandTopic::Call { .. }) => Kind::Call,
        Ok(CommandTopic::Set(_)) => Kind::Set,
        Ok(CommandTopic::Get(_)) => Kind::Get,
        Err(_) => Kind::Other,
    };
    let (mut reply, expiry) = reply_to(publish);
    let reject = |code: ErrorCode, service, reply: ReplyTo, detail: String| {
        let report =
            Report { service, reply, ..Report::rejected(msg.seq, msg.received_at, topic.clone(), code, detail) };
        Decision::one(kind, report)
    };
    if publish.retain {
        return reject(ErrorCode::Retained, parsed_service(&parsed), reply, "retained command ignored".into());
    }
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return reject(ErrorCode::InvalidTopic, None, reply, e.to_string()),
    };
    let translated = match translate(&parsed, &publish.payload, ctx.limits) {
        Ok(t) => t,
        Err(refused) => {
            reply.correlation = refused.correlation;
            return reject(refused.code, parsed_service(&Ok(parsed)), reply, refused.detail);
        }
    };
    reply.correlation = translated.correlation;
    let action = translated.action;
    // The result topic names the service actually called (set → turn_on…).
    let service = Some(action.result_service());
    if translated.sent_at.is_some_and(|sent| is_stale(sent, now, ctx.max_age)) {
        return reject(ErrorCode::Stale, service, reply, "ts is outside queue.max_age".into());
    }
    if let (Some(dedupe), Some(correlation)) = (dedupe, &reply.correlation) {
        if !dedupe.first(&topic, correlation, msg.received_at) {
            let mut decision = reject(ErrorCode::Duplicate, service, reply, "correlation seen before".into());
            decision.duplicate = true;
            return decision;
        }
    }
    if let Some((code, detail)) = denied(ctx, &action, &topic) {
        return reject(code, service, reply, detail);
    }
    let max_age = expiry.map_or(ctx.max_age, |e| e.min(ctx.max_age));
    let origin = Origin { topic: Arc::from(topic.as_str()), payload: publish.payload.clone() };
    let admitted = Admitted { action, reply, deadline: msg.received_at + max_age, route: None, flow: None, origin };
    Decision { kind, admitted: vec![admitted], rejected: Vec::new(), duplicate: false, skipped: Vec::new() }
}

/// The MQTT 5 response topic, correlation data and message expiry.
fn reply_to(publish: &Publish) -> (ReplyTo, Option<Duration>) {
    let mut reply = ReplyTo::default();
    let Some(p) = &publish.properties else {
        return (reply, None);
    };
    reply.response_topic = p.response_topic.clone().filter(|t| !t.is_empty() && !t.contains(['+', '#']));
    reply.correlation_data = p.correlation_data.clone();
    (reply, p.message_expiry_interval.map(|s| Duration::from_secs(u64::from(s))))
}

/// A `ts` older than `max_age`, or more than a minute ahead (clock skew
/// beyond that is an error, not a command to run later).
fn is_stale(sent: SystemTime, now: SystemTime, max_age: Duration) -> bool {
    let old = now.duration_since(sent).is_ok_and(|age| age > max_age);
    let future = sent.duration_since(now).is_ok_and(|ahead| ahead > Duration::from_secs(60));
    old || future
}

/// Why `[access]` (or `[state] exclude`) refuses the action, if it does.
fn denied(ctx: &Context<'_>, action: &Action, topic: &str) -> Option<(ErrorCode, String)> {
    let access = &ctx.rules.access;
    match action {
        Action::Call(call) => access
            .authorize(call, topic)
            .err()
            .map(|code| (code, format!("{} refused by [access] ({code})", call.name()))),
        Action::Get(entity) if ctx.state_filter.excluded(&entity.to_string()) => {
            Some((ErrorCode::EntityDenied, format!("{entity} is in state.exclude")))
        }
        Action::Get(entity) => access
            .authorize_read(entity, topic)
            .err()
            .map(|code| (code, format!("reading {entity} refused by [access]"))),
    }
}

/// A message on a route's topic: every matching route's call (or its
/// failure, or its refusal by `[access]`).
fn decide_routed(ctx: &Context<'_>, msg: &Message<'_>) -> Decision {
    let publish = msg.publish;
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let mut decision = Decision {
        kind: Kind::Route,
        admitted: Vec::new(),
        rejected: Vec::new(),
        duplicate: false,
        skipped: Vec::new(),
    };
    if let Err(refused) = ctx.limits.check_size(&publish.payload) {
        decision.rejected.push(Report::rejected(msg.seq, msg.received_at, topic, refused.code, refused.detail));
        return decision;
    }
    let origin = Origin { topic: Arc::from(topic.as_str()), payload: publish.payload.clone() };
    let report = |route, code, service, detail: String| Report {
        service,
        route: Some(route),
        ..Report::rejected(msg.seq, msg.received_at, topic.clone(), code, detail)
    };
    for result in ctx.rules.routes.evaluate(&topic, &publish.payload, msg.only) {
        match result {
            RouteResult::Skipped { route, why } => decision.skipped.push((route, why)),
            RouteResult::Failed { route, code, detail } => {
                tracing::debug!(route = %route, error = %code, detail, "route failed");
                decision.rejected.push(report(route, code, None, detail));
            }
            RouteResult::Call { route, call, flow, flow_key } => {
                if let Err(code) = ctx.rules.access.authorize(&call, &topic) {
                    let detail = format!("{} refused by [access] ({code})", call.name());
                    let service = Some((call.domain.clone(), call.service.clone()));
                    decision.rejected.push(report(route, code, service, detail));
                    continue;
                }
                decision.admitted.push(Admitted {
                    action: Action::Call(call),
                    reply: ReplyTo::default(),
                    deadline: msg.received_at + ctx.max_age,
                    route: Some(route),
                    flow: (!flow.is_plain()).then_some((flow, flow_key)),
                    origin: origin.clone(),
                });
            }
        }
    }
    decision
}

fn parsed_service(parsed: &Result<CommandTopic, crate::topic::TopicError>) -> Option<(Slug, Slug)> {
    match parsed {
        Ok(CommandTopic::Call { domain, service }) => Some((domain.clone(), service.clone())),
        Ok(CommandTopic::Set(entity)) => Some((entity.domain.clone(), Slug::parse("set").expect("valid slug"))),
        Ok(CommandTopic::Get(entity)) => Some(Action::Get(entity.clone()).result_service()),
        Err(_) => None,
    }
}

/// `queue.dedupe_window`: the correlations of recent commands, per topic.
///
/// Only a 64-bit hash of each (topic, correlation) is kept, not the key
/// itself (up to ~1 KiB): keyed by a `RandomState` made for this window, so
/// a publisher cannot craft colliding keys. Among at most [`Dedupe::MAX`]
/// remembered hashes the chance that a new key collides with one (and is
/// refused as a duplicate) is below 100 000 / 2^64 ≈ 5·10^-15.
#[derive(Debug)]
pub struct Dedupe {
    window: Duration,
    keys: std::collections::hash_map::RandomState,
    seen: HashSet<u64>,
    order: VecDeque<(Instant, u64)>,
}

impl Dedupe {
    /// At most this many remembered: the oldest are forgotten first.
    pub const MAX: usize = 100_000;

    pub fn new(window: Duration) -> Self {
        Self { window, keys: Default::default(), seen: HashSet::new(), order: VecDeque::new() }
    }

    /// Whether this (topic, correlation) is new within the window; remembers it.
    pub fn first(&mut self, topic: &str, correlation: &serde_json::Value, now: Instant) -> bool {
        while let Some((at, key)) = self.order.front() {
            if now.duration_since(*at) <= self.window && self.order.len() < Self::MAX {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
        let key = self.key(topic, correlation);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((now, key));
        true
    }

    fn key(&self, topic: &str, correlation: &serde_json::Value) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.keys.build_hasher();
        // `str`'s Hash ends with a separator: ("ab", "c") and ("a", "bc") differ.
        topic.hash(&mut h);
        correlation.to_string().hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests;
