//! Any topic and payload (separated by the first newline): translation never
//! panics; an accepted call has no `correlation`/`ts` in its data and a
//! `set` only targets its own entity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_ha_gateway::command::Action;
use mqtt_ha_gateway::topic::{CommandTopic, TopicPrefix};
use mqtt_ha_gateway::translate::{translate, Limits};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(topic) = std::str::from_utf8(&data[..split]) else { return };
    let payload = data.get(split + 1..).unwrap_or_default();
    let prefix = TopicPrefix::new("ha-gateway").expect("a valid prefix");
    let Ok(parsed) = prefix.parse_command(topic) else { return };
    let Ok(t) = translate(&parsed, payload, &Limits::default()) else { return };
    if let Action::Call(call) = &t.action {
        assert!(!call.data.contains_key("correlation") && !call.data.contains_key("ts"));
        serde_json::to_vec(&call.data).expect("the body re-serialises");
        if let CommandTopic::Set(entity) = &parsed {
            assert_eq!(call.data["entity_id"], serde_json::Value::String(entity.to_string()));
        }
    }
});
