//! Routes exactly as a user writes them (`[[route]]` in the config file and
//! in `routes.d/*.toml`): serde types, unknown keys rejected. The route
//! table compiles them; `config` only carries them.

use serde::Deserialize;

/// One `[[route]]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A name for logs and results (default: the topic).
    pub name: Option<String>,
    /// MQTT topic filter; `+`, `#` and named levels `{device}`.
    pub topic: String,
    /// `auto` (default: JSON if it parses, else text), `json`, `text` or `number`.
    pub format: Option<String>,
    /// A Jinja expression; the route applies only when it is true.
    pub when: Option<String>,
    /// `domain.service`, may be a template.
    pub service: Option<String>,
    /// Target entity (or comma list), may be a template.
    pub entity_id: Option<String>,
    /// Service data; string values may be templates.
    #[serde(default)]
    pub data: std::collections::BTreeMap<String, serde_json::Value>,
    /// Payload value → `domain.service` or `domain.service:entity_id`.
    #[serde(default)]
    pub map: std::collections::BTreeMap<String, String>,
    /// What `map` is keyed on (default: a JSON object's `action`, else the text).
    pub map_key: Option<String>,
    /// Wait until the value has been quiet this long, then send the last one.
    pub debounce: Option<String>,
    /// At most one call per interval.
    pub throttle: Option<String>,
    /// A newer call replaces one still queued (idempotent services only).
    #[serde(default)]
    pub latest_wins: bool,
    /// Ask HA for the service response; the result carries it as `response`.
    #[serde(default)]
    pub return_response: bool,
}

/// A file in `routes.d/`: routes only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoutesFile {
    pub route: Vec<RawRoute>,
}
