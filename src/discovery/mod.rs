//! The gateway as a device in Home Assistant, through MQTT discovery (like
//! Zigbee2MQTT's bridge): a connectivity sensor, the queue depth, commands
//! per minute, the last error, and a button that reloads the rules.
//!
//! On every broker connection, and when HA announces itself (its birth
//! message, `online` on `[discovery] status_topic`), it publishes the
//! entities' configs (retained) and their state; the entities are available
//! while the gateway's own status topic says `online` (its last will). Every
//! `state_interval` it looks at the metrics and publishes the state document
//! on `<prefix>/bridge/<node_id>/state` when it changed, so at most once per
//! interval. The button's message is the same reload as SIGHUP.
//!
//! It reads metrics and writes retained messages under the discovery prefix
//! and its bridge topic; it never touches a command, and its messages come
//! from ingress's side topics, not the command path.

mod payload;

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use payload::{configs, state_payload, DiscoveryConfig, PerMinute, Snapshot, Topics, RELOAD_PAYLOAD};

use crate::ingress::SideMessage;
use crate::metrics::Metrics;

/// Announcements (all configs again) at most this often, whatever HA sends.
const ANNOUNCE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// What a message on the side topics asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// HA (re)started: publish the configs and state again.
    Announce,
    /// The reload button was pressed.
    Reload,
    /// Anything else (HA going `offline`, a stray payload): nothing.
    Nothing,
}

/// Pure: what `msg` asks for.
pub fn request(config: &DiscoveryConfig, topics: &Topics, msg: &SideMessage) -> Request {
    match (msg.topic.as_str(), &msg.payload[..]) {
        (t, b"online") if t == config.status_topic => Request::Announce,
        (t, p) if t == topics.reload && p == RELOAD_PAYLOAD.as_bytes() => Request::Reload,
        _ => Request::Nothing,
    }
}

pub struct Discovery {
    pub config: DiscoveryConfig,
    pub topics: Topics,
    pub client: AsyncClient,
    pub metrics: Metrics,
    /// Counts broker connections (ingress): configs are announced on each.
    pub connections: watch::Receiver<u64>,
    /// The SIGHUP counter: the button is one more hang-up.
    pub hup: watch::Sender<u64>,
}

impl Discovery {
    /// What ingress must subscribe for it: HA's birth topic and the button's.
    pub fn filters(&self) -> Vec<String> {
        vec![self.config.status_topic.clone(), self.topics.reload.clone()]
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut side: mpsc::Receiver<SideMessage>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.state_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rate = PerMinute::default();
        let mut published: Option<Vec<u8>> = None;
        let mut announced: Option<Instant> = None;
        let mut announce = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = self.connections.changed() => announce = true,
                Some(msg) = side.recv() => match request(&self.config, &self.topics, &msg) {
                    Request::Announce => announce = true,
                    Request::Reload => {
                        tracing::info!("reload requested from home assistant (the gateway's button)");
                        self.hup.send_modify(|n| *n += 1);
                    }
                    Request::Nothing => {}
                },
                _ = tick.tick() => {
                    let state = state_payload(&self.snapshot(&mut rate));
                    if published.as_ref() != Some(&state) {
                        self.send(self.topics.state.clone(), state.clone()).await;
                        published = Some(state);
                    }
                }
            }
            if announce && announced.is_none_or(|at| at.elapsed() >= ANNOUNCE_AT_MOST_EVERY) {
                announce = false;
                announced = Some(Instant::now());
                published = Some(self.announce(&mut rate).await);
            }
        }
    }

    /// Every config, then the state document (returned: what was sent).
    async fn announce(&self, rate: &mut PerMinute) -> Vec<u8> {
        for (topic, payload) in configs(&self.config, &self.topics, env!("CARGO_PKG_VERSION")) {
            self.send(topic, payload).await;
        }
        let state = state_payload(&self.snapshot(rate));
        self.send(self.topics.state.clone(), state.clone()).await;
        tracing::debug!(node_id = %self.config.node_id, "announced the gateway to home assistant");
        state
    }

    fn snapshot(&self, rate: &mut PerMinute) -> Snapshot {
        Snapshot {
            connected: self.metrics.ha_up.get() == 1,
            queue_depth: self.metrics.queue_depth.get(),
            commands_per_minute: rate.record(Instant::now(), self.metrics.commands_finished()),
            last_error: self.metrics.last_error.lock().expect("last_error lock is never poisoned").clone(),
        }
    }

    async fn send(&self, topic: String, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, true, payload).await {
            tracing::warn!(error = %e, "could not queue a discovery publish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_side_message_asks_for() {
        let config = DiscoveryConfig {
            prefix: "homeassistant".into(),
            node_id: "gw".into(),
            device_name: "MQTT HA Gateway".into(),
            status_topic: "homeassistant/status".into(),
            state_interval: Duration::from_secs(5),
        };
        let topics = Topics::new("ha-gateway", "gw", "ha-gateway/status");
        let msg = |topic: &str, payload: &'static str| SideMessage { topic: topic.into(), payload: payload.into() };
        let table = [
            (msg("homeassistant/status", "online"), Request::Announce),
            (msg("homeassistant/status", "offline"), Request::Nothing),
            (msg("ha-gateway/bridge/gw/reload", "reload"), Request::Reload),
            (msg("ha-gateway/bridge/gw/reload", "RELOAD"), Request::Nothing),
            (msg("ha-gateway/bridge/other/reload", "reload"), Request::Nothing),
        ];
        for (m, expected) in table {
            assert_eq!(request(&config, &topics, &m), expected, "{m:?}");
        }
    }
}
