//! Where each route and access rule was written, for the web console's
//! config page: `file:line` from the TOML parser's spans (`toml::Spanned`),
//! the environment variable that set it, or `default`.
//!
//! Read from the files a second time, after figment merged the layers:
//! figment keeps no positions. Only the positions are read here; the
//! values themselves are figment's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use toml::Spanned;

use super::raw::RawConfig;
use super::ENV_PREFIX;
use crate::ui::{LoadedRule, LoadedRules};

/// The source of each route (in `RawConfig::route` order) and access key.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub routes: Vec<String>,
    /// `access.allow_services`, `access.rule[0]`… → where it was written.
    pub access: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct FileSpans {
    #[serde(default)]
    route: Vec<Spanned<IgnoredAny>>,
    #[serde(default)]
    access: Option<AccessSpans>,
}

#[derive(Deserialize)]
struct AccessSpans {
    allow_services: Option<Spanned<IgnoredAny>>,
    allow_entities: Option<Spanned<IgnoredAny>>,
    allow_targets: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    rule: Vec<Spanned<IgnoredAny>>,
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// `path` as the console shows it: relative to the directory of the
/// config file (`gateway.toml`, `routes.d/devices.toml`).
pub fn shown(config_file: &Path, path: &Path) -> String {
    let dir = config_file.parent().unwrap_or(Path::new(""));
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// `name:line` of each `[[route]]` in `text` and of each `[access]` key.
pub fn of_file(name: &str, text: &str) -> Sources {
    let Ok(spans) = toml::from_str::<FileSpans>(text) else { return Sources::default() };
    let at = |offset: usize| format!("{name}:{}", line_of(text, offset));
    let mut sources =
        Sources { routes: spans.route.iter().map(|r| at(r.span().start)).collect(), ..Sources::default() };
    if let Some(access) = spans.access {
        let keys = [
            ("allow_services", access.allow_services),
            ("allow_entities", access.allow_entities),
            ("allow_targets", access.allow_targets),
        ];
        for (key, span) in keys {
            if let Some(span) = span {
                sources.access.insert(format!("access.{key}"), at(span.span().start));
            }
        }
        for (i, rule) in access.rule.iter().enumerate() {
            sources.access.insert(format!("access.rule[{i}]"), at(rule.span().start));
        }
    }
    sources
}

/// The sources of the main file, corrected for what `env` (figment paths
/// such as `access.allow_services`) replaced.
pub fn of_config_file(path: &Path, env: &[String], route_count: usize) -> Sources {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut sources = of_file(&shown(path, path), &text);
    let var = |key: &str| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"));
    for key in env {
        if key == "route" || sources.routes.len() != route_count {
            sources.routes = vec![var("route"); route_count];
        }
        if key == "access" || key == "access.rule" {
            sources.access.retain(|k, _| !k.starts_with(&format!("{key}.")) && !k.starts_with(&format!("{key}[")));
        }
        if key.starts_with("access") {
            sources.access.insert(key.clone(), var(key));
        }
    }
    sources
}

/// `value` without nulls, `false`, empty lists and empty tables: the keys a
/// user would have written.
fn compact(value: Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, compact(v)))
                .filter(|(_, v)| !matches!(v, Value::Null | Value::Bool(false)))
                .filter(|(_, v)| !v.as_object().is_some_and(|o| o.is_empty()))
                .filter(|(_, v)| !v.as_array().is_some_and(|a| a.is_empty()))
                .collect(),
        ),
        other => other,
    }
}

/// The routes and access rules of `raw`, each with its source.
pub fn loaded_rules(raw: &RawConfig) -> LoadedRules {
    let s = &raw.sources;
    let source = |key: &str| s.access.get(key).cloned().unwrap_or_else(|| "default".to_owned());
    let routes = raw
        .route
        .iter()
        .enumerate()
        .map(|(i, r)| LoadedRule {
            name: r.name.clone().unwrap_or_else(|| r.topic.clone()),
            source: s.routes.get(i).cloned().unwrap_or_else(|| format!("{ENV_PREFIX}ROUTE")),
            rule: compact(serde_json::to_value(r).unwrap_or_default()),
        })
        .collect();
    let a = &raw.access;
    let mut access: Vec<LoadedRule> = [
        ("access.allow_services", &a.allow_services),
        ("access.allow_entities", &a.allow_entities),
        ("access.allow_targets", &a.allow_targets),
    ]
    .into_iter()
    .map(|(key, list)| LoadedRule { name: key.to_owned(), source: source(key), rule: json!(list) })
    .collect();
    for (i, r) in a.rule.iter().enumerate() {
        let key = format!("access.rule[{i}]");
        let rule =
            compact(json!({"topic": r.topic, "allow_services": r.allow_services, "allow_entities": r.allow_entities}));
        access.push(LoadedRule { source: source(&key), name: key, rule });
    }
    LoadedRules { routes, access }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"

[access]
allow_services = ["light.*"]

[[access.rule]]
topic = "zigbee2mqtt/garage/#"
allow_entities = ["light.garage_*"]

[[route]]
name = "hall button"
topic = "zigbee2mqtt/hall_button"
map = { single = "light.toggle:light.hall" }

[[route]]
topic = "shellies/+/input/0"
service = "light.toggle"
"#;

    #[test]
    fn each_route_and_access_key_has_its_line() {
        let s = of_file("gateway.toml", FILE);
        assert_eq!(s.routes, vec!["gateway.toml:12", "gateway.toml:17"]);
        let access: Vec<(&str, &str)> = s.access.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(access, vec![("access.allow_services", "gateway.toml:6"), ("access.rule[0]", "gateway.toml:8")]);
    }

    #[test]
    fn what_the_environment_set_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, FILE).unwrap();
        let s = of_config_file(&path, &["access.allow_services".to_owned()], 2);
        assert_eq!(s.access["access.allow_services"], "MQTT_HA_GATEWAY_ACCESS__ALLOW_SERVICES");
        assert_eq!(s.access["access.rule[0]"], "gateway.toml:8", "shown relative to the config's directory");
        let s = of_config_file(&path, &["route".to_owned()], 1);
        assert_eq!(s.routes, vec!["MQTT_HA_GATEWAY_ROUTE"]);
    }

    #[test]
    fn lines_count_from_one() {
        for (text, offset, line) in [("", 0, 1), ("a\nb", 2, 2), ("a\nb\n", 99, 3)] {
            assert_eq!(line_of(text, offset), line, "{text:?} at {offset}");
        }
    }
}
