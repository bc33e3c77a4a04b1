//! The console's HTTP handlers under `/ui/`. Each checks the gate
//! ([`super::auth`]) first: reads need a session when a password is set,
//! and every POST needs the session's CSRF token. Answers are JSON built
//! from the journal, health flags and the rules; none carries a secret.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::auth::{self, Refused, Request};
use super::journal::{Entry, Filter};
use super::{assets, tester, Console, Replay};
use crate::admission;
use crate::metrics::Health;

/// How long a replay waits for its outcome before answering "still queued".
pub const REPLAY_WAIT: Duration = Duration::from_secs(10);
/// Buckets the status chart shows (15 minutes).
const CHART_BUCKETS: usize = 90;

/// Every route of the console.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(assets::index))
        .route("/ui/{file}", get(assets::file))
        .route("/ui/api/session", get(session))
        .route("/ui/api/login", post(login))
        .route("/ui/api/logout", post(logout))
        .route("/ui/api/live", get(live))
        .route("/ui/api/history", get(history))
        .route("/ui/api/status", get(status))
        .route("/ui/api/test", post(test))
        .route("/ui/api/dead-letters", get(dead_letters))
        .route("/ui/api/dead-letters/{id}/replay", post(replay))
        .route("/ui/api/config", get(config))
        .layer(axum::middleware::map_response(assets::harden))
        .with_state(console)
}

fn text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    auth::session_cookie(text(headers, header::COOKIE))
}

/// The gate for one request; `changes`: a POST.
fn gate(c: &Console, headers: &HeaderMap, changes: bool) -> Result<(), Refused> {
    let request = Request {
        host: text(headers, header::HOST),
        cookie: cookie(headers),
        csrf: text(headers, auth::CSRF_HEADER),
        bearer: text(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")),
        changes,
    };
    c.auth.check(&request, Instant::now())
}

fn refusal(why: Refused) -> Response {
    let status = match why {
        Refused::Login => StatusCode::UNAUTHORIZED,
        Refused::Csrf | Refused::Host => StatusCode::FORBIDDEN,
        Refused::TooMany => StatusCode::TOO_MANY_REQUESTS,
    };
    (status, Json(json!({"error": why.to_string()}))).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn with_cookie(mut response: Response, id: Option<&str>) -> Response {
    let value = HeaderValue::from_str(&auth::set_cookie(id)).expect("a hex id makes a valid header value");
    response.headers_mut().insert(header::SET_COOKIE, value);
    response
}

/// Whether a login is needed, and this browser's session (opened at once
/// when no password is set and the host is local).
async fn session(State(c): State<Console>, headers: HeaderMap) -> Response {
    let required = c.auth.login_required();
    let now = Instant::now();
    if let Some(csrf) = c.auth.session(cookie(&headers), now) {
        return Json(json!({"login_required": required, "logged_in": true, "csrf": csrf})).into_response();
    }
    if required {
        return Json(json!({"login_required": true, "logged_in": false})).into_response();
    }
    match c.auth.open_without_login(text(&headers, header::HOST), now) {
        Ok((id, csrf)) => with_cookie(
            Json(json!({"login_required": false, "logged_in": true, "csrf": csrf})).into_response(),
            Some(&id),
        ),
        Err(why) => refusal(why),
    }
}

#[derive(Deserialize)]
struct Login {
    password: String,
}

async fn login(State(c): State<Console>, Json(body): Json<Login>) -> Response {
    match c.auth.login(&body.password, Instant::now()) {
        Ok((id, csrf)) => with_cookie(Json(json!({"logged_in": true, "csrf": csrf})).into_response(), Some(&id)),
        Err(why) => {
            tracing::warn!(reason = %why, "web console login refused");
            refusal(why)
        }
    }
}

async fn logout(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Err(why) = gate(&c, &headers, true) {
        return refusal(why);
    }
    c.auth.logout(cookie(&headers));
    with_cookie(StatusCode::NO_CONTENT.into_response(), None)
}

/// `?topic=…&entity=…&outcome=…&after=…&limit=…`
fn query(raw: Option<&str>) -> (Filter, Option<u64>, Option<usize>) {
    let mut filter = Filter::default();
    let (mut after, mut limit) = (None, None);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "topic" => filter.topic = v.into_owned(),
            "entity" => filter.entity = v.into_owned(),
            "outcome" => filter.outcome = v.into_owned(),
            "after" => after = v.parse().ok(),
            "limit" => limit = v.parse().ok(),
            _ => {}
        }
    }
    (filter, after, limit)
}

fn entries_json(entries: &[Arc<Entry>]) -> Value {
    Value::Array(entries.iter().map(|e| e.to_json()).collect())
}

/// The newest outcomes matching the filter, as JSON (no stream).
async fn history(State(c): State<Console>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(why) = gate(&c, &headers, false) {
        return refusal(why);
    }
    let (filter, _, limit) = query(raw.as_deref());
    let entries = c.journal.recent(&filter, limit.unwrap_or(usize::MAX));
    Json(json!({"last": c.journal.last_id(), "entries": entries_json(&entries)})).into_response()
}

/// Server-sent events: the kept outcomes after `after` (or `Last-Event-ID`)
/// that match the filter, then each new one as it is recorded, in batches.
async fn live(State(c): State<Console>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(why) = gate(&c, &headers, false) {
        return refusal(why);
    }
    let (filter, after, _) = query(raw.as_deref());
    let resumed = text(&headers, "last-event-id").and_then(|v| v.parse().ok());
    let after = resumed.or(after).unwrap_or(0);
    Sse::new(stream(c, filter, after)).keep_alive(KeepAlive::default()).into_response()
}

fn stream(c: Console, filter: Filter, after: u64) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((c, filter, after), |(c, filter, mut after)| async move {
        let entries = loop {
            let changed = c.journal.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let batch = c.journal.since(after, &filter);
            after = batch.last;
            if !batch.entries.is_empty() {
                break batch.entries;
            }
            tokio::select! {
                _ = changed => {}
                // The HTTP server waits for open connections at shutdown: end the stream.
                _ = c.shutdown.cancelled() => return None,
            }
        };
        let event = Event::default().id(after.to_string()).event("entries").data(entries_json(&entries).to_string());
        Some((Ok(event), (c, filter, after)))
    })
}

async fn status(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Err(why) = gate(&c, &headers, false) {
        return refusal(why);
    }
    let h = &c.health;
    let mut body = json!({
        "gateway": {"version": env!("CARGO_PKG_VERSION"), "dry_run": c.dry_run, "uptime_seconds": c.journal.now()},
        "mqtt": {"connected": Health::get(&h.mqtt_connected)},
        "home_assistant": {
            "reachable": Health::get(&h.ha_reachable),
            "token_accepted": Health::get(&h.ha_token_ok),
            "auth_gate": if (c.gate_open)() { "open" } else { "closed: the token was refused; nothing is sent until it changes or a probe passes" },
            "websocket": c.metrics.ha_websocket_connected.get() == 1,
            "version": c.known.version().map(|v| v.to_string()),
        },
        "queue": {"depth": c.slots.held(), "capacity": c.metrics.queue_capacity.get()},
    });
    if let (Value::Object(m), Value::Object(stats)) = (&mut body, c.journal.stats(CHART_BUCKETS)) {
        m.extend(stats);
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
struct TestRequest {
    topic: String,
    #[serde(default)]
    payload: String,
}

/// The route tester: `admission::decide` on the rules in force, no side effect.
async fn test(State(c): State<Console>, headers: HeaderMap, Json(body): Json<TestRequest>) -> Response {
    if let Err(why) = gate(&c, &headers, true) {
        return refusal(why);
    }
    if body.topic.is_empty() || body.topic.contains(['+', '#']) {
        return error(StatusCode::BAD_REQUEST, "a topic to test: a name without + or # wildcards");
    }
    let rules = Arc::clone(&c.rules.borrow());
    let a = &c.admission;
    let ctx = admission::Context {
        prefix: &a.prefix,
        rules: &rules,
        limits: &a.limits,
        state_filter: &a.state_filter,
        max_age: a.max_age,
    };
    Json(tester::evaluate(&ctx, &body.topic, body.payload.as_bytes())).into_response()
}

async fn dead_letters(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Err(why) = gate(&c, &headers, false) {
        return refusal(why);
    }
    let list: Vec<Value> = c.journal.dead_letters().iter().map(|d| d.to_json()).collect();
    Json(json!({"dead_letters": list})).into_response()
}

/// Sends a dead letter's message through ingress again (admission, access
/// check, queue, HA, result) and answers with its outcome, or says it is
/// still on its way after [`REPLAY_WAIT`].
async fn replay(State(c): State<Console>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    if let Err(why) = gate(&c, &headers, true) {
        return refusal(why);
    }
    let Some(dead) = c.journal.dead_letter(id) else {
        return error(StatusCode::NOT_FOUND, format!("no dead letter {id} (only the last ones are kept)"));
    };
    let after = c.journal.last_id();
    let (admitted, seq) = oneshot::channel();
    let replay = Replay { topic: dead.topic.to_string(), payload: dead.payload.clone(), admitted };
    if c.replays.try_send(replay).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many replays waiting; try again");
    }
    let deadline = Instant::now() + REPLAY_WAIT;
    let Ok(Ok(seq)) = tokio::time::timeout_at(deadline, seq).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is not taking messages now (shutting down?)");
    };
    tracing::info!(dead_letter = id, topic = %dead.topic, "dead letter replayed from the web console");
    loop {
        let changed = c.journal.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let results = c.journal.of_message(seq, after);
        if !results.is_empty() {
            return Json(json!({"replayed": id, "pending": false, "results": entries_json(&results)})).into_response();
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Json(json!({"replayed": id, "pending": true, "results": []})).into_response();
            }
        }
    }
}

async fn config(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Err(why) = gate(&c, &headers, false) {
        return refusal(why);
    }
    let state = c.config.borrow().clone();
    Json(state).into_response()
}
