//! Routes: wire any MQTT device to Home Assistant services with a few lines
//! of TOML (`[[route]]`).
//!
//! A [`RouteTable`] is compiled at config load (filters parsed, templates
//! compiled, static services checked) and then only evaluated: given a topic
//! and payload it returns, per matching route, a service call, a skip
//! (`when` false, no `map` entry) or a failure with an error code. Pure: it
//! never sends anything; its calls go through the same access check, queue,
//! acks and results as the `call` topic.

pub mod raw;
mod template;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use minijinja::Value as Jinja;
use serde_json::{Map, Value};

pub use crate::command::FlowSpec;
pub use crate::topic::filter::{FilterError, FilterIndex, TopicFilter};
pub use template::{is_template, native, Templates, Tmpl, TopicVar};

use crate::access::AccessPolicy;
use crate::command::{ErrorCode, ServiceCall};
use crate::topic::Slug;
use crate::translate::Limits;
use raw::RawRoute;

/// How a route reads its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON if it parses (`value_json`), text otherwise.
    Auto,
    Json,
    Text,
    Number,
    /// HA's `mqtt_eventstream` shape: `{"event_type":"call_service",
    /// "event_data":{"domain":…,"service":…,"service_data":{…}}}`; the call
    /// comes from the message (see [`eventstream_call`]).
    EventStream,
}

#[derive(Debug)]
enum Target {
    Service {
        service: Tmpl,
        static_service: Option<(Slug, Slug)>,
    },
    Map {
        key: Option<Tmpl>,
        entries: HashMap<String, MapEntry>,
    },
    /// `format = "eventstream"`: service and data from the message.
    EventStream,
}

#[derive(Debug, Clone)]
struct MapEntry {
    domain: Slug,
    service: Slug,
    entity_id: Option<String>,
}

#[derive(Debug)]
struct Route {
    name: Arc<str>,
    filter: TopicFilter,
    format: Format,
    when: Option<Tmpl>,
    target: Target,
    entity_id: Option<Tmpl>,
    /// The data, with templated strings compiled: (JSON pointer, template).
    data: Map<String, Value>,
    data_templates: Vec<(String, Tmpl)>,
    flow: FlowSpec,
    /// `return_response = true`: its calls ask HA for the service response.
    return_response: bool,
}

/// What one route made of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteResult {
    Call {
        route: Arc<str>,
        call: ServiceCall,
        flow: FlowSpec,
        flow_key: String,
    },
    /// Not for this route (`when` false, no `map` entry): nothing to do.
    Skipped {
        route: Arc<str>,
        why: &'static str,
    },
    Failed {
        route: Arc<str>,
        code: ErrorCode,
        detail: String,
    },
}

/// Every route, compiled.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    index: FilterIndex,
    templates: Templates,
    limits: Limits,
}

/// A problem with one route, with the key inside it (`data.brightness`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub route: usize,
    pub name: String,
    pub key: String,
    pub message: String,
}

impl RouteTable {
    /// Compiles routes; collects every problem.
    pub fn compile(raw: &[RawRoute], access: &AccessPolicy) -> Result<Self, Vec<RouteError>> {
        let mut table = RouteTable::default();
        let mut errors = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| r.topic.clone());
            let mut problems = Vec::new();
            let route = table.compile_one(r, access, &name, &mut problems);
            for (key, message) in problems {
                errors.push(RouteError { route: i, name: name.clone(), key, message });
            }
            if let Some(route) = route {
                table.index.insert(&route.filter, table.routes.len());
                table.routes.push(route);
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }

    /// One route; problems go to `errs` as (key, message).
    fn compile_one(
        &mut self,
        r: &RawRoute,
        access: &AccessPolicy,
        name: &str,
        errs: &mut Vec<(String, String)>,
    ) -> Option<Route> {
        let mut fail = |key: &str, message: String| errs.push((key.to_owned(), message));
        let filter = TopicFilter::parse(&r.topic).map_err(|e| fail("topic", e.to_string())).ok();
        let format = match r.format.as_deref().unwrap_or("auto") {
            "auto" => Format::Auto,
            "json" => Format::Json,
            "text" => Format::Text,
            "number" => Format::Number,
            "eventstream" => Format::EventStream,
            other => {
                fail("format", format!("{other:?} is not json, text, number, eventstream or auto"));
                Format::Auto
            }
        };
        let when = r.when.as_deref().and_then(|w| {
            let label = format!("route {name:?} when");
            self.templates.add_condition_named(&label, w).map_err(|e| fail("when", format!("{label}: {e}"))).ok()
        });
        let templates = &mut self.templates;
        let mut compile = |key: &str, src: &str, fail: &mut dyn FnMut(&str, String)| {
            let label = format!("route {name:?} {key}");
            templates.add_named(&label, src).map_err(|e| fail(key, format!("template: {e}"))).ok()
        };
        let entity_id = r.entity_id.as_deref().and_then(|e| compile("entity_id", e, &mut fail));
        let check_service = |d: &Slug, s: &Slug, key: &str, fail: &mut dyn FnMut(&str, String)| {
            let call = ServiceCall::new(d.clone(), s.clone(), Map::new());
            if access.check(&call).is_err() {
                fail(key, format!("{} is not in access.allow_services", call.name()));
            }
            if r.latest_wins && !call.is_idempotent() {
                fail(
                    key,
                    format!(
                        "latest_wins would coalesce {}, which is not idempotent (toggles, locks, scripts… never are)",
                        call.name()
                    ),
                );
            }
        };
        let target = match (&r.service, r.map.is_empty()) {
            _ if format == Format::EventStream => {
                let extra = [
                    ("service", r.service.is_some()),
                    ("map", !r.map.is_empty()),
                    ("entity_id", r.entity_id.is_some()),
                    ("data", !r.data.is_empty()),
                ];
                for (key, _) in extra.iter().filter(|(_, set)| *set) {
                    fail(
                        key,
                        format!(
                            "format = \"eventstream\" takes the service and its data from the message; remove {key}"
                        ),
                    );
                }
                Some(Target::EventStream)
            }
            (Some(_), false) => {
                fail("service", "set either service or map, not both".into());
                None
            }
            (None, true) => {
                fail("service", "a route needs a service (or a map of values to services)".into());
                None
            }
            (Some(s), true) => {
                let static_service = if is_template(s) {
                    None
                } else {
                    match parse_service(s) {
                        Ok((d, sv)) => {
                            check_service(&d, &sv, "service", &mut fail);
                            Some((d, sv))
                        }
                        Err(e) => {
                            fail("service", e);
                            None
                        }
                    }
                };
                compile("service", s, &mut fail).map(|service| Target::Service { service, static_service })
            }
            (None, false) => {
                let key = r.map_key.as_deref().and_then(|k| compile("map_key", k, &mut fail));
                let mut entries = HashMap::new();
                for (k, v) in &r.map {
                    let (svc, entity) = match v.split_once(':') {
                        Some((s, e)) => (s.trim(), Some(e.trim().to_owned())),
                        None => (v.trim(), None),
                    };
                    match parse_service(svc) {
                        Ok((domain, service)) => {
                            check_service(&domain, &service, &format!("map.{k}"), &mut fail);
                            entries.insert(k.clone(), MapEntry { domain, service, entity_id: entity });
                        }
                        Err(e) => fail(&format!("map.{k}"), e),
                    }
                }
                Some(Target::Map { key, entries })
            }
        };
        let data = match serde_json::to_value(&r.data) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut leaves = Vec::new();
        collect_templates(&Value::Object(data.clone()), String::new(), &mut leaves);
        let mut data_templates = Vec::new();
        for (pointer, src) in leaves {
            let key = format!("data{}", pointer.replace('/', "."));
            if let Some(t) = compile(&key, &src, &mut fail) {
                data_templates.push((pointer, t));
            }
        }
        let mut duration = |key: &str, v: &Option<String>| -> Option<Duration> {
            let v = v.as_ref()?;
            match humantime::parse_duration(v) {
                // Added to the dispatcher's instants: bounded so they cannot overflow.
                Ok(d) if !d.is_zero() => match crate::bounds::at_most(d, crate::bounds::MAX_DURATION) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        fail(key, e);
                        None
                    }
                },
                _ => {
                    fail(key, format!("{v:?} is not a duration such as \"500ms\" or \"2s\""));
                    None
                }
            }
        };
        let flow = FlowSpec {
            debounce: duration("debounce", &r.debounce),
            throttle: duration("throttle", &r.throttle),
            latest_wins: r.latest_wins,
        };
        if !errs.is_empty() {
            return None;
        }
        Some(Route {
            name: Arc::from(name),
            filter: filter?,
            format,
            when,
            target: target?,
            entity_id,
            data,
            data_templates,
            flow,
            return_response: r.return_response,
        })
    }

    /// Applies `[limits]` to routed JSON payloads.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The filters to subscribe to, deduplicated.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subs: Vec<String> = self.routes.iter().map(|r| r.filter.subscription()).collect();
        subs.sort();
        subs.dedup();
        subs
    }

    /// What every matching route makes of this message, in route order.
    /// With `only`, just the routes subscribed through those filters (the
    /// broker delivers one copy per matching subscription).
    pub fn evaluate(&self, topic: &str, payload: &[u8], only: Option<&HashSet<String>>) -> Vec<RouteResult> {
        self.index
            .matches(topic)
            .into_iter()
            .map(|i| &self.routes[i])
            .filter(|r| only.is_none_or(|set| set.contains(&r.filter.subscription())))
            .map(|r| self.evaluate_one(r, topic, payload))
            .collect()
    }

    fn evaluate_one(&self, route: &Route, topic: &str, payload: &[u8]) -> RouteResult {
        let failed = |code: ErrorCode, detail: String| RouteResult::Failed { route: route.name.clone(), code, detail };
        let (ctx, json) = match context(route, topic, payload, &self.limits) {
            Ok(found) => found,
            Err((code, detail)) => return failed(code, detail),
        };
        if let Some(when) = &route.when {
            match self.templates.is_true(when, &ctx) {
                Ok(true) => {}
                Ok(false) => return RouteResult::Skipped { route: route.name.clone(), why: "when" },
                Err(e) => return failed(ErrorCode::TemplateError, format!("when: {e}")),
            }
        }
        let (domain, service, mut entity) = match &route.target {
            Target::EventStream => {
                // `context` parsed it: an eventstream route reads its payload as JSON.
                let event = json.unwrap_or_default();
                return match eventstream_call(&event) {
                    Ok(Some(call)) => routed(route, call),
                    Ok(None) => RouteResult::Skipped { route: route.name.clone(), why: "event_type" },
                    Err(detail) => failed(ErrorCode::InvalidPayload, detail),
                };
            }
            Target::Service { static_service: Some((d, s)), .. } => (d.clone(), s.clone(), None),
            Target::Service { service, static_service: None } => {
                let rendered = match self.templates.render(service, &ctx) {
                    Ok(s) => s,
                    Err(e) => return failed(ErrorCode::TemplateError, format!("service: {e}")),
                };
                match parse_service(rendered.trim()) {
                    Ok((d, s)) => (d, s, None),
                    Err(e) => return failed(ErrorCode::TemplateError, format!("service rendered {rendered:?}: {e}")),
                }
            }
            Target::Map { key, entries } => {
                let key = match key {
                    Some(t) => match self.templates.render(t, &ctx) {
                        Ok(k) => k.trim().to_owned(),
                        Err(e) => return failed(ErrorCode::TemplateError, format!("map_key: {e}")),
                    },
                    None => default_map_key(payload),
                };
                match entries.get(&key) {
                    Some(e) => (e.domain.clone(), e.service.clone(), e.entity_id.clone().map(Value::String)),
                    None => return RouteResult::Skipped { route: route.name.clone(), why: "map" },
                }
            }
        };
        if entity.is_none() {
            if let Some(t) = &route.entity_id {
                match self.templates.render_value(t, &ctx) {
                    Ok(Value::String(s)) if s.trim().is_empty() => {}
                    Ok(v) => entity = Some(v),
                    Err(e) => return failed(ErrorCode::TemplateError, format!("entity_id: {e}")),
                }
            }
        }
        let mut data = Value::Object(route.data.clone());
        for (pointer, t) in &route.data_templates {
            match self.templates.render_value(t, &ctx) {
                Ok(v) => {
                    if let Some(slot) = data.pointer_mut(pointer) {
                        *slot = v;
                    }
                }
                Err(e) => return failed(ErrorCode::TemplateError, format!("data{}: {e}", pointer.replace('/', "."))),
            }
        }
        let Value::Object(mut data) = data else { unreachable!("data starts as an object") };
        if let Some(e) = entity {
            data.insert("entity_id".into(), e);
        }
        routed(route, ServiceCall::new(domain, service, data))
    }
}

/// `call` as made by `route`: with the route's `return_response`, flow
/// control and flow key.
fn routed(route: &Route, call: ServiceCall) -> RouteResult {
    let call = ServiceCall { return_response: route.return_response, ..call };
    let flow_key = format!("{}|{}|{}", route.name, call.name(), call.entity_ids().join(","));
    RouteResult::Call { route: route.name.clone(), call, flow: route.flow, flow_key }
}

/// An `mqtt_eventstream` message as the call it asks for: `None` for an
/// event other than `call_service` (HA's eventstream publishes every event);
/// `Err` when a `call_service` event does not name a service or its data is
/// not an object. `event` is the payload as [`context`] parsed (and limited) it.
fn eventstream_call(event: &Value) -> Result<Option<ServiceCall>, String> {
    match event.get("event_type") {
        Some(Value::String(t)) if t == "call_service" => {}
        Some(Value::String(_)) => return Ok(None),
        _ => return Err("an eventstream message needs \"event_type\" (a string)".into()),
    }
    let data = &event["event_data"];
    let name = |key: &str| match data.get(key) {
        Some(Value::String(s)) => Slug::parse(s)
            .ok_or_else(|| format!("event_data.{key} {s:?}: lowercase a-z, 0-9 and single inner underscores")),
        _ => Err(format!("a call_service event needs event_data.{key} (a string)")),
    };
    let (domain, service) = (name("domain")?, name("service")?);
    let service_data = match data.get("service_data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("event_data.service_data must be an object".into()),
    };
    Ok(Some(ServiceCall::new(domain, service, service_data)))
}

/// `domain.service`, both slugs.
fn parse_service(s: &str) -> Result<(Slug, Slug), String> {
    let (d, sv) = s.split_once('.').ok_or_else(|| format!("{s:?} is not domain.service"))?;
    match (Slug::parse(d), Slug::parse(sv)) {
        (Some(d), Some(sv)) => Ok((d, sv)),
        _ => Err(format!("{s:?}: domain and service must be lowercase a-z, 0-9 and single inner underscores")),
    }
}

/// Payload → template variables, per the route's format, and the parsed
/// JSON they were made from (if the payload was read as JSON).
fn context(
    route: &Route,
    topic: &str,
    payload: &[u8],
    limits: &Limits,
) -> Result<(Jinja, Option<Value>), (ErrorCode, String)> {
    let text =
        std::str::from_utf8(payload).map_err(|_| (ErrorCode::InvalidPayload, "payload is not UTF-8".to_owned()))?;
    let json: Option<Value> = match route.format {
        Format::Text | Format::Number => None,
        Format::Auto => serde_json::from_str(text).ok(),
        Format::Json | Format::EventStream => Some(
            serde_json::from_str(text).map_err(|e| (ErrorCode::InvalidJson, format!("payload is not JSON: {e}")))?,
        ),
    };
    if let Some(j) = &json {
        limits.check_json(j).map_err(|r| (r.code, r.detail))?;
    }
    let value = match route.format {
        Format::Number => {
            let n: f64 = text
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite())
                .ok_or_else(|| (ErrorCode::InvalidPayload, format!("payload {text:?} is not a number")))?;
            Jinja::from(n)
        }
        _ => Jinja::from(text),
    };
    let mut vars: Vec<(String, Jinja)> = vec![
        ("value".into(), value),
        ("topic".into(), TopicVar::value(topic)),
        ("value_json".into(), json.as_ref().map(Jinja::from_serialize).unwrap_or(Jinja::UNDEFINED)),
    ];
    for (name, level) in route.filter.captures(topic).unwrap_or_default() {
        vars.push((name, Jinja::from(level)));
    }
    Ok((Jinja::from_iter(vars), json))
}

/// Without `map_key`: a JSON object's `action` (Zigbee2MQTT buttons), else the text.
fn default_map_key(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => match m.get("action") {
            Some(Value::String(a)) => a.clone(),
            _ => text.trim().to_owned(),
        },
        _ => text.trim().trim_matches('"').to_owned(),
    }
}

/// Every string leaf that is a template, with its JSON pointer.
fn collect_templates(v: &Value, pointer: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) if is_template(s) => out.push((pointer, s.clone())),
        Value::Object(m) => {
            for (k, v) in m {
                collect_templates(v, format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                collect_templates(v, format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
