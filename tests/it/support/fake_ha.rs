//! An in-process fake of Home Assistant's REST and websocket APIs: records
//! every call and answers as scripted (status, delay, Retry-After), checking
//! the token; keeps entity states that calls change and tests set, and sends
//! `state_changed` events to websocket subscribers (see `fake_ws`).
//!
//! It also watches concurrency: calls for one entity that overlap in time
//! (the gateway must run them one after another) are recorded as
//! violations, and the peak number of calls in flight is kept (different
//! entities are meant to overlap).
//!
//! It models which HA it is: `GET /api/config`'s `version`, `GET
//! /api/services` with response flags, and `?return_response` as HA 2024.8+
//! answers it (the service response, or 400 when asked of a service without
//! one or not asked of a response-only one); set an older version and it
//! behaves as 2024.3 does: the query is ignored, and a response-only service
//! fails with a 500.
//!
//! For fast logic and fault tests only; the real-HA tier proves the real thing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::time::Instant;

/// One recorded service call.
#[derive(Debug, Clone)]
pub struct Call {
    pub domain: String,
    pub service: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub at: Instant,
    /// The request carried `?return_response`.
    pub return_response: bool,
}

/// Whether a service returns a response, as `GET /api/services` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supports {
    None,
    Optional,
    Only,
}

/// The services every fake HA starts with: what the tests call, plus a
/// response-only and an optional-response service.
pub fn default_services() -> Vec<(&'static str, &'static str, Supports)> {
    let mut services = Vec::new();
    for domain in ["light", "switch", "input_boolean"] {
        for service in ["turn_on", "turn_off", "toggle"] {
            services.push((domain, service, Supports::None));
        }
    }
    services.push(("scene", "turn_on", Supports::None));
    services.push(("weather", "get_forecasts", Supports::Only));
    services.push(("calendar", "get_events", Supports::Optional));
    services
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<u64>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, delay: Duration::ZERO, retry_after: None }
    }
}

#[derive(Default)]
pub(super) struct Inner {
    calls: Vec<Call>,
    /// Entity states, as `GET /api/states` returns them.
    pub(super) states: BTreeMap<String, Value>,
    /// Makes `last_updated` strictly increasing.
    clock: u64,
    unauthorized: usize,
    in_flight: usize,
    /// The most calls in flight at once.
    max_in_flight: usize,
    /// Per entity id, its calls in flight now.
    entity_in_flight: HashMap<String, usize>,
    /// Entity ids that had a call start while another of theirs was in flight.
    overlaps: Vec<String>,
    script: VecDeque<Reply>,
    delay: Duration,
    pub(super) token: String,
    /// `GET /api/config`'s version.
    pub(super) version: String,
    /// `domain.service` → what `GET /api/services` says of its response.
    services: BTreeMap<String, Supports>,
    /// The `service_response` a service returns when asked (default: a forecast).
    responses: HashMap<String, Value>,
    /// Reads of `/api/config`, `/api/services` and `/api/` (probes).
    config_reads: usize,
    services_reads: usize,
    probes: usize,
    /// `GET /api/config`'s `state` (HA's core state); `None`: "RUNNING".
    core_state: Option<String>,
    /// `GET` paths (`/api/services`, `/api/states`) answered with this status.
    failing_reads: HashMap<&'static str, u16>,
}

#[derive(Clone)]
pub struct FakeHa {
    pub addr: SocketAddr,
    pub(super) inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    /// `state_changed` event data for websocket subscribers.
    pub(super) events: tokio::sync::broadcast::Sender<Value>,
    /// Websocket control: connections open now, refuse new ones, drop all.
    pub(super) ws: Arc<super::fake_ws::WsControl>,
    /// Stops the HTTP server (see `stop`).
    server: Arc<Mutex<tokio_util::sync::CancellationToken>>,
}

impl FakeHa {
    pub async fn start(token: &str) -> FakeHa {
        let services = default_services().into_iter().map(|(d, s, r)| (format!("{d}.{s}"), r)).collect();
        let inner = Arc::new(Mutex::new(Inner {
            token: token.into(),
            version: "2026.2.3".into(),
            services,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ha = FakeHa {
            addr,
            inner,
            changed: Arc::new(tokio::sync::Notify::new()),
            events: tokio::sync::broadcast::channel(100_000).0,
            ws: Default::default(),
            server: Default::default(),
        };
        ha.serve(listener);
        ha
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/", get(api_root))
            .route("/api/config", get(api_config))
            .route("/api/services", get(api_services))
            .route("/api/states", get(all_states))
            .route("/api/states/{entity_id}", get(one_state))
            .route("/api/websocket", get(super::fake_ws::upgrade))
            .route("/api/services/{domain}/{service}", post(service))
            .with_state(self.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        *self.server.lock().unwrap() = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await.unwrap()
        });
    }

    /// HA goes away: the port stops answering and websockets close.
    pub fn stop(&self) {
        self.drop_websockets(true);
        self.server.lock().unwrap().cancel();
    }

    /// HA is back on the same port.
    pub async fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
        self.accept_websockets();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next calls get these answers, in order; then 200 again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Every call takes this long.
    pub fn set_delay(&self, d: Duration) {
        self.inner.lock().unwrap().delay = d;
    }

    pub fn set_token(&self, token: &str) {
        self.inner.lock().unwrap().token = token.into();
    }

    /// The version HA reports; below 2024.8 it also answers as 2024.3 does.
    pub fn set_version(&self, version: &str) {
        self.inner.lock().unwrap().version = version.into();
    }

    /// Replaces the services catalogue.
    pub fn set_services(&self, services: &[(&str, &str, Supports)]) {
        self.inner.lock().unwrap().services = services.iter().map(|(d, s, r)| (format!("{d}.{s}"), *r)).collect();
    }

    /// The `service_response` of `domain.service` when asked.
    pub fn set_response(&self, service: &str, response: Value) {
        self.inner.lock().unwrap().responses.insert(service.into(), response);
    }

    /// HA's core state as `GET /api/config` reports it (`STARTING` while
    /// its integrations load, `RUNNING` after).
    pub fn set_core_state(&self, state: &str) {
        self.inner.lock().unwrap().core_state = Some(state.into());
    }

    /// `GET path` answers `status` from now on (`None`: answers again).
    pub fn fail_read(&self, path: &'static str, status: Option<u16>) {
        let mut inner = self.inner.lock().unwrap();
        match status {
            Some(status) => inner.failing_reads.insert(path, status),
            None => inner.failing_reads.remove(path),
        };
    }

    /// The status `GET path` is set to fail with, if any.
    fn failing_read(&self, path: &str) -> Option<Response> {
        let status = *self.inner.lock().unwrap().failing_reads.get(path)?;
        Some(
            (StatusCode::from_u16(status).unwrap(), "500 Internal Server Error\n\nServer got itself in trouble")
                .into_response(),
        )
    }

    /// (`/api/config` reads, `/api/services` reads, `/api/` probes).
    pub fn reads(&self) -> (usize, usize, usize) {
        let i = self.inner.lock().unwrap();
        (i.config_reads, i.services_reads, i.probes)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Requests refused with 401 (service calls and probes).
    pub fn unauthorized(&self) -> usize {
        self.inner.lock().unwrap().unauthorized
    }

    /// Service calls received and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().unwrap().in_flight
    }

    /// The most service calls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().unwrap().max_in_flight
    }

    /// Entity ids (one per violation) whose call started while another call
    /// for the same entity was still in flight.
    pub fn same_entity_overlaps(&self) -> Vec<String> {
        self.inner.lock().unwrap().overlaps.clone()
    }

    /// Sets (or creates) an entity's state, as a device or HA itself would;
    /// subscribers get a `state_changed` event. Returns the new state object.
    pub fn set_state(&self, entity_id: &str, state: &str, attributes: Value) -> Value {
        let new = self.inner.lock().unwrap().put(entity_id, state, attributes);
        let _ = self.events.send(json!({"entity_id": entity_id, "old_state": null, "new_state": new.clone()}));
        new
    }

    /// Removes an entity; subscribers get `new_state: null`.
    pub fn remove_state(&self, entity_id: &str) {
        self.inner.lock().unwrap().states.remove(entity_id);
        let _ = self.events.send(json!({"entity_id": entity_id, "old_state": null, "new_state": null}));
    }

    /// Sends a `state_changed` event with exactly this state (without storing it).
    pub fn send_event(&self, state: Value) {
        let entity_id = state["entity_id"].clone();
        let _ = self.events.send(json!({"entity_id": entity_id, "old_state": null, "new_state": state}));
    }

    pub fn state(&self, entity_id: &str) -> Option<Value> {
        self.inner.lock().unwrap().states.get(entity_id).cloned()
    }

    /// Websocket connections accepted since start.
    pub fn ws_accepted(&self) -> usize {
        self.ws.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Websocket connections open now.
    pub fn ws_connections(&self) -> usize {
        self.ws.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every websocket (HA restarting); with `refuse`, new ones fail until `accept_ws`.
    pub fn drop_websockets(&self, refuse: bool) {
        self.ws.refuse.store(refuse, std::sync::atomic::Ordering::SeqCst);
        self.ws.generation.send_modify(|g| *g += 1);
    }

    pub fn accept_websockets(&self) {
        self.ws.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until `pred(calls)` holds, or panics after `timeout`.
    pub async fn wait_calls(&self, timeout: Duration, what: &str, pred: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let calls = self.calls();
                if pred(&calls) {
                    return calls;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let calls = self.calls();
                let mut seen = std::collections::BTreeMap::<String, usize>::new();
                for c in &calls {
                    *seen.entry(format!("{}.{} {}", c.domain, c.service, c.body["entity_id"])).or_default() += 1;
                }
                panic!("timed out waiting for {what}; fake HA saw {} calls: {seen:?}", calls.len());
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> (bool, Option<String>) {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ok = auth.as_deref() == Some(format!("Bearer {}", self.inner.lock().unwrap().token).as_str());
        if !ok {
            self.inner.lock().unwrap().unauthorized += 1;
        }
        (ok, auth)
    }
}

async fn api_root(State(ha): State<FakeHa>, headers: HeaderMap) -> Response {
    ha.inner.lock().unwrap().probes += 1;
    if !ha.authorized(&headers).0 {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    axum::Json(json!({"message": "API running."})).into_response()
}

async fn api_config(State(ha): State<FakeHa>, headers: HeaderMap) -> Response {
    if !ha.authorized(&headers).0 {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    let mut inner = ha.inner.lock().unwrap();
    inner.config_reads += 1;
    let state = inner.core_state.clone().unwrap_or_else(|| "RUNNING".into());
    axum::Json(json!({"version": inner.version, "location_name": "Fake", "components": ["api"], "state": state}))
        .into_response()
}

/// `[{"domain":…,"services":{name: {…,"response":{"optional":…}}}}]`, the
/// `response` key only for services that return one.
async fn api_services(State(ha): State<FakeHa>, headers: HeaderMap) -> Response {
    if !ha.authorized(&headers).0 {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    ha.inner.lock().unwrap().services_reads += 1;
    if let Some(failed) = ha.failing_read("/api/services") {
        return failed;
    }
    let inner = ha.inner.lock().unwrap();
    let mut domains: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for (name, supports) in &inner.services {
        let (domain, service) = name.split_once('.').unwrap();
        let mut description = json!({"name": service, "description": "", "fields": {}});
        match supports {
            Supports::None => {}
            Supports::Optional => description["response"] = json!({"optional": true}),
            Supports::Only => description["response"] = json!({"optional": false}),
        }
        domains.entry(domain.to_owned()).or_default().insert(service.to_owned(), description);
    }
    let list: Vec<Value> = domains.into_iter().map(|(d, s)| json!({"domain": d, "services": s})).collect();
    axum::Json(list).into_response()
}

impl Inner {
    /// HA before 2024.8 has no `?return_response` on REST.
    fn legacy(&self) -> bool {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
        let (year, month) = (parts.next().unwrap_or(u32::MAX), parts.next().unwrap_or(u32::MAX));
        (year, month) < (2024, 8)
    }
}

/// The entity ids a service call's body targets (a string, comma-separated
/// or not, or a list).
fn entity_ids(body: &Value) -> Vec<String> {
    match body.get("entity_id") {
        Some(Value::String(s)) => s.split(',').map(|s| s.trim().to_owned()).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    }
}

/// One service call in flight; dropping it (answered, or the client gave
/// up and the handler was cancelled) ends it.
struct InFlight {
    inner: Arc<Mutex<Inner>>,
    ids: Vec<String>,
}

impl InFlight {
    /// Counts the call and records a same-entity overlap.
    fn begin(inner: &Arc<Mutex<Inner>>, ids: Vec<String>) -> InFlight {
        let mut guard = inner.lock().unwrap();
        let i = &mut *guard;
        i.in_flight += 1;
        i.max_in_flight = i.max_in_flight.max(i.in_flight);
        for id in &ids {
            let n = i.entity_in_flight.entry(id.clone()).or_default();
            if *n > 0 {
                i.overlaps.push(id.clone());
            }
            *n += 1;
        }
        InFlight { inner: inner.clone(), ids }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut i = self.inner.lock().unwrap();
        i.in_flight -= 1;
        for id in &self.ids {
            if let Some(n) = i.entity_in_flight.get_mut(id) {
                *n -= 1;
            }
        }
    }
}

impl Inner {
    /// Stores a state with a fresh, strictly increasing `last_updated`.
    fn put(&mut self, entity_id: &str, state: &str, attributes: Value) -> Value {
        self.clock += 1;
        let at = format!("2026-01-01T00:00:00.{:06}+00:00", self.clock);
        let new = json!({"entity_id": entity_id, "state": state, "attributes": attributes,
                         "last_changed": at, "last_updated": at,
                         "context": {"id": format!("c{}", self.clock), "parent_id": null, "user_id": null}});
        self.states.insert(entity_id.to_owned(), new.clone());
        new
    }
}

async fn all_states(State(ha): State<FakeHa>, headers: HeaderMap) -> Response {
    if !ha.authorized(&headers).0 {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    if let Some(failed) = ha.failing_read("/api/states") {
        return failed;
    }
    let states: Vec<Value> = ha.inner.lock().unwrap().states.values().cloned().collect();
    axum::Json(states).into_response()
}

async fn one_state(State(ha): State<FakeHa>, Path(entity_id): Path<String>, headers: HeaderMap) -> Response {
    if !ha.authorized(&headers).0 {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    match ha.state(&entity_id) {
        Some(s) => axum::Json(s).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Entity not found."}))).into_response(),
    }
}

async fn service(
    State(ha): State<FakeHa>,
    Path((domain, service)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let return_response =
        query.as_deref().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("return_response")));
    let (ok, authorization) = ha.authorized(&headers);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (reply, delay) = {
        let mut inner = ha.inner.lock().unwrap();
        let reply = if ok { inner.script.pop_front() } else { Some(Reply::status(401)) };
        (reply, inner.delay)
    };
    let delay = reply.as_ref().map_or(delay, |r| r.delay.max(delay));
    // Recorded on arrival: a call the client gave up on still reached HA.
    {
        let mut inner = ha.inner.lock().unwrap();
        inner.calls.push(Call {
            domain: domain.clone(),
            service: service.clone(),
            body: body.clone(),
            authorization,
            at: Instant::now(),
            return_response,
        });
    }
    let in_flight = InFlight::begin(&ha.inner, entity_ids(&body));
    ha.changed.notify_waiters();
    tokio::time::sleep(delay).await;
    drop(in_flight);
    match reply {
        Some(r) if r.status != 200 => {
            let mut resp = (StatusCode::from_u16(r.status).unwrap(), format!("{}: scripted", r.status)).into_response();
            if let Some(s) = r.retry_after {
                resp.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
            }
            resp
        }
        _ => ha.answer(&domain, &service, &body, return_response),
    }
}

impl FakeHa {
    /// A 2xx-scripted call, answered as the HA version would.
    fn answer(&self, domain: &str, service: &str, body: &Value, return_response: bool) -> Response {
        let name = format!("{domain}.{service}");
        let (supports, legacy, response) = {
            let inner = self.inner.lock().unwrap();
            let response = inner.responses.get(&name).cloned().unwrap_or_else(
                || json!({"weather.home": {"forecast": [{"datetime": "2026-01-01T12:00:00+00:00", "temperature": 21.5}]}}),
            );
            (inner.services.get(&name).copied(), inner.legacy(), response)
        };
        let bad = |message: &str| (StatusCode::BAD_REQUEST, axum::Json(json!({"message": message}))).into_response();
        if legacy {
            if supports == Some(Supports::Only) {
                // 2024.3: the ServiceValidationError escapes as a server error.
                return (StatusCode::INTERNAL_SERVER_ERROR, "500 Internal Server Error").into_response();
            }
            return axum::Json(self.apply(domain, service, body)).into_response();
        }
        match (return_response, supports.unwrap_or(Supports::None)) {
            (true, Supports::None) => bad("Service does not support responses. Remove return_response from request."),
            (false, Supports::Only) => bad("Service call requires responses but caller did not ask for responses"),
            (true, _) => {
                let changed = self.apply(domain, service, body);
                axum::Json(json!({"changed_states": changed, "service_response": response})).into_response()
            }
            (false, _) => axum::Json(self.apply(domain, service, body)).into_response(),
        }
    }
}

impl FakeHa {
    /// What HA would do: the targeted entities of the domain take a plausible
    /// new state, stored, sent as events, and returned as "changed".
    fn apply(&self, domain: &str, service: &str, body: &Value) -> Value {
        let ids = entity_ids(body);
        let state = if service == "turn_off" { "off" } else { "on" };
        let changed: Vec<Value> = ids
            .into_iter()
            .filter(|id| id.starts_with(&format!("{domain}.")))
            .map(|id| self.set_state(&id, state, json!({"friendly_name": id})))
            .collect();
        Value::Array(changed)
    }
}
