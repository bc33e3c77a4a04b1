//! Home Assistant's websocket protocol, the part the mirror speaks: auth,
//! `subscribe_events` for `state_changed`, ping/pong. Message building and
//! parsing are pure; [`connect`] opens the socket (TLS through our own
//! rustls configuration).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
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
    /// A `state_changed` event of subscription `id`.
    StateChanged {
        id: u64,
        entity_id: String,
        new_state: Option<Value>,
    },
    Pong {
        id: u64,
    },
    Other,
}

/// Parses one text frame (a message, or a list when HA coalesces).
pub fn parse(text: &str) -> Vec<Incoming> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items.iter().map(parse_one).collect(),
        Ok(v) => vec![parse_one(&v)],
        Err(_) => vec![Incoming::Other],
    }
}

fn parse_one(v: &Value) -> Incoming {
    let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
    match v.get("type").and_then(Value::as_str) {
        Some("auth_required") => Incoming::AuthRequired,
        Some("auth_ok") => Incoming::AuthOk,
        Some("auth_invalid") => {
            Incoming::AuthInvalid(v.get("message").and_then(Value::as_str).unwrap_or("invalid token").to_owned())
        }
        Some("result") => Incoming::Result {
            id,
            success: v.get("success").and_then(Value::as_bool).unwrap_or(false),
            error: v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned),
        },
        Some("pong") => Incoming::Pong { id },
        Some("event") if v.pointer("/event/event_type").and_then(Value::as_str) == Some("state_changed") => {
            let Some(entity_id) = v.pointer("/event/data/entity_id").and_then(Value::as_str) else {
                return Incoming::Other;
            };
            let new_state = v.pointer("/event/data/new_state").filter(|s| !s.is_null()).cloned();
            Incoming::StateChanged { id, entity_id: entity_id.to_owned(), new_state }
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

/// Opens the websocket (no auth yet).
pub async fn connect(
    url: &Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, connector);
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
                new_state: Some(json!({"entity_id":"light.a","state":"on"}))
            }]
        );
        let removed = r#"[{"id":1,"type":"event","event":{"event_type":"state_changed","data":{"entity_id":"light.a","old_state":{},"new_state":null}}}]"#;
        assert_eq!(
            parse(removed),
            vec![Incoming::StateChanged { id: 1, entity_id: "light.a".into(), new_state: None }]
        );
    }

    #[test]
    fn the_token_goes_only_into_the_auth_message() {
        let token = SecretString::from("tok-123");
        assert_eq!(
            serde_json::from_str::<Value>(&auth(&token)).unwrap(),
            json!({"type":"auth","access_token":"tok-123"})
        );
        assert!(!subscribe_state_changed(1).contains("tok"));
    }
}
