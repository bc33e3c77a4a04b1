//! Which Home Assistant we talk to: its version string (`GET /api/config`'s
//! `version`) parsed and compared, the range the gateway is tested against,
//! and the first release that returns service responses over REST.
//!
//! Pure: no I/O. Nothing here decides a command; `catalogue::decide` asks
//! [`HaVersion::has_rest_responses`].

use std::cmp::Ordering;
use std::fmt;

/// The oldest and newest Home Assistant releases the test matrix runs
/// against (README: "Compatibility"); `check --online` warns outside them.
pub const TESTED: (&str, &str) = ("2024.3.3", "2026.2.3");

/// The first release whose `POST /api/services/…?return_response` answers
/// with the service response (2024.8); older ones ignore the query.
pub const REST_RESPONSES_SINCE: (u16, u8) = (2024, 8);

/// A Home Assistant version: `2026.2.3`, `2024.12.0`, `2025.1.0b3`,
/// `2024.8.0.dev20240701`, or a bare `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaVersion {
    Release {
        year: u16,
        month: u8,
        patch: u16,
        /// `b3` → `Some(Pre::Beta(3))`; a release has none.
        pre: Option<Pre>,
    },
    /// A development build without a release number: newer than any release.
    Dev,
}

/// What comes before a release, in order: dev builds, then betas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pre {
    Dev(u64),
    Beta(u32),
}

impl HaVersion {
    /// `None` for anything that is not one of the shapes above.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "dev" {
            return Some(Self::Dev);
        }
        let mut parts = s.splitn(3, '.');
        let year: u16 = digits(parts.next()?)?;
        let month: u8 = digits(parts.next()?)?;
        let rest = parts.next()?;
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let patch: u16 = digits(&rest[..end])?;
        let pre = match &rest[end..] {
            "" => None,
            suffix => Some(pre(suffix)?),
        };
        if !(2000..=9999).contains(&year) || !(1..=12).contains(&month) {
            return None;
        }
        Some(Self::Release { year, month, patch, pre })
    }

    /// Whether `?return_response` works on `POST /api/services/…`.
    pub fn has_rest_responses(&self) -> bool {
        match self {
            Self::Release { year, month, .. } => (*year, *month) >= REST_RESPONSES_SINCE,
            Self::Dev => true,
        }
    }

    /// Whether it lies within [`TESTED`].
    pub fn is_tested(&self) -> bool {
        let (low, high) = tested();
        *self >= low && *self <= high
    }
}

/// What `check --online` prints of HA's version: the lines, a warning
/// (`warning: …`) when it is outside [`TESTED`] or unreadable.
pub fn check_lines(text: &str) -> Vec<String> {
    let (low, high) = TESTED;
    let mut lines = vec![format!("home assistant: version {text}")];
    match HaVersion::parse(text) {
        None => lines.push(format!(
            "warning: home_assistant: version {text:?} is not one the gateway can read (tested: {low} – {high})"
        )),
        Some(v) => {
            if !v.is_tested() {
                lines.push(format!("warning: home_assistant: version {v} is outside the tested range {low} – {high}"));
            }
            if !v.has_rest_responses() {
                lines.push(format!(
                    "home assistant: {v} returns no service responses over REST (2024.8 or newer does): commands asking for one get response_unsupported"
                ));
            }
        }
    }
    lines
}

/// [`TESTED`], parsed.
pub fn tested() -> (HaVersion, HaVersion) {
    let parse = |s| HaVersion::parse(s).expect("the tested range is written as valid versions");
    (parse(TESTED.0), parse(TESTED.1))
}

/// Plain ASCII digits only (`+1`, ` 1`, `` are not numbers here).
fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `b3`, `.dev0`, `.dev20240701`, `dev0`.
fn pre(suffix: &str) -> Option<Pre> {
    if let Some(n) = suffix.strip_prefix('b') {
        return digits(n).map(Pre::Beta);
    }
    let dev = suffix.strip_prefix('.').unwrap_or(suffix).strip_prefix("dev")?;
    if dev.is_empty() {
        return Some(Pre::Dev(0));
    }
    digits(dev).map(Pre::Dev)
}

impl Ord for HaVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Dev, Self::Dev) => Ordering::Equal,
            (Self::Dev, _) => Ordering::Greater,
            (_, Self::Dev) => Ordering::Less,
            (
                Self::Release { year: y1, month: m1, patch: p1, pre: a },
                Self::Release { year: y2, month: m2, patch: p2, pre: b },
            ) => (y1, m1, p1).cmp(&(y2, m2, p2)).then_with(|| match (a, b) {
                (None, None) => Ordering::Equal,
                // A pre-release comes before its release.
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.cmp(b),
            }),
        }
    }
}

impl PartialOrd for HaVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for HaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dev => f.write_str("dev"),
            Self::Release { year, month, patch, pre } => {
                write!(f, "{year}.{month}.{patch}")?;
                match pre {
                    None => Ok(()),
                    Some(Pre::Beta(n)) => write!(f, "b{n}"),
                    Some(Pre::Dev(n)) => write!(f, ".dev{n}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(year: u16, month: u8, patch: u16, pre: Option<Pre>) -> HaVersion {
        HaVersion::Release { year, month, patch, pre }
    }

    /// text → parsed (None: not a version), REST responses, tested.
    #[test]
    fn versions_parse_and_classify() {
        let table: &[(&str, Option<HaVersion>, bool, bool)] = &[
            ("2026.2.3", Some(release(2026, 2, 3, None)), true, true),
            ("2024.12.0", Some(release(2024, 12, 0, None)), true, true),
            ("2025.1.0b3", Some(release(2025, 1, 0, Some(Pre::Beta(3)))), true, true),
            ("2024.3.3", Some(release(2024, 3, 3, None)), false, true),
            ("2024.3.2", Some(release(2024, 3, 2, None)), false, false),
            ("2024.7.4", Some(release(2024, 7, 4, None)), false, true),
            ("2024.8.0", Some(release(2024, 8, 0, None)), true, true),
            ("2024.8.0b0", Some(release(2024, 8, 0, Some(Pre::Beta(0)))), true, true),
            ("2024.8.0.dev20240701", Some(release(2024, 8, 0, Some(Pre::Dev(20240701)))), true, true),
            ("2026.2.4", Some(release(2026, 2, 4, None)), true, false),
            ("2026.3.0b1", Some(release(2026, 3, 0, Some(Pre::Beta(1)))), true, false),
            ("2023.12.4", Some(release(2023, 12, 4, None)), false, false),
            (" 2025.6.1\n", Some(release(2025, 6, 1, None)), true, true),
            ("dev", Some(HaVersion::Dev), true, false),
            ("", None, false, false),
            ("fake", None, false, false),
            ("2024.8", None, false, false),
            ("2024.13.0", None, false, false),
            ("2024.0.1", None, false, false),
            ("2024.8.x", None, false, false),
            ("2024.8.0b", None, false, false),
            ("2024.8.0rc1", None, false, false),
            ("+2024.8.0", None, false, false),
            ("99999.1.0", None, false, false),
        ];
        for (text, expected, responses, tested) in table {
            let got = HaVersion::parse(text);
            assert_eq!(&got, expected, "{text:?}");
            if let Some(v) = got {
                assert_eq!(v.has_rest_responses(), *responses, "{text:?} responses");
                assert_eq!(v.is_tested(), *tested, "{text:?} tested");
                assert_eq!(HaVersion::parse(&v.to_string()), Some(v), "{text:?} round trip");
            }
        }
    }

    /// version text → does `check --online` warn?
    #[test]
    fn check_warns_outside_the_tested_range() {
        let table = [
            ("2026.2.3", false),
            ("2024.3.3", false),
            ("2025.6.1", false),
            ("2026.3.0", true),
            ("2024.1.0", true),
            ("dev", true),
            ("fake", true),
        ];
        for (text, warns) in table {
            let lines = check_lines(text);
            assert_eq!(lines[0], format!("home assistant: version {text}"));
            let warning = lines.iter().find(|l| l.starts_with("warning: "));
            assert_eq!(warning.is_some(), warns, "{text}: {lines:?}");
            if let Some(w) = warning {
                assert!(w.contains("2024.3.3 – 2026.2.3"), "{w}");
            }
        }
        assert!(check_lines("2024.3.3").iter().any(|l| l.contains("2024.8 or newer")));
        assert!(!check_lines("2024.8.0").iter().any(|l| l.contains("2024.8 or newer")));
    }

    #[test]
    fn pre_releases_sort_before_their_release() {
        let order =
            ["2024.3.3", "2024.8.0.dev1", "2024.8.0b0", "2024.8.0b3", "2024.8.0", "2024.8.1", "2025.1.0", "dev"];
        let parsed: Vec<HaVersion> = order.iter().map(|s| HaVersion::parse(s).unwrap()).collect();
        for pair in parsed.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
    }
}
