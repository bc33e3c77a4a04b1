//! The web console at `/ui/` on the metrics listener: a live view of every
//! message's way, a route tester, status, dead letters with replay, and the
//! running rules with the file and line each came from.
//!
//! Layout:
//! - [`journal`]: the bounded record of recent outcomes, dead letters and
//!   the per-10-seconds series (pure data; the publisher and ingress feed it).
//! - [`series`]: the bounded time series behind the status chart (pure).
//! - [`auth`]: login, sessions, the CSRF check, the loopback host check (pure
//!   checks, one small session store).
//! - [`tester`]: "what would the gateway do with this message?" through
//!   [`crate::admission::decide`], the very function ingress runs.
//! - [`api`]: the HTTP handlers; [`assets`]: the embedded page.
//!
//! Off unless `[ui] enabled = true`; then the data path pays one short
//! lock per outcome. It never calls Home Assistant itself, never changes
//! the rules, and never shows a secret: its responses are built from
//! routes, access rules, outcomes and health flags, none of which carries
//! the HA token or the broker password. A replay goes back through ingress
//! like a message from the broker.

pub mod api;
pub mod assets;
pub mod auth;
pub mod journal;
pub mod series;
pub mod tester;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::admission::Rules;
use crate::ha::Known;
use crate::metrics::{Health, Metrics};
use crate::mirror::StateFilter;
use crate::secret::SecretSource;
use crate::slots::Slots;
use crate::topic::TopicPrefix;
use crate::translate::Limits;

pub use api::router;
pub use journal::Journal;

/// `[ui]`, validated (built by `config`).
#[derive(Debug, Clone)]
pub struct UiConfig {
    pub enabled: bool,
    /// Outcomes the live view keeps.
    pub history: usize,
    /// The console password; `None` only on a loopback listener.
    pub password: Option<SecretSource>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self { enabled: false, history: DEFAULT_HISTORY, password: None }
    }
}

/// `[ui] history` when unset.
pub const DEFAULT_HISTORY: usize = 500;
/// `[ui] history` at most.
pub const MAX_HISTORY: usize = 10_000;

/// Whether a listener on `addr` is reachable from this machine only.
/// Only 127.0.0.1 and ::1 count: another 127.x address is treated as any
/// other interface (the tests bind 127.0.0.2 to stand for a LAN address).
pub fn is_loopback_listener(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST)
        || matches!(addr.ip(), IpAddr::V6(ip) if ip == Ipv6Addr::LOCALHOST)
}

/// One rule as loaded: what it says and where it was written.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadedRule {
    /// The route's name, or the access key (`access.allow_services`, `access.rule[0]`).
    pub name: String,
    /// `path:line`, or the environment variable that set it, or `default`.
    pub source: String,
    /// The rule as written (keys left unset are left out).
    pub rule: serde_json::Value,
}

/// The routes and access rules of one loaded configuration.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LoadedRules {
    pub routes: Vec<LoadedRule>,
    pub access: Vec<LoadedRule>,
}

/// The last reload: applied, or refused with every problem.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    #[serde(serialize_with = "journal::unix_millis")]
    pub at: SystemTime,
    pub applied: bool,
    pub errors: Vec<String>,
}

/// What the config page shows: the running rules and the last reload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigState {
    #[serde(serialize_with = "shared")]
    pub rules: Arc<LoadedRules>,
    pub last_reload: Option<ReloadOutcome>,
}

fn shared<S: serde::Serializer>(rules: &Arc<LoadedRules>, s: S) -> Result<S::Ok, S::Error> {
    rules.as_ref().serialize(s)
}

/// A dead letter sent back through ingress: ingress answers with the
/// sequence number it admitted the message under.
#[derive(Debug)]
pub struct Replay {
    pub topic: String,
    pub payload: Bytes,
    pub admitted: oneshot::Sender<u64>,
}

/// Replays waiting for ingress at most.
pub const REPLAY_QUEUE: usize = 16;

/// What ingress holds of the console: the journal (messages no route
/// took) and the replays to admit.
#[derive(Debug)]
pub struct Tap {
    pub journal: Arc<Journal>,
    pub replays: mpsc::Receiver<Replay>,
}

/// What admission reads besides the rules (fixed until restart).
#[derive(Debug, Clone)]
pub struct Admission {
    pub prefix: TopicPrefix,
    pub limits: Limits,
    pub state_filter: StateFilter,
    pub max_age: Duration,
}

/// Everything the console's handlers read. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    pub journal: Arc<Journal>,
    pub auth: Arc<auth::Auth>,
    pub rules: watch::Receiver<Arc<Rules>>,
    pub config: watch::Receiver<ConfigState>,
    pub admission: Arc<Admission>,
    pub replays: mpsc::Sender<Replay>,
    pub health: Arc<Health>,
    pub slots: Arc<Slots>,
    /// Whether the auth gate is open (the gate itself, which holds the
    /// token, stays out of the console's reach).
    pub gate_open: Arc<dyn Fn() -> bool + Send + Sync>,
    pub known: Known,
    pub metrics: Metrics,
    pub dry_run: bool,
    /// Ends the live streams (the HTTP server waits for open connections).
    pub shutdown: CancellationToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_127_0_0_1_and_ipv6_localhost_are_loopback_listeners() {
        let table = [
            ("127.0.0.1:9184", true),
            ("[::1]:9184", true),
            ("127.0.0.2:9184", false),
            ("0.0.0.0:9184", false),
            ("[::]:9184", false),
            ("192.168.1.5:9184", false),
        ];
        for (addr, want) in table {
            assert_eq!(is_loopback_listener(addr.parse().unwrap()), want, "{addr}");
        }
    }
}
