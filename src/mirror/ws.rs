//! Home Assistant's websocket protocol, the part the mirror speaks: auth,
//! `subscribe_events` for `state_changed`, ping/pong. Message building and
//! parsing are pure; [`connect`] opens the socket (TLS through our own
//! rustls configuration).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use serde_json::value::RawValue;

use crate::state_json::RawState;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One message from HA, as far as the mirror cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    AuthRequired,
    AuthOk,
    AuthInvalid(String),
    Result {
        id: u64,
        success: bool,
        error: Option<String>,
    },
    /// A `state_changed` event of subscription `id`; `new_state` as HA
    /// sent it (JSON text, parsed only if the mirror needs it).
    StateChanged {
        id: u64,
        entity_id: String,
        new_state: Option<RawState>,
    },
    Pong {
        id: u64,
    },
    Other,
}

/// Parses one text frame (a message, or a list when HA coalesces).
///
/// Typed and borrowing: a `state_changed` event's `old_state` (half of
/// every event) and the `result` of command answers are skipped without
/// being built, and `new_state` is kept as text (see [`RawState`]).
pub fn parse(text: &str) -> Vec<Incoming> {
    if text.trim_start().starts_with('[') {
        // Each message on its own: one HA cannot be read costs only itself.
        match serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text) {
            Ok(items) => items.iter().map(|item| parse_one(item.get())).collect(),
            Err(_) => vec![Incoming::Other],
        }
    } else {
        vec![parse_one(text)]
    }
}

/// The parts of a websocket message the mirror reads.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default, borrow)]
    event: Option<Event<'a>>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(serde::Deserialize)]
struct EventData {
    #[serde(default)]
    entity_id: Option<String>,
    #[serde(default)]
    new_state: Option<Box<RawValue>>,
}

fn parse_one(text: &str) -> Incoming {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else { return Incoming::Other };
    let id = frame.id.unwrap_or(0);
    match frame.kind.as_deref() {
        Some("auth_required") => Incoming::AuthRequired,
        Some("auth_ok") => Incoming::AuthOk,
        Some("auth_invalid") => Incoming::AuthInvalid(frame.message.unwrap_or_else(|| "invalid token".to_owned())),
        Some("result") => {
            Incoming::Result { id, success: frame.success.unwrap_or(false), error: frame.error.and_then(|e| e.message) }
        }
        Some("pong") => Incoming::Pong { id },
        Some("event") => {
            let Some(event) = frame.event.filter(|e| e.event_type.as_deref() == Some("state_changed")) else {
                return Incoming::Other;
            };
            match event.data {
                Some(EventData { entity_id: Some(entity_id), new_state }) => Incoming::StateChanged {
                    id,
                    entity_id,
                    new_state: new_state.filter(|s| s.get() != "null").map(RawState::new),
                },
                _ => Incoming::Other,
            }
        }
        _ => Incoming::Other,
    }
}

pub fn auth(token: &SecretString) -> String {
    json!({"type": "auth", "access_token": token.expose_secret()}).to_string()
}

pub fn subscribe_state_changed(id: u64) -> String {
    json!({"id": id, "type": "subscribe_events", "event_type": "state_changed"}).to_string()
}

pub fn ping(id: u64) -> String {
    json!({"id": id, "type": "ping"}).to_string()
}

/// Buffers sized for HA's messages. tungstenite zero-fills the free part
/// of its read buffer before every read (128 KiB by default): with events
/// of a few hundred bytes that was a quarter of the gateway's work per
/// command. A larger message takes a few more reads.
fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER)
}

/// The websocket's read buffer.
const READ_BUFFER: usize = 8 * 1024;

/// Opens the websocket (no auth yet).
pub async fn connect(
    url: &Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), Some(config()), true, connector);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(result) => result.map(|(socket, _)| socket),
        Err(_) => Err(tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "websocket connect timed out",
        ))),
    }
}

/// rustls for `wss://`: webpki roots plus `home_assistant.ca_file`.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls::pki_types::CertificateDer<'static> =
                cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawState {
        RawState::new(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[test]
    fn messages_parse() {
        let table: [(&str, Incoming); 8] = [
            (r#"{"type":"auth_required","ha_version":"2024.3.3"}"#, Incoming::AuthRequired),
            (r#"{"type":"auth_ok"}"#, Incoming::AuthOk),
            (
                r#"{"type":"auth_invalid","message":"Invalid access token or password"}"#,
                Incoming::AuthInvalid("Invalid access token or password".into()),
            ),
            (
                r#"{"id":1,"type":"result","success":true,"result":null}"#,
                Incoming::Result { id: 1, success: true, error: None },
            ),
            (
                r#"{"id":2,"type":"result","success":false,"error":{"code":"x","message":"nope"}}"#,
                Incoming::Result { id: 2, success: false, error: Some("nope".into()) },
            ),
            (r#"{"id":3,"type":"pong"}"#, Incoming::Pong { id: 3 }),
            (r#"{"id":1,"type":"event","event":{"event_type":"call_service","data":{}}}"#, Incoming::Other),
            ("not json", Incoming::Other),
        ];
        for (text, expected) in table {
            assert_eq!(parse(text), vec![expected], "{text}");
        }
    }

    #[test]
    fn state_changes_parse_including_removals() {
        let changed = r#"{"id":1,"type":"event","event":{"event_type":"state_changed","data":{"entity_id":"light.a","old_state":null,"new_state":{"entity_id":"light.a","state":"on"}}}}"#;
        assert_eq!(
            parse(changed),
            vec![Incoming::StateChanged {
                id: 1,
                entity_id: "light.a".into(),
                new_state: Some(raw(r#"{"entity_id":"light.a","state":"on"}"#))
            }]
        );
        let removed = r#"[{"id":1,"type":"event","event":{"event_type":"state_changed","data":{"entity_id":"light.a","old_state":{},"new_state":null}}}]"#;
        assert_eq!(
            parse(removed),
            vec![Incoming::StateChanged { id: 1, entity_id: "light.a".into(), new_state: None }]
        );
    }

    #[test]
    fn what_the_mirror_does_not_read_does_not_matter() {
        // Whatever old_state, result, context or origin hold, and in which
        // order the keys come, only new_state is read.
        let event = r#"{"type":"event","event":{"data":{"old_state":{"entity_id":"light.a","state":"off","attributes":{"x":[1,{"y":null}]}},
            "new_state":{"entity_id":"light.a","state":"on","attributes":{"b":"\u00e9\n"}},"entity_id":"light.a"},
            "event_type":"state_changed","origin":"LOCAL","time_fired":"t","context":{"id":"c"}},"id":7}"#;
        let want = Incoming::StateChanged {
            id: 7,
            entity_id: "light.a".into(),
            new_state: Some(raw(r#"{"entity_id":"light.a","state":"on","attributes":{"b":"\u00e9\n"}}"#)),
        };
        assert_eq!(parse(event), vec![want.clone()]);
        let Incoming::StateChanged { new_state: Some(state), .. } = &want else { unreachable!() };
        assert_eq!(state.parse(), Some(json!({"entity_id":"light.a","state":"on","attributes":{"b":"é\n"}})));
        assert_eq!(state.entity_id(), Some("light.a"));
        let table: [(&str, Vec<Incoming>); 5] = [
            (
                r#"{"id":2,"type":"result","success":true,"result":[{"entity_id":"a","state":"on"}]}"#,
                vec![Incoming::Result { id: 2, success: true, error: None }],
            ),
            // A list is read message by message: one HA cannot be read costs only itself.
            (
                &format!(r#"[{event}, {{"id":"not a number","type":"pong"}}, {{"id":3,"type":"pong"}}]"#),
                vec![want, Incoming::Other, Incoming::Pong { id: 3 }],
            ),
            (
                r#"{"id":1,"type":"event","event":{"event_type":"state_changed","data":{"new_state":{}}}}"#,
                vec![Incoming::Other],
            ),
            (r#"{"type":"auth_invalid"}"#, vec![Incoming::AuthInvalid("invalid token".into())]),
            ("[not json", vec![Incoming::Other]),
        ];
        for (text, expected) in table {
            assert_eq!(parse(text), expected, "{text}");
        }
    }

    #[test]
    fn the_token_goes_only_into_the_auth_message() {
        let token = SecretString::from("tok-123");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&auth(&token)).unwrap(),
            json!({"type":"auth","access_token":"tok-123"})
        );
        assert!(!subscribe_state_changed(1).contains("tok"));
    }
}
