//! Access policy: which services MQTT may make Home Assistant run, on which
//! entities and targets, from which topics.
//!
//! Pure and total: given a [`ServiceCall`] and the topic it came from, it
//! answers allow or deny with a reason code, without I/O. Denied calls never
//! reach the queue. Whoever can publish to the broker can ask; this module
//! decides what they may get:
//! - services by `domain.service` glob; the sensitive domains (locks, alarms,
//!   covers, `homeassistant`, `shell_command`…) only through patterns that
//!   name the domain (`lock.unlock`, `cover.*`), never through `*` or `*.turn_on`;
//! - entities by glob (`allow_entities`), every one in a list;
//! - targets other than plain entity ids (`area_id`, `device_id`, `floor_id`,
//!   `label_id`, `target`, `entity_id: all`, comma-separated strings,
//!   registry ids) only when `allow_targets` names them;
//! - per-topic rules (`[[access.rule]]`): a command from a matching topic must
//!   also pass the rule, so broker ACLs on topics become per-device rights.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::command::{ErrorCode, ServiceCall};
use crate::topic::filter::TopicFilter;
use crate::topic::EntityId;

/// Domains a bare wildcard never reaches: they must be named.
pub const SENSITIVE_DOMAINS: &[&str] = &[
    "lock",
    "alarm_control_panel",
    "cover",
    "valve",
    "siren",
    "homeassistant",
    "hassio",
    "shell_command",
    "python_script",
    "pyscript",
    "script",
    "automation",
    "notify",
    "mqtt",
    "rest_command",
];

/// Target keys besides `entity_id`, and the special forms, that
/// `allow_targets` may allow.
pub const TARGET_KINDS: &[&str] = &["area_id", "device_id", "floor_id", "label_id", "target", "all", "comma_list"];

/// The keys of a call's data that target something other than entity ids.
const TARGET_KEYS: &[&str] = &["area_id", "device_id", "floor_id", "label_id", "target"];

/// `domain.service` patterns, remembering which name their domain literally.
#[derive(Debug, Clone)]
struct ServicePatterns {
    set: GlobSet,
    /// Per pattern: its domain if written without wildcards.
    literal_domain: Vec<Option<String>>,
}

impl ServicePatterns {
    fn new(patterns: &[String]) -> Result<Self, PolicyError> {
        let set = dotted_globs(patterns, "domain.service, e.g. light.turn_on or light.*")?;
        let literal_domain = patterns
            .iter()
            .map(|p| p.split_once('.').map(|(d, _)| d).filter(|d| !d.contains(['*', '?', '[', '{'])).map(str::to_owned))
            .collect();
        Ok(Self { set, literal_domain })
    }

    fn allows(&self, call: &ServiceCall) -> bool {
        let domain = call.domain.as_str();
        if !SENSITIVE_DOMAINS.contains(&domain) {
            return self.set.is_match(call.name());
        }
        self.set.matches(call.name()).into_iter().any(|i| self.literal_domain[i].as_deref() == Some(domain))
    }
}

/// A per-topic rule.
#[derive(Debug, Clone)]
struct TopicRule {
    filter: TopicFilter,
    services: Option<ServicePatterns>,
    entities: Option<GlobSet>,
}

/// Compiled `[access]` rules.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    services: ServicePatterns,
    patterns: Vec<String>,
    /// `None`: any entity.
    entities: Option<GlobSet>,
    targets: Vec<String>,
    rules: Vec<TopicRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("{0:?} is not one of {TARGET_KINDS:?}")]
    BadTarget(String),
    #[error("rule topic {0:?}: {1}")]
    BadRuleTopic(String, String),
}

/// One `[[access.rule]]` as written.
#[derive(Debug, Clone, Default)]
pub struct RuleSpec {
    pub topic: String,
    pub allow_services: Option<Vec<String>>,
    pub allow_entities: Option<Vec<String>>,
}

fn entity_globs(patterns: &[String]) -> Result<Option<GlobSet>, PolicyError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    dotted_globs(patterns, "domain.object_id, e.g. light.kitchen_*").map(Some)
}

impl AccessPolicy {
    /// Services only: `domain.service` globs (`light.*`, `scene.turn_on`, `*`).
    pub fn new(patterns: &[String]) -> Result<Self, PolicyError> {
        Self::build(patterns, &[], &[], &[])
    }

    /// The whole policy.
    pub fn build(
        services: &[String],
        entities: &[String],
        targets: &[String],
        rules: &[RuleSpec],
    ) -> Result<Self, PolicyError> {
        if let Some(bad) = targets.iter().find(|t| !TARGET_KINDS.contains(&t.as_str())) {
            return Err(PolicyError::BadTarget(bad.clone()));
        }
        let rules = rules
            .iter()
            .map(|r| {
                Ok(TopicRule {
                    filter: TopicFilter::parse(&r.topic)
                        .map_err(|e| PolicyError::BadRuleTopic(r.topic.clone(), e.to_string()))?,
                    services: r.allow_services.as_deref().map(ServicePatterns::new).transpose()?,
                    entities: r.allow_entities.as_deref().map(entity_globs).transpose()?.flatten(),
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Self {
            services: ServicePatterns::new(services)?,
            patterns: services.to_vec(),
            entities: entity_globs(entities)?,
            targets: targets.to_vec(),
            rules,
        })
    }

    /// The service alone (no topic, no data): for checking routes at load.
    pub fn check(&self, call: &ServiceCall) -> Result<(), ErrorCode> {
        if self.services.allows(call) {
            Ok(())
        } else {
            Err(ErrorCode::ServiceDenied)
        }
    }

    /// The whole decision for a call that arrived on `topic`.
    pub fn authorize(&self, call: &ServiceCall, topic: &str) -> Result<(), ErrorCode> {
        self.check(call)?;
        self.check_targets(call)?;
        let ids = call.entity_ids();
        let mut entities = Vec::with_capacity(ids.len());
        for id in ids {
            if matches!(id, "all" | "none") {
                // Allowed by check_targets; never under an entity restriction.
                if self.entities.is_some() {
                    return Err(ErrorCode::EntityDenied);
                }
                continue;
            }
            if !EntityId::is_valid(id) {
                return Err(ErrorCode::EntityDenied);
            }
            entities.push(id);
        }
        allowed_entities(self.entities.as_ref(), &entities)?;
        for rule in self.rules.iter().filter(|r| r.filter.captures(topic).is_some()) {
            if rule.services.as_ref().is_some_and(|s| !s.allows(call)) {
                return Err(ErrorCode::ServiceDenied);
            }
            allowed_entities(rule.entities.as_ref(), &entities)?;
        }
        Ok(())
    }

    /// Reading one entity's state (the get topic).
    pub fn authorize_read(&self, entity: &EntityId, topic: &str) -> Result<(), ErrorCode> {
        let id = entity.to_string();
        let entities = [id.as_str()];
        allowed_entities(self.entities.as_ref(), &entities)?;
        for rule in self.rules.iter().filter(|r| r.filter.captures(topic).is_some()) {
            allowed_entities(rule.entities.as_ref(), &entities)?;
        }
        Ok(())
    }

    fn check_targets(&self, call: &ServiceCall) -> Result<(), ErrorCode> {
        let allowed = |kind: &str| self.targets.iter().any(|t| t == kind);
        // One pass over the call's few keys, not a lookup per target kind.
        for key in call.data.keys() {
            if TARGET_KEYS.contains(&key.as_str()) && !allowed(key) {
                return Err(ErrorCode::TargetDenied);
            }
        }
        match call.data.get("entity_id") {
            None => Ok(()),
            Some(Value::String(s)) if s.trim() == "all" || s.trim() == "none" => {
                if allowed("all") {
                    Ok(())
                } else {
                    Err(ErrorCode::TargetDenied)
                }
            }
            Some(Value::String(s)) if s.contains(',') && !allowed("comma_list") => Err(ErrorCode::TargetDenied),
            Some(Value::String(_)) => Ok(()),
            Some(Value::Array(items)) => {
                if items.iter().all(Value::is_string) {
                    if items.iter().any(|v| v == "all") && !allowed("all") {
                        return Err(ErrorCode::TargetDenied);
                    }
                    Ok(())
                } else {
                    Err(ErrorCode::EntityDenied)
                }
            }
            Some(_) => Err(ErrorCode::EntityDenied),
        }
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Every entity must match; with a restriction, a call naming none is refused
/// (it would act on whatever the service does by default).
fn allowed_entities(globs: Option<&GlobSet>, entities: &[&str]) -> Result<(), ErrorCode> {
    let Some(globs) = globs else { return Ok(()) };
    if entities.is_empty() || !entities.iter().all(|e| globs.is_match(e)) {
        return Err(ErrorCode::EntityDenied);
    }
    Ok(())
}

/// Compiles globs over dotted HA names (`domain.service`, `domain.object_id`):
/// lowercase, a dot unless the pattern is `*`, no `/`.
pub fn dotted_globs(patterns: &[String], expected: &str) -> Result<GlobSet, PolicyError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let bad = |reason: &str| PolicyError::BadPattern { pattern: pattern.clone(), reason: reason.into() };
        if pattern != "*" && !pattern.contains('.') {
            return Err(bad(&format!("expected {expected}")));
        }
        if pattern.chars().any(|c| c.is_ascii_uppercase() || c == '/') {
            return Err(bad("names are lowercase and contain no '/'"));
        }
        builder.add(Glob::new(pattern).map_err(|e| bad(&e.kind().to_string()))?);
    }
    builder.build().map_err(|e| PolicyError::BadPattern { pattern: patterns.join(", "), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Slug;

    fn call(name: &str) -> ServiceCall {
        let (d, s) = name.split_once('.').unwrap();
        ServiceCall::new(Slug::parse(d).unwrap(), Slug::parse(s).unwrap(), Default::default())
    }

    fn policy(p: &[&str]) -> AccessPolicy {
        AccessPolicy::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn services_are_allowed_by_glob_only() {
        let p = policy(&["light.*", "switch.turn_on", "scene.turn_on"]);
        let table = [
            ("light.turn_on", true),
            ("light.toggle", true),
            ("switch.turn_on", true),
            ("switch.turn_off", false),
            ("scene.turn_on", true),
            ("lock.unlock", false),
            ("homeassistant.restart", false),
            ("lights.turn_on", false),
        ];
        for (name, allowed) in table {
            let got = p.check(&call(name));
            assert_eq!(got.is_ok(), allowed, "{name}");
            if !allowed {
                assert_eq!(got, Err(ErrorCode::ServiceDenied));
            }
        }
    }

    #[test]
    fn an_empty_policy_denies_everything() {
        assert_eq!(policy(&[]).check(&call("light.turn_on")), Err(ErrorCode::ServiceDenied));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["light", "Light.*", "light.[", "a/b.c"] {
            assert!(AccessPolicy::new(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    fn full(services: &[&str], entities: &[&str], targets: &[&str], rules: &[RuleSpec]) -> AccessPolicy {
        let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        AccessPolicy::build(&v(services), &v(entities), &v(targets), rules).unwrap()
    }

    fn with(name: &str, data: serde_json::Value) -> ServiceCall {
        let mut c = call(name);
        c.data = data.as_object().unwrap().clone();
        c
    }

    #[test]
    fn sensitive_domains_must_be_named() {
        let p = policy(&["*", "*.turn_on", "l*.*", "cover.*", "lock.lock"]);
        let table = [
            ("light.turn_on", true),
            ("switch.toggle", true),
            ("lock.unlock", false),
            ("lock.lock", true),
            ("cover.open_cover", true),
            ("homeassistant.restart", false),
            ("shell_command.wipe", false),
            ("script.turn_on", false),
            ("alarm_control_panel.alarm_disarm", false),
            ("automation.turn_on", false),
        ];
        for (name, allowed) in table {
            assert_eq!(p.check(&call(name)).is_ok(), allowed, "{name}");
        }
    }

    #[test]
    fn targets_and_entities() {
        use serde_json::json;
        let p = full(&["light.*"], &["light.kitchen_*", "light.hall"], &[], &[]);
        let table = [
            (json!({"entity_id": "light.kitchen_main"}), Ok(())),
            (json!({"entity_id": ["light.kitchen_main", "light.hall"]}), Ok(())),
            (json!({"entity_id": ["light.kitchen_main", "light.bedroom"]}), Err(ErrorCode::EntityDenied)),
            (json!({"entity_id": "light.kitchen_main, light.hall"}), Err(ErrorCode::TargetDenied)),
            (json!({"entity_id": "all"}), Err(ErrorCode::TargetDenied)),
            (json!({"entity_id": ["all"]}), Err(ErrorCode::TargetDenied)),
            (json!({"area_id": "kitchen"}), Err(ErrorCode::TargetDenied)),
            (json!({"device_id": "abc"}), Err(ErrorCode::TargetDenied)),
            (json!({"floor_id": "ground_floor"}), Err(ErrorCode::TargetDenied)),
            (json!({"label_id": "evening"}), Err(ErrorCode::TargetDenied)),
            (json!({"entity_id": "light.hall", "label_id": ["evening"]}), Err(ErrorCode::TargetDenied)),
            (json!({"target": {"entity_id": "light.hall"}}), Err(ErrorCode::TargetDenied)),
            (json!({"entity_id": "0123456789abcdef0123456789abcdef"}), Err(ErrorCode::EntityDenied)),
            (json!({"entity_id": 7}), Err(ErrorCode::EntityDenied)),
            (json!({}), Err(ErrorCode::EntityDenied)),
        ];
        for (data, expected) in table {
            assert_eq!(
                p.authorize(&with("light.turn_on", data.clone()), "ha-gateway/call/light/turn_on"),
                expected,
                "{data}"
            );
        }
        let open = full(&["light.*"], &[], &["area_id", "floor_id", "label_id", "all", "comma_list"], &[]);
        assert!(open.authorize(&with("light.turn_on", json!({"area_id": "kitchen"})), "t").is_ok());
        assert!(open.authorize(&with("light.turn_on", json!({"floor_id": "ground_floor"})), "t").is_ok());
        assert!(open.authorize(&with("light.turn_on", json!({"label_id": ["evening", "kids"]})), "t").is_ok());
        let labels_only = full(&["light.*"], &[], &["label_id"], &[]);
        assert_eq!(
            labels_only.authorize(&with("light.turn_on", json!({"floor_id": "ground_floor"})), "t"),
            Err(ErrorCode::TargetDenied),
            "allowing one kind allows no other"
        );
        assert!(open.authorize(&with("light.turn_on", json!({"entity_id": "all"})), "t").is_ok());
        assert!(open.authorize(&with("light.turn_on", json!({"entity_id": "light.a, light.b"})), "t").is_ok());
        assert!(open.authorize(&with("light.turn_on", json!({})), "t").is_ok(), "no entity restriction");
    }

    #[test]
    fn topic_rules_narrow_what_a_device_may_do() {
        use serde_json::json;
        let rule = RuleSpec {
            topic: "zigbee2mqtt/kitchen/#".into(),
            allow_services: Some(vec!["light.*".into()]),
            allow_entities: Some(vec!["light.kitchen_*".into()]),
        };
        let p = full(&["light.*", "switch.*"], &[], &[], &[rule]);
        let kitchen = "zigbee2mqtt/kitchen/button";
        let table = [
            (kitchen, "light.toggle", json!({"entity_id": "light.kitchen_main"}), Ok(())),
            (kitchen, "light.toggle", json!({"entity_id": "light.bedroom"}), Err(ErrorCode::EntityDenied)),
            (kitchen, "switch.toggle", json!({"entity_id": "light.kitchen_main"}), Err(ErrorCode::ServiceDenied)),
            ("zigbee2mqtt/hall/button", "switch.toggle", json!({"entity_id": "switch.x"}), Ok(())),
        ];
        for (topic, service, data, expected) in table {
            assert_eq!(p.authorize(&with(service, data.clone()), topic), expected, "{topic} {service} {data}");
        }
        let e = EntityId::parse("light.bedroom").unwrap();
        assert_eq!(p.authorize_read(&e, kitchen), Err(ErrorCode::EntityDenied));
        assert!(p.authorize_read(&e, "ha-gateway/get/light/bedroom").is_ok());
    }

    #[test]
    fn bad_targets_and_rule_topics_are_refused() {
        assert!(AccessPolicy::build(&[], &[], &["room".into()], &[]).is_err());
        let rule = RuleSpec { topic: "a/#/b".into(), ..Default::default() };
        assert!(AccessPolicy::build(&[], &[], &[], &[rule]).is_err());
    }
}
