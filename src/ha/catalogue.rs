//! What the Home Assistant we talk to can do with service responses: the
//! services catalogue (`GET /api/services`: which services return a
//! response, optionally or only), its version, and [`decide`] — for one
//! call, ask HA for the response, or not, or refuse without calling.
//!
//! The catalogue and version are read by the mirror on every websocket
//! connection (see `Mirror::discover`) and kept in [`Known`]; the executor
//! only reads them. Parsing and deciding are pure.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::version::HaVersion;
use crate::bounds::MAX_CATALOGUE_SERVICES;

/// Whether a service returns a response (the `response` key of its entry in
/// `GET /api/services`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseSupport {
    /// No `response` key: asking for one is a 400.
    None,
    /// `"response": {"optional": true}`: returned when asked.
    Optional,
    /// `"response": {"optional": false}`: not asking is a 400.
    Only,
}

/// `domain.service` → [`ResponseSupport`], at most
/// [`MAX_CATALOGUE_SERVICES`] entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    services: HashMap<String, ResponseSupport>,
    /// Services in HA's answer beyond the cap, not kept.
    pub dropped: usize,
}

/// `GET /api/services` was not the expected list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("services catalogue: {0}")]
pub struct CatalogueError(&'static str);

impl Catalogue {
    /// Reads `[{"domain":"light","services":{"turn_on":{…,"response":{"optional":true}}}}]`.
    pub fn parse(v: &Value) -> Result<Self, CatalogueError> {
        let domains = v.as_array().ok_or(CatalogueError("not a list of domains"))?;
        let mut catalogue = Self::default();
        for entry in domains {
            let domain = entry.get("domain").and_then(Value::as_str).ok_or(CatalogueError("a domain has no name"))?;
            let services =
                entry.get("services").and_then(Value::as_object).ok_or(CatalogueError("a domain has no services"))?;
            for (service, description) in services {
                if catalogue.services.len() >= MAX_CATALOGUE_SERVICES {
                    catalogue.dropped += 1;
                    continue;
                }
                catalogue.services.insert(format!("{domain}.{service}"), support(description));
            }
        }
        Ok(catalogue)
    }

    pub fn support(&self, domain: &str, service: &str) -> Option<ResponseSupport> {
        self.services.get(&format!("{domain}.{service}")).copied()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

fn support(description: &Value) -> ResponseSupport {
    match description.get("response") {
        None | Some(Value::Null) => ResponseSupport::None,
        Some(r) if r.get("optional").and_then(Value::as_bool) == Some(false) => ResponseSupport::Only,
        Some(_) => ResponseSupport::Optional,
    }
}

/// What to do with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Send it; with `?return_response` when `return_response`.
    Send { return_response: bool },
    /// Answer `response_unsupported` without calling HA.
    Refuse(Refusal),
}

/// Why a call is refused before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A response was asked of a service that returns none.
    NoResponse,
    /// A response is needed (asked, or the service only answers with one)
    /// and this HA is older than 2024.8: it has none over REST.
    OldHa,
}

impl Refusal {
    /// The detail for the log and the outcome.
    pub fn detail(self, service: &str) -> String {
        match self {
            Self::NoResponse => format!("{service} returns no service response"),
            Self::OldHa => {
                format!("{service}: service responses over REST need Home Assistant 2024.8 or newer")
            }
        }
    }
}

/// The decision for one call: `asked` (the command wants the response),
/// what the catalogue says of its service (`None`: not listed, or no
/// catalogue yet) and whether HA returns responses over REST (`None`:
/// version not known yet). Whatever is unknown is left to HA to answer.
pub fn decide(asked: bool, support: Option<ResponseSupport>, rest_responses: Option<bool>) -> Ask {
    let needed = asked || support == Some(ResponseSupport::Only);
    if needed && rest_responses == Some(false) {
        return Ask::Refuse(Refusal::OldHa);
    }
    match (asked, support) {
        (true, Some(ResponseSupport::None)) => Ask::Refuse(Refusal::NoResponse),
        (true, _) => Ask::Send { return_response: true },
        // HA answers 400 to a response-only service not asked: ask for it.
        (false, Some(ResponseSupport::Only)) => Ask::Send { return_response: true },
        (false, _) => Ask::Send { return_response: false },
    }
}

/// What is known of the HA we talk to, shared by the mirror (which learns
/// it) and the executor (which decides with it).
#[derive(Debug, Clone, Default)]
pub struct Known {
    inner: Arc<RwLock<KnownInner>>,
}

#[derive(Debug, Default)]
struct KnownInner {
    version: Option<HaVersion>,
    catalogue: Option<Catalogue>,
}

impl Known {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, KnownInner> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces what is known (each connection reads it afresh).
    pub fn set(&self, version: Option<HaVersion>, catalogue: Option<Catalogue>) {
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *inner = KnownInner { version, catalogue };
    }

    pub fn version(&self) -> Option<HaVersion> {
        self.read().version.clone()
    }

    /// [`decide`] for a call of `domain.service`.
    pub fn decide(&self, domain: &str, service: &str, asked: bool) -> Ask {
        let inner = self.read();
        let support = inner.catalogue.as_ref().and_then(|c| c.support(domain, service));
        decide(asked, support, inner.version.as_ref().map(HaVersion::has_rest_responses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ResponseSupport as S;

    /// (asked, catalogue says, REST responses) → decision.
    #[test]
    fn decisions() {
        let send = |return_response| Ask::Send { return_response };
        let refuse = Ask::Refuse;
        let table = [
            // A new HA, the service known.
            (false, Some(S::None), Some(true), send(false)),
            (false, Some(S::Optional), Some(true), send(false)),
            (false, Some(S::Only), Some(true), send(true)),
            (true, Some(S::None), Some(true), refuse(Refusal::NoResponse)),
            (true, Some(S::Optional), Some(true), send(true)),
            (true, Some(S::Only), Some(true), send(true)),
            // Not in the catalogue, or no catalogue yet: as asked; HA answers.
            (false, None, Some(true), send(false)),
            (true, None, Some(true), send(true)),
            (true, None, None, send(true)),
            (false, None, None, send(false)),
            // Version unknown: the catalogue alone decides.
            (true, Some(S::None), None, refuse(Refusal::NoResponse)),
            (false, Some(S::Only), None, send(true)),
            // HA before 2024.8: no responses over REST at all.
            (true, Some(S::Optional), Some(false), refuse(Refusal::OldHa)),
            (true, Some(S::None), Some(false), refuse(Refusal::OldHa)),
            (true, None, Some(false), refuse(Refusal::OldHa)),
            (false, Some(S::Only), Some(false), refuse(Refusal::OldHa)),
            (false, Some(S::Optional), Some(false), send(false)),
            (false, None, Some(false), send(false)),
        ];
        for (asked, support, rest, expected) in table {
            assert_eq!(decide(asked, support, rest), expected, "asked={asked} {support:?} rest={rest:?}");
        }
    }

    #[test]
    fn the_catalogue_reads_response_flags() {
        let v = json!([
            {"domain": "light", "services": {"turn_on": {"fields": {}}, "toggle": {"response": null}}},
            {"domain": "weather", "services": {"get_forecasts": {"fields": {}, "response": {"optional": false}}}},
            {"domain": "calendar", "services": {"get_events": {"response": {"optional": true}}}},
        ]);
        let c = Catalogue::parse(&v).unwrap();
        let table = [
            ("light", "turn_on", Some(S::None)),
            ("light", "toggle", Some(S::None)),
            ("weather", "get_forecasts", Some(S::Only)),
            ("calendar", "get_events", Some(S::Optional)),
            ("light", "turn_off", None),
            ("switch", "turn_on", None),
        ];
        for (d, s, expected) in table {
            assert_eq!(c.support(d, s), expected, "{d}.{s}");
        }
        assert_eq!((c.len(), c.dropped), (4, 0));
        assert!(Catalogue::parse(&json!({"light": {}})).is_err());
        assert!(Catalogue::parse(&json!([{"services": {}}])).is_err());
    }

    #[test]
    fn the_catalogue_is_bounded() {
        let services: serde_json::Map<String, Value> =
            (0..MAX_CATALOGUE_SERVICES + 5).map(|i| (format!("s{i}"), json!({}))).collect();
        let c = Catalogue::parse(&json!([{"domain": "big", "services": services}])).unwrap();
        assert_eq!((c.len(), c.dropped), (MAX_CATALOGUE_SERVICES, 5));
    }

    #[test]
    fn known_decides_with_what_it_was_told() {
        let known = Known::default();
        assert_eq!(known.decide("weather", "get_forecasts", false), Ask::Send { return_response: false });
        let catalogue = Catalogue::parse(
            &json!([{"domain": "weather", "services": {"get_forecasts": {"response": {"optional": false}}}}]),
        )
        .unwrap();
        known.set(HaVersion::parse("2026.2.3"), Some(catalogue.clone()));
        assert_eq!(known.decide("weather", "get_forecasts", false), Ask::Send { return_response: true });
        known.set(HaVersion::parse("2024.3.3"), Some(catalogue));
        assert_eq!(known.decide("weather", "get_forecasts", false), Ask::Refuse(Refusal::OldHa));
        assert!(Refusal::OldHa.detail("weather.get_forecasts").contains("2024.8 or newer"));
    }
}
