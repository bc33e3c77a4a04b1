//! The fake HA's websocket API: `auth_required` → `auth` → `auth_ok` /
//! `auth_invalid`, `subscribe_events` for `state_changed`, `ping` → `pong`.
//! Tests can drop every connection (HA restarting) and refuse new ones.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::fake_ha::FakeHa;

#[derive(Debug)]
pub struct WsControl {
    pub open: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicUsize,
    pub refuse: AtomicBool,
    /// Bumped to close every open connection.
    pub generation: tokio::sync::watch::Sender<u64>,
}

impl Default for WsControl {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            refuse: AtomicBool::new(false),
            generation: tokio::sync::watch::channel(0).0,
        }
    }
}

pub async fn upgrade(State(ha): State<FakeHa>, ws: WebSocketUpgrade) -> Response {
    if ha.ws.refuse.load(Ordering::SeqCst) {
        return axum::response::IntoResponse::into_response((axum::http::StatusCode::BAD_GATEWAY, "restarting"));
    }
    ws.on_upgrade(move |socket| session(ha, socket))
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket.send(Message::text(v.to_string())).await.is_ok()
}

async fn session(ha: FakeHa, mut socket: WebSocket) {
    let mut generation = ha.ws.generation.subscribe();
    generation.borrow_and_update();
    ha.ws.open.fetch_add(1, Ordering::SeqCst);
    ha.ws.accepted.fetch_add(1, Ordering::SeqCst);
    serve(&ha, &mut socket, &mut generation).await;
    ha.ws.open.fetch_sub(1, Ordering::SeqCst);
}

async fn serve(ha: &FakeHa, socket: &mut WebSocket, generation: &mut tokio::sync::watch::Receiver<u64>) {
    if !send(socket, json!({"type": "auth_required", "ha_version": "fake"})).await {
        return;
    }
    let Some(Ok(Message::Text(auth))) = socket.recv().await else { return };
    let auth: Value = serde_json::from_str(&auth).unwrap_or_default();
    let token = ha.inner.lock().unwrap().token.clone();
    if auth["type"] != "auth" || auth["access_token"] != token.as_str() {
        send(socket, json!({"type": "auth_invalid", "message": "Invalid access token or password"})).await;
        return;
    }
    let version = ha.inner.lock().unwrap().version.clone();
    send(socket, json!({"type": "auth_ok", "ha_version": version})).await;
    let mut events = ha.events.subscribe();
    let mut subscription: Option<u64> = None;
    loop {
        tokio::select! {
            _ = generation.changed() => return,
            msg = socket.recv() => {
                let Some(Ok(Message::Text(text))) = msg else { return };
                let msg: Value = serde_json::from_str(&text).unwrap_or_default();
                let id = msg["id"].as_u64().unwrap_or(0);
                let reply = match msg["type"].as_str() {
                    Some("subscribe_events") if msg["event_type"] == "state_changed" => {
                        subscription = Some(id);
                        json!({"id": id, "type": "result", "success": true, "result": null})
                    }
                    Some("ping") => json!({"id": id, "type": "pong"}),
                    _ => json!({"id": id, "type": "result", "success": false, "error": {"code": "unknown_command", "message": "Unknown command."}}),
                };
                if !send(socket, reply).await {
                    return;
                }
            }
            event = events.recv() => {
                let Ok(data) = event else { return };
                if let Some(id) = subscription {
                    let msg = json!({"id": id, "type": "event", "event": {"event_type": "state_changed", "data": data, "origin": "LOCAL"}});
                    if !send(socket, msg).await {
                        return;
                    }
                }
            }
        }
    }
}
