//! The state mirror: Home Assistant's states, live, as retained MQTT
//! messages.
//!
//! One task holds a websocket to HA: authenticate, subscribe to
//! `state_changed`, learn which HA it is (`Mirror::discover`), take a
//! snapshot (`GET /api/states`), then publish every change of a mirrored
//! entity through [`StateOut`]. It reconnects with backoff, never while the
//! auth gate is closed, resyncs after every gap and after every new broker
//! connection, and keeps `<prefix>/ha_status` (`online`/`offline`, retained)
//! true. It sends no service calls.
//!
//! The websocket is where the gateway notices a new connection to HA (a
//! restart drops it): so each session, and nothing else, reads HA's version
//! (`GET /api/config`) and services catalogue (`GET /api/services`) into
//! `HaClient::known`, logs `Home Assistant <version>` and sets `ha_info`.

mod filter;
mod out;
pub(crate) mod pyjson;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use filter::StateFilter;
pub use out::{Layout, StateOptions, StateOut, Statestream};
pub use ws::{tls_config, Incoming};

use crate::backoff::Backoff;
use crate::ha::{Catalogue, HaClient, HaError};
use crate::metrics::{Health, Metrics};
use crate::topic::TopicPrefix;

/// How often the websocket is pinged; a missing pong by the next ping ends it.
pub const PING_EVERY: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SUBSCRIPTION: u64 = 1;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("websocket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("home assistant refused the token on the websocket: {0}")]
    Auth(String),
    #[error("unexpected websocket message during {0}")]
    Protocol(&'static str),
    #[error("subscribing to state changes failed: {0}")]
    Subscribe(String),
    #[error("the websocket closed")]
    Closed,
    #[error("no pong within {0:?}")]
    PongTimeout(Duration),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::ha::HaError),
    #[error("reading home assistant's version and services: {0}")]
    Discover(HaError),
}

pub struct Mirror {
    pub ha: HaClient,
    pub url: Url,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub out: Arc<StateOut>,
    pub client: AsyncClient,
    pub prefix: TopicPrefix,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub backoff: Backoff,
    /// Increments on every broker connection (ingress).
    pub mqtt_connections: watch::Receiver<u64>,
    /// The `ha_status` last published, and on which broker connection.
    pub published_status: Option<(bool, u64)>,
}

impl Mirror {
    /// Runs until `shutdown`, reconnecting as needed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            // Held through the session's authentication: if the socket
            // cannot even connect, dropping it hands a probe role back.
            let _pass = tokio::select! {
                _ = shutdown.cancelled() => break,
                pass = self.ha.gate.wait_open(far) => pass,
            };
            let result = self.session(&shutdown, &mut failures).await;
            self.set_online(false).await;
            let Err(e) = result else { break };
            if let SessionError::Auth(_) = e {
                self.ha.gate.refused();
                self.health.observe(&self.metrics, Err(crate::ha::HaErrorKind::Unauthorized));
            }
            let delay = self.backoff.delay(failures);
            failures = failures.saturating_add(1);
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "home assistant websocket lost");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes `ha_status` when it changed, or when a new broker
    /// connection may have lost the retained one; not on every retry.
    async fn set_online(&mut self, online: bool) {
        self.metrics.ha_websocket_connected.set(i64::from(online));
        // Published before the first connection, it goes out on it: count
        // it as connection 1's, or the first retry after CONNACK repeats it.
        let status = (online, (*self.mqtt_connections.borrow()).max(1));
        if self.published_status == Some(status) {
            return;
        }
        self.published_status = Some(status);
        let payload = if online { "online" } else { "offline" };
        if let Err(e) = self.client.publish(self.prefix.ha_status(), QoS::AtLeastOnce, true, payload).await {
            tracing::warn!(error = %e, "could not queue ha_status");
        }
    }

    /// One connection: until shutdown (`Ok`) or a failure.
    async fn session(&mut self, shutdown: &CancellationToken, failures: &mut u32) -> Result<(), SessionError> {
        let mut socket = ws::connect(&self.url, self.tls.clone(), CONNECT_TIMEOUT).await?;
        authenticate(&mut socket, &self.ha).await?;
        socket.send(Message::text(ws::subscribe_state_changed(SUBSCRIPTION))).await?;
        expect_result(&mut socket, SUBSCRIPTION).await?;
        self.discover().await?;
        self.mqtt_connections.borrow_and_update();
        self.snapshot().await?;
        self.set_online(true).await;
        // Only a session that got this far resets the backoff: one failing
        // right after authenticating is retried ever more slowly.
        *failures = 0;
        tracing::info!(url = %self.url, "mirroring home assistant states");

        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let mut next_id = SUBSCRIPTION + 1;
        let mut awaiting_pong = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    return Ok(());
                }
                frame = socket.next() => match frame {
                    None => return Err(SessionError::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => {
                        for msg in ws::parse(&text) {
                            match msg {
                                Incoming::StateChanged { id: SUBSCRIPTION, entity_id, new_state } => match new_state {
                                    Some(raw) => {
                                        // Parsed only when it may be published.
                                        if self.out.wants(&raw.head()).await {
                                            if let Some(state) = raw.parse() {
                                                self.out.update(&state).await;
                                            }
                                        }
                                    }
                                    None => self.out.removed(&entity_id).await,
                                },
                                Incoming::Pong { .. } => awaiting_pong = false,
                                _ => {}
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) => return Err(SessionError::Closed),
                    Some(Ok(_)) => {}
                },
                Ok(()) = self.mqtt_connections.changed() => {
                    // A new broker connection may have lost our retained states.
                    self.out.forget_published().await;
                    self.snapshot().await?;
                    self.set_online(true).await;
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Err(SessionError::PongTimeout(PING_EVERY));
                    }
                    socket.send(Message::text(ws::ping(next_id))).await?;
                    next_id += 1;
                    awaiting_pong = true;
                }
            }
        }
    }

    /// Once per connection: HA's version and services catalogue into
    /// `known`, before any state is published (so `ha_status online` means
    /// they were read). HA not answering ends the session (it is retried);
    /// HA answering with an error leaves that part unknown and the mirror
    /// runs on: HA 2024.3 answers `GET /api/services` with a 500 when one
    /// integration's descriptions fail to load. Unknown parts are left to
    /// HA to decide: calls go as commands ask.
    async fn discover(&mut self) -> Result<(), SessionError> {
        let version = known_or_unknown(self.ha.get_version().await, "version")?;
        let catalogue = known_or_unknown(self.ha.get_services().await, "services catalogue")?;
        let parsed = version.as_ref().and_then(|(_, v)| v.clone());
        if let Some((text, _)) = &version {
            let services = catalogue.as_ref().map(Catalogue::len);
            tracing::info!(services, "Home Assistant {text}");
            self.metrics.set_ha_version(text);
        }
        match (&version, &parsed) {
            (Some((text, _)), None) => {
                tracing::warn!(version = %text, "not a home assistant version the gateway can read")
            }
            (_, Some(v)) if !v.has_rest_responses() => tracing::warn!(
                version = %v,
                "this home assistant returns no service responses over REST (2024.8 or newer does): commands asking for one get response_unsupported"
            ),
            _ => {}
        }
        if let Some(catalogue) = catalogue.as_ref().filter(|c| c.dropped > 0) {
            tracing::warn!(
                kept = catalogue.len(),
                dropped = catalogue.dropped,
                "services catalogue over its cap; the rest are sent as asked"
            );
        }
        self.ha.known.set(parsed, catalogue);
        Ok(())
    }

    /// Every state, published where it changed; vanished entities cleared.
    async fn snapshot(&self) -> Result<(), SessionError> {
        let started = Instant::now();
        let states = self.ha.get_states().await?;
        self.out.resync(&states).await;
        let mirrored = self.out.mirrored().await;
        tracing::debug!(
            entities = states.len(),
            mirrored,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state snapshot published"
        );
        Ok(())
    }
}

/// A discovery read: `Ok(None)` (after a warning) when HA answered with an
/// error, `Err` when it did not answer (the session ends and is retried).
fn known_or_unknown<T>(read: Result<T, HaError>, what: &str) -> Result<Option<T>, SessionError> {
    use crate::ha::HaErrorKind::{InvalidResponse, Rejected, Server};
    match read {
        Ok(found) => Ok(Some(found)),
        Err(e) if matches!(e.kind, Rejected | Server | InvalidResponse) => {
            tracing::warn!(error = %e, "home assistant's {what} is unknown; service responses are asked as commands say");
            Ok(None)
        }
        Err(e) => Err(SessionError::Discover(e)),
    }
}

async fn next_text(socket: &mut ws::Socket, phase: &'static str) -> Result<Vec<Incoming>, SessionError> {
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.next()).await {
            Err(_) => return Err(SessionError::Protocol(phase)),
            Ok(None) => return Err(SessionError::Closed),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(ws::parse(&text)),
            Ok(Some(Ok(Message::Close(_)))) => return Err(SessionError::Closed),
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn authenticate(socket: &mut ws::Socket, ha: &HaClient) -> Result<(), SessionError> {
    if !next_text(socket, "auth").await?.contains(&Incoming::AuthRequired) {
        return Err(SessionError::Protocol("auth"));
    }
    socket.send(Message::text(ws::auth(&ha.token()))).await?;
    for msg in next_text(socket, "auth").await? {
        match msg {
            Incoming::AuthOk => {
                ha.gate.accepted();
                return Ok(());
            }
            Incoming::AuthInvalid(message) => return Err(SessionError::Auth(message)),
            _ => {}
        }
    }
    Err(SessionError::Protocol("auth"))
}

async fn expect_result(socket: &mut ws::Socket, id: u64) -> Result<(), SessionError> {
    loop {
        for msg in next_text(socket, "subscribe").await? {
            if let Incoming::Result { id: got, success, error } = msg {
                if got == id {
                    return if success { Ok(()) } else { Err(SessionError::Subscribe(error.unwrap_or_default())) };
                }
            }
        }
    }
}
