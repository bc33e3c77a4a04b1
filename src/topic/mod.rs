//! Topic names: the prefix, the command topics we accept and the topics we
//! publish on.
//!
//! Pure: no I/O. Every segment that ends up in an HA URL is checked here
//! against Home Assistant's own slug rule first, so nothing built from a
//! topic can traverse paths, escape, or smuggle characters into a request.

pub mod filter;

use std::fmt;

/// A Home Assistant slug: lowercase `a-z0-9_`, no leading, trailing or
/// double underscore, 1..=64 characters (HA's `valid_domain` /
/// `valid_entity_id` halves).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(String);

impl Slug {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Option<Self> {
        Self::is_valid(s).then(|| Self(s.to_owned()))
    }

    /// Whether `s` is a slug (checked without building one).
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !s.starts_with('_')
            && !s.ends_with('_')
            && !s.contains("__")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<domain>.<object_id>`, both slugs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId {
    pub domain: Slug,
    pub object_id: Slug,
}

impl EntityId {
    pub fn parse(s: &str) -> Option<Self> {
        let (d, o) = s.split_once('.')?;
        Some(Self { domain: Slug::parse(d)?, object_id: Slug::parse(o)? })
    }

    /// Whether `s` is an entity id (checked without building one).
    pub fn is_valid(s: &str) -> bool {
        s.split_once('.').is_some_and(|(d, o)| Slug::is_valid(d) && Slug::is_valid(o))
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.domain, self.object_id)
    }
}

/// The validated first levels of every topic (`ha-gateway`, `home/gw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPrefix(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic prefix must be non-empty, without wildcards (+ #), leading or trailing '/', or empty levels")]
pub struct InvalidPrefix;

impl TopicPrefix {
    pub fn new(s: &str) -> Result<Self, InvalidPrefix> {
        let ok = !s.is_empty() && !s.contains(['+', '#', '\0']) && s.split('/').all(|level| !level.is_empty());
        ok.then(|| Self(s.to_owned())).ok_or(InvalidPrefix)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subscriptions of the command path.
    pub fn command_filters(&self) -> [String; 3] {
        [format!("{}/call/+/+", self.0), format!("{}/set/+/+", self.0), format!("{}/get/+/+", self.0)]
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.0)
    }

    /// Commands given up (expired, failed after retries): for inspection and replay.
    pub fn dead_letter(&self) -> String {
        format!("{}/dead_letter", self.0)
    }

    /// Whether the gateway reaches Home Assistant (`online`/`offline`, retained).
    pub fn ha_status(&self) -> String {
        format!("{}/ha_status", self.0)
    }

    pub fn result(&self, domain: &Slug, service: &Slug) -> String {
        format!("{}/result/{domain}/{service}", self.0)
    }

    /// Where results of commands whose topic could not be parsed go: `_`
    /// never starts a valid slug, so this cannot collide with a real service.
    pub fn invalid_result(&self) -> String {
        format!("{}/result/_invalid/_invalid", self.0)
    }

    pub fn state(&self, entity: &EntityId) -> String {
        format!("{}/state/{}/{}", self.0, entity.domain, entity.object_id)
    }

    /// Parses a topic we received into the command it names.
    pub fn parse_command(&self, topic: &str) -> Result<CommandTopic, TopicError> {
        let rest = topic.strip_prefix(self.0.as_str()).and_then(|r| r.strip_prefix('/')).ok_or(TopicError::NotOurs)?;
        let mut levels = rest.split('/');
        let (Some(kind), Some(a), Some(b), None) = (levels.next(), levels.next(), levels.next(), levels.next()) else {
            return Err(TopicError::Shape);
        };
        let a = Slug::parse(a).ok_or(TopicError::BadSegment)?;
        let b = Slug::parse(b).ok_or(TopicError::BadSegment)?;
        match kind {
            "call" => Ok(CommandTopic::Call { domain: a, service: b }),
            "set" => Ok(CommandTopic::Set(EntityId { domain: a, object_id: b })),
            "get" => Ok(CommandTopic::Get(EntityId { domain: a, object_id: b })),
            _ => Err(TopicError::Shape),
        }
    }
}

/// What a command topic asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandTopic {
    /// `<prefix>/call/<domain>/<service>`
    Call { domain: Slug, service: Slug },
    /// `<prefix>/set/<domain>/<object_id>`
    Set(EntityId),
    /// `<prefix>/get/<domain>/<object_id>`
    Get(EntityId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is not under the gateway's prefix")]
    NotOurs,
    #[error("topic must be <prefix>/call/<domain>/<service> or <prefix>/set|get/<domain>/<object_id>")]
    Shape,
    #[error("domain, service and object id must be lowercase a-z, 0-9 and single inner underscores")]
    BadSegment,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Slug {
        Slug::parse(x).unwrap()
    }

    #[test]
    fn slugs_follow_home_assistants_rule() {
        let table = [
            ("light", true),
            ("turn_on", true),
            ("a1_b2", true),
            ("x", true),
            ("", false),
            ("_light", false),
            ("light_", false),
            ("turn__on", false),
            ("Light", false),
            ("li-ght", false),
            ("..", false),
            ("%2e%2e", false),
            ("light.kitchen", false),
            ("lïght", false),
            (&"a".repeat(65), false),
        ];
        for (input, ok) in table {
            assert_eq!(Slug::parse(input).is_some(), ok, "{input:?}");
        }
    }

    #[test]
    fn command_topics_parse_or_fail_with_a_reason() {
        let p = TopicPrefix::new("ha-gateway").unwrap();
        let table: [(&str, Result<CommandTopic, TopicError>); 11] = [
            ("ha-gateway/call/light/turn_on", Ok(CommandTopic::Call { domain: s("light"), service: s("turn_on") })),
            (
                "ha-gateway/set/switch/fan_plug",
                Ok(CommandTopic::Set(EntityId { domain: s("switch"), object_id: s("fan_plug") })),
            ),
            ("ha-gateway/call/light", Err(TopicError::Shape)),
            ("ha-gateway/call/light/turn_on/x", Err(TopicError::Shape)),
            ("ha-gateway/call/light/", Err(TopicError::BadSegment)),
            ("ha-gateway/call/../turn_on", Err(TopicError::BadSegment)),
            ("ha-gateway/call/light/Turn_On", Err(TopicError::BadSegment)),
            (
                "ha-gateway/get/light/kitchen",
                Ok(CommandTopic::Get(EntityId { domain: s("light"), object_id: s("kitchen") })),
            ),
            ("ha-gateway/put/light/kitchen", Err(TopicError::Shape)),
            ("ha-gatewayx/call/light/turn_on", Err(TopicError::NotOurs)),
            ("other/call/light/turn_on", Err(TopicError::NotOurs)),
        ];
        for (topic, expected) in table {
            assert_eq!(p.parse_command(topic), expected, "{topic}");
        }
    }

    #[test]
    fn prefixes_with_levels_work_and_bad_ones_are_refused() {
        let p = TopicPrefix::new("home/gw").unwrap();
        assert!(p.parse_command("home/gw/call/scene/turn_on").is_ok());
        assert_eq!(
            p.command_filters().map(|f| f.to_string()),
            ["home/gw/call/+/+", "home/gw/set/+/+", "home/gw/get/+/+"]
        );
        for bad in ["", "a/+", "#", "/a", "a/", "a//b"] {
            assert_eq!(TopicPrefix::new(bad), Err(InvalidPrefix), "{bad:?}");
        }
    }

    #[test]
    fn entity_ids_parse() {
        assert_eq!(EntityId::parse("light.kitchen").unwrap().to_string(), "light.kitchen");
        for bad in ["light", "light.", ".x", "light.Kitchen", "a.b.c"] {
            assert!(EntityId::parse(bad).is_none(), "{bad}");
        }
    }
}
