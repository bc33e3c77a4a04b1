//! A Home Assistant state object as HA sent it: its JSON text, read only as
//! far as needed.
//!
//! Every call's answer and every `state_changed` event carries whole state
//! objects (attributes, context…), and most of them are never published: the
//! entity is not mirrored, or the same state came the other way first (the
//! call's answer, then its websocket event). [`RawState::head`] reads the
//! entity id and `last_updated` without building anything; only a state that
//! will be published is [`parse`](RawState::parse)d. A leaf: no imports from
//! the crate.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A state object's JSON text, with its entity id, state and
/// `last_updated` read once when it arrived.
#[derive(Debug, Clone)]
pub struct RawState {
    text: Box<RawValue>,
    entity_id: Option<Box<str>>,
    state: Option<Box<str>>,
    last_updated: Option<Box<str>>,
}

impl PartialEq for RawState {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

/// What is read of a state before deciding whether it is needed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateHead<'a> {
    pub entity_id: Option<&'a str>,
    pub last_updated: Option<&'a str>,
}

/// The keys read on arrival, as serde reads them (borrowed unless escaped).
#[derive(Default, Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    entity_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    last_updated: Option<Cow<'a, str>>,
}

impl RawState {
    /// HA's text as it came (any JSON; `null` is never one). Scans it once
    /// for the entity id, state and `last_updated`, building nothing else.
    pub fn new(text: Box<RawValue>) -> Self {
        // Only an object (serde would also read the fields off a list).
        let head = if text.get().trim_start().starts_with('{') {
            serde_json::from_str::<Head<'_>>(text.get()).unwrap_or_default()
        } else {
            Head::default()
        };
        let owned = |c: Option<Cow<'_, str>>| c.map(|c| c.into_owned().into_boxed_str());
        Self {
            entity_id: owned(head.entity_id),
            state: owned(head.state),
            last_updated: owned(head.last_updated),
            text,
        }
    }

    /// A state already parsed (tests, benchmarks).
    pub fn from_value(state: &Value) -> Self {
        Self::new(serde_json::value::to_raw_value(state).expect("a JSON value always serialises"))
    }

    pub fn text(&self) -> &str {
        self.text.get()
    }

    /// Its entity id and `last_updated`.
    pub fn head(&self) -> StateHead<'_> {
        StateHead { entity_id: self.entity_id.as_deref(), last_updated: self.last_updated.as_deref() }
    }

    pub fn entity_id(&self) -> Option<&str> {
        self.entity_id.as_deref()
    }

    /// The state itself (`on`, `21.5`…).
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The whole state; `None` if it is not a JSON object.
    pub fn parse(&self) -> Option<Value> {
        serde_json::from_str::<Value>(self.text()).ok().filter(Value::is_object)
    }
}

/// The states of a JSON list (a call's answer), each kept as text.
pub fn list(text: &[u8]) -> Result<Vec<RawState>, serde_json::Error> {
    let items: Vec<Box<RawValue>> = serde_json::from_slice(text)?;
    Ok(items.into_iter().map(RawState::new).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_head_is_read_without_the_rest() {
        let table = [
            (
                r#"{"entity_id":"light.a","state":"on","attributes":{"x":[1,{"y":"z"}]},"last_updated":"t2"}"#,
                Some("light.a"),
                Some("t2"),
            ),
            (r#"{"last_updated":"t\u00e9","entity_id":"light.b"}"#, Some("light.b"), Some("té")),
            (r#"{"state":"on"}"#, None, None),
            (r#"["not", "an object"]"#, None, None),
            (r#"{"entity_id":5}"#, None, None),
        ];
        for (text, entity_id, last_updated) in table {
            let state = RawState::new(RawValue::from_string(text.to_owned()).unwrap());
            let head = state.head();
            assert_eq!(head.entity_id, entity_id, "{text}");
            assert_eq!(head.last_updated, last_updated, "{text}");
        }
    }

    #[test]
    fn a_list_keeps_each_state_and_parses_on_demand() {
        let states = list(br#"[{"entity_id":"light.a","state":"on"}, {"entity_id":"light.b"}]"#).unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].parse(), Some(json!({"entity_id":"light.a","state":"on"})));
        assert_eq!(states[1].entity_id(), Some("light.b"));
        assert_eq!((states[0].state(), states[1].state()), (Some("on"), None));
        assert!(list(br#"{"changed_states":[]}"#).is_err(), "an object is not a list");
        assert_eq!(RawState::from_value(&json!({"a":1})).text(), r#"{"a":1}"#);
        assert_eq!(RawState::from_value(&json!([1])).parse(), None, "not an object");
    }
}
