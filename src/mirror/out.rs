//! State out: the one place that publishes state topics — `<prefix>/state/…`
//! or, with `layout = "statestream"`, `<base_topic>/…` — for call results,
//! gets and the live mirror alike.
//!
//! Remembers, per entity, a hash of what it last published, HA's
//! `last_updated` and the topics it published, so the same state arriving
//! twice (a call's result, then the websocket event) is published once, an
//! older state never overwrites a newer one, and topics an entity no longer
//! has (an attribute gone, the entity removed) are cleared. Entities a call
//! touched are mirrored from then on.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use super::{pyjson, StateFilter};
use crate::metrics::Metrics;
use crate::state_json::StateHead;
use crate::topic::{EntityId, TopicPrefix};

/// How the JSON layout shapes a state (`[state]` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateOptions {
    pub attributes: bool,
    pub attribute_topics: bool,
    pub timestamps: bool,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self { attributes: true, attribute_topics: false, timestamps: true }
    }
}

/// Home Assistant's `mqtt_statestream` layout (`[state.statestream]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statestream {
    /// The levels before `<domain>/<object_id>/…`, without a trailing `/`.
    pub base_topic: TopicPrefix,
    /// One topic per attribute, its value JSON-encoded as Python does.
    pub publish_attributes: bool,
    /// `…/last_updated` and `…/last_changed`.
    pub publish_timestamps: bool,
}

/// Where and how states are published (`[state] layout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `<prefix>/state/<domain>/<object_id>`: the state as one JSON document.
    Json(StateOptions),
    /// `<base_topic>/<domain>/<object_id>/state` and its siblings, byte for
    /// byte as HA's `mqtt_statestream` publishes them.
    Statestream(Statestream),
}

impl Default for Layout {
    fn default() -> Self {
        Self::Json(StateOptions::default())
    }
}

/// The retained messages for one HA state object, the entity's main topic
/// first.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMessages {
    pub entity: EntityId,
    pub last_updated: Option<String>,
    /// The topic every other one is `<base>/<suffix>` of.
    pub base: String,
    /// (suffix, payload); the suffix `""` is `base` itself.
    pub messages: Vec<(String, Vec<u8>)>,
}

impl StateMessages {
    fn topic(base: &str, suffix: &str) -> String {
        if suffix.is_empty() {
            base.to_owned()
        } else {
            format!("{base}/{suffix}")
        }
    }

    /// The full topics, in publishing order.
    pub fn topics(&self) -> impl Iterator<Item = (String, &[u8])> + '_ {
        self.messages.iter().map(|(suffix, payload)| (Self::topic(&self.base, suffix), payload.as_slice()))
    }
}

/// Where an entity's topics live: the JSON state topic, or the statestream
/// `<base_topic>/<domain>/<object_id>`.
pub fn entity_base(prefix: &TopicPrefix, layout: &Layout, entity: &EntityId) -> String {
    match layout {
        Layout::Json(_) => prefix.state(entity),
        Layout::Statestream(s) => format!("{}/{}/{}", s.base_topic.as_str(), entity.domain, entity.object_id),
    }
}

/// An attribute name that cannot be a topic level: skipped.
fn unusable_attribute(name: &str, allow_slash: bool) -> bool {
    name.is_empty() || name.contains(['+', '#', '\0']) || (!allow_slash && name.contains('/'))
}

/// The state topic's payload, in the documented key order, borrowed from
/// HA's state object: nothing is copied into an intermediate JSON tree.
#[derive(serde::Serialize)]
struct StatePayload<'a> {
    state: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_changed: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_updated: Option<&'a Value>,
    /// HA 2024.4 and newer; older releases have no such key.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reported: Option<&'a Value>,
}

const NULL: &Value = &Value::Null;

/// Pure: builds the messages for `state` (an object with `entity_id`).
pub fn state_messages(prefix: &TopicPrefix, layout: &Layout, state: &Value) -> Option<StateMessages> {
    let entity = EntityId::parse(state.get("entity_id")?.as_str()?)?;
    let empty = Map::new();
    let attributes = state.get("attributes").and_then(Value::as_object).unwrap_or(&empty);
    let base = entity_base(prefix, layout, &entity);
    let messages = match layout {
        Layout::Json(options) => json_messages(*options, state, attributes),
        Layout::Statestream(options) => statestream_messages(options, state, attributes),
    };
    let last_updated = state.get("last_updated").and_then(Value::as_str).map(str::to_owned);
    Some(StateMessages { entity, last_updated, base, messages })
}

fn json_messages(options: StateOptions, state: &Value, attributes: &Map<String, Value>) -> Vec<(String, Vec<u8>)> {
    let timestamp = |key: &str| options.timestamps.then(|| state.get(key).unwrap_or(NULL));
    let payload = StatePayload {
        state: state.get("state").unwrap_or(NULL),
        attributes: options.attributes.then_some(attributes),
        last_changed: timestamp("last_changed"),
        last_updated: timestamp("last_updated"),
        last_reported: if options.timestamps { state.get("last_reported") } else { None },
    };
    let main = serde_json::to_vec(&payload).expect("a JSON value always serialises");
    let mut messages = vec![(String::new(), main)];
    if options.attribute_topics {
        for (name, value) in attributes {
            if unusable_attribute(name, false) {
                continue;
            }
            let payload = match value {
                Value::String(s) => s.clone().into_bytes(),
                other => serde_json::to_vec(other).expect("a JSON value always serialises"),
            };
            messages.push((name.clone(), payload));
        }
    }
    messages
}

/// What `mqtt_statestream` publishes for one `state_changed`, in its order:
/// the raw state, `last_updated` and `last_changed` as HA's `isoformat()`
/// wrote them, then each attribute as `json.dumps` writes it.
fn statestream_messages(
    options: &Statestream,
    state: &Value,
    attributes: &Map<String, Value>,
) -> Vec<(String, Vec<u8>)> {
    let raw = match state.get("state") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut messages = vec![("state".to_owned(), raw.into_bytes())];
    if options.publish_timestamps {
        for key in ["last_updated", "last_changed"] {
            if let Some(at) = state.get(key).and_then(Value::as_str) {
                messages.push((key.to_owned(), at.as_bytes().to_vec()));
            }
        }
    }
    if options.publish_attributes {
        for (name, value) in attributes {
            // HA publishes a name with '/' a level deeper, and fails on a wildcard.
            if unusable_attribute(name, true) {
                continue;
            }
            messages.push((name.clone(), pyjson::dumps(value).into_bytes()));
        }
    }
    messages
}

fn hash(messages: &[(String, Vec<u8>)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    messages.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
struct Known {
    /// Hash of what was last published; 0 = must be published again.
    hash: u64,
    last_updated: Option<Box<str>>,
    /// The suffixes of the topics published (see [`StateMessages`]).
    suffixes: Vec<Box<str>>,
}

/// What happened to one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Sent,
    /// Same as last time: nothing sent.
    Unchanged,
    /// Older than what was sent: nothing sent.
    Stale,
    /// Not mirrored (excluded, or neither included nor touched).
    Ignored,
}

pub struct StateOut {
    client: AsyncClient,
    prefix: TopicPrefix,
    layout: Layout,
    filter: StateFilter,
    metrics: Metrics,
    /// Held across the publish, so decisions and sends keep one order.
    known: Mutex<HashMap<String, Known>>,
    /// `[metrics.entities]`: entity id → the unit label of its current series.
    exported: std::sync::Mutex<HashMap<String, Option<String>>>,
}

impl StateOut {
    pub fn new(
        client: AsyncClient,
        prefix: TopicPrefix,
        layout: Layout,
        filter: StateFilter,
        metrics: Metrics,
        exported: &[EntityId],
    ) -> Self {
        let exported = exported.iter().map(|e| (e.to_string(), None)).collect();
        Self {
            client,
            prefix,
            layout,
            filter,
            metrics,
            known: Mutex::new(HashMap::new()),
            exported: std::sync::Mutex::new(exported),
        }
    }

    /// Keeps `ha_entity_state` for the entities in `[metrics.entities]`.
    fn export(&self, entity_id: &str, state: Option<&Value>) {
        let mut exported = self.exported.lock().expect("exported lock is never poisoned: no panics under it");
        let Some(series) = exported.get_mut(entity_id) else { return };
        let domain = entity_id.split_once('.').map_or("", |(d, _)| d);
        if let Some(unit) = series.take() {
            let _ = self.metrics.ha_entity_state.remove_label_values(&[entity_id, domain, &unit]);
        }
        let Some(state) = state else { return };
        let Some(value) = state.get("state").and_then(Value::as_str).and_then(crate::metrics::entity_state_value)
        else {
            return;
        };
        let unit = state.pointer("/attributes/unit_of_measurement").and_then(Value::as_str).unwrap_or("").to_owned();
        self.metrics.ha_entity_state.with_label_values(&[entity_id, domain, &unit]).set(value);
        *series = Some(unit);
    }

    /// A state a call returned, or a get fetched (`force`: publish even if
    /// unchanged). The entity is mirrored from now on, unless excluded.
    pub async fn touched(&self, state: &Value, force: bool) -> Published {
        self.publish(state, true, force).await
    }

    /// A state from HA's snapshot or live events.
    pub async fn update(&self, state: &Value) -> Published {
        self.publish(state, false, false).await
    }

    /// Whether a live state of `head`'s entity, updated at `head`'s
    /// `last_updated`, may be published or exported: when not, the mirror
    /// does not even parse it.
    pub async fn wants(&self, head: &StateHead<'_>) -> bool {
        self.needs(head, false).await
    }

    /// Whether the state a call returned (`touched`) is needed: the
    /// publisher parses only those.
    pub async fn wants_touched(&self, head: &StateHead<'_>) -> bool {
        self.needs(head, true).await
    }

    async fn needs(&self, head: &StateHead<'_>, touched: bool) -> bool {
        let Some(id) = head.entity_id else { return false };
        if self.is_exported(id) {
            return true;
        }
        let known = self.known.lock().await;
        self.decided(&known, id, head.last_updated, touched, false).is_none()
    }

    fn is_exported(&self, id: &str) -> bool {
        self.exported.lock().expect("exported lock is never poisoned: no panics under it").contains_key(id)
    }

    /// What becomes of a state of `id` updated at `last_updated`, when the
    /// two are enough to say; `None`: build its messages and compare.
    fn decided(
        &self,
        known: &HashMap<String, Known>,
        id: &str,
        last_updated: Option<&str>,
        touched: bool,
        force: bool,
    ) -> Option<Published> {
        if self.filter.excluded(id) {
            return Some(Published::Ignored);
        }
        match (known.get(id), last_updated) {
            (None, _) if !touched && !self.filter.included(id) => Some(Published::Ignored),
            (Some(k), Some(new)) => match k.last_updated.as_deref() {
                Some(old) if new < old => Some(Published::Stale),
                // HA gives a state a new `last_updated` whenever it or an
                // attribute changes: the same one is the same state.
                Some(old) if new == old && k.hash != 0 && !force => Some(Published::Unchanged),
                _ => None,
            },
            _ => None,
        }
    }

    async fn publish(&self, state: &Value, touched: bool, force: bool) -> Published {
        let Some(id) = state.get("entity_id").and_then(Value::as_str).filter(|id| EntityId::is_valid(id)) else {
            return Published::Ignored;
        };
        self.export(id, Some(state));
        let last_updated = state.get("last_updated").and_then(Value::as_str);
        let mut known = self.known.lock().await;
        // Decided before the messages are built, when the entity and
        // `last_updated` are enough.
        if let Some(published) = self.decided(&known, id, last_updated, touched, force) {
            return published;
        }
        let Some(msgs) = state_messages(&self.prefix, &self.layout, state) else { return Published::Ignored };
        let h = hash(&msgs.messages);
        let gone = match known.get(id) {
            None => Vec::new(),
            Some(k) if k.hash == h && !force => return Published::Unchanged,
            Some(k) => k
                .suffixes
                .iter()
                .filter(|a| !msgs.messages.iter().any(|(n, _)| n.as_str() == a.as_ref()))
                .cloned()
                .collect(),
        };
        let suffixes = msgs.messages.iter().map(|(suffix, _)| suffix.clone().into_boxed_str()).collect();
        let last_updated = msgs.last_updated.clone().map(String::into_boxed_str);
        known.insert(id.to_owned(), Known { hash: h, last_updated, suffixes });
        self.metrics.mirrored_entities.set(known.len() as i64);
        for (topic, payload) in msgs.topics() {
            self.send(topic, payload.to_vec()).await;
        }
        for suffix in gone {
            self.send(StateMessages::topic(&msgs.base, &suffix), Vec::new()).await;
        }
        Published::Sent
    }

    /// The entity no longer exists in HA: clear its retained topics, the
    /// main one last.
    pub async fn removed(&self, entity_id: &str) {
        self.export(entity_id, None);
        let mut known = self.known.lock().await;
        let Some(k) = known.remove(entity_id) else { return };
        self.metrics.mirrored_entities.set(known.len() as i64);
        let Some(entity) = EntityId::parse(entity_id) else { return };
        let base = entity_base(&self.prefix, &self.layout, &entity);
        for suffix in k.suffixes.iter().rev() {
            self.send(StateMessages::topic(&base, suffix), Vec::new()).await;
        }
    }

    /// A fresh snapshot of every state: publishes what changed and clears
    /// mirrored entities that HA no longer has.
    pub async fn resync(&self, states: &[Value]) {
        let present: std::collections::HashSet<&str> =
            states.iter().filter_map(|s| s.get("entity_id")?.as_str()).collect();
        for state in states {
            self.update(state).await;
        }
        let gone: Vec<String> = {
            let known = self.known.lock().await;
            known.keys().filter(|id| !present.contains(id.as_str())).cloned().collect()
        };
        for id in gone {
            self.removed(&id).await;
        }
    }

    /// The broker may have lost our retained messages (new session): publish
    /// everything again at the next snapshot.
    pub async fn forget_published(&self) {
        for k in self.known.lock().await.values_mut() {
            k.hash = 0;
            k.last_updated = None;
        }
    }

    /// The state payload alone (for MQTT 5 replies to a get): the JSON
    /// document in either layout, so a reply is one message.
    pub fn payload(&self, state: &Value) -> Vec<u8> {
        let options = match &self.layout {
            Layout::Json(options) => *options,
            Layout::Statestream(_) => StateOptions::default(),
        };
        state_payload(&self.prefix, options, state)
    }

    pub async fn mirrored(&self) -> usize {
        self.known.lock().await.len()
    }

    async fn send(&self, topic: String, payload: Vec<u8>) {
        self.metrics.state_publishes.inc();
        if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, true, payload).await {
            tracing::warn!(error = %e, "could not queue a state publish");
        }
    }
}

/// The state payload alone (for MQTT 5 replies to a get).
pub fn state_payload(prefix: &TopicPrefix, options: StateOptions, state: &Value) -> Vec<u8> {
    state_messages(prefix, &Layout::Json(options), state)
        .map(|m| m.messages.into_iter().next().expect("the state topic is always first").1)
        .unwrap_or_else(|| json!({"state": null}).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix() -> TopicPrefix {
        TopicPrefix::new("gw").unwrap()
    }

    fn state() -> Value {
        json!({"entity_id":"light.a","state":"on","attributes":{"brightness":3,"friendly_name":"A","bad/name":1},
               "last_changed":"t1","last_updated":"t2","last_reported":"t3","context":{"id":"x"}})
    }

    fn json_layout(options: StateOptions) -> Layout {
        Layout::Json(options)
    }

    /// (topic, payload as text) of every message, in order.
    fn published(layout: &Layout, state: &Value) -> Vec<(String, String)> {
        let m = state_messages(&prefix(), layout, state).unwrap();
        m.topics().map(|(t, p)| (t, String::from_utf8(p.to_vec()).unwrap())).collect()
    }

    #[test]
    fn the_state_json_follows_the_options() {
        let table = [
            (
                StateOptions::default(),
                json!({"state":"on","attributes":{"brightness":3,"friendly_name":"A","bad/name":1},
                       "last_changed":"t1","last_updated":"t2","last_reported":"t3"}),
            ),
            (
                StateOptions { attributes: false, ..Default::default() },
                json!({"state":"on","last_changed":"t1","last_updated":"t2","last_reported":"t3"}),
            ),
            (StateOptions { timestamps: false, attributes: false, ..Default::default() }, json!({"state":"on"})),
        ];
        for (options, expected) in table {
            let m = published(&json_layout(options), &state());
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].0, "gw/state/light/a");
            assert_eq!(serde_json::from_str::<Value>(&m[0].1).unwrap(), expected, "{options:?}");
        }
    }

    #[test]
    fn last_reported_is_passed_on_only_where_home_assistant_sends_it() {
        // HA before 2024.4 has no `last_reported`: no null key appears for it.
        let mut old = state();
        old.as_object_mut().unwrap().remove("last_reported");
        let layout = json_layout(StateOptions { attributes: false, ..Default::default() });
        let m = published(&layout, &old);
        let json: Value = serde_json::from_str(&m[0].1).unwrap();
        assert_eq!(json, json!({"state":"on","last_changed":"t1","last_updated":"t2"}));
        // The stale-event check keeps comparing `last_updated`.
        assert_eq!(state_messages(&prefix(), &layout, &state()).unwrap().last_updated.as_deref(), Some("t2"));
    }

    #[test]
    fn attribute_topics_carry_plain_values() {
        let layout = json_layout(StateOptions { attribute_topics: true, ..Default::default() });
        let m = published(&layout, &state());
        let topics: Vec<(&str, &str)> = m[1..].iter().map(|(t, p)| (t.as_str(), p.as_str())).collect();
        assert_eq!(
            topics,
            [("gw/state/light/a/brightness", "3"), ("gw/state/light/a/friendly_name", "A")],
            "a name with '/' is skipped"
        );
    }

    #[test]
    fn states_without_a_valid_entity_id_are_ignored() {
        let layout = Layout::default();
        assert!(state_messages(&prefix(), &layout, &json!({"state":"on"})).is_none());
        assert!(state_messages(&prefix(), &layout, &json!({"entity_id":"Light.A"})).is_none());
    }

    fn statestream(base: &str, publish_attributes: bool, publish_timestamps: bool) -> Layout {
        Layout::Statestream(Statestream {
            base_topic: TopicPrefix::new(base).unwrap(),
            publish_attributes,
            publish_timestamps,
        })
    }

    /// What HA's `mqtt_statestream` publishes for one state, in its order.
    #[test]
    fn statestream_publishes_what_home_assistant_publishes() {
        let sensor = json!({
            "entity_id": "sensor.living_room_temperature", "state": "21.5",
            "attributes": {"unit_of_measurement": "°C", "friendly_name": "Living room",
                           "values": [1, 2.5, "x"], "nested": {"b": null, "a": true}, "a/b": 1, "bad+": 2},
            "last_changed": "2024-03-10T12:00:00+00:00", "last_updated": "2024-03-10T12:00:01.500000+00:00",
            "last_reported": "2024-03-10T12:00:02+00:00", "context": {"id": "x"}
        });
        let base = "homestate/sensor/living_room_temperature";
        let state = (format!("{base}/state"), "21.5".to_owned());
        let stamps = [
            (format!("{base}/last_updated"), "2024-03-10T12:00:01.500000+00:00".to_owned()),
            (format!("{base}/last_changed"), "2024-03-10T12:00:00+00:00".to_owned()),
        ];
        let attributes = [
            (format!("{base}/unit_of_measurement"), r#""\u00b0C""#.to_owned()),
            (format!("{base}/friendly_name"), r#""Living room""#.to_owned()),
            (format!("{base}/values"), r#"[1, 2.5, "x"]"#.to_owned()),
            (format!("{base}/nested"), r#"{"b": null, "a": true}"#.to_owned()),
            (format!("{base}/a/b"), "1".to_owned()),
        ];
        let table = [
            (false, false, vec![state.clone()]),
            (false, true, [vec![state.clone()], stamps.to_vec()].concat()),
            (true, false, [vec![state.clone()], attributes.to_vec()].concat()),
            (true, true, [vec![state.clone()], stamps.to_vec(), attributes.to_vec()].concat()),
        ];
        for (attributes, timestamps, expected) in table {
            let got = published(&statestream("homestate", attributes, timestamps), &sensor);
            assert_eq!(got, expected, "publish_attributes = {attributes}, publish_timestamps = {timestamps}");
        }
    }

    #[test]
    fn statestream_takes_a_base_of_several_levels_and_any_state_text() {
        let layout = statestream("home/states", false, true);
        // No timestamps in the state object (a get's answer has them; be safe): none published.
        let got = published(&layout, &json!({"entity_id": "input_text.note", "state": "Grüße, \"x\""}));
        assert_eq!(got, [("home/states/input_text/note/state".to_owned(), "Grüße, \"x\"".to_owned())]);
    }
}
