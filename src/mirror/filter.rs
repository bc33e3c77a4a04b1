//! Which entities the mirror publishes: `[state] include` / `exclude` globs
//! over entity ids. Pure.

use globset::GlobSet;

use crate::access::{dotted_globs, PolicyError};

#[derive(Debug, Clone)]
pub struct StateFilter {
    include: GlobSet,
    exclude: GlobSet,
    has_include: bool,
}

impl StateFilter {
    /// Compiles entity id globs (`light.*`, `sensor.kitchen_*`, `*`).
    pub fn globs(patterns: &[String]) -> Result<GlobSet, PolicyError> {
        dotted_globs(patterns, "domain.object_id, e.g. light.* or sensor.kitchen_*")
    }

    pub fn new(include: GlobSet, exclude: GlobSet, has_include: bool) -> Self {
        Self { include, exclude, has_include }
    }

    /// Mirrors nothing by include list and excludes nothing.
    pub fn empty() -> Self {
        Self::new(GlobSet::empty(), GlobSet::empty(), false)
    }

    /// Mirrored because the include list names it (and exclude does not).
    pub fn included(&self, entity_id: &str) -> bool {
        self.has_include && self.include.is_match(entity_id) && !self.excluded(entity_id)
    }

    /// Never published, and refused on the get topic.
    pub fn excluded(&self, entity_id: &str) -> bool {
        self.exclude.is_match(entity_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> StateFilter {
        let strings = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        StateFilter::new(
            StateFilter::globs(&strings(include)).unwrap(),
            StateFilter::globs(&strings(exclude)).unwrap(),
            !include.is_empty(),
        )
    }

    #[test]
    fn include_and_exclude() {
        let f = filter(&["light.*", "sensor.kitchen_*"], &["sensor.*_battery"]);
        let table = [
            ("light.kitchen", true, false),
            ("sensor.kitchen_temperature", true, false),
            ("sensor.kitchen_battery", false, true),
            ("sensor.hall_temperature", false, false),
            ("lock.front_door", false, false),
        ];
        for (id, included, excluded) in table {
            assert_eq!((f.included(id), f.excluded(id)), (included, excluded), "{id}");
        }
        assert!(!filter(&[], &[]).included("light.kitchen"), "empty include mirrors nothing by itself");
        assert!(filter(&["*"], &["lock.*"]).included("switch.a"));
        assert!(!filter(&["*"], &["lock.*"]).included("lock.front_door"));
    }

    #[test]
    fn malformed_globs_are_refused() {
        assert!(StateFilter::globs(&["Light.*".to_string()]).is_err());
        assert!(StateFilter::globs(&["light".to_string()]).is_err());
    }
}
