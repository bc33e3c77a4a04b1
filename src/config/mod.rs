//! Configuration: load (defaults < TOML file < `MQTT_HA_GATEWAY_*` env), then
//! validate into typed values.
//!
//! Owns every rule about what a valid setting is. Nothing outside this module
//! reads the environment or parses a duration, URL or glob from config; every
//! error names the key path (`queue.max_age`) so `check` can print them all.

mod raw;
mod sources;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub use raw::{RawConfig, RawRoute};
pub use sources::Sources;
// Each stage owns its settings; config builds them.
pub use crate::discovery::DiscoveryConfig;
pub use crate::ha::HaConfig;
pub use crate::ingress::MqttConfig;
pub use crate::secret::SecretSource;
pub use crate::ui::{LoadedRules, UiConfig};

use crate::access::{AccessPolicy, RuleSpec};
use crate::backoff::Backoff;
use crate::bounds::{self, MAX_DURATION, MAX_PACKET, MAX_PAYLOAD_BYTES, MAX_RESULT_BYTES, PACKET_HEADROOM};
use crate::mirror::{Layout, StateFilter, StateOptions, Statestream};
use crate::routes::RouteTable;
use crate::topic::{EntityId, TopicPrefix};
use crate::translate::Limits;
use std::sync::Arc;

/// MQTT's keep-alive is 16-bit seconds; rumqttc would truncate a longer one.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(u16::MAX as u64);

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MQTT_HA_GATEWAY_";

/// One problem with the configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// Every problem found, in file order where possible.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub home_assistant: HaConfig,
    pub queue: QueueConfig,
    pub access: AccessPolicy,
    pub state: StateConfig,
    pub routes: Arc<RouteTable>,
    pub limits: Limits,
    pub metrics: MetricsConfig,
    /// `[discovery]`; `None` when disabled.
    pub discovery: Option<DiscoveryConfig>,
    pub log: LogConfig,
    pub ui: UiConfig,
    /// The routes and access rules as written, with where (for the web console).
    pub loaded_rules: Arc<LoadedRules>,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub capacity: NonZeroU32,
    /// `None` = unlimited.
    pub rate_per_second: Option<NonZeroU32>,
    pub burst: NonZeroU32,
    pub max_age: Duration,
    pub concurrency: NonZeroU32,
    /// `None`: no de-duplication.
    pub dedupe_window: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub filter: StateFilter,
    /// Where and how states are published.
    pub layout: Layout,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    /// Entities exported as `ha_entity_state` gauges.
    pub entities: Vec<EntityId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// Loads defaults < `file` (if it exists or was named explicitly) < env.
///
/// `vars` are the environment variables to apply (so tests need not touch
/// the process environment).
pub fn load(
    file: &Path,
    file_required: bool,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let raw = load_raw(file, file_required, vars)?;
    validate(raw)
}

/// The config file's top-level sections, as environment variable names.
const SECTIONS: &[&str] =
    &["MQTT", "HOME_ASSISTANT", "QUEUE", "ACCESS", "LIMITS", "STATE", "METRICS", "DISCOVERY", "LOG", "UI", "ROUTE"];

/// Whether `MQTT_HA_GATEWAY_<name>` is meant for the config: it names a
/// section (`QUEUE__CAPACITY`, or `QUEUE_CAPACITY`, a typo reported as an
/// unknown key). Others — `CONFIG` (the file's path), tools' variables such
/// as the test scripts' `CACHE_DIR` — are not config.
fn is_config_var(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    SECTIONS
        .iter()
        .any(|section| name.strip_prefix(section).is_some_and(|rest| rest.is_empty() || rest.starts_with('_')))
}

/// The figment layering, without validation.
pub fn load_raw(
    file: &Path,
    file_required: bool,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<RawConfig, ConfigErrors> {
    if file_required && !file.exists() {
        return Err(ConfigErrors(vec![ConfigError::new("--config", format!("file {} not found", file.display()))]));
    }
    let env: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_owned(), v)))
        .filter(|(k, _)| is_config_var(k))
        .collect();
    let mut figment = Figment::new().merge(Toml::file(file));
    let mut paths = Vec::new();
    for (key, value) in env {
        let path = key.to_ascii_lowercase().replace("__", ".");
        figment = figment.merge(Serialized::global(&path, env_value(&path, &value)));
        paths.push(path);
    }
    let mut raw: RawConfig = figment.extract().map_err(figment_errors)?;
    raw.sources = sources::of_config_file(file, &paths, raw.route.len());
    for (route, source) in load_routes_dir(file)? {
        raw.route.push(route);
        raw.sources.routes.push(source);
    }
    Ok(raw)
}

/// The directory of extra route files: `routes.d/` beside the config file.
pub fn routes_dir(config_file: &Path) -> PathBuf {
    config_file.parent().unwrap_or(Path::new(".")).join("routes.d")
}

/// Every `routes.d/*.toml`, in file name order, each route with its `file:line`.
fn load_routes_dir(config_file: &Path) -> Result<Vec<(RawRoute, String)>, ConfigErrors> {
    let dir = routes_dir(config_file);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut routes = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match Figment::new().merge(Toml::file(&f)).extract::<raw::RawRoutesFile>() {
            Ok(file) => {
                let name = sources::shown(config_file, &f);
                let mut lines = sources::of_file(&name, &std::fs::read_to_string(&f).unwrap_or_default()).routes;
                lines.resize(file.route.len(), name);
                routes.extend(file.route.into_iter().zip(lines));
            }
            Err(e) => {
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                errors.extend(figment_errors(e).0.into_iter().map(|mut e| {
                    e.key = format!("routes.d/{name}: {}", e.key);
                    e
                }));
            }
        }
    }
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn figment_errors(e: figment::Error) -> ConfigErrors {
    ConfigErrors(
        e.into_iter()
            .map(|e| {
                // figment's path already ends with an unknown field's name.
                let mut key = e.path.join(".");
                if key.is_empty() {
                    key = "(file)".into();
                }
                ConfigError::new(&key, e.kind.to_string())
            })
            .collect(),
    )
}

/// An env var's value: secrets and names stay strings ("0123" is a password,
/// not a number); everything else is read like a TOML value (`20`, `true`,
/// `["light.*"]`).
fn env_value(path: &str, value: &str) -> Value {
    const ALWAYS_STRING: &[&str] =
        &["token", "password", "username", "client_id", "topic_prefix", "base_topic", "node_id", "device_name"];
    let leaf = path.rsplit('.').next().unwrap_or(path);
    if ALWAYS_STRING.contains(&leaf) {
        return Value::from(value.to_owned());
    }
    value.parse().unwrap_or_else(|never: std::convert::Infallible| match never {})
}

/// Turns the raw layers into a [`Config`], collecting every problem.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut v = Validator::default();
    let loaded_rules = Arc::new(sources::loaded_rules(&raw));
    let discovery = v.discovery(raw.discovery, &raw.mqtt.client_id);
    let mqtt = v.mqtt(raw.mqtt);
    let home_assistant = v.home_assistant(raw.home_assistant);
    let queue = v.queue(raw.queue);
    let rules: Vec<RuleSpec> = raw
        .access
        .rule
        .iter()
        .map(|r| RuleSpec {
            topic: r.topic.clone(),
            allow_services: r.allow_services.clone(),
            allow_entities: r.allow_entities.clone(),
        })
        .collect();
    let access =
        AccessPolicy::build(&raw.access.allow_services, &raw.access.allow_entities, &raw.access.allow_targets, &rules);
    let access = match access {
        Ok(a) => Some(a),
        Err(e) => {
            let key = match &e {
                crate::access::PolicyError::BadTarget(_) => "access.allow_targets",
                crate::access::PolicyError::BadRuleTopic(..) => "access.rule",
                crate::access::PolicyError::BadPattern { .. } => "access.allow_services",
            };
            v.error(key, e.to_string());
            None
        }
    };
    let limits = v.limits(raw.limits);
    let state = v.state(raw.state);
    let routes = access.as_ref().and_then(|access| match RouteTable::compile(&raw.route, access) {
        Ok(t) => Some(Arc::new(t.with_limits(limits))),
        Err(errors) => {
            for e in errors {
                v.error(&format!("route[{}] ({}).{}", e.route, e.name, e.key), e.message);
            }
            None
        }
    });
    let listen = v.record(
        "metrics.listen",
        raw.metrics.listen.parse::<SocketAddr>().map_err(|e| format!("{e} (expected ip:port)")),
    );
    let mut entities = Vec::new();
    for (i, id) in raw.metrics.entities.include.iter().enumerate() {
        match EntityId::parse(id) {
            Some(e) => entities.push(e),
            None => v.error(
                &format!("metrics.entities.include[{i}]"),
                format!("{id:?} is not an entity id (domain.object_id; no globs: list each entity)"),
            ),
        }
    }
    let log = v.log(raw.log);
    let ui = v.ui(raw.ui, listen);
    match (mqtt, home_assistant, queue, access, state, routes, listen, log) {
        (
            Some(mqtt),
            Some(home_assistant),
            Some(queue),
            Some(access),
            Some(state),
            Some(routes),
            Some(listen),
            Some(log),
        ) if v.errors.is_empty() => Ok(Config {
            mqtt,
            home_assistant,
            queue,
            access,
            state,
            routes,
            limits,
            metrics: MetricsConfig { listen, entities },
            discovery,
            log,
            ui,
            loaded_rules,
        }),
        _ => Err(ConfigErrors(v.errors)),
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn record<T, E: std::fmt::Display>(&mut self, key: &str, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| self.errors.push(ConfigError::new(key, e.to_string()))).ok()
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    /// A duration of at most [`MAX_DURATION`] (anything longer would overflow
    /// the deadlines it is added to).
    fn duration(&mut self, key: &str, text: &str) -> Option<Duration> {
        self.duration_at_most(key, text, MAX_DURATION)
    }

    fn duration_at_most(&mut self, key: &str, text: &str, max: Duration) -> Option<Duration> {
        let d = self.record(
            key,
            humantime::parse_duration(text)
                .map_err(|e| format!("{e} (expected a duration such as \"500ms\", \"30s\", \"5m\")")),
        )?;
        if d.is_zero() {
            self.error(key, "must be greater than zero");
            return None;
        }
        self.record(key, bounds::at_most(d, max))
    }

    fn non_zero(&mut self, key: &str, n: u32) -> Option<NonZeroU32> {
        self.record(key, NonZeroU32::new(n).ok_or("must be at least 1"))
    }

    fn backoff(&mut self, keys: (&str, &str), min: &str, max: &str) -> Option<Backoff> {
        let (min, max) = (self.duration(keys.0, min)?, self.duration(keys.1, max)?);
        self.record(keys.1, Backoff::try_new(min, max))
    }

    fn file(&mut self, key: &str, path: Option<String>) -> Option<PathBuf> {
        let path = PathBuf::from(path?);
        if !path.is_file() {
            self.error(key, format!("file {} not found", path.display()));
        }
        Some(path)
    }

    fn secret(
        &mut self,
        keys: (&str, &str),
        inline: Option<SecretString>,
        file: Option<String>,
    ) -> Option<SecretSource> {
        let source = match (inline, file) {
            (Some(_), Some(_)) => {
                self.error(keys.0, format!("set either {} or {}, not both", keys.0, keys.1));
                return None;
            }
            (Some(s), None) if s.expose_secret().trim().is_empty() => {
                self.error(keys.0, "is empty");
                return None;
            }
            (Some(s), None) => SecretSource::Inline(SecretString::from(s.expose_secret().trim())),
            (None, Some(f)) => SecretSource::File(PathBuf::from(f)),
            (None, None) => return None,
        };
        if let SecretSource::File(p) = &source {
            if let Err(e) = source.read() {
                self.error(keys.1, format!("cannot read {}: {e}", p.display()));
                return None;
            }
        }
        Some(source)
    }

    fn mqtt(&mut self, raw: raw::RawMqtt) -> Option<MqttConfig> {
        let url = self.record("mqtt.url", Url::parse(&raw.url).map_err(|e| format!("{e}")));
        let endpoint = url.and_then(|url| {
            let tls = match url.scheme() {
                "mqtt" | "tcp" => false,
                "mqtts" | "ssl" => true,
                other => {
                    self.error("mqtt.url", format!("scheme {other:?} is not mqtt:// or mqtts://"));
                    return None;
                }
            };
            let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
                self.error("mqtt.url", "has no host");
                return None;
            };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            Some((host, url.port().unwrap_or(if tls { 8883 } else { 1883 }), tls))
        });
        if raw.client_id.is_empty() || raw.client_id.len() > 23 * 4 {
            self.error("mqtt.client_id", "must be 1 to 92 characters");
        }
        let prefix = self.record("mqtt.topic_prefix", TopicPrefix::new(&raw.topic_prefix));
        let topic_safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#', '\0']);
        if let Some(group) = &raw.shared_group {
            if !topic_safe(group) {
                self.error("mqtt.shared_group", "must be non-empty, without '/', '+' or '#'");
            }
            if !topic_safe(&raw.client_id) {
                self.error("mqtt.client_id", "with a shared group it names the status topic: no '/', '+' or '#'");
            }
        }
        let status_topic = prefix.as_ref().map(|p| match &raw.shared_group {
            Some(_) => format!("{}/{}", p.status(), raw.client_id),
            None => p.status(),
        });
        let password = self.secret(("mqtt.password", "mqtt.password_file"), raw.password, raw.password_file);
        if password.is_some() && raw.username.is_none() {
            self.error("mqtt.username", "is required when a password is set");
        }
        let ca_file = self.file("mqtt.ca_file", raw.ca_file);
        let cert = self.file("mqtt.client_cert_file", raw.client_cert_file);
        let key = self.file("mqtt.client_key_file", raw.client_key_file);
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                self.error("mqtt.client_cert_file", "client_cert_file and client_key_file go together");
                None
            }
        };
        let keep_alive = self.duration_at_most("mqtt.keep_alive", &raw.keep_alive, MAX_KEEP_ALIVE);
        if keep_alive.is_some_and(|k| k < Duration::from_secs(5)) {
            self.error("mqtt.keep_alive", "must be at least 5s");
        }
        let session_expiry = self.duration("mqtt.session_expiry", &raw.session_expiry);
        let reconnect =
            self.backoff(("mqtt.reconnect_min", "mqtt.reconnect_max"), &raw.reconnect_min, &raw.reconnect_max);
        let (host, port, tls) = endpoint?;
        if (ca_file.is_some() || client_cert.is_some()) && !tls {
            self.error("mqtt.ca_file", "TLS files need an mqtts:// url");
        }
        Some(MqttConfig {
            host,
            port,
            tls,
            client_id: raw.client_id,
            prefix: prefix?,
            shared_group: raw.shared_group,
            status_topic: status_topic?,
            username: raw.username,
            password,
            ca_file,
            client_cert,
            keep_alive: keep_alive?,
            session_expiry: session_expiry?,
            reconnect: reconnect?,
        })
    }

    fn home_assistant(&mut self, raw: raw::RawHomeAssistant) -> Option<HaConfig> {
        let url = self.record("home_assistant.url", Url::parse(&raw.url).map_err(|e| e.to_string()));
        let url = url.and_then(|url| {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                self.error("home_assistant.url", "must be an http:// or https:// url with a host");
                return None;
            }
            if url.query().is_some() || !url.username().is_empty() {
                self.error("home_assistant.url", "must not carry a query or credentials");
                return None;
            }
            Some(url)
        });
        let token = self.secret(("home_assistant.token", "home_assistant.token_file"), raw.token, raw.token_file);
        if token.is_none() && !self.errors.iter().any(|e| e.key.starts_with("home_assistant.token")) {
            self.error(
                "home_assistant.token",
                "a long-lived access token is required: set home_assistant.token_file or MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN",
            );
        }
        let request_timeout = self.duration("home_assistant.request_timeout", &raw.request_timeout);
        let connect_timeout = self.duration("home_assistant.connect_timeout", &raw.connect_timeout);
        let ca_file = self.file("home_assistant.ca_file", raw.ca_file);
        let websocket_url = raw.websocket_url.and_then(|u| {
            let parsed = Url::parse(&u).map_err(|e| e.to_string());
            let parsed = self.record("home_assistant.websocket_url", parsed)?;
            if !matches!(parsed.scheme(), "ws" | "wss") {
                self.error("home_assistant.websocket_url", "must be a ws:// or wss:// url");
                return None;
            }
            Some(parsed)
        });
        let max_attempts = self.non_zero("home_assistant.max_attempts", raw.max_attempts);
        let retry =
            self.backoff(("home_assistant.retry_min", "home_assistant.retry_max"), &raw.retry_min, &raw.retry_max);
        let auth_backoff = self.duration("home_assistant.auth_backoff", &raw.auth_backoff);
        let probe_interval = self.duration("home_assistant.probe_interval", &raw.probe_interval);
        Some(HaConfig {
            url: url?,
            token: token?,
            request_timeout: request_timeout?,
            connect_timeout: connect_timeout?,
            ca_file,
            websocket_url,
            max_attempts: max_attempts?,
            retry: retry?,
            auth_backoff: auth_backoff?,
            probe_interval: probe_interval?,
        })
    }

    fn queue(&mut self, raw: raw::RawQueue) -> Option<QueueConfig> {
        let capacity = self.non_zero("queue.capacity", raw.capacity);
        let burst = self.non_zero("queue.burst", raw.burst);
        let max_age = self.duration("queue.max_age", &raw.max_age);
        let concurrency = self.non_zero("queue.concurrency", raw.concurrency);
        let dedupe_window = match raw.dedupe_window.trim() {
            "0" | "0s" | "" => None,
            text => self.duration("queue.dedupe_window", text),
        };
        if let (Some(c), Some(n)) = (capacity, concurrency) {
            if n > c {
                self.error("queue.concurrency", "must not exceed queue.capacity");
            }
        }
        Some(QueueConfig {
            capacity: capacity?,
            rate_per_second: NonZeroU32::new(raw.rate_per_second),
            burst: burst?,
            max_age: max_age?,
            concurrency: concurrency?,
            dedupe_window,
        })
    }

    fn state(&mut self, raw: raw::RawState) -> Option<StateConfig> {
        let include = self.record("state.include", StateFilter::globs(&raw.include));
        let exclude = self.record("state.exclude", StateFilter::globs(&raw.exclude));
        let layout = self.layout(&raw);
        Some(StateConfig { filter: StateFilter::new(include?, exclude?, !raw.include.is_empty()), layout: layout? })
    }

    fn layout(&mut self, raw: &raw::RawState) -> Option<Layout> {
        let json = StateOptions {
            attributes: raw.attributes,
            attribute_topics: raw.attribute_topics,
            timestamps: raw.timestamps,
        };
        match raw.layout.as_str() {
            "json" => Some(Layout::Json(json)),
            "statestream" => {
                // The JSON layout's shape keys would silently do nothing.
                let ignored = [
                    ("state.attributes", !json.attributes, "publish_attributes"),
                    ("state.attribute_topics", json.attribute_topics, "publish_attributes"),
                    ("state.timestamps", !json.timestamps, "publish_timestamps"),
                ];
                for (key, set, instead) in ignored {
                    if set {
                        self.error(
                            key,
                            format!(
                                "shapes the json layout; with layout = \"statestream\" set state.statestream.{instead}"
                            ),
                        );
                    }
                }
                let Some(base) = &raw.statestream.base_topic else {
                    self.error(
                        "state.statestream.base_topic",
                        "is required with layout = \"statestream\" (the base_topic of your mqtt_statestream, e.g. \"homestate\")",
                    );
                    return None;
                };
                // HA adds the '/' itself: "homestate/" and "homestate" are one base.
                let base_topic = self
                    .record("state.statestream.base_topic", TopicPrefix::new(base.strip_suffix('/').unwrap_or(base)))?;
                Some(Layout::Statestream(Statestream {
                    base_topic,
                    publish_attributes: raw.statestream.publish_attributes,
                    publish_timestamps: raw.statestream.publish_timestamps,
                }))
            }
            other => {
                self.error("state.layout", format!("{other:?} is not \"json\" or \"statestream\""));
                None
            }
        }
    }

    fn limits(&mut self, raw: raw::RawLimits) -> Limits {
        // The broker drops larger packets without a word: no result would come.
        let packet =
            format!(" (the MQTT packet cap of {MAX_PACKET} bytes less {PACKET_HEADROOM} for topic and properties)");
        let checks = [
            ("limits.max_payload_bytes", raw.max_payload_bytes, 16, MAX_PAYLOAD_BYTES, packet.as_str()),
            ("limits.max_json_depth", raw.max_json_depth, 1, 128, ""),
            ("limits.max_json_keys", raw.max_json_keys, 1, 1_000_000, ""),
            ("limits.max_topic_length", raw.max_topic_length, 16, 65_535, ""),
            ("limits.max_correlation_bytes", raw.max_correlation_bytes, 1, 65_535, ""),
            ("limits.max_result_bytes", raw.max_result_bytes, 1024, MAX_RESULT_BYTES, packet.as_str()),
        ];
        for (key, value, min, max, why) in checks {
            if !(min..=max).contains(&value) {
                self.error(key, format!("must be between {min} and {max}{why}"));
            }
        }
        Limits {
            max_payload_bytes: raw.max_payload_bytes,
            max_json_depth: raw.max_json_depth,
            max_json_keys: raw.max_json_keys,
            max_topic_length: raw.max_topic_length,
            max_correlation_bytes: raw.max_correlation_bytes,
            max_result_bytes: raw.max_result_bytes,
        }
    }

    fn discovery(&mut self, raw: raw::RawDiscovery, client_id: &str) -> Option<DiscoveryConfig> {
        // The state is published at most once per interval: keep HA's recorder calm.
        const MIN_INTERVAL: Duration = Duration::from_millis(100);
        if !raw.enabled {
            return None;
        }
        let node_id_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let node_id = match raw.node_id {
            Some(id) if node_id_ok(&id) => Some(id),
            Some(_) => {
                self.error("discovery.node_id", "letters, digits, '_' and '-' only (HA's rule for discovery topics)");
                None
            }
            None if node_id_ok(client_id) => Some(client_id.to_owned()),
            None => {
                self.error(
                    "discovery.node_id",
                    format!("mqtt.client_id {client_id:?} is not a node id (letters, digits, '_', '-'): set discovery.node_id"),
                );
                None
            }
        };
        let prefix = self.record("discovery.prefix", TopicPrefix::new(&raw.prefix)).map(|p| p.as_str().to_owned());
        let status_topic =
            self.record("discovery.status_topic", TopicPrefix::new(&raw.status_topic)).map(|p| p.as_str().to_owned());
        if raw.device_name.trim().is_empty() {
            self.error("discovery.device_name", "is empty");
        }
        let state_interval = self.duration("discovery.state_interval", &raw.state_interval);
        if state_interval.is_some_and(|d| d < MIN_INTERVAL) {
            self.error("discovery.state_interval", "must be at least 100ms");
        }
        Some(DiscoveryConfig {
            prefix: prefix?,
            node_id: node_id?,
            device_name: raw.device_name,
            status_topic: status_topic?,
            state_interval: state_interval?,
        })
    }

    /// `[ui]`; a password is required unless `metrics.listen` is loopback.
    fn ui(&mut self, raw: raw::RawUi, listen: Option<SocketAddr>) -> UiConfig {
        if !(1..=crate::ui::MAX_HISTORY).contains(&raw.history) {
            self.error("ui.history", format!("must be between 1 and {}", crate::ui::MAX_HISTORY));
        }
        let password = self.secret(("ui.password", "ui.password_file"), raw.password, raw.password_file);
        if let (true, None, Some(listen)) = (raw.enabled, &password, listen) {
            if !crate::ui::is_loopback_listener(listen) {
                self.error(
                    "ui.password_file",
                    format!(
                        "required: metrics.listen {listen} is reachable from other machines (only 127.0.0.1 and \
                         [::1] count as this machine); set ui.password_file (or MQTT_HA_GATEWAY_UI__PASSWORD)"
                    ),
                );
            }
        }
        UiConfig { enabled: raw.enabled, history: raw.history, password }
    }

    fn log(&mut self, raw: raw::RawLog) -> Option<LogConfig> {
        let format = match raw.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                self.error("log.format", "must be \"text\" or \"json\"");
                return None;
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&raw.level).is_err() {
            self.error("log.level", "is not a level (error, warn, info, debug, trace) or filter");
            return None;
        }
        Some(LogConfig { level: raw.level, format })
    }
}

#[cfg(test)]
mod tests;
