//! The route tester: what the gateway would do with a message, now, without
//! doing it. It runs [`admission::decide`] — the function ingress runs on
//! every message, with the rules in force — and describes the decision:
//! each matching route's result, the rendered calls, `[access]`'s verdict
//! and why, template errors with their place. Nothing is queued, nothing
//! reaches Home Assistant, and the dedupe window is not touched.

use std::time::SystemTime;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::admission::{self, Admitted, Context, Decision};
use crate::command::{Action, ErrorCode, Report};

/// What an access refusal means, in the words of the config.
pub fn access_reason(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::ServiceDenied => Some(
            "the service is not in access.allow_services (or an [[access.rule]] for this topic); \
             sensitive domains (lock, cover, script…) must be named there, a wildcard never reaches them",
        ),
        ErrorCode::EntityDenied => {
            Some("a target entity is not in access.allow_entities (or an [[access.rule]] for this topic)")
        }
        ErrorCode::TargetDenied => Some(
            "a target other than plain entity ids (area_id, device_id, entity_id: all, a comma list…) \
             that access.allow_targets does not name",
        ),
        _ => None,
    }
}

/// Evaluates `topic` + `payload` as if they had just arrived.
pub fn evaluate(ctx: &Context<'_>, topic: &str, payload: &[u8]) -> Value {
    let publish = Publish::new(topic, QoS::AtLeastOnce, Bytes::copy_from_slice(payload), None);
    let msg = admission::Message { publish: &publish, seq: 0, received_at: Instant::now(), only: None };
    let decision = admission::decide(ctx, None, &msg, SystemTime::now());
    describe(&decision)
}

fn call_json(action: &Action) -> Value {
    match action {
        Action::Call(c) => json!({"service": c.name(), "data": c.data, "return_response": c.return_response}),
        Action::Get(entity) => json!({"service": format!("{}.get", entity.domain), "entity_id": entity.to_string()}),
    }
}

fn admitted_json(a: &Admitted) -> Value {
    json!({
        "route": a.route.as_deref(),
        // A route that made a call had no `when`, or a true one.
        "when": a.route.is_some().then_some(true),
        "result": "call",
        "call": call_json(&a.action),
        "access": {"allowed": true},
    })
}

fn rejected_json(r: &Report) -> Value {
    let code = r.outcome.error.unwrap_or(ErrorCode::InvalidPayload);
    let detail = r.outcome.detail.clone().unwrap_or_default();
    let service = r.service.as_ref().map(|(d, s)| format!("{d}.{s}"));
    match access_reason(code) {
        Some(reason) => json!({
            "route": r.route.as_deref(),
            "result": "denied",
            "service": service,
            "access": {"allowed": false, "code": code.as_str(), "reason": reason, "detail": detail},
        }),
        None => json!({
            "route": r.route.as_deref(),
            "result": "error",
            "service": service,
            "error": {"code": code.as_str(), "detail": detail},
        }),
    }
}

/// The decision in the page's terms.
pub fn describe(d: &Decision) -> Value {
    let mut results: Vec<Value> = d.admitted.iter().map(admitted_json).collect();
    results.extend(d.rejected.iter().map(rejected_json));
    for (route, why) in &d.skipped {
        let reason = match *why {
            "when" => "its when condition is false",
            "map" => "its map has no entry for this value",
            "event_type" => "not a call_service event",
            other => other,
        };
        results.push(json!({"route": route.as_ref(), "result": "skipped", "when": *why != "when", "reason": reason}));
    }
    let summary = match (d.admitted.len(), results.len()) {
        (_, 0) => "no route matches this topic, and it is not a command topic: nothing would happen".to_owned(),
        (0, _) => "nothing would be sent to Home Assistant".to_owned(),
        (1, _) => "one call would be queued".to_owned(),
        (n, _) => format!("{n} calls would be queued"),
    };
    json!({"kind": d.kind.as_str(), "summary": summary, "results": results})
}
