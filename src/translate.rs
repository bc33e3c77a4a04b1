//! Translation: a command topic and its payload become a [`ServiceCall`].
//!
//! Pure. Implements the payload rules of the contract: `call` takes a JSON
//! object (empty = `{}`), `set` takes `ON`/`OFF`/`TOGGLE` in any case or a
//! JSON object with a `state`; a `correlation` field is taken out of the
//! data and echoed. The body later sent to HA is re-serialised from the
//! checked value, never the raw bytes.

use serde_json::{Map, Value};

use crate::command::{Action, ErrorCode, ServiceCall};
use crate::topic::{CommandTopic, EntityId, Slug};

/// Largest payload accepted, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A payload that could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub action: Action,
    pub correlation: Option<Value>,
}

/// A payload that could not, with whatever correlation could be recovered.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub code: ErrorCode,
    pub correlation: Option<Value>,
    pub detail: String,
}

impl Refused {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, correlation: None, detail: detail.into() }
    }
}

pub fn translate(topic: &CommandTopic, payload: &[u8]) -> Result<Translated, Refused> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Refused::new(
            ErrorCode::PayloadTooLarge,
            format!("payload of {} bytes exceeds {MAX_PAYLOAD}", payload.len()),
        ));
    }
    match topic {
        CommandTopic::Call { domain, service } => call(domain, service, payload),
        CommandTopic::Set(entity) => set(entity, payload),
        // Any payload asks for the state; a JSON object may carry a correlation.
        CommandTopic::Get(entity) => Ok(Translated {
            action: Action::Get(entity.clone()),
            correlation: serde_json::from_slice::<Map<String, Value>>(payload)
                .ok()
                .and_then(|mut m| m.remove("correlation")),
        }),
    }
}

fn call(domain: &Slug, service: &Slug, payload: &[u8]) -> Result<Translated, Refused> {
    let mut data = if payload.iter().all(u8::is_ascii_whitespace) { Map::new() } else { parse_object(payload)? };
    let correlation = data.remove("correlation");
    let call = ServiceCall { domain: domain.clone(), service: service.clone(), data };
    Ok(Translated { action: Action::Call(call), correlation })
}

fn set(entity: &EntityId, payload: &[u8]) -> Result<Translated, Refused> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Refused::new(ErrorCode::InvalidPayload, "payload is not UTF-8"))?
        .trim();
    let (state, mut data, correlation) = if text.starts_with('{') {
        let mut data = parse_object(payload)?;
        let correlation = data.remove("correlation");
        let state = match data.remove("state") {
            Some(Value::String(s)) => Some(s),
            None => None,
            Some(_) => {
                return Err(Refused {
                    correlation,
                    ..Refused::new(ErrorCode::InvalidPayload, "\"state\" must be a string")
                })
            }
        };
        (state, data, correlation)
    } else {
        (Some(text.trim_matches('"').to_owned()), Map::new(), None)
    };
    let service = match state.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("ON") => "turn_on",
        // Attributes without a state mean "on, like this", as in Zigbee2MQTT.
        None if !data.is_empty() => "turn_on",
        Some("OFF") => "turn_off",
        Some("TOGGLE") => "toggle",
        _ => {
            return Err(Refused {
                correlation,
                ..Refused::new(ErrorCode::InvalidPayload, "set payload must be ON, OFF, TOGGLE or {\"state\": …}")
            })
        }
    };
    data.insert("entity_id".into(), Value::String(entity.to_string()));
    Ok(Translated {
        action: Action::Call(ServiceCall {
            domain: entity.domain.clone(),
            service: Slug::parse(service).expect("turn_on, turn_off and toggle are valid slugs"),
            data,
        }),
        correlation,
    })
}

fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, Refused> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Refused::new(ErrorCode::InvalidJson, "payload must be a JSON object")),
        Err(e) => Err(Refused::new(ErrorCode::InvalidJson, format!("payload is not JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    fn call_topic(d: &str, s: &str) -> CommandTopic {
        CommandTopic::Call { domain: slug(d), service: slug(s) }
    }

    fn set_topic(e: &str) -> CommandTopic {
        CommandTopic::Set(EntityId::parse(e).unwrap())
    }

    /// (topic, payload) → Ok((service, data, correlation)) or Err(code).
    fn check(topic: CommandTopic, payload: &str, expected: Result<(&str, Value, Option<Value>), ErrorCode>) {
        let got = translate(&topic, payload.as_bytes());
        match (got, expected) {
            (Ok(t), Ok((service, data, correlation))) => {
                let Action::Call(call) = t.action else { panic!("{payload}: not a call") };
                assert_eq!(call.name(), service, "{payload}");
                assert_eq!(Value::Object(call.data), data, "{payload}");
                assert_eq!(t.correlation, correlation, "{payload}");
            }
            (Err(r), Err(code)) => assert_eq!(r.code, code, "{payload}: {}", r.detail),
            (got, expected) => panic!("{payload}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn call_payloads() {
        let t = || call_topic("light", "turn_on");
        check(t(), "", Ok(("light.turn_on", json!({}), None)));
        check(t(), "  \n", Ok(("light.turn_on", json!({}), None)));
        check(
            t(),
            r#"{"entity_id":"light.kitchen","brightness":128}"#,
            Ok(("light.turn_on", json!({"entity_id":"light.kitchen","brightness":128}), None)),
        );
        check(
            t(),
            r#"{"entity_id":"light.a","correlation":{"id":7}}"#,
            Ok(("light.turn_on", json!({"entity_id":"light.a"}), Some(json!({"id":7})))),
        );
        check(t(), "ON", Err(ErrorCode::InvalidJson));
        check(t(), "[1,2]", Err(ErrorCode::InvalidJson));
        check(t(), "{\"a\":", Err(ErrorCode::InvalidJson));
    }

    #[test]
    fn set_payloads() {
        let t = || set_topic("light.kitchen");
        let on = |extra: Value| {
            let mut m = json!({"entity_id":"light.kitchen"});
            m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            m
        };
        check(t(), "ON", Ok(("light.turn_on", on(json!({})), None)));
        check(t(), "on", Ok(("light.turn_on", on(json!({})), None)));
        check(t(), " Off\n", Ok(("light.turn_off", on(json!({})), None)));
        check(t(), "toggle", Ok(("light.toggle", on(json!({})), None)));
        check(t(), "\"ON\"", Ok(("light.turn_on", on(json!({})), None)));
        check(
            t(),
            r#"{"state":"ON","brightness":200,"correlation":"c1"}"#,
            Ok(("light.turn_on", on(json!({"brightness":200})), Some(json!("c1")))),
        );
        check(t(), r#"{"state":"off","transition":2}"#, Ok(("light.turn_off", on(json!({"transition":2})), None)));
        check(t(), r#"{"brightness":10}"#, Ok(("light.turn_on", on(json!({"brightness":10})), None)));
        check(t(), "", Err(ErrorCode::InvalidPayload));
        check(t(), "{}", Err(ErrorCode::InvalidPayload));
        check(t(), "DIM", Err(ErrorCode::InvalidPayload));
        check(t(), r#"{"state":1}"#, Err(ErrorCode::InvalidPayload));
        check(t(), "{bad", Err(ErrorCode::InvalidJson));
    }

    #[test]
    fn set_cannot_retarget_another_entity() {
        let got = translate(&set_topic("switch.plug"), br#"{"state":"ON","entity_id":"lock.front_door"}"#).unwrap();
        let Action::Call(call) = got.action else { panic!() };
        assert_eq!(call.data["entity_id"], json!("switch.plug"));
    }

    #[test]
    fn refused_keeps_the_correlation_when_it_can() {
        let r = translate(&set_topic("light.a"), br#"{"state":"DIM","correlation":5}"#).unwrap_err();
        assert_eq!((r.code, r.correlation), (ErrorCode::InvalidPayload, Some(json!(5))));
    }

    #[test]
    fn get_takes_any_payload_and_keeps_a_correlation() {
        let t = CommandTopic::Get(EntityId::parse("light.kitchen").unwrap());
        let got = translate(&t, b"").unwrap();
        assert_eq!(got.action, Action::Get(EntityId::parse("light.kitchen").unwrap()));
        assert_eq!(translate(&t, b"please").unwrap().correlation, None);
        assert_eq!(translate(&t, br#"{"correlation":"g1"}"#).unwrap().correlation, Some(json!("g1")));
    }

    #[test]
    fn oversized_payloads_are_refused_before_parsing() {
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(translate(&call_topic("light", "turn_on"), &big).unwrap_err().code, ErrorCode::PayloadTooLarge);
    }
}
