//! The configuration exactly as a user writes it: TOML file, overridden by
//! `MQTT_HA_GATEWAY_*` environment variables.
//!
//! Every field has a default and a doc comment; unknown keys are an error.
//! Nothing here is checked beyond its type: [`super::validate`] turns a
//! [`RawConfig`] into a typed [`super::Config`] and names the key path of
//! every problem.

use secrecy::SecretString;
use serde::Deserialize;

pub use crate::routes::raw::{RawRoute, RawRoutesFile};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub mqtt: RawMqtt,
    pub home_assistant: RawHomeAssistant,
    pub queue: RawQueue,
    pub access: RawAccess,
    pub limits: RawLimits,
    pub state: RawState,
    pub metrics: RawMetrics,
    pub discovery: RawDiscovery,
    pub log: RawLog,
    /// `[ui]`: the web console.
    pub ui: RawUi,
    /// `[[route]]`: wire any MQTT topic to a service (also from `routes.d/*.toml`).
    pub route: Vec<RawRoute>,
    /// Where each route and access key was written (filled by the loader, not read from TOML).
    #[serde(skip)]
    pub sources: super::sources::Sources,
}

/// `[ui]`: the web console at `/ui/` on `metrics.listen`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUi {
    /// Serve the console (live view, route tester, status, dead letters, config).
    pub enabled: bool,
    /// Messages the live view keeps (a ring buffer), 1 to 10000.
    pub history: usize,
    /// The console's password (prefer `password_file`); never printed.
    /// Required when `metrics.listen` is not 127.0.0.1 or [::1].
    pub password: Option<SecretString>,
    /// File holding the console's password (read at each login).
    pub password_file: Option<String>,
}

impl Default for RawUi {
    fn default() -> Self {
        Self { enabled: false, history: crate::ui::DEFAULT_HISTORY, password: None, password_file: None }
    }
}

/// `[mqtt]`: the broker connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqtt {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// Fixed client id: the broker keeps our session (and unacked commands) under it.
    pub client_id: String,
    /// First level of every topic the gateway uses.
    pub topic_prefix: String,
    /// MQTT 5 shared subscription group: several instances (each with its own
    /// client_id) share the commands. Unset: one instance takes them all.
    pub shared_group: Option<String>,
    /// MQTT username.
    pub username: Option<String>,
    /// MQTT password (prefer `password_file`); never printed.
    pub password: Option<SecretString>,
    /// File holding the MQTT password (Docker secret).
    pub password_file: Option<String>,
    /// CA certificate (PEM) for `mqtts://`; system roots when absent.
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    pub client_cert_file: Option<String>,
    /// Client key (PEM) for mutual TLS.
    pub client_key_file: Option<String>,
    /// Keep-alive interval, e.g. "30s".
    pub keep_alive: String,
    /// How long the broker keeps our session after a disconnect, e.g. "1d".
    pub session_expiry: String,
    /// Reconnect backoff: first delay.
    pub reconnect_min: String,
    /// Reconnect backoff: longest delay.
    pub reconnect_max: String,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "mqtt-ha-gateway".into(),
            topic_prefix: "ha-gateway".into(),
            shared_group: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive: "30s".into(),
            session_expiry: "1d".into(),
            reconnect_min: "500ms".into(),
            reconnect_max: "30s".into(),
        }
    }
}

/// `[home_assistant]`: the REST API and its token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHomeAssistant {
    /// Base URL of Home Assistant, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Long-lived access token (the environment is the usual place for it); never printed.
    pub token: Option<SecretString>,
    /// File holding the token (Docker secret); re-read when it changes.
    pub token_file: Option<String>,
    /// Timeout of one HTTP request, e.g. "10s".
    pub request_timeout: String,
    /// Timeout of establishing a connection, e.g. "5s".
    pub connect_timeout: String,
    /// CA certificate (PEM) for `https://`; system roots when absent.
    pub ca_file: Option<String>,
    /// The websocket API; default `<url>/api/websocket` (ws:// or wss://).
    pub websocket_url: Option<String>,
    /// Attempts per command for retryable failures (5xx, 429, connection errors).
    pub max_attempts: u32,
    /// Retry backoff: first delay.
    pub retry_min: String,
    /// Retry backoff: longest delay.
    pub retry_max: String,
    /// After a 401/403, how long nothing is sent before one probe.
    pub auth_backoff: String,
    /// How often `GET /api/` checks HA for `/readyz` (never while the token is refused).
    pub probe_interval: String,
}

impl Default for RawHomeAssistant {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            token: None,
            token_file: None,
            request_timeout: "10s".into(),
            connect_timeout: "5s".into(),
            ca_file: None,
            websocket_url: None,
            max_attempts: 5,
            retry_min: "250ms".into(),
            retry_max: "10s".into(),
            auth_backoff: "30s".into(),
            probe_interval: "15s".into(),
        }
    }
}

/// `[queue]`: admission, ordering and rate limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    /// Commands held at most (in flight + waiting).
    pub capacity: u32,
    /// Calls per second to Home Assistant; 0 = unlimited.
    pub rate_per_second: u32,
    /// Calls allowed in a burst above the rate.
    pub burst: u32,
    /// Commands older than this are expired, not executed.
    pub max_age: String,
    /// HTTP calls in flight at once (different entities).
    pub concurrency: u32,
    /// Commands with a `correlation` seen again within this window are not
    /// run again (a redelivered toggle toggles once); "0s" = off.
    pub dedupe_window: String,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            rate_per_second: 20,
            burst: 40,
            max_age: "60s".into(),
            concurrency: 8,
            dedupe_window: "0s".into(),
        }
    }
}

/// `[access]`: what MQTT may make Home Assistant do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccess {
    /// `domain.service` globs, e.g. `light.*`, `scene.turn_on`. Sensitive
    /// domains (lock, cover, alarm_control_panel, homeassistant, script…) must
    /// be named: `*` or `*.turn_on` never reach them.
    pub allow_services: Vec<String>,
    /// Entity id globs a call may target; empty = any entity.
    pub allow_entities: Vec<String>,
    /// Targets besides entity ids: `area_id`, `device_id`, `floor_id`,
    /// `label_id`, `target`, `all` (entity_id: all), `comma_list`.
    pub allow_targets: Vec<String>,
    /// `[[access.rule]]`: narrower rights for commands from matching topics.
    pub rule: Vec<RawAccessRule>,
}

/// One `[[access.rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessRule {
    /// MQTT filter of the topics the rule applies to (a device's, or `<prefix>/call/#`).
    pub topic: String,
    /// Services allowed from these topics (in addition to the global list passing).
    pub allow_services: Option<Vec<String>>,
    /// Entities allowed from these topics.
    pub allow_entities: Option<Vec<String>>,
}

/// `[limits]`: what a payload may be at most.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting.
    pub max_json_depth: usize,
    /// Most JSON object keys in one payload, all levels together.
    pub max_json_keys: usize,
    /// Longest topic, in bytes.
    pub max_topic_length: usize,
    /// Largest `correlation` value, in bytes of JSON.
    pub max_correlation_bytes: usize,
    /// Largest result carrying a service response, in bytes of JSON; a
    /// larger one goes out without it (`response_too_large`).
    pub max_result_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = crate::translate::Limits::default();
        Self {
            max_payload_bytes: l.max_payload_bytes,
            max_json_depth: l.max_json_depth,
            max_json_keys: l.max_json_keys,
            max_topic_length: l.max_topic_length,
            max_correlation_bytes: l.max_correlation_bytes,
            max_result_bytes: l.max_result_bytes,
        }
    }
}

impl Default for RawAccess {
    fn default() -> Self {
        Self {
            allow_services: vec!["light.*".into(), "switch.*".into(), "scene.turn_on".into()],
            allow_entities: Vec::new(),
            allow_targets: Vec::new(),
            rule: Vec::new(),
        }
    }
}

/// `[state]`: which Home Assistant entities are mirrored to MQTT, and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// Entity id globs to mirror (`light.*`, `sensor.kitchen_*`, `*`). Empty:
    /// only entities that calls touched are mirrored (and kept up to date).
    pub include: Vec<String>,
    /// Entity id globs never mirrored, and refused on the get topic.
    pub exclude: Vec<String>,
    /// `json`: one JSON document per entity on `<prefix>/state/<domain>/<object_id>`.
    /// `statestream`: the topics of Home Assistant's `mqtt_statestream`
    /// (`[state.statestream]`).
    pub layout: String,
    /// Put the attributes inside the state JSON (`json` layout).
    pub attributes: bool,
    /// Also publish each attribute on `<prefix>/state/<domain>/<object_id>/<attribute>` (`json` layout).
    pub attribute_topics: bool,
    /// Put `last_changed`, `last_updated` and (HA >= 2024.4) `last_reported`
    /// into the state JSON (`json` layout).
    pub timestamps: bool,
    /// `[state.statestream]`: the `statestream` layout's options, named as in
    /// HA's `mqtt_statestream`.
    pub statestream: RawStatestream,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            layout: "json".into(),
            attributes: true,
            attribute_topics: false,
            timestamps: true,
            statestream: RawStatestream::default(),
        }
    }
}

/// `[state.statestream]`: HA's `mqtt_statestream` options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStatestream {
    /// The topic levels before `<domain>/<object_id>/…` (required with
    /// `layout = "statestream"`; your `mqtt_statestream` `base_topic`).
    pub base_topic: Option<String>,
    /// One retained topic per attribute, its value JSON-encoded as HA does.
    pub publish_attributes: bool,
    /// `…/last_updated` and `…/last_changed` topics.
    pub publish_timestamps: bool,
}

/// `[metrics]`: the HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address for `GET /metrics`, `/healthz`, `/readyz`. Loopback by default.
    pub listen: String,
    /// `[metrics.entities]`: HA entities exported as gauges.
    pub entities: RawMetricEntities,
}

/// `[metrics.entities]`: an explicit list, so cardinality stays bounded.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetricEntities {
    /// Entity ids (exact, no globs) whose numeric or on/off state becomes
    /// `mqtt_ha_gateway_ha_entity_state{entity_id,domain,unit}`.
    pub include: Vec<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9184".into(), entities: RawMetricEntities::default() }
    }
}

/// `[discovery]`: the gateway as a device in Home Assistant (MQTT discovery).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDiscovery {
    /// Publish discovery configs so HA shows the gateway (connection, queue
    /// depth, commands per minute, last error, a reload button). Needs HA's
    /// MQTT integration on the same broker.
    pub enabled: bool,
    /// HA's discovery prefix.
    pub prefix: String,
    /// The `<node_id>` level of the discovery topics and of
    /// `<prefix>/bridge/<node_id>/…`; default: `mqtt.client_id`. Letters,
    /// digits, `_` and `-`.
    pub node_id: Option<String>,
    /// The device's name in HA (its entity ids start with it).
    pub device_name: String,
    /// HA's birth topic: `online` there makes the gateway announce itself again.
    pub status_topic: String,
    /// How often the gateway's state is looked at; published when it changed.
    pub state_interval: String,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "homeassistant".into(),
            node_id: None,
            device_name: "MQTT HA Gateway".into(),
            status_topic: "homeassistant/status".into(),
            state_interval: "5s".into(),
        }
    }
}

/// `[log]`: diagnostics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `error`, `warn`, `info`, `debug`, `trace` or a full filter
    /// (`RUST_LOG` wins when set).
    pub level: String,
    /// `text` (human) or `json`.
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}
