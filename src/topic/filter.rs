//! Route topic filters: MQTT wildcards (`+`, `#`) and named captures
//! (`shellies/{device}/input/{channel}`), and an index that matches a topic
//! against many filters by walking a trie, not by trying each filter.
//!
//! Pure: no I/O.

use std::collections::HashMap;

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    /// `+` or `{name}`.
    One(Option<String>),
    /// `#`, last.
    Rest,
}

/// A parsed route filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("topic filter is empty")]
    Empty,
    #[error("'#' must be the last level, alone")]
    Hash,
    #[error("'+' and {{name}} must fill a whole level")]
    Plus,
    #[error("capture name {0:?} must be a lowercase identifier")]
    Name(String),
    #[error("capture {0:?} appears twice")]
    Duplicate(String),
}

impl TopicFilter {
    pub fn parse(filter: &str) -> Result<Self, FilterError> {
        if filter.is_empty() {
            return Err(FilterError::Empty);
        }
        let parts: Vec<&str> = filter.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut names: Vec<String> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i + 1 == parts.len() => Level::Rest,
                "+" => Level::One(None),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    let ident = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if !ident || ["value", "value_json", "topic", "payload"].contains(&name) {
                        return Err(FilterError::Name(name.to_owned()));
                    }
                    if names.iter().any(|n| n == name) {
                        return Err(FilterError::Duplicate(name.to_owned()));
                    }
                    names.push(name.to_owned());
                    Level::One(Some(name.to_owned()))
                }
                p if p.contains('#') => return Err(FilterError::Hash),
                p if p.contains('+') || p.contains('{') || p.contains('}') => return Err(FilterError::Plus),
                p => Level::Exact(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(Self { levels })
    }

    /// The filter as subscribed (captures become `+`).
    pub fn subscription(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Exact(s) => s.as_str(),
                Level::One(_) => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The named captures of `topic`, if it matches.
    pub fn captures(&self, topic: &str) -> Option<Vec<(String, String)>> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest => return Some(out),
                Level::Exact(s) => {
                    if levels.get(i) != Some(&s.as_str()) {
                        return None;
                    }
                }
                Level::One(name) => {
                    let got = levels.get(i)?;
                    if let Some(name) = name {
                        out.push((name.clone(), (*got).to_owned()));
                    }
                }
            }
        }
        (levels.len() == self.levels.len()).then_some(out)
    }
}

/// Many filters, matched by walking a trie of levels.
#[derive(Debug, Default, Clone)]
pub struct FilterIndex {
    root: Node,
}

#[derive(Debug, Default, Clone)]
struct Node {
    exact: HashMap<String, Node>,
    one: Option<Box<Node>>,
    /// Routes whose filter ends here.
    here: Vec<usize>,
    /// Routes whose filter ends with `#` here.
    rest: Vec<usize>,
}

impl FilterIndex {
    pub fn insert(&mut self, filter: &TopicFilter, id: usize) {
        let mut node = &mut self.root;
        for level in &filter.levels {
            node = match level {
                Level::Exact(s) => node.exact.entry(s.clone()).or_default(),
                Level::One(_) => node.one.get_or_insert_with(Default::default),
                Level::Rest => {
                    node.rest.push(id);
                    return;
                }
            };
        }
        node.here.push(id);
    }

    /// Ids of every filter matching `topic`, ascending.
    pub fn matches(&self, topic: &str) -> Vec<usize> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            // MQTT: '#' also matches the parent level ("a/#" matches "a"),
            // but a leading wildcard never matches a "$SYS"-style topic.
            out.extend_from_slice(&node.rest);
            if depth == levels.len() {
                out.extend_from_slice(&node.here);
                continue;
            }
            if let Some(child) = node.exact.get(levels[depth]) {
                stack.push((child, depth + 1));
            }
            if let Some(child) = &node.one {
                if !(depth == 0 && levels[0].starts_with('$')) {
                    stack.push((child, depth + 1));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(filter: &str, topic: &str) -> Option<Vec<(String, String)>> {
        TopicFilter::parse(filter).unwrap().captures(topic)
    }

    #[test]
    fn filters_parse_or_say_why_not() {
        let table: [(&str, Result<&str, FilterError>); 9] = [
            ("zigbee2mqtt/hall_button", Ok("zigbee2mqtt/hall_button")),
            ("shellies/{device}/input/{channel}", Ok("shellies/+/input/+")),
            ("stat/+/POWER", Ok("stat/+/POWER")),
            ("home/#", Ok("home/#")),
            ("", Err(FilterError::Empty)),
            ("a/#/b", Err(FilterError::Hash)),
            ("a/b+", Err(FilterError::Plus)),
            ("a/{Dev}", Err(FilterError::Name("Dev".into()))),
            ("{a}/{a}", Err(FilterError::Duplicate("a".into()))),
        ];
        for (filter, expected) in table {
            assert_eq!(TopicFilter::parse(filter).map(|f| f.subscription()), expected.map(str::to_owned), "{filter}");
        }
    }

    #[test]
    fn captures_name_the_levels() {
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            caps("shellies/{device}/input/{channel}", "shellies/shelly1-ab12/input/0"),
            Some(vec![pair("device", "shelly1-ab12"), pair("channel", "0")])
        );
        assert_eq!(caps("shellies/{device}/input/{channel}", "shellies/x/input"), None);
        assert_eq!(caps("a/+/c", "a/b/c"), Some(vec![]));
        assert_eq!(caps("a/#", "a/b/c/d"), Some(vec![]));
        assert_eq!(caps("a/b", "a/b/c"), None);
    }

    #[test]
    fn the_index_finds_every_matching_filter() {
        let filters = ["a/b", "a/+", "a/#", "+/b", "#", "a/b/c", "x/{y}"];
        let mut index = FilterIndex::default();
        for (i, f) in filters.iter().enumerate() {
            index.insert(&TopicFilter::parse(f).unwrap(), i);
        }
        let table: [(&str, &[usize]); 6] = [
            ("a/b", &[0, 1, 2, 3, 4]),
            ("a/c", &[1, 2, 4]),
            ("a", &[2, 4]),
            ("a/b/c", &[2, 4, 5]),
            ("x/1", &[4, 6]),
            ("$SYS/b", &[4]),
        ];
        for (topic, expected) in table {
            assert_eq!(index.matches(topic), expected, "{topic}");
        }
    }

    #[test]
    fn the_index_agrees_with_matching_each_filter() {
        let filters: Vec<String> =
            (0..200).map(|i| format!("dev/{}/{}", i % 17, if i % 3 == 0 { "+" } else { "state" })).collect();
        let mut index = FilterIndex::default();
        let parsed: Vec<TopicFilter> = filters.iter().map(|f| TopicFilter::parse(f).unwrap()).collect();
        for (i, f) in parsed.iter().enumerate() {
            index.insert(f, i);
        }
        for topic in ["dev/3/state", "dev/3/x", "dev/16/state", "dev/99/state", "other"] {
            let brute: Vec<usize> =
                parsed.iter().enumerate().filter(|(_, f)| f.captures(topic).is_some()).map(|(i, _)| i).collect();
            assert_eq!(index.matches(topic), brute, "{topic}");
        }
    }
}
