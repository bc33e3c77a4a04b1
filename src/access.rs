//! Access policy: which services MQTT may make Home Assistant run.
//!
//! Pure and total: given a [`ServiceCall`] it answers allow or deny with a
//! reason code, without I/O. Denied calls never reach the queue.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::command::{ErrorCode, ServiceCall};

/// Compiled `[access]` rules.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    services: GlobSet,
    patterns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
}

impl AccessPolicy {
    /// Compiles `domain.service` globs (`light.*`, `scene.turn_on`, `*`).
    pub fn new(patterns: &[String]) -> Result<Self, PolicyError> {
        let services = dotted_globs(patterns, "domain.service, e.g. light.turn_on or light.*")?;
        Ok(Self { services, patterns: patterns.to_vec() })
    }

    /// Allows or denies a call, with the reason code for a denial.
    pub fn check(&self, call: &ServiceCall) -> Result<(), ErrorCode> {
        if self.services.is_match(call.name()) {
            Ok(())
        } else {
            Err(ErrorCode::ServiceDenied)
        }
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
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
        ServiceCall { domain: Slug::parse(d).unwrap(), service: Slug::parse(s).unwrap(), data: Default::default() }
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
}
