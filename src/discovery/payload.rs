//! What the gateway tells Home Assistant about itself: the discovery
//! configs of its entities, their state document, and the commands per
//! minute behind one of them. Pure: no clock but the one passed in.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::metrics::LastError;

/// Who the gateway is in Home Assistant (`[discovery]`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// HA's discovery prefix (`homeassistant`).
    pub prefix: String,
    /// The `<node_id>` level of every topic, and the device's identity.
    pub node_id: String,
    /// The device's name in HA (entity ids start with its slug).
    pub device_name: String,
    /// Where HA announces itself (`online` after every start).
    pub status_topic: String,
    /// How often the gateway's state is looked at; it is published when it
    /// changed, so at most once per interval.
    pub state_interval: Duration,
}

/// The topics of the gateway's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The gateway's `online`/`offline` (its last will): the entities' availability.
    pub availability: String,
    /// `<prefix>/bridge/<node_id>/state`: the state document, retained.
    pub state: String,
    /// `<prefix>/bridge/<node_id>/reload`: the reload button's command topic.
    pub reload: String,
}

impl Topics {
    pub fn new(gateway_prefix: &str, node_id: &str, availability: &str) -> Self {
        let bridge = format!("{gateway_prefix}/bridge/{node_id}");
        Self {
            availability: availability.to_owned(),
            state: format!("{bridge}/state"),
            reload: format!("{bridge}/reload"),
        }
    }
}

/// What the reload button sends.
pub const RELOAD_PAYLOAD: &str = "reload";

/// One discovery config: its topic and payload.
pub type Announcement = (String, Vec<u8>);

/// The discovery configs, one per entity, each with the device block and
/// availability (retained by the caller).
pub fn configs(config: &DiscoveryConfig, topics: &Topics, version: &str) -> Vec<Announcement> {
    let device = json!({
        "identifiers": [format!("mqtt-ha-gateway_{}", config.node_id)],
        "name": config.device_name,
        "model": "mqtt-ha-gateway",
        "manufacturer": "mqtt-ha-gateway",
        "sw_version": version,
    });
    let origin = json!({"name": "mqtt-ha-gateway", "sw_version": version});
    let reads = |key: &str| format!("{{{{ value_json.{key} }}}}");
    let measurement = |name: &str, icon: &str, template: String, unit: &str| {
        json!({"name": name, "icon": icon, "entity_category": "diagnostic", "state_topic": topics.state,
               "value_template": template, "unit_of_measurement": unit, "state_class": "measurement"})
    };
    let entities: [(&str, &str, Value); 5] = [
        (
            "binary_sensor",
            "connection",
            json!({"name": "Connection", "device_class": "connectivity", "entity_category": "diagnostic",
                   "state_topic": topics.state, "value_template": reads("connection"),
                   "payload_on": "ON", "payload_off": "OFF"}),
        ),
        ("sensor", "queue_depth", measurement("Queue depth", "mdi:tray-full", reads("queue_depth"), "commands")),
        (
            "sensor",
            "commands_per_minute",
            measurement("Commands per minute", "mdi:swap-horizontal", reads("commands_per_minute"), "commands/min"),
        ),
        (
            "sensor",
            "last_error",
            json!({"name": "Last error", "icon": "mdi:alert-circle-outline", "entity_category": "diagnostic",
                   "state_topic": topics.state,
                   "value_template": "{{ value_json.last_error.code if value_json.last_error else 'none' }}",
                   "json_attributes_topic": topics.state,
                   "json_attributes_template": "{{ (value_json.last_error or {}) | tojson }}"}),
        ),
        (
            "button",
            "reload",
            json!({"name": "Reload rules", "icon": "mdi:reload", "entity_category": "config",
                   "command_topic": topics.reload, "payload_press": RELOAD_PAYLOAD}),
        ),
    ];
    entities
        .into_iter()
        .map(|(component, object_id, mut entity)| {
            let fields = entity.as_object_mut().expect("each entity is a JSON object");
            fields.insert("unique_id".into(), json!(format!("{}_{object_id}", config.node_id)));
            fields.insert("availability_topic".into(), json!(topics.availability));
            fields.insert("device".into(), device.clone());
            fields.insert("origin".into(), origin.clone());
            let topic = format!("{}/{component}/{}/{object_id}/config", config.prefix, config.node_id);
            (topic, entity.to_string().into_bytes())
        })
        .collect()
}

/// What the gateway's entities show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Home Assistant answers and accepts the token (`ha_up`).
    pub connected: bool,
    pub queue_depth: i64,
    pub commands_per_minute: u64,
    pub last_error: Option<LastError>,
}

/// The state document every entity reads its value from.
pub fn state_payload(s: &Snapshot) -> Vec<u8> {
    let last_error = s.last_error.as_ref().map(|e| {
        json!({
            "code": e.code.as_str(),
            "message": e.detail,
            "at": humantime::format_rfc3339_seconds(e.at).to_string(),
        })
    });
    json!({
        "connection": if s.connected { "ON" } else { "OFF" },
        "queue_depth": s.queue_depth,
        "commands_per_minute": s.commands_per_minute,
        "last_error": last_error,
    })
    .to_string()
    .into_bytes()
}

/// Commands finished in the last minute, from samples of a running total.
#[derive(Debug, Default)]
pub struct PerMinute {
    /// (when, total then), oldest first, no older than a minute but one.
    samples: VecDeque<(Instant, u64)>,
}

impl PerMinute {
    const WINDOW: Duration = Duration::from_secs(60);

    /// Records `total` at `now`; the count of the last minute (of the time
    /// seen so far, right after the start).
    pub fn record(&mut self, now: Instant, total: u64) -> u64 {
        // Keep one sample at or before the window's start to count from.
        while self.samples.len() > 1 && now.duration_since(self.samples[1].0) >= Self::WINDOW {
            self.samples.pop_front();
        }
        let since = self.samples.front().map_or(total, |(_, t)| *t);
        self.samples.push_back((now, total));
        total.saturating_sub(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ErrorCode;
    use std::time::SystemTime;

    fn config() -> DiscoveryConfig {
        DiscoveryConfig {
            prefix: "homeassistant".into(),
            node_id: "gw-1".into(),
            device_name: "MQTT HA Gateway".into(),
            status_topic: "homeassistant/status".into(),
            state_interval: Duration::from_secs(5),
        }
    }

    fn topics() -> Topics {
        Topics::new("ha-gateway", "gw-1", "ha-gateway/status")
    }

    #[test]
    fn the_topics_live_under_the_gateway_prefix_and_the_node_id() {
        let t = topics();
        assert_eq!(t.state, "ha-gateway/bridge/gw-1/state");
        assert_eq!(t.reload, "ha-gateway/bridge/gw-1/reload");
        assert_eq!(t.availability, "ha-gateway/status");
    }

    #[test]
    fn one_config_per_entity_with_the_device_and_availability() {
        let all = configs(&config(), &topics(), "1.2.3");
        let table = [
            ("homeassistant/binary_sensor/gw-1/connection/config", "gw-1_connection", "Connection"),
            ("homeassistant/sensor/gw-1/queue_depth/config", "gw-1_queue_depth", "Queue depth"),
            ("homeassistant/sensor/gw-1/commands_per_minute/config", "gw-1_commands_per_minute", "Commands per minute"),
            ("homeassistant/sensor/gw-1/last_error/config", "gw-1_last_error", "Last error"),
            ("homeassistant/button/gw-1/reload/config", "gw-1_reload", "Reload rules"),
        ];
        assert_eq!(all.len(), table.len());
        for ((topic, payload), (want_topic, unique_id, name)) in all.iter().zip(table) {
            assert_eq!(topic, want_topic);
            let v: Value = serde_json::from_slice(payload).unwrap();
            assert_eq!((v["unique_id"].as_str(), v["name"].as_str()), (Some(unique_id), Some(name)), "{topic}");
            assert_eq!(v["availability_topic"], "ha-gateway/status", "{topic}");
            assert_eq!(
                v["device"],
                json!({"identifiers": ["mqtt-ha-gateway_gw-1"], "name": "MQTT HA Gateway", "model": "mqtt-ha-gateway",
                       "manufacturer": "mqtt-ha-gateway", "sw_version": "1.2.3"}),
                "{topic}"
            );
            assert_eq!(v["origin"]["name"], "mqtt-ha-gateway");
        }
        let connection: Value = serde_json::from_slice(&all[0].1).unwrap();
        assert_eq!(connection["device_class"], "connectivity");
        assert_eq!(connection["state_topic"], "ha-gateway/bridge/gw-1/state");
        let button: Value = serde_json::from_slice(&all[4].1).unwrap();
        assert_eq!(
            (button["command_topic"].as_str(), button["payload_press"].as_str()),
            (Some("ha-gateway/bridge/gw-1/reload"), Some("reload"))
        );
    }

    #[test]
    fn the_state_document() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let table = [
            (
                Snapshot { connected: true, queue_depth: 3, commands_per_minute: 42, last_error: None },
                json!({"connection": "ON", "queue_depth": 3, "commands_per_minute": 42, "last_error": null}),
            ),
            (
                Snapshot {
                    connected: false,
                    queue_depth: 0,
                    commands_per_minute: 0,
                    last_error: Some(LastError::new(ErrorCode::HaError, Some("400 from HA"), at)),
                },
                json!({"connection": "OFF", "queue_depth": 0, "commands_per_minute": 0,
                       "last_error": {"code": "ha_error", "message": "400 from HA", "at": "2027-01-15T08:00:00Z"}}),
            ),
        ];
        for (snapshot, expected) in table {
            assert_eq!(serde_json::from_slice::<Value>(&state_payload(&snapshot)).unwrap(), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn commands_per_minute_count_the_last_minute() {
        let mut rate = PerMinute::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        // (seconds, running total, expected per minute)
        let table = [
            (0, 100, 0, "the first sample: nothing counted yet"),
            (10, 110, 10, "ten since the start"),
            (59, 130, 30, "still within the first minute"),
            (60, 130, 30, "the window reaches back to the first sample"),
            (100, 131, 21, "counted from the newest sample at least a minute old (second 10)"),
            (300, 131, 0, "nothing for minutes"),
        ];
        for (s, total, expected, why) in table {
            assert_eq!(rate.record(at(s), total), expected, "{why}");
        }
    }
}
