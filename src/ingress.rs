//! MQTT ingress: owns rumqttc's event loop, keeps the connection (with
//! jittered backoff), subscribes, and turns each command message into either
//! a queued [`Command`] or an immediate [`Report`].
//!
//! Never blocks the event loop: everything it hands on goes through
//! unbounded channels whose size is bounded by admission (the broker sends at
//! most `queue.capacity` unacked QoS 1 messages, QoS 0 beyond it are dropped
//! and counted). It does not send acks (the acker does) and does not publish
//! results (the publisher does).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, DisconnectReasonCode, Filter, LastWill, Packet, Publish, RetainForwardRule, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ack::{fingerprint, AckMsg, AckTracker, Registration};
use crate::admission::{self, Admitted, Dedupe, Rules};
use crate::backoff::Backoff;
use crate::bounds::MAX_PACKET;
use crate::command::{Command, ErrorCode, Origin};
use crate::metrics::{Health, Metrics};
use crate::mirror::StateFilter;
use crate::publisher::{Backlog, Report};
use crate::queue::Slots;
use crate::secret::SecretSource;
use crate::topic::TopicPrefix;
use crate::translate::Limits;
use crate::ui::{Replay, Tap};

/// Our QoS 1 publishes (results, states) awaiting the broker's PUBACK at once.
const OUTGOING_INFLIGHT: u16 = 256;

/// A connection that lasted this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(30);

/// Capacity of rumqttc's request channel (publishes, acks).
pub const REQUEST_CHANNEL: usize = 1024;

/// `[mqtt]`, validated (built by `config`).
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub prefix: TopicPrefix,
    /// `mqtt.shared_group`, validated.
    pub shared_group: Option<String>,
    /// `<prefix>/status`, or `<prefix>/status/<client_id>` with a shared group.
    pub status_topic: String,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub keep_alive: Duration,
    pub session_expiry: Duration,
    pub reconnect: Backoff,
}

#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("cannot read {0}: {1}")]
    File(String, std::io::Error),
}

/// The connection itself: address, keep-alive, credentials, TLS, no Nagle.
/// Shared by the gateway and `check --online`.
pub fn connection_options(config: &MqttConfig, client_id: &str) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(client_id, config.host.clone(), config.port);
    o.set_keep_alive(config.keep_alive).set_connection_timeout(10);
    // Commands are small and latency matters: no Nagle delay.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    o.set_network_options(network);
    if let Some(user) = &config.username {
        let password = match &config.password {
            Some(p) => {
                p.read().map_err(|e| MqttSetupError::File("mqtt.password_file".into(), e))?.expose_secret().to_owned()
            }
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if config.tls {
        o.set_transport(tls_transport(config)?);
    }
    Ok(o)
}

/// The gateway's session: fixed id, kept session, manual acks, last will,
/// Receive Maximum = queue capacity.
pub fn options(config: &MqttConfig, receive_maximum: u16) -> Result<MqttOptions, MqttSetupError> {
    let mut o = connection_options(config, &config.client_id)?;
    o.set_clean_start(false)
        // rumqttc keeps a slot per possible in-flight publish of ours (results,
        // states); the broker's Receive Maximum of 65 535 would cost ~13 MiB.
        .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
        .set_manual_acks(true)
        .set_request_channel_capacity(REQUEST_CHANNEL)
        .set_last_will(LastWill::new(config.status_topic.clone(), "offline", QoS::AtLeastOnce, true, None));
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX));
    props.receive_maximum = Some(receive_maximum);
    props.max_packet_size = Some(MAX_PACKET);
    o.set_connect_properties(props);
    Ok(o)
}

fn tls_transport(config: &MqttConfig) -> Result<Transport, MqttSetupError> {
    let read = |key: &str, p: &std::path::Path| std::fs::read(p).map_err(|e| MqttSetupError::File(key.into(), e));
    let client_auth = match &config.client_cert {
        Some((cert, key)) => Some((read("mqtt.client_cert_file", cert)?, read("mqtt.client_key_file", key)?)),
        None => None,
    };
    Ok(match &config.ca_file {
        Some(ca) => Transport::Tls(TlsConfiguration::Simple { ca: read("mqtt.ca_file", ca)?, alpn: None, client_auth }),
        None => Transport::tls_with_default_config(),
    })
}

/// QoS 1 commands the broker sent beyond our Receive Maximum.
///
/// A broker that keeps to Receive Maximum never sends more than the queue
/// holds. Mosquitto 2.0.x does (eclipse-mosquitto/mosquitto#2301): after each
/// ack it sends a whole new window, and in a burst its entire backlog. Up to
/// `limit` such commands are parked, in order, until the queue has room.
/// Beyond that they are *shed*: left unacknowledged, so the broker keeps
/// them, and once the parked ones are queued the gateway reconnects and the
/// broker redelivers them. Memory stays bounded; nothing is lost or reordered.
#[derive(Debug, Default)]
pub struct Overflow {
    pub parked: VecDeque<Parked>,
    /// Parked commands at most (`queue.capacity`).
    pub limit: usize,
    /// Commands are being shed until the next connection.
    pub shedding: bool,
    /// Commands shed since the last connection.
    pub shed: u64,
    /// Our DISCONNECT (to fetch the shed commands) is on its way.
    pub disconnecting: bool,
}

impl Overflow {
    pub fn new(limit: usize) -> Self {
        Self { limit: limit.max(1), ..Self::default() }
    }

    /// Whether the next QoS 1 command must be shed. Once one is, all that
    /// follow are, so the broker redelivers them in their order.
    fn must_shed(&mut self, queue_full: bool) -> bool {
        if !self.shedding && queue_full && self.parked.len() >= self.limit {
            self.shedding = true;
        }
        self.shedding
    }

    /// Shedding, and every command before the shed ones is in the queue:
    /// time to have the broker redeliver.
    fn caught_up(&self) -> bool {
        self.shedding && !self.disconnecting && self.parked.is_empty()
    }

    fn reconnected(&mut self) {
        self.shedding = false;
        self.disconnecting = false;
        self.shed = 0;
    }
}

/// Stable subscription identifiers per route filter (1, 2, …).
#[derive(Debug, Default)]
pub struct SubscriptionIds {
    by_filter: HashMap<String, usize>,
    by_id: HashMap<usize, String>,
}

impl SubscriptionIds {
    fn id(&mut self, filter: &str) -> usize {
        if let Some(id) = self.by_filter.get(filter) {
            return *id;
        }
        let id = self.by_filter.len() + 1;
        self.by_filter.insert(filter.to_owned(), id);
        self.by_id.insert(id, filter.to_owned());
        id
    }

    /// The filters a copy was delivered for; `None` when the broker sent none.
    fn filters(&self, ids: &[usize]) -> Option<HashSet<String>> {
        let set: HashSet<String> = ids.iter().filter_map(|id| self.by_id.get(id).cloned()).collect();
        (!set.is_empty()).then_some(set)
    }
}

/// A message on one of the gateway's own topics (see [`SideTopics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideMessage {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Topics the gateway listens to for itself, beside commands and routes
/// (HA's birth message, the reload button of its device in HA): subscribed
/// at QoS 0 on every connection, never shared, never admitted or acked;
/// each message is handed on through a bounded channel and dropped when it
/// is full, so a flood costs no memory.
#[derive(Debug, Default)]
pub struct SideTopics {
    pub filters: Vec<String>,
    pub to: Option<mpsc::Sender<SideMessage>>,
}

impl SideTopics {
    /// The subscription identifier of these filters (the largest MQTT
    /// allows; route filters count up from 1).
    pub const SUBSCRIPTION_ID: usize = 268_435_455;

    fn subscribe(&self, client: &AsyncClient) {
        if self.filters.is_empty() {
            return;
        }
        let filters = self.filters.iter().map(|path| Filter {
            path: path.clone(),
            qos: QoS::AtMostOnce,
            nolocal: true,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        });
        let properties = SubscribeProperties { id: Some(Self::SUBSCRIPTION_ID), user_properties: Vec::new() };
        if let Err(e) = client.try_subscribe_many_with_properties(filters, properties) {
            tracing::error!(error = %e, "could not subscribe to the gateway's own topics");
        }
    }

    /// Hands `publish` on if it came for these filters. `true` when it came
    /// for nothing else (it is not admitted, and a QoS 0 copy owes no ack).
    fn offer(&self, publish: &Publish) -> bool {
        let Some(to) = &self.to else { return false };
        let ids = publish.properties.as_ref().map(|p| p.subscription_identifiers.as_slice()).unwrap_or_default();
        let topic = String::from_utf8_lossy(&publish.topic);
        let ours = if ids.is_empty() {
            self.filters.iter().any(|f| f.as_str() == topic)
        } else {
            ids.contains(&Self::SUBSCRIPTION_ID)
        };
        if !ours {
            return false;
        }
        if to.try_send(SideMessage { topic: topic.into_owned(), payload: publish.payload.clone() }).is_err() {
            tracing::debug!("a message on the gateway's own topics dropped: its stage is busy");
        }
        publish.qos == QoS::AtMostOnce && ids.iter().all(|id| *id == Self::SUBSCRIPTION_ID)
    }
}

/// A registered message not yet admitted.
#[derive(Debug)]
pub struct Parked {
    publish: Publish,
    seq: u64,
    received_at: Instant,
}

/// Where ingress sends what it produced.
pub struct Outputs {
    pub commands: mpsc::UnboundedSender<Command>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub acks: mpsc::UnboundedSender<AckMsg>,
}

pub struct Ingress {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub config: MqttConfig,
    /// Access rules and routes; replaced on reload.
    pub rules: watch::Receiver<Arc<Rules>>,
    /// The route filters subscribed now.
    pub route_subscriptions: Vec<String>,
    /// MQTT 5 subscription identifiers of route filters: a message that
    /// matches several filters arrives once per subscription, and each copy
    /// is evaluated only against the routes of its own filter.
    pub subscription_ids: SubscriptionIds,
    /// Ids for commands (a routed message can make several).
    pub next_id: u64,
    pub tracker: Arc<Mutex<AckTracker>>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Queue slots; shared with the publisher.
    pub slots: Arc<Slots>,
    /// QoS 1 commands received beyond the queue's capacity, in order.
    pub overflow: Overflow,
    /// `[state] exclude` also refuses gets.
    pub state_filter: StateFilter,
    /// Counts broker connections, so the mirror can republish after one.
    pub connections: watch::Sender<u64>,
    pub max_age: Duration,
    pub limits: Limits,
    /// `queue.dedupe_window`: correlations seen recently.
    pub dedupe: Option<Dedupe>,
    /// Rejections of QoS 0 messages waiting for the publisher.
    pub backlog: Backlog,
    /// The gateway's own topics (discovery's birth message and button).
    pub side: SideTopics,
    /// The web console (`[ui] enabled`): its journal, and dead letters to replay.
    pub tap: Option<Tap>,
}

/// The reconnect policy: jittered exponential backoff over consecutive
/// failures. The count resets only once a connection has proved stable
/// ([`STABLE`]): one that keeps dropping right after CONNACK (a client-id
/// fight, a broker refusing us) backs off like one that cannot connect at
/// all. After a session takeover the longest pause is taken at once:
/// reconnecting sooner would take the session back and start a fight.
#[derive(Debug)]
pub struct Reconnect {
    backoff: Backoff,
    failures: u32,
    connected_at: Option<Instant>,
}

impl Reconnect {
    pub fn new(backoff: Backoff) -> Self {
        Self { backoff, failures: 0, connected_at: None }
    }

    /// A CONNACK arrived at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The pause before the next attempt after an error at `now`; `unit`
    /// in `[0, 1]` is the jitter's random draw.
    pub fn next_delay(&mut self, now: Instant, taken_over: bool, unit: f64) -> Duration {
        if self.connected_at.take().is_some_and(|at| now.duration_since(at) >= STABLE) {
            self.failures = 0;
        }
        let delay = if taken_over { self.backoff.max() } else { self.backoff.delay_with(self.failures, unit) };
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// The broker closed the connection with DISCONNECT 0x8E (Session taken
/// over): another client connected with our client id.
fn is_taken_over(e: &rumqttc::v5::ConnectionError) -> bool {
    matches!(
        e,
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}

impl Ingress {
    /// Polls the event loop until `stop_polling`. After `stop_taking` no new
    /// command is taken (they stay unacked for the next session) but results
    /// and acks of the ones in flight still go out.
    pub async fn run(mut self, outputs: Outputs, stop_taking: CancellationToken, stop_polling: CancellationToken) {
        let mut outputs = Some(outputs);
        let mut reconnect = Reconnect::new(self.config.reconnect);
        let mut connected_once = false;
        loop {
            let event = tokio::select! {
                biased;
                _ = stop_polling.cancelled() => break,
                _ = stop_taking.cancelled(), if outputs.is_some() => {
                    outputs = None;
                    continue;
                }
                Ok(()) = self.rules.changed() => {
                    self.rules_changed();
                    continue;
                }
                Some(replay) = next_replay(&mut self.tap), if outputs.is_some() => {
                    if let Some(out) = &outputs {
                        self.on_replay(replay, out);
                    }
                    continue;
                }
                _ = self.slots.freed(), if !self.overflow.parked.is_empty() && outputs.is_some() => {
                    if let Some(out) = &outputs {
                        self.drain_overflow(out);
                        self.fetch_shed(out);
                    }
                    continue;
                }
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    reconnect.connected(Instant::now());
                    self.on_connack(ack.session_present, connected_once);
                    connected_once = true;
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => match &outputs {
                    Some(out) => {
                        self.on_publish(publish, out);
                        self.fetch_shed(out);
                    }
                    None => tracing::debug!("shutting down: command left for the next session"),
                },
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.on_suback(&ack, outputs.as_ref()),
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    // rumqttc reports a broker's DISCONNECT as the error that
                    // ends the connection (handled below), and once more, queued,
                    // as this event on the next poll: nothing left to do here.
                    tracing::debug!(reason = ?d.reason_code, "the broker's disconnect (handled when it closed)");
                }
                Ok(_) => {}
                // Our own DISCONNECT (to get the shed commands back) went out;
                // the broker closed the connection after reading it and every
                // ack before it. (Dropping the socket ourselves could reset it
                // and lose those acks.) Connect again at once.
                Err(_) if self.overflow.disconnecting && outputs.is_some() => {
                    // Once: should the new connection fail, back off as usual.
                    self.overflow.disconnecting = false;
                    self.on_disconnect();
                    tracing::debug!("reconnecting for the commands left to the broker");
                }
                Err(e) => {
                    let delay = self.on_error(&e, &mut reconnect);
                    tokio::select! {
                        _ = stop_polling.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.goodbye().await;
    }

    /// The first SUBACK of a connection: the broker has redelivered all it
    /// will (see [`AckTracker::redeliveries_over`]).
    fn on_suback(&mut self, ack: &rumqttc::v5::mqttbytes::v5::SubAck, out: Option<&Outputs>) {
        let forgotten = {
            let mut tracker = self.tracker.lock().expect("ack tracker lock is never poisoned");
            let forgotten = tracker.redeliveries_over();
            self.metrics.acks_pending.set(tracker.pending() as i64);
            forgotten
        };
        if forgotten > 0 {
            // Nothing more to wait for: the acker may act on it.
            if let Some(out) = out {
                let _ = out.acks.send(AckMsg::Flush);
            }
            tracing::warn!(
                commands = forgotten,
                "the broker did not redeliver unacknowledged commands of the last connection \
                 (restored from an older save?); they ran or still run, nothing is left to ack"
            );
        }
        if ack.return_codes.iter().any(|c| !matches!(c, rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_))) {
            tracing::error!(codes = ?ack.return_codes, "the broker refused a subscription; check its ACLs");
        }
    }

    /// The connection failed (or could not be made): how long to wait
    /// before the next attempt.
    fn on_error(&mut self, e: &rumqttc::v5::ConnectionError, reconnect: &mut Reconnect) -> Duration {
        self.on_disconnect();
        let taken_over = is_taken_over(e);
        if taken_over {
            self.metrics.mqtt_taken_over.inc();
            tracing::error!(
                client_id = %self.config.client_id,
                "another client connected with this client_id and took over the session; \
                 give every gateway instance its own mqtt.client_id"
            );
        }
        let delay = reconnect.next_delay(Instant::now(), taken_over, rand::random::<f64>());
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost");
        delay
    }

    /// The connection is gone: no ack may leave until the next one has
    /// redelivered its commands. Under the tracker's lock (the acker queues
    /// acks only under it), the tracker turns what it holds into orphans and
    /// rumqttc's request channel is emptied of acks the acker queued after
    /// the event loop failed; publishes in it are kept for the next
    /// connection.
    /// Only the first error after a connection does this: later ones are
    /// failed attempts to connect, with no ack queued in between.
    fn on_disconnect(&mut self) {
        if !Health::get(&self.health.mqtt_connected) {
            return;
        }
        self.set_connected(false);
        let mut tracker = self.tracker.lock().expect("ack tracker lock is never poisoned");
        tracker.disconnected();
        self.eventloop.clean();
        self.metrics.acks_pending.set(tracker.pending() as i64);
    }

    fn set_connected(&self, up: bool) {
        Health::set(&self.health.mqtt_connected, up);
        self.metrics.mqtt_connected.set(i64::from(up));
    }

    fn on_connack(&mut self, session_present: bool, reconnect: bool) {
        self.set_connected(true);
        self.connections.send_modify(|n| *n += 1);
        if reconnect {
            self.metrics.mqtt_reconnects.inc();
        }
        tracing::info!(
            broker = %format!("{}:{}", self.config.host, self.config.port),
            session_present,
            "connected to the mqtt broker"
        );
        self.tracker.lock().expect("ack tracker lock is never poisoned").reconnected(session_present);
        // A kept session redelivers the shed commands; a new one forgot them.
        self.overflow.reconnected();
        self.subscribe_all();
        if let Err(e) = self.client.try_publish(self.config.status_topic.clone(), QoS::AtLeastOnce, true, "online") {
            tracing::warn!(error = %e, "could not publish online status");
        }
    }

    fn on_publish(&mut self, publish: Publish, out: &Outputs) {
        if self.side.offer(&publish) {
            return;
        }
        let received_at = Instant::now();
        let seq = {
            let mut tracker = self.tracker.lock().expect("ack tracker lock is never poisoned");
            let seq = if publish.qos == QoS::AtMostOnce {
                tracker.next_unacked()
            } else {
                let fp = fingerprint(&publish.topic, &publish.payload);
                match tracker.register(publish.pkid, fp, publish.dup) {
                    Registration::New(seq) => seq,
                    Registration::Redelivered { done, .. } => {
                        self.metrics.duplicates.inc();
                        if done {
                            let _ = out.acks.send(AckMsg::Flush);
                        }
                        return;
                    }
                }
            };
            self.metrics.acks_pending.set(tracker.pending() as i64);
            seq
        };
        let incoming = Parked { publish, seq, received_at };
        let qos1 = incoming.publish.qos != QoS::AtMostOnce;
        if qos1 && self.needs_slot(&incoming.publish) {
            if self.overflow.must_shed(self.slots.is_full()) {
                // Left unacked for the broker to redeliver after the next
                // connection, like every command after it (order holds).
                let mut tracker = self.tracker.lock().expect("ack tracker lock is never poisoned");
                tracker.forget(incoming.seq);
                self.metrics.acks_pending.set(tracker.pending() as i64);
                drop(tracker);
                self.metrics.shed.inc();
                if self.overflow.shed == 0 {
                    tracing::warn!(
                        parked = self.overflow.parked.len(),
                        "the broker keeps sending beyond the receive maximum; leaving further commands \
                         to it until the queue has room"
                    );
                }
                self.overflow.shed += 1;
                return;
            }
            if !self.overflow.parked.is_empty() || self.slots.is_full() {
                // The broker sent more than our Receive Maximum: hold the
                // message unparsed, in order, until a slot frees.
                if self.overflow.parked.is_empty() {
                    tracing::warn!("the broker exceeds the receive maximum; holding commands until the queue has room");
                }
                self.overflow.parked.push_back(incoming);
                self.metrics.overflow.set(self.overflow.parked.len() as i64);
                return;
            }
        }
        self.admit(incoming, out);
    }

    /// A dead letter sent again from the web console: admitted as a QoS 0
    /// message (no ack owed), through the same admission as any other.
    fn on_replay(&mut self, replay: Replay, out: &Outputs) {
        let seq = self.tracker.lock().expect("ack tracker lock is never poisoned").next_unacked();
        let publish = Publish::new(replay.topic, QoS::AtMostOnce, replay.payload, None);
        let _ = replay.admitted.send(seq);
        self.admit(Parked { publish, seq, received_at: Instant::now() }, out);
    }

    /// Once every command before the shed ones is queued, a new connection
    /// makes the broker redeliver them. The acker disconnects when all of
    /// them are acked, so no ack is lost and nothing runs twice.
    fn fetch_shed(&mut self, out: &Outputs) {
        if !self.overflow.caught_up() {
            return;
        }
        tracing::info!(shed = self.overflow.shed, "reconnecting for the commands left to the broker");
        self.overflow.disconnecting = true;
        let _ = out.acks.send(AckMsg::Reconnect(*self.connections.borrow()));
    }

    /// Whether a message would take a queue slot if admitted: commands and
    /// routed messages do; retained commands, which are only reported, do not.
    fn needs_slot(&self, publish: &Publish) -> bool {
        !publish.retain || !self.is_command_topic(&publish.topic)
    }

    fn is_command_topic(&self, topic: &[u8]) -> bool {
        admission::is_command_topic(&self.config.prefix, topic)
    }

    /// Subscribes the command topics and the routes' filters.
    fn subscribe_all(&mut self) {
        // Subscribe on every ConnAck, not only without a session: a kept
        // session may lack them (a crash between CONNECT and SUBSCRIBE, a new
        // topic prefix). Re-subscribing an existing filter is harmless, and
        // Retain Handling 1 sends retained messages only for new ones.
        let filters: Vec<Filter> = self
            .config
            .prefix
            .command_filters()
            .into_iter()
            .map(|path| Filter {
                path: shared(&self.config.shared_group, path),
                qos: QoS::AtLeastOnce,
                nolocal: true,
                // Retain As Published: a retained command keeps its flag so we can ignore it.
                preserve_retain: true,
                retain_forward_rule: RetainForwardRule::OnNewSubscribe,
            })
            .collect();
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "could not subscribe");
        }
        self.side.subscribe(&self.client);
        self.route_subscriptions = self.rules.borrow().routes.subscriptions();
        for filter in self.route_subscriptions.clone() {
            self.subscribe_route(filter);
        }
    }

    /// One SUBSCRIBE per route filter, each with its own identifier.
    fn subscribe_route(&mut self, filter: String) {
        let properties =
            SubscribeProperties { id: Some(self.subscription_ids.id(&filter)), user_properties: Vec::new() };
        let path = shared(&self.config.shared_group, filter);
        if let Err(e) = self.client.try_subscribe_many_with_properties([route_filter(path)], properties) {
            tracing::error!(error = %e, "could not subscribe to a route's topic");
        }
    }

    /// New rules: subscribe the routes' new filters, drop the old ones.
    fn rules_changed(&mut self) {
        let wanted = self.rules.borrow_and_update().routes.subscriptions();
        let added: Vec<String> = wanted.iter().filter(|f| !self.route_subscriptions.contains(f)).cloned().collect();
        let removed: Vec<&String> = self.route_subscriptions.iter().filter(|f| !wanted.contains(f)).collect();
        for filter in removed {
            if let Err(e) = self.client.try_unsubscribe(shared(&self.config.shared_group, filter.clone())) {
                tracing::warn!(error = %e, filter = %filter, "could not unsubscribe");
            }
        }
        for filter in added {
            self.subscribe_route(filter);
        }
        self.route_subscriptions = wanted;
    }

    /// Admits parked commands while slots are free.
    fn drain_overflow(&mut self, out: &Outputs) {
        while !self.slots.is_full() {
            let Some(parked) = self.overflow.parked.pop_front() else {
                break;
            };
            self.admit(parked, out);
        }
        self.metrics.overflow.set(self.overflow.parked.len() as i64);
    }

    /// Admits one message: [`admission::decide`] says what becomes of it;
    /// here its calls take queue slots and go to the queue, its rejections
    /// to the publisher, and the ack tracker learns how many outcomes the
    /// message waits for.
    fn admit(&mut self, incoming: Parked, out: &Outputs) {
        let Parked { publish, seq, received_at } = incoming;
        let rules = Arc::clone(&self.rules.borrow());
        let ctx = admission::Context {
            prefix: &self.config.prefix,
            rules: &rules,
            limits: &self.limits,
            state_filter: &self.state_filter,
            max_age: self.max_age,
        };
        let ids = publish.properties.as_ref().map(|p| p.subscription_identifiers.as_slice()).unwrap_or_default();
        let only = if admission::is_command_topic(&self.config.prefix, &publish.topic) {
            None
        } else {
            self.subscription_ids.filters(ids)
        };
        let msg = admission::Message { publish: &publish, seq, received_at, only: only.as_ref() };
        let decision = admission::decide(&ctx, self.dedupe.as_mut(), &msg, std::time::SystemTime::now());
        self.metrics.messages_received.with_label_values(&[decision.kind.as_str()]).inc();
        if decision.duplicate {
            self.metrics.duplicates.inc();
        }
        match decision.parts() {
            0 => {
                if let Some(tap) = &self.tap {
                    tap.journal.no_route(seq, &publish.topic, &publish.payload, received_at);
                }
                self.metrics.route_skipped.inc();
                let _ = out.acks.send(AckMsg::Complete(seq));
                return;
            }
            1 => {}
            parts => self.tracker.lock().expect("ack tracker lock is never poisoned").set_parts(seq, parts),
        }
        let qos = publish.qos;
        for mut report in decision.rejected {
            if self.tap.is_some() && report.origin.is_none() {
                // The console shows the payload of a rejected message too.
                let topic = Arc::from(String::from_utf8_lossy(&publish.topic).as_ref());
                report.origin = Some(Origin { topic, payload: publish.payload.clone() });
            }
            self.reject(out, qos, report);
        }
        for admitted in decision.admitted {
            self.queue(admitted, seq, received_at, qos, out);
        }
    }

    /// One admitted call into the queue, with its slot. A QoS 1 message was
    /// let in for a free slot (beyond capacity it is parked), and its
    /// further calls (routes) take theirs too: it is never refused for room.
    /// A QoS 0 message's call gets a slot only if one is free.
    fn queue(&mut self, admitted: Admitted, seq: u64, received_at: Instant, qos: QoS, out: &Outputs) {
        let slot = if qos == QoS::AtMostOnce { self.slots.try_take() } else { Some(self.slots.take()) };
        let Some(slot) = slot else {
            // Only QoS 0 gets here with the queue full (QoS 1 was parked).
            let report =
                admitted.refused(seq, received_at, ErrorCode::QueueFull, "queue full; QoS 0 command dropped".into());
            self.reject(out, qos, report);
            return;
        };
        self.next_id += 1;
        let command = admitted.into_command(self.next_id, seq, received_at, slot);
        if let Err(mpsc::error::SendError(command)) = out.commands.send(command) {
            // Only at shutdown: unacked for the next session; its slot is freed on drop.
            tracing::debug!(seq = command.seq, "queue closed; command left for the next session");
        }
    }

    /// Hands a rejection to the publisher. A QoS 0 message's holds nothing
    /// but memory (no ack owed, no queue slot), and the publisher waits for
    /// the broker: at most [`Backlog::LIMIT`] of them wait, and beyond that
    /// the result is dropped, counted and logged (at most every 10 s). A QoS
    /// 1 message's carries its ack: never dropped.
    fn reject(&mut self, out: &Outputs, qos: QoS, mut report: Report) {
        if qos == QoS::AtMostOnce {
            let Some(place) = self.backlog.place() else {
                self.metrics.outcome(&report.outcome);
                self.metrics.results_dropped.with_label_values(&["backlog"]).inc();
                if let Some(suppressed) = self.backlog.dropped(Instant::now()) {
                    tracing::warn!(
                        waiting = Backlog::LIMIT,
                        similar_suppressed = suppressed,
                        "results of rejected QoS 0 messages wait for the broker; dropping further ones"
                    );
                }
                return;
            };
            report.backlog = Some(place);
        }
        let _ = out.reports.send(report);
    }

    /// Publishes `offline` (a clean disconnect suppresses the will), sends
    /// DISCONNECT after everything queued before it, and waits briefly.
    async fn goodbye(mut self) {
        let _ = self.client.try_publish(self.config.status_topic.clone(), QoS::AtLeastOnce, true, "offline");
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
        self.set_connected(false);
    }
}

/// The next replay from the web console; never, without one.
async fn next_replay(tap: &mut Option<Tap>) -> Option<Replay> {
    match tap {
        Some(tap) => tap.replays.recv().await,
        None => std::future::pending().await,
    }
}

/// `$share/<group>/<filter>` with a shared group (instances share the messages).
fn shared(group: &Option<String>, filter: String) -> String {
    match group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter,
    }
}

/// A route's subscription: QoS 1, and Retain Handling 2 — a device's
/// retained state is not replayed as a fresh event at every (re)subscribe,
/// while live messages count whatever their retain flag.
fn route_filter(path: String) -> Filter {
    Filter {
        path,
        qos: QoS::AtLeastOnce,
        nolocal: true,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reconnect_backs_off_until_a_connection_proves_stable() {
        let backoff = Backoff::try_new(Duration::from_millis(100), Duration::from_secs(2)).unwrap();
        let mut r = Reconnect::new(backoff);
        let ms = Duration::from_millis;
        // (connect first?, time connected, taken over, expected delay at the top of the jitter)
        let table = [
            (false, ms(0), false, ms(100), "first failure: the shortest pause"),
            (false, ms(0), false, ms(200), "doubling"),
            (true, ms(500), false, ms(400), "a short-lived connection does not reset the count"),
            (true, ms(500), true, ms(2000), "a takeover: the longest pause at once"),
            (true, STABLE, false, ms(100), "a stable connection resets the count"),
            (false, ms(0), false, ms(200), "and it grows again"),
        ];
        for (connect, lasted, taken_over, want, why) in table {
            if connect {
                r.connected(Instant::now());
                tokio::time::advance(lasted).await;
            }
            assert_eq!(r.next_delay(Instant::now(), taken_over, 1.0), want, "{why}");
        }
        assert_eq!(r.next_delay(Instant::now(), false, 0.0), ms(400) / 2, "jitter at most halves it");
    }

    #[test]
    fn only_a_disconnect_saying_session_taken_over_is_a_takeover() {
        use rumqttc::v5::{ConnectionError, StateError};
        let server =
            |reason_code| ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, reason_string: None });
        for (e, expected) in [
            (server(DisconnectReasonCode::SessionTakenOver), true),
            (server(DisconnectReasonCode::ServerShuttingDown), false),
            (ConnectionError::MqttState(StateError::ConnectionAborted), false),
        ] {
            assert_eq!(is_taken_over(&e), expected, "{e}");
        }
    }

    fn parked(seq: u64) -> Parked {
        let publish = Publish::new("ha-gateway/call/light/turn_on", QoS::AtLeastOnce, "{}", None);
        Parked { publish, seq, received_at: Instant::now() }
    }

    #[test]
    fn overflow_parks_up_to_its_limit_then_sheds_until_the_next_connection() {
        let mut o = Overflow::new(2);
        assert!(!o.must_shed(true), "nothing parked yet");
        o.parked.extend([parked(1), parked(2)]);
        assert!(!o.must_shed(false), "the queue has room");
        assert!(o.must_shed(true), "queue full and the limit reached");
        assert!(!o.caught_up(), "parked commands still wait");
        o.parked.clear();
        assert!(o.must_shed(false), "once shedding, every later command is shed: order holds");
        assert!(o.caught_up());
        o.disconnecting = true;
        assert!(!o.caught_up(), "one reconnect at a time");
        o.reconnected();
        assert!(!o.must_shed(true) && !o.caught_up(), "the broker redelivers: a fresh start");
    }

    /// An ingress on the default config, never connected: its steps are
    /// called directly.
    fn ingress() -> Ingress {
        let vars = [("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN".to_owned(), "abc".to_owned())];
        let config = crate::config::load(std::path::Path::new("absent.toml"), false, vars).expect("defaults are valid");
        let (client, eventloop) = AsyncClient::new(options(&config.mqtt, 10).expect("no files to read"), 10);
        let rules = Rules { access: config.access.clone(), routes: Arc::clone(&config.routes) };
        let capacity = config.queue.capacity.get() as usize;
        Ingress {
            client,
            eventloop,
            config: config.mqtt.clone(),
            rules: watch::channel(Arc::new(rules)).1,
            route_subscriptions: Vec::new(),
            subscription_ids: SubscriptionIds::default(),
            next_id: 0,
            tracker: Arc::new(Mutex::new(AckTracker::default())),
            metrics: Metrics::new(),
            health: Arc::new(Health::default()),
            slots: Arc::new(Slots::new(capacity, None)),
            overflow: Overflow::new(capacity),
            state_filter: StateFilter::empty(),
            connections: watch::channel(0).0,
            max_age: config.queue.max_age,
            limits: config.limits,
            dedupe: None,
            backlog: Backlog::default(),
            side: SideTopics::default(),
            tap: None,
        }
    }

    #[test]
    fn side_topics_take_their_own_copies_and_leave_the_rest() {
        let (to, mut rx) = mpsc::channel(4);
        let side = SideTopics { filters: vec!["homeassistant/status".into()], to: Some(to) };
        let ours = SideTopics::SUBSCRIPTION_ID;
        let publish = |topic: &str, qos: QoS, ids: Vec<usize>| {
            let mut p = Publish::new(topic, qos, "online", None);
            p.properties = Some(rumqttc::v5::mqttbytes::v5::PublishProperties {
                subscription_identifiers: ids,
                ..Default::default()
            });
            p
        };
        // (message, handed to the side stage, taken away from the command path)
        let table = [
            (publish("homeassistant/status", QoS::AtMostOnce, vec![ours]), true, true, "its own copy"),
            (
                publish("homeassistant/status", QoS::AtLeastOnce, vec![ours, 3]),
                true,
                false,
                "shared with a route: admitted and acked too",
            ),
            (publish("homeassistant/status", QoS::AtLeastOnce, vec![3]), false, false, "the route's own copy"),
            (
                publish("homeassistant/status", QoS::AtMostOnce, vec![]),
                true,
                true,
                "a broker without identifiers: by topic",
            ),
            (publish("ha-gateway/call/light/turn_on", QoS::AtLeastOnce, vec![]), false, false, "a command"),
        ];
        for (p, handed, taken, why) in table {
            assert_eq!(side.offer(&p), taken, "{why}");
            assert_eq!(rx.try_recv().is_ok(), handed, "{why}");
        }
        // Off (discovery disabled): nothing is looked at.
        assert!(!SideTopics::default().offer(&publish("homeassistant/status", QoS::AtMostOnce, vec![ours])));
    }

    fn counter(metrics: &Metrics, line: &str) -> f64 {
        metrics.render().lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok()).unwrap_or(0.0)
    }

    #[tokio::test]
    async fn rejections_that_hold_nothing_wait_for_the_publisher_in_bounded_number() {
        let mut ingress = ingress();
        let (commands, _commands) = mpsc::unbounded_channel();
        let (reports, mut publisher) = mpsc::unbounded_channel();
        let (acks, _acks) = mpsc::unbounded_channel();
        let out = Outputs { commands, reports, acks };
        let topic = "ha-gateway/call/light/turn_on";
        // The publisher is stuck (the broker does not take our publishes):
        // nothing is read from its channel.
        let flood = 3 * Backlog::LIMIT;
        for _ in 0..flood {
            ingress.on_publish(Publish::new(topic, QoS::AtMostOnce, "not json", None), &out);
        }
        assert!(
            publisher.len() <= Backlog::LIMIT,
            "{} rejections of QoS 0 messages wait for the publisher",
            publisher.len()
        );
        let dropped = r#"mqtt_ha_gateway_results_dropped_total{reason="backlog"}"#;
        assert_eq!(counter(&ingress.metrics, dropped), (flood - publisher.len()) as f64, "the rest are counted");
        let rejected = r#"mqtt_ha_gateway_commands_total{outcome="rejected",reason="invalid_json"}"#;
        assert_eq!(
            counter(&ingress.metrics, rejected),
            (flood - publisher.len()) as f64,
            "a dropped result's command still counts as rejected (the publisher counts the others)"
        );

        // A QoS 1 rejection carries the ack: never dropped.
        let mut qos1 = Publish::new(topic, QoS::AtLeastOnce, "not json", None);
        qos1.pkid = 1;
        let waiting = publisher.len();
        ingress.on_publish(qos1, &out);
        assert_eq!(publisher.len(), waiting + 1, "the QoS 1 rejection waits beyond the bound");

        // Once the publisher is done with them, there is room again.
        while publisher.try_recv().is_ok() {}
        ingress.on_publish(Publish::new(topic, QoS::AtMostOnce, "not json", None), &out);
        assert_eq!(publisher.len(), 1, "a published rejection frees its place");
    }
}
