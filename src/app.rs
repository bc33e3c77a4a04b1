//! Wiring: the only module that knows all others. Builds every stage from a
//! validated [`Config`], joins them with channels, binds the metrics port,
//! and runs the shutdown sequence.
//!
//! Shutdown: the token stops ingress taking commands; the queue finishes the
//! calls in flight (no new attempt starts); their results and acks go out;
//! then `offline` is published and the connection closed. The grace period
//! bounds all of it.
//!
//! Every stage runs under [`Stages`]: one that ends before shutdown is fatal
//! ([`StageFailed`]): `/healthz` turns 503, the same shutdown runs, and
//! [`Running::wait`] returns the error (the binary exits 70).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckTracker, Acker};
use crate::admission::{Dedupe, Rules};
use crate::config::Config;
use crate::discovery::{Discovery, Topics};
use crate::ha::{token_channel, watch_token, AuthGate, HaClient, Known};
use crate::http::{self, HttpState};
use crate::ingress::{self, Ingress, Outputs, SideTopics};
use crate::metrics::{Health, Metrics};
use crate::mirror::{tls_config, Mirror, StateOut};
use crate::publisher::{Publisher, Report};
use crate::queue::{Dispatcher, Executor, RateLimiter, Slots};
use crate::reload::Reloader;
use crate::supervise::{FailStage, StageFailed, Stages};
use crate::ui;

/// How long in-flight calls may take to finish at shutdown.
pub const GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (metrics.listen): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot read the home assistant token: {0}")]
    Token(std::io::Error),
    #[error(transparent)]
    HaClient(#[from] crate::ha::ClientBuildError),
    #[error(transparent)]
    Mqtt(#[from] ingress::MqttSetupError),
    #[error("home assistant websocket tls: {0}")]
    Tls(String),
}

/// A started gateway.
pub struct Running {
    /// Where `/metrics`, `/healthz`, `/readyz` are served.
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    /// Wakes the token watcher (SIGHUP).
    /// Counts SIGHUPs: re-read the token file, reload rules and routes.
    pub hup: watch::Sender<u64>,
    done: JoinHandle<Result<(), StageFailed>>,
}

impl Running {
    /// Waits until the gateway has shut down: after the token was
    /// cancelled (`Ok`), or after a stage failed (`Err`).
    pub async fn wait(self) -> Result<(), StageFailed> {
        self.done.await.unwrap_or_else(|e| {
            let panic = Some(e.to_string());
            Err(StageFailed(crate::supervise::Ended { stage: "supervisor", panic }))
        })
    }
}

/// How to run, beyond the config file.
#[derive(Default)]
pub struct Options {
    /// Report the service calls that would be made, without making them.
    pub dry_run: bool,
    /// Reload access rules and routes on SIGHUP and file changes.
    pub reloader: Option<Reloader>,
    /// Tests of supervision: make one stage panic on demand.
    pub fail_stage: Option<FailStage>,
}

/// Starts every stage; returns once the metrics port is bound.
pub async fn start(config: Config, options: Options, shutdown: CancellationToken) -> Result<Running, StartError> {
    install_crypto();
    let listener = TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.metrics.listen, source })?;
    let metrics_addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: config.metrics.listen, source })?;
    tracing::info!(addr = %metrics_addr, "serving /metrics, /healthz, /readyz");

    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let capacity = config.queue.capacity.get() as usize;
    metrics.queue_capacity.set(capacity as i64);
    let slots = Arc::new(Slots::new(capacity, Some(metrics.queue_depth.clone())));

    let (token_tx, token_rx) = token_channel(&config.home_assistant.token).map_err(StartError::Token)?;
    let gate = AuthGate::new(config.home_assistant.auth_backoff, token_rx);
    let ha = HaClient::new(&config.home_assistant, gate)?;

    let receive_maximum = u16::try_from(capacity).unwrap_or(u16::MAX);
    let mqtt_options = ingress::options(&config.mqtt, receive_maximum)?;
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(mqtt_options, ingress::REQUEST_CHANNEL);
    tracing::info!(broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port), client_id = %config.mqtt.client_id, "connecting to the mqtt broker");

    let tracker = Arc::new(Mutex::new(AckTracker::default()));
    let rules = Rules { access: config.access.clone(), routes: Arc::clone(&config.routes) };
    let (rules_tx, rules_rx) = watch::channel(Arc::new(rules));
    let mut console = ConsoleParts::new(&config, rules_rx.clone(), options.dry_run, shutdown.clone());
    if options.dry_run {
        tracing::warn!("dry run: service calls are logged and published as results, not sent to home assistant");
    }
    let (connections_tx, connections_rx) = watch::channel(0u64);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (report_tx, report_rx) = mpsc::unbounded_channel::<Report>();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();

    let mut tasks = Stages::new(options.fail_stage.clone());
    let stop_polling = CancellationToken::new();
    let (hup, hup_rx) = watch::channel(0u64);

    let executor = Arc::new(Executor {
        ha: ha.clone(),
        limiter: RateLimiter::new(config.queue.rate_per_second, config.queue.burst),
        max_attempts: config.home_assistant.max_attempts,
        retry: config.home_assistant.retry,
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        shutdown: shutdown.clone(),
        dry_run: options.dry_run,
    });
    let dispatcher = Dispatcher { executor, concurrency: config.queue.concurrency };
    let mut pipeline = Stages::new(options.fail_stage);
    pipeline.spawn("dispatcher", dispatcher.run(cmd_rx, report_tx.clone()));
    let states = Arc::new(StateOut::new(
        client.clone(),
        config.mqtt.prefix.clone(),
        config.state.layout.clone(),
        config.state.filter.clone(),
        metrics.clone(),
        &config.metrics.entities,
    ));
    let publisher = Publisher::new(
        client.clone(),
        config.mqtt.prefix.clone(),
        Arc::clone(&states),
        metrics.clone(),
        ack_tx.clone(),
        config.limits.max_result_bytes,
    )
    .with_journal(console.as_ref().map(|c| Arc::clone(&c.journal)));
    pipeline.spawn("publisher", publisher.run(report_rx));
    pipeline.spawn(
        "acker",
        Acker {
            tracker: Arc::clone(&tracker),
            client: client.clone(),
            pending: metrics.acks_pending.clone(),
            connections: connections_rx.clone(),
        }
        .run(ack_rx),
    );

    let mirror_client = client.clone();
    // The gateway as a device in HA: its birth topic and button come
    // through ingress's side topics.
    let (side_tx, side_rx) = mpsc::channel(16);
    let discovery = config.discovery.clone().map(|d| {
        let topics = Topics::new(config.mqtt.prefix.as_str(), &d.node_id, &config.mqtt.status_topic);
        Discovery {
            config: d,
            topics,
            client: client.clone(),
            metrics: metrics.clone(),
            connections: connections_rx.clone(),
            hup: hup.clone(),
        }
    });
    let side = SideTopics {
        filters: discovery.as_ref().map(Discovery::filters).unwrap_or_default(),
        to: discovery.as_ref().map(|_| side_tx),
    };
    let ingress = Ingress {
        client,
        eventloop,
        config: config.mqtt.clone(),
        rules: rules_rx,
        route_subscriptions: Vec::new(),
        subscription_ids: Default::default(),
        next_id: 0,
        tracker,
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        slots: Arc::clone(&slots),
        overflow: ingress::Overflow::new(capacity),
        state_filter: config.state.filter.clone(),
        connections: connections_tx,
        max_age: config.queue.max_age,
        limits: config.limits,
        dedupe: config.queue.dedupe_window.map(Dedupe::new),
        backlog: Default::default(),
        side,
        tap: console.as_mut().and_then(|c| c.tap.take()),
    };
    let outputs = Outputs { commands: cmd_tx, reports: report_tx, acks: ack_tx };
    tasks.spawn("ingress", ingress.run(outputs, shutdown.clone(), stop_polling.clone()));
    tasks.spawn(
        "token_watcher",
        watch_token(config.home_assistant.token.clone(), token_tx, hup_rx.clone(), shutdown.clone()),
    );
    if let Some(discovery) = discovery {
        tasks.spawn("discovery", discovery.run(side_rx, shutdown.clone()));
    }
    if let Some(reloader) = options.reloader {
        let console = console.as_ref().map(|c| c.config_tx.clone());
        tasks.spawn("reloader", reloader.run(rules_tx, console, hup_rx, metrics.clone(), shutdown.clone()));
    }
    let websocket_url = config.home_assistant.websocket_url.clone().unwrap_or_else(|| ha.websocket_url());
    let tls = match websocket_url.scheme() {
        "wss" => Some(tls_config(config.home_assistant.ca_file.as_deref()).map_err(StartError::Tls)?),
        _ => None,
    };
    let mirror = Mirror {
        ha: ha.clone(),
        url: websocket_url,
        tls,
        out: states,
        client: mirror_client,
        prefix: config.mqtt.prefix.clone(),
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        backoff: config.home_assistant.retry,
        mqtt_connections: connections_rx,
        published_status: None,
    };
    // With the pipeline: `ha_status offline` goes out before the disconnect.
    pipeline.spawn("mirror", mirror.run(shutdown.clone()));
    let gate = ha.gate.clone();
    let known = ha.known.clone();
    let every = config.home_assistant.probe_interval;
    tasks.spawn("probe", probe_ha(ha, every, Arc::clone(&health), metrics.clone(), shutdown.clone()));
    let ui = console.map(|c| c.finish(&health, &slots, &gate, &known, &metrics));
    let http_state =
        HttpState { metrics: metrics.clone(), health: Arc::clone(&health), slots: Arc::clone(&slots), gate, ui };
    let http_stop = CancellationToken::new();
    tasks.spawn("http", http::serve(listener, http_state, http_stop.clone()));

    let stopping = Stopping { shutdown, stop_polling, http_stop, health };
    let done = tokio::spawn(stopping.supervise(pipeline, tasks));
    Ok(Running { metrics_addr, metrics, hup, done })
}

/// The web console's pieces made before the stages that feed it; the
/// shared state made later in `start` completes it ([`ConsoleParts::finish`]).
struct ConsoleParts {
    journal: Arc<ui::Journal>,
    auth: Arc<ui::auth::Auth>,
    rules: watch::Receiver<Arc<Rules>>,
    config: watch::Receiver<ui::ConfigState>,
    admission: Arc<ui::Admission>,
    replays: mpsc::Sender<ui::Replay>,
    dry_run: bool,
    shutdown: CancellationToken,
    /// For ingress.
    tap: Option<ui::Tap>,
    /// For the reloader.
    config_tx: watch::Sender<ui::ConfigState>,
}

impl ConsoleParts {
    /// `None` unless `[ui] enabled`.
    fn new(
        config: &Config,
        rules: watch::Receiver<Arc<Rules>>,
        dry_run: bool,
        shutdown: CancellationToken,
    ) -> Option<Self> {
        if !config.ui.enabled {
            return None;
        }
        let journal = Arc::new(ui::Journal::new(config.ui.history));
        let (replays, replays_rx) = mpsc::channel(ui::REPLAY_QUEUE);
        let loaded = ui::ConfigState { rules: Arc::clone(&config.loaded_rules), last_reload: None };
        let (config_tx, config_rx) = watch::channel(loaded);
        let admission = ui::Admission {
            prefix: config.mqtt.prefix.clone(),
            limits: config.limits,
            state_filter: config.state.filter.clone(),
            max_age: config.queue.max_age,
        };
        let login = if config.ui.password.is_some() { "password" } else { "none (loopback)" };
        tracing::info!(path = "/ui/", login, "web console enabled");
        Some(Self {
            journal: Arc::clone(&journal),
            auth: Arc::new(ui::auth::Auth::new(config.ui.password.clone())),
            rules,
            config: config_rx,
            admission: Arc::new(admission),
            replays,
            dry_run,
            shutdown,
            tap: Some(ui::Tap { journal, replays: replays_rx }),
            config_tx,
        })
    }

    /// The console, with the shared state made later in `start`.
    fn finish(
        self,
        health: &Arc<Health>,
        slots: &Arc<Slots>,
        gate: &AuthGate,
        known: &Known,
        metrics: &Metrics,
    ) -> ui::Console {
        ui::Console {
            journal: self.journal,
            auth: self.auth,
            rules: self.rules,
            config: self.config,
            admission: self.admission,
            replays: self.replays,
            health: Arc::clone(health),
            slots: Arc::clone(slots),
            gate_open: {
                let gate = gate.clone();
                Arc::new(move || gate.is_open())
            },
            known: known.clone(),
            metrics: metrics.clone(),
            dry_run: self.dry_run,
            shutdown: self.shutdown,
        }
    }
}

/// How long a stage that ended normally is given for the panic that caused
/// it to surface.
const CAUSE_WINDOW: Duration = Duration::from_millis(100);

/// The stage that really failed: one that panicked just before `ended`, or
/// `ended` itself.
async fn cause(ended: crate::supervise::Ended, pipeline: &mut Stages, tasks: &mut Stages) -> crate::supervise::Ended {
    let panicked = async {
        loop {
            let next = tokio::select! {
                Some(e) = pipeline.next() => e,
                Some(e) = tasks.next() => e,
                else => return None,
            };
            if next.panic.is_some() {
                return Some(next);
            }
        }
    };
    tokio::time::timeout(CAUSE_WINDOW, panicked).await.ok().flatten().unwrap_or(ended)
}

/// What the supervisor needs to stop everything.
struct Stopping {
    shutdown: CancellationToken,
    stop_polling: CancellationToken,
    http_stop: CancellationToken,
    health: Arc<Health>,
}

impl Stopping {
    /// Waits for shutdown or the first stage to end, whichever comes first,
    /// then drains: the pipeline within the grace period, then ingress and
    /// the rest.
    async fn supervise(self, mut pipeline: Stages, mut tasks: Stages) -> Result<(), StageFailed> {
        let failed = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            Some(ended) = pipeline.next() => Some(ended),
            Some(ended) = tasks.next() => Some(ended),
        };
        // Stages end at shutdown by design; only a panic then is a failure.
        let failed = failed.filter(|e| e.panic.is_some() || !self.shutdown.is_cancelled());
        let failed = match failed {
            // A stage whose input closed ends normally when the stage
            // feeding it died: name the one that panicked.
            Some(ended) if ended.panic.is_none() => Some(cause(ended, &mut pipeline, &mut tasks).await),
            other => other,
        };
        let result = match failed {
            None => Ok(()),
            Some(ended) => {
                let _ = self.health.failed.set(ended.stage);
                let error = StageFailed(ended);
                tracing::error!(stage = error.0.stage, error = %error, "a stage failed; stopping so that the gateway is restarted (the broker redelivers what was not acked)");
                self.shutdown.cancel();
                Err(error)
            }
        };
        tracing::info!("shutting down: finishing calls in flight");
        if tokio::time::timeout(GRACE, pipeline.join_all()).await.is_err() {
            tracing::warn!(
                grace_secs = GRACE.as_secs(),
                "calls still in flight after the grace period; the broker redelivers them"
            );
        }
        self.stop_polling.cancel();
        self.http_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), tasks.join_all()).await.is_err() {
            tracing::warn!("some tasks did not stop in time");
        }
        tracing::info!("stopped");
        result
    }
}

/// How often an unreachable HA is probed.
const DOWN_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `/readyz` honest while no commands flow: `GET /api/` now and then,
/// never while the auth gate is closed (no hammering with a refused token).
async fn probe_ha(ha: HaClient, every: Duration, health: Arc<Health>, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        let result = if let Ok(_pass) = ha.gate.wait_open(tokio::time::Instant::now()).await {
            ha.probe().await.map_err(|e| {
                tracing::debug!(error = %e, "home assistant probe failed");
                e.kind
            })
        } else {
            // The gate is closed: the token was refused and nothing is sent.
            Err(crate::ha::HaErrorKind::Unauthorized)
        };
        health.observe(&metrics, result);
        // While HA is down, look every second: commands waiting for it
        // resume as soon as it answers (see `Health::ha_back`).
        let next = if Health::get(&health.ha_reachable) { every } else { every.min(DOWN_PROBE_INTERVAL) };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Both rustls users (MQTT, HTTP, the websocket) share the ring provider; a
/// second install attempt only fails because one is set, which is fine.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `check --online`: reach the broker and HA with the token; print each result.
pub async fn check_online(config: &Config, timeout: Duration) -> bool {
    install_crypto();
    let broker = check_broker(config, timeout).await;
    match &broker {
        Ok(()) => println!("mqtt: connected to {}:{}", config.mqtt.host, config.mqtt.port),
        Err(e) => println!("error: mqtt.url: {e}"),
    }
    let ha = async {
        let (_tx, rx) = token_channel(&config.home_assistant.token).map_err(|e| e.to_string())?;
        let client = HaClient::new(&config.home_assistant, AuthGate::new(config.home_assistant.auth_backoff, rx))
            .map_err(|e| e.to_string())?;
        client.probe().await.map_err(|e| match e.kind {
            crate::ha::HaErrorKind::Unauthorized => "the token was refused (401/403)".to_owned(),
            _ => e.to_string(),
        })?;
        Ok::<_, String>(client.get_version().await)
    }
    .await;
    match &ha {
        Ok(version) => {
            println!("home assistant: {} accepts the token", config.home_assistant.url);
            match version {
                Ok((text, _)) => crate::ha::version::check_lines(text).iter().for_each(|l| println!("{l}")),
                // Informative only: the check is about reaching HA with the token.
                Err(e) => println!("warning: home_assistant: cannot read its version: {e}"),
            }
        }
        Err(e) => println!("error: home_assistant: {e}"),
    }
    broker.is_ok() && ha.is_ok()
}

async fn check_broker(config: &Config, timeout: Duration) -> Result<(), String> {
    // A different id: never take over the running gateway's session.
    let client_id = format!("{}-check", config.mqtt.client_id);
    let options = ingress::connection_options(&config.mqtt, &client_id).map_err(|e| e.to_string())?;
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    let result = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer from the broker".to_owned()));
    let _ = client.try_disconnect();
    result
}
