//! Home Assistant REST client: one keep-alive HTTP client, the Bearer token,
//! timeouts, and the classification of every answer into [`HaError`] kinds.
//!
//! Owns nothing about retries or queues; it makes one attempt per call and
//! says what happened. The token never reaches a log, an error or a metric.

mod auth;
pub mod catalogue;
mod error;
mod token;
pub mod version;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

pub use auth::{AuthGate, GateClosed, Pass};
pub use catalogue::{Ask, Catalogue, Known, Refusal, ResponseSupport};
pub use error::{parse_retry_after, HaError, HaErrorKind, Retry};
pub use token::{token_channel, watch_token};
pub use version::HaVersion;

use crate::backoff::Backoff;
use crate::command::{Action, ServiceCall};
use crate::secret::SecretSource;
use crate::state_json::RawState;

/// Largest successful answer read. `GET /api/states` of a home with 10 000+
/// entities is several MiB, and a service call that touches every entity
/// returns as many states: one cap with ten times that room serves both, and
/// a misbehaving proxy cannot make the gateway allocate without bound.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// Of an error's body only the start goes into the message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `[home_assistant]`, validated (built by `config`).
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// Base URL without a trailing slash.
    pub url: Url,
    pub token: SecretSource,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// `None`: derived from `url`.
    pub websocket_url: Option<Url>,
    pub max_attempts: NonZeroU32,
    pub retry: Backoff,
    pub auth_backoff: Duration,
    pub probe_interval: Duration,
}

/// What a successful service call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResponse {
    pub status: u16,
    /// The states HA reports as changed by the call, as HA sent them.
    pub changed: Vec<RawState>,
    /// `service_response`, when asked for with `?return_response` and HA
    /// returned it (HA before 2024.8 ignores the query and returns none).
    pub response: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct HaClient {
    http: reqwest::Client,
    base: Url,
    pub gate: AuthGate,
    /// HA's version and services catalogue, shared by every clone.
    pub known: Known,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read home_assistant.ca_file: {0}")]
    CaFile(std::io::Error),
    #[error("home_assistant.ca_file is not a PEM certificate: {0}")]
    CaPem(reqwest::Error),
    #[error("cannot build the http client: {0}")]
    Http(reqwest::Error),
}

impl HaClient {
    pub fn new(config: &HaConfig, gate: AuthGate) -> Result<Self, ClientBuildError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("mqtt-ha-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(ClientBuildError::CaFile)?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(ClientBuildError::CaPem)?;
            builder = builder.add_root_certificate(cert);
        }
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self { http: builder.build().map_err(ClientBuildError::Http)?, base, gate, known: Known::default() })
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("paths built from validated slugs always join")
    }

    fn bearer(&self) -> HeaderValue {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.gate.token().expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token-characters"));
        v.set_sensitive(true);
        v
    }

    /// One attempt of `POST /api/services/<domain>/<service>`, with
    /// `?return_response` when `return_response`.
    pub async fn call_service(&self, call: &ServiceCall, return_response: bool) -> Result<CallResponse, HaError> {
        let mut url = self.url(&service_path(call));
        if return_response {
            url.set_query(Some("return_response"));
        }
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, self.bearer())
            .json(&call.data)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let (status, body) = match self.check_status(response).await {
            Err(e) if e.status == Some(400) => return Err(self.unless_starting(e).await),
            other => other?,
        };
        call_response(status, &body)
    }

    /// One attempt of an action: a service call (asking for the response
    /// when `return_response`), or reading one state (`GET
    /// /api/states/<entity_id>`, reported as the only "changed" state).
    pub async fn execute(&self, action: &Action, return_response: bool) -> Result<CallResponse, HaError> {
        match action {
            Action::Call(call) => self.call_service(call, return_response).await,
            Action::Get(entity) => {
                // Kept as HA's text, as a call's changed states are.
                let (status, state) = self.get_json(&format!("api/states/{entity}")).await?;
                Ok(CallResponse { status, changed: vec![RawState::new(state)], response: None })
            }
        }
    }

    /// A 400 from an HA that is still starting is not the call's fault: its
    /// REST API answers before every integration has registered its
    /// services ("service not found"; 2024.3 says only "400: Bad Request").
    /// Then it becomes a server error, retried like a 503; from a running
    /// HA (or when HA's state cannot be read) the 400 stands.
    async fn unless_starting(&self, e: HaError) -> HaError {
        let Ok((_, config)) = self.get_json::<Value>("api/config").await else { return e };
        match config.get("state").and_then(Value::as_str) {
            Some(state) if state != "RUNNING" => HaError {
                kind: HaErrorKind::Server,
                message: format!("home assistant is not running yet (state {state}): {}", e.message),
                ..e
            },
            _ => e,
        }
    }

    /// `GET /api/config`'s `version`, parsed (`None`: not a version we can read).
    pub async fn get_version(&self) -> Result<(String, Option<HaVersion>), HaError> {
        let (status, config) = self.get_json::<Value>("api/config").await?;
        let Some(text) = config.get("version").and_then(Value::as_str) else {
            return Err(HaError::new(HaErrorKind::InvalidResponse, Some(status), "config has no version"));
        };
        Ok((text.to_owned(), HaVersion::parse(text)))
    }

    /// `GET /api/services`: which services return a response.
    pub async fn get_services(&self) -> Result<Catalogue, HaError> {
        let (status, services) = self.get_json::<Value>("api/services").await?;
        Catalogue::parse(&services).map_err(|e| HaError::new(HaErrorKind::InvalidResponse, Some(status), e.to_string()))
    }

    /// `GET /api/states`: every entity's state.
    pub async fn get_states(&self) -> Result<Vec<Value>, HaError> {
        match self.get_json::<Value>("api/states").await? {
            (_, Value::Array(states)) => Ok(states),
            (status, _) => Err(HaError::new(HaErrorKind::InvalidResponse, Some(status), "states are not a list")),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<(u16, T), HaError> {
        let response = self
            .http
            .get(self.url(path))
            .header(AUTHORIZATION, self.bearer())
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let (status, body) = self.check_status(response).await?;
        let value = serde_json::from_slice(&body)
            .map_err(|_| HaError::new(HaErrorKind::InvalidResponse, Some(status), "response is not JSON"))?;
        Ok((status, value))
    }

    /// The websocket API's URL: `ws(s)://…/api/websocket` under the base URL.
    pub fn websocket_url(&self) -> Url {
        let mut url = self.url("api/websocket");
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).expect("http(s) URLs can become ws(s) URLs");
        url
    }

    /// The token as an HTTP header value (for the websocket client).
    pub fn token(&self) -> secrecy::SecretString {
        self.gate.token()
    }

    /// `GET /api/`: HA is up and accepts the token.
    pub async fn probe(&self) -> Result<(), HaError> {
        let response = self
            .http
            .get(self.url("api/"))
            .header(AUTHORIZATION, self.bearer())
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        self.check_status(response).await.map(|_| ())
    }

    /// 2xx → status and body; otherwise the classified error. Tells the gate
    /// about 401/403 and about every accepted answer.
    async fn check_status(&self, response: reqwest::Response) -> Result<(u16, Vec<u8>), HaError> {
        let status = response.status().as_u16();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        if (200..300).contains(&status) {
            let (body, whole) = read_at_most(response, MAX_BODY).await.map_err(|e| self.transport_error(e))?;
            self.gate.accepted();
            if !whole {
                let message = format!("response body over {MAX_BODY} bytes");
                return Err(HaError::new(HaErrorKind::InvalidResponse, Some(status), message));
            }
            return Ok((status, body));
        }
        // The status decides the kind; the body only explains it.
        let (body, _) = read_at_most(response, MAX_ERROR_BODY).await.map_err(|e| self.transport_error(e))?;
        let kind = HaError::kind_for_status(status);
        if kind == HaErrorKind::Unauthorized {
            self.gate.refused();
        } else {
            self.gate.accepted();
        }
        let mut message = String::from_utf8_lossy(&body[..body.len().min(200)]).replace(['\n', '\r'], " ");
        if message.is_empty() {
            message = format!("http {status}");
        }
        Err(HaError { kind, status: Some(status), retry_after, message })
    }
}

impl HaClient {
    fn transport_error(&self, e: reqwest::Error) -> HaError {
        self.gate.inconclusive();
        transport_error(e)
    }
}

/// At most `limit` bytes of the body, and whether that was all of it. A
/// declared length over the limit is not read at all; otherwise reading stops
/// at the first chunk past the limit (dropping the response closes the
/// connection).
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok((Vec::new(), false));
    }
    let mut body = Vec::with_capacity(response.content_length().map_or(0, |n| n as usize));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// A service call's answer: a list of changed states (HA before 2024.8, or
/// not asked), or `{"changed_states": […], "service_response": …}`. The
/// states are kept as HA's text (see [`RawState`]).
pub fn call_response(status: u16, body: &[u8]) -> Result<CallResponse, HaError> {
    #[derive(serde::Deserialize)]
    struct WithResponse {
        changed_states: Vec<Box<serde_json::value::RawValue>>,
        #[serde(default)]
        service_response: Option<Value>,
    }
    let parsed = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => crate::state_json::list(body).map(|changed| CallResponse { status, changed, response: None }),
        _ => serde_json::from_slice::<WithResponse>(body).map(|w| CallResponse {
            status,
            changed: w.changed_states.into_iter().map(RawState::new).collect(),
            response: w.service_response,
        }),
    };
    parsed.map_err(|_| {
        let message = match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => "response is not a list of states",
            Err(_) => "response is not JSON",
        };
        HaError::new(HaErrorKind::InvalidResponse, Some(status), message)
    })
}

/// `api/services/<domain>/<service>`, relative to the base URL: both parts
/// are slugs, so the path has exactly these three levels.
pub fn service_path(call: &ServiceCall) -> String {
    format!("api/services/{}/{}", call.domain, call.service)
}

/// Whether rustls refused the peer somewhere in the error's chain. An
/// `io::Error` hides the error it wraps from `source()` (hyper nests two),
/// so step into it instead.
fn is_tls_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return true;
        }
        current = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

fn transport_error(e: reqwest::Error) -> HaError {
    let kind = if is_tls_refusal(&e) {
        HaErrorKind::Tls
    } else if e.is_connect() {
        HaErrorKind::Connect
    } else if e.is_timeout() {
        HaErrorKind::Timeout
    } else {
        HaErrorKind::Transport
    };
    // The URL is dropped and headers never appear in reqwest's messages:
    // the token cannot leak here. The source chain says what really failed
    // ("connection refused", "dns error"…).
    HaError::new(kind, None, crate::describe_error(&e.without_url()))
}

#[cfg(test)]
mod tests;
