//! An in-process fake of Home Assistant's REST API: records every call and
//! answers as scripted (status, delay, Retry-After), checking the token.
//!
//! For fast logic and fault tests only; the real-HA tier proves the real thing.

use std::collections::VecDeque;
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
struct Inner {
    calls: Vec<Call>,
    unauthorized: usize,
    in_flight: usize,
    script: VecDeque<Reply>,
    delay: Duration,
    token: String,
}

#[derive(Clone)]
pub struct FakeHa {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
}

impl FakeHa {
    pub async fn start(token: &str) -> FakeHa {
        let inner = Arc::new(Mutex::new(Inner { token: token.into(), ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ha = FakeHa { addr, inner, changed: Arc::new(tokio::sync::Notify::new()) };
        let app = Router::new()
            .route("/api/", get(api_root))
            .route("/api/services/{domain}/{service}", post(service))
            .with_state(ha.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ha
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
                panic!("timed out waiting for {what}; fake HA saw {} calls", self.calls().len());
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
    if !ha.authorized(&headers).0 {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    axum::Json(json!({"message": "API running."})).into_response()
}

async fn service(
    State(ha): State<FakeHa>,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
        });
        inner.in_flight += 1;
    }
    ha.changed.notify_waiters();
    tokio::time::sleep(delay).await;
    ha.inner.lock().unwrap().in_flight -= 1;
    match reply {
        Some(r) if r.status != 200 => {
            let mut resp = (StatusCode::from_u16(r.status).unwrap(), format!("{}: scripted", r.status)).into_response();
            if let Some(s) = r.retry_after {
                resp.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
            }
            resp
        }
        _ => axum::Json(changed_states(&domain, &service, &body)).into_response(),
    }
}

/// What HA would return: the targeted entities with a plausible new state.
fn changed_states(domain: &str, service: &str, body: &Value) -> Value {
    let ids: Vec<String> = match body.get("entity_id") {
        Some(Value::String(s)) => s.split(',').map(|s| s.trim().to_owned()).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    };
    let state = if service == "turn_off" { "off" } else { "on" };
    Value::Array(
        ids.into_iter()
            .filter(|id| id.starts_with(&format!("{domain}.")))
            .map(|id| {
                json!({"entity_id": id, "state": state, "attributes": {"friendly_name": id},
                       "last_changed": "2026-01-01T00:00:00+00:00", "last_updated": "2026-01-01T00:00:00+00:00",
                       "context": {"id": "x", "parent_id": null, "user_id": null}})
            })
            .collect(),
    )
}
