//! Translation: a command topic and its payload become a [`ServiceCall`].
//!
//! Pure. Implements the payload rules of the contract: `call` takes a JSON
//! object (empty = `{}`), `set` takes `ON`/`OFF`/`TOGGLE` in any case or a
//! JSON object with a `state`; a `correlation` field is taken out of the
//! data and echoed, and a `return_response` field (a boolean) is taken out
//! and asks for HA's service response. The body later sent to HA is re-serialised from the
//! checked value, never the raw bytes.

use serde_json::{Map, Value};

use crate::command::{Action, ErrorCode, ServiceCall};
use crate::topic::{CommandTopic, EntityId, Slug};

/// `[limits]`: what one payload (and one result) may be at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_json_depth: usize,
    pub max_json_keys: usize,
    pub max_topic_length: usize,
    pub max_correlation_bytes: usize,
    /// A result with a service response larger than this goes without it
    /// (the publisher applies it; at most `bounds::MAX_RESULT_BYTES`).
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_json_depth: 16,
            max_json_keys: 512,
            max_topic_length: 512,
            max_correlation_bytes: 512,
            max_result_bytes: crate::bounds::DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl Limits {
    /// Refuses a parsed JSON value nested or keyed beyond the limits.
    pub fn check_json(&self, v: &Value) -> Result<(), Refused> {
        let (depth, keys) = measure(v);
        if depth > self.max_json_depth {
            let detail = format!("JSON nested {depth} deep; at most {}", self.max_json_depth);
            return Err(Refused::new(ErrorCode::JsonTooComplex, detail));
        }
        if keys > self.max_json_keys {
            let detail = format!("JSON has {keys} keys; at most {}", self.max_json_keys);
            return Err(Refused::new(ErrorCode::JsonTooComplex, detail));
        }
        Ok(())
    }

    pub fn check_size(&self, payload: &[u8]) -> Result<(), Refused> {
        if payload.len() > self.max_payload_bytes {
            return Err(Refused::new(
                ErrorCode::PayloadTooLarge,
                format!("payload of {} bytes exceeds {}", payload.len(), self.max_payload_bytes),
            ));
        }
        Ok(())
    }

    fn check_correlation(&self, c: &Option<Value>) -> Result<(), Refused> {
        match c {
            Some(v) if v.to_string().len() > self.max_correlation_bytes => Err(Refused::new(
                ErrorCode::CorrelationTooLarge,
                format!("correlation larger than {} bytes", self.max_correlation_bytes),
            )),
            _ => Ok(()),
        }
    }
}

/// (nesting depth, total object keys), without recursion.
fn measure(v: &Value) -> (usize, usize) {
    let (mut max_depth, mut keys) = (0, 0);
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        max_depth = max_depth.max(depth);
        match v {
            Value::Object(m) => {
                keys += m.len();
                stack.extend(m.values().map(|c| (c, depth + 1)));
            }
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    (max_depth, keys)
}

/// A payload that could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub action: Action,
    pub correlation: Option<Value>,
    /// The sender's `ts` field (unix seconds or RFC 3339), taken out of the data.
    pub sent_at: Option<std::time::SystemTime>,
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

pub fn translate(topic: &CommandTopic, payload: &[u8], limits: &Limits) -> Result<Translated, Refused> {
    limits.check_size(payload)?;
    let mut t = translate_unchecked(topic, payload, limits)?;
    limits.check_correlation(&t.correlation)?;
    if let Action::Call(call) = &mut t.action {
        if let Some(ts) = call.data.remove("ts") {
            let refused = || Refused {
                correlation: t.correlation.clone(),
                ..Refused::new(ErrorCode::InvalidPayload, "ts must be unix seconds or an RFC 3339 time")
            };
            t.sent_at = Some(parse_ts(&ts).ok_or_else(refused)?);
        }
    }
    Ok(t)
}

/// `ts` as unix seconds (number) or RFC 3339 text.
fn parse_ts(v: &Value) -> Option<std::time::SystemTime> {
    match v {
        Value::Number(n) => {
            let secs = n.as_f64().filter(|s| s.is_finite() && *s >= 0.0)?;
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::try_from_secs_f64(secs).ok()?)
        }
        Value::String(s) => humantime::parse_rfc3339_weak(s).ok(),
        _ => None,
    }
}

fn translate_unchecked(topic: &CommandTopic, payload: &[u8], limits: &Limits) -> Result<Translated, Refused> {
    match topic {
        CommandTopic::Call { domain, service } => call(domain, service, payload, limits),
        CommandTopic::Set(entity) => set(entity, payload, limits),
        // Any payload asks for the state; a JSON object may carry a correlation.
        CommandTopic::Get(entity) => Ok(Translated {
            action: Action::Get(entity.clone()),
            correlation: serde_json::from_slice::<Map<String, Value>>(payload)
                .ok()
                .and_then(|mut m| m.remove("correlation")),
            sent_at: None,
        }),
    }
}

fn call(domain: &Slug, service: &Slug, payload: &[u8], limits: &Limits) -> Result<Translated, Refused> {
    let mut data =
        if payload.iter().all(u8::is_ascii_whitespace) { Map::new() } else { parse_object(payload, limits)? };
    let correlation = data.remove("correlation");
    let return_response = match data.remove("return_response") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(Refused {
                correlation,
                ..Refused::new(ErrorCode::InvalidPayload, "return_response must be true or false")
            })
        }
    };
    let call = ServiceCall { return_response, ..ServiceCall::new(domain.clone(), service.clone(), data) };
    Ok(Translated { action: Action::Call(call), correlation, sent_at: None })
}

fn set(entity: &EntityId, payload: &[u8], limits: &Limits) -> Result<Translated, Refused> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Refused::new(ErrorCode::InvalidPayload, "payload is not UTF-8"))?
        .trim();
    let (state, mut data, correlation) = if text.starts_with('{') {
        let mut data = parse_object(payload, limits)?;
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
        action: Action::Call(ServiceCall::new(
            entity.domain.clone(),
            Slug::parse(service).expect("turn_on, turn_off and toggle are valid slugs"),
            data,
        )),
        correlation,
        sent_at: None,
    })
}

fn parse_object(payload: &[u8], limits: &Limits) -> Result<Map<String, Value>, Refused> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v @ Value::Object(_)) => {
            limits.check_json(&v)?;
            let Value::Object(map) = v else { unreachable!("matched an object") };
            Ok(map)
        }
        Ok(_) => Err(Refused::new(ErrorCode::InvalidJson, "payload must be a JSON object")),
        // serde_json stops at 128 levels with "recursion limit exceeded".
        Err(e) if e.to_string().contains("recursion limit") => {
            Err(Refused::new(ErrorCode::JsonTooComplex, "JSON nested too deep"))
        }
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
        let got = translate(&topic, payload.as_bytes(), &Limits::default());
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

    /// payload → Ok((return_response, data left for HA)) or Err(code).
    type Expected = Result<(bool, Value), ErrorCode>;

    #[test]
    fn return_response_is_taken_out_of_call_data() {
        let table: &[(&str, Expected)] = &[
            (r#"{"entity_id":"weather.home"}"#, Ok((false, json!({"entity_id":"weather.home"})))),
            (r#"{"entity_id":"weather.home","return_response":true}"#, Ok((true, json!({"entity_id":"weather.home"})))),
            (r#"{"return_response":false,"type":"daily"}"#, Ok((false, json!({"type":"daily"})))),
            (r#"{"return_response":"yes"}"#, Err(ErrorCode::InvalidPayload)),
            (r#"{"return_response":1}"#, Err(ErrorCode::InvalidPayload)),
            (r#"{"return_response":null}"#, Err(ErrorCode::InvalidPayload)),
        ];
        for (payload, expected) in table {
            let got = translate(&call_topic("weather", "get_forecasts"), payload.as_bytes(), &Limits::default());
            let got = got.map(|t| match t.action {
                Action::Call(c) => (c.return_response, Value::Object(c.data)),
                Action::Get(_) => panic!("not a call"),
            });
            assert_eq!(got.map_err(|r| r.code), *expected, "{payload}");
        }
        let r = translate(
            &call_topic("weather", "get_forecasts"),
            br#"{"return_response":[],"correlation":9}"#,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(r.correlation, Some(json!(9)), "a refusal keeps the correlation");
        assert!(r.detail.contains("return_response"), "{}", r.detail);
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
        let got = translate(
            &set_topic("switch.plug"),
            br#"{"state":"ON","entity_id":"lock.front_door"}"#,
            &Limits::default(),
        )
        .unwrap();
        let Action::Call(call) = got.action else { panic!() };
        assert_eq!(call.data["entity_id"], json!("switch.plug"));
    }

    #[test]
    fn refused_keeps_the_correlation_when_it_can() {
        let r =
            translate(&set_topic("light.a"), br#"{"state":"DIM","correlation":5}"#, &Limits::default()).unwrap_err();
        assert_eq!((r.code, r.correlation), (ErrorCode::InvalidPayload, Some(json!(5))));
    }

    #[test]
    fn get_takes_any_payload_and_keeps_a_correlation() {
        let t = CommandTopic::Get(EntityId::parse("light.kitchen").unwrap());
        let l = Limits::default();
        let got = translate(&t, b"", &l).unwrap();
        assert_eq!(got.action, Action::Get(EntityId::parse("light.kitchen").unwrap()));
        assert_eq!(translate(&t, b"please", &l).unwrap().correlation, None);
        assert_eq!(translate(&t, br#"{"correlation":"g1"}"#, &l).unwrap().correlation, Some(json!("g1")));
    }

    #[test]
    fn limits_refuse_deep_wide_and_huge_input() {
        let l = Limits { max_json_depth: 4, max_json_keys: 5, max_correlation_bytes: 10, ..Limits::default() };
        let t = call_topic("light", "turn_on");
        let code = |p: &str| translate(&t, p.as_bytes(), &l).err().map(|r| r.code);
        assert_eq!(code(r#"{"a":{"b":{"c":1}}}"#), None);
        assert_eq!(code(r#"{"a":{"b":{"c":{"d":1}}}}"#), Some(ErrorCode::JsonTooComplex));
        assert_eq!(code(r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#), Some(ErrorCode::JsonTooComplex));
        assert_eq!(code(r#"{"correlation":"0123456789abc"}"#), Some(ErrorCode::CorrelationTooLarge));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(code(&format!(r#"{{"a":{deep}}}"#)), Some(ErrorCode::JsonTooComplex));
        let bytes = [0xff, 0xfe, b'{'];
        assert_eq!(translate(&t, &bytes, &l).unwrap_err().code, ErrorCode::InvalidJson);
    }

    #[test]
    fn ts_is_taken_out_of_the_data() {
        let l = Limits::default();
        let t = translate(&call_topic("light", "turn_on"), br#"{"entity_id":"light.a","ts":1700000000}"#, &l).unwrap();
        assert_eq!(t.sent_at, Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)));
        let Action::Call(call) = t.action else { panic!() };
        assert_eq!(Value::Object(call.data), json!({"entity_id":"light.a"}));
        let t = translate(&call_topic("light", "turn_on"), br#"{"ts":"2026-11-29T10:00:00Z"}"#, &l).unwrap();
        assert!(t.sent_at.is_some());
        let bad = translate(&call_topic("light", "turn_on"), br#"{"ts":"yesterday"}"#, &l);
        assert_eq!(bad.unwrap_err().code, ErrorCode::InvalidPayload);
    }

    #[test]
    fn oversized_payloads_are_refused_before_parsing() {
        let big = vec![b' '; Limits::default().max_payload_bytes + 1];
        assert_eq!(
            translate(&call_topic("light", "turn_on"), &big, &Limits::default()).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
    }
}
