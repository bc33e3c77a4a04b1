//! Prometheus metrics on a private registry, and the health flags behind
//! `/readyz`.
//!
//! Names are constants of this module; labels come from small fixed sets
//! (kinds, outcomes, error codes, status classes), never an entity id or a
//! topic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::command::{ErrorCode, Outcome};

pub const PREFIX: &str = "mqtt_ha_gateway";

/// Every metric of the gateway.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages received on command topics, by `kind` (call, set, get, route, other).
    pub messages_received: IntCounterVec,
    /// Commands by final `outcome` (done, rejected, failed, expired, ignored) and `reason`.
    pub commands: IntCounterVec,
    /// HA calls by `class` (2xx, 4xx, 401, 429, 5xx, timeout, connect, transport).
    pub ha_calls: IntCounterVec,
    pub ha_latency: Histogram,
    /// Receipt to final outcome.
    pub command_latency: Histogram,
    pub retries: IntCounter,
    /// Messages on route topics that no route turned into a call (`when` false, no `map` entry).
    pub route_skipped: IntCounter,
    /// HA calls that waited for the rate limit, and the seconds they waited.
    pub rate_limited: IntCounter,
    pub rate_limit_wait: prometheus::Counter,
    pub duplicates: IntCounter,
    /// Commands published to `<prefix>/dead_letter`.
    pub dead_letters: IntCounter,
    /// Results not published, by `reason` (backlog: too many rejections of
    /// QoS 0 messages waiting for the broker).
    pub results_dropped: IntCounterVec,
    pub queue_depth: IntGauge,
    pub queue_capacity: IntGauge,
    pub acks_pending: IntGauge,
    /// QoS 1 commands the broker sent beyond our Receive Maximum, held unparsed.
    pub overflow: IntGauge,
    pub shed: IntCounter,
    pub mqtt_connected: IntGauge,
    pub mqtt_reconnects: IntCounter,
    /// Times another client took over our session (same client_id).
    pub mqtt_taken_over: IntCounter,
    pub ha_up: IntGauge,
    pub ha_websocket_connected: IntGauge,
    /// Entities whose state the gateway publishes.
    pub mirrored_entities: IntGauge,
    pub state_publishes: IntCounter,
    /// `[metrics.entities]`: HA states as gauges.
    pub ha_entity_state: GaugeVec,
    /// Config reloads by `result`: `applied` or `refused` (invalid).
    pub config_reloads: IntCounterVec,
    /// Always 1, for the `version` of the Home Assistant connected now
    /// (one series: the previous version's goes when it changes).
    pub ha_info: IntGaugeVec,
    /// The last command that ended in an error (for the gateway's device in
    /// HA); written only on that path.
    pub last_error: Arc<Mutex<Option<LastError>>>,
}

/// A command's error, as the gateway's device in HA shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub code: ErrorCode,
    /// The outcome's detail, at most [`LastError::MAX_DETAIL`] bytes.
    pub detail: Option<String>,
    pub at: std::time::SystemTime,
}

impl LastError {
    /// An HA sensor's state holds 255 characters; attributes more, but a
    /// line is enough.
    pub const MAX_DETAIL: usize = 200;

    pub fn new(code: ErrorCode, detail: Option<&str>, at: std::time::SystemTime) -> Self {
        let detail = detail.map(|d| {
            let mut end = d.len().min(Self::MAX_DETAIL);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d[..end].to_owned()
        });
        Self { code, detail, at }
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)
        .expect("metric names are static and valid");
    r.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(format!("{PREFIX}_{name}"), help).expect("metric names are static and valid");
    r.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(format!("{PREFIX}_{name}"), help).expect("metric names are static and valid");
    r.register(Box::new(g.clone())).expect("each metric is registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let h = Histogram::with_opts(HistogramOpts::new(format!("{PREFIX}_{name}"), help).buckets(buckets))
        .expect("metric names are static and valid");
    r.register(Box::new(h.clone())).expect("each metric is registered once");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Self {
            messages_received: counter_vec(
                &r,
                "messages_received_total",
                "MQTT messages received on command topics",
                &["kind"],
            ),
            commands: counter_vec(&r, "commands_total", "Commands by final outcome and reason", &["outcome", "reason"]),
            ha_calls: counter_vec(&r, "ha_calls_total", "HTTP calls to Home Assistant by result class", &["class"]),
            ha_latency: histogram(&r, "ha_request_duration_seconds", "Duration of one HTTP call to Home Assistant"),
            command_latency: histogram(
                &r,
                "command_duration_seconds",
                "From receipt of a command to its final outcome",
            ),
            retries: counter(&r, "retries_total", "HA calls retried"),
            route_skipped: counter(
                &r,
                "route_skipped_total",
                "Route messages that made no call (when false, no map entry)",
            ),
            rate_limited: counter(&r, "rate_limited_total", "HA calls that waited for the rate limit"),
            rate_limit_wait: {
                let c = prometheus::Counter::new(
                    format!("{PREFIX}_rate_limit_wait_seconds_total"),
                    "Seconds HA calls waited for the rate limit",
                )
                .expect("metric names are static and valid");
                r.register(Box::new(c.clone())).expect("each metric is registered once");
                c
            },
            dead_letters: counter(&r, "dead_letters_total", "Commands given up and published to <prefix>/dead_letter"),
            results_dropped: counter_vec(
                &r,
                "results_dropped_total",
                "Results not published: too many rejections of QoS 0 messages waiting for the broker",
                &["reason"],
            ),
            duplicates: counter(&r, "duplicates_total", "Redelivered commands recognised and not run again"),
            queue_depth: gauge(&r, "queue_depth", "Commands held (waiting and in flight)"),
            queue_capacity: gauge(&r, "queue_capacity", "Commands held at most"),
            acks_pending: gauge(&r, "acks_pending", "QoS 1 commands received and not yet acknowledged"),
            overflow: gauge(&r, "queue_overflow", "QoS 1 commands received beyond queue capacity, waiting for a slot"),
            shed: counter(
                &r,
                "commands_shed_total",
                "QoS 1 commands left unacked for the broker to redeliver: it sent far beyond the Receive Maximum",
            ),
            mqtt_connected: gauge(&r, "mqtt_connected", "1 while connected to the broker"),
            mqtt_taken_over: counter(
                &r,
                "mqtt_session_taken_over_total",
                "Times another client connected with our client_id",
            ),
            mqtt_reconnects: counter(&r, "mqtt_reconnects_total", "Connections to the broker after the first"),
            ha_up: gauge(&r, "ha_up", "1 while Home Assistant answers and accepts the token"),
            ha_websocket_connected: gauge(
                &r,
                "ha_websocket_connected",
                "1 while the Home Assistant websocket is connected and subscribed",
            ),
            mirrored_entities: gauge(&r, "mirrored_entities", "Entities whose state is published to MQTT"),
            state_publishes: counter(
                &r,
                "state_publishes_total",
                "Retained state messages published (including clears)",
            ),
            ha_entity_state: {
                let opts = Opts::new(
                    format!("{PREFIX}_ha_entity_state"),
                    "State of a Home Assistant entity listed in [metrics.entities] (numbers as is, on/off as 1/0)",
                );
                let g =
                    GaugeVec::new(opts, &["entity_id", "domain", "unit"]).expect("metric names are static and valid");
                r.register(Box::new(g.clone())).expect("each metric is registered once");
                g
            },
            config_reloads: counter_vec(
                &r,
                "config_reloads_total",
                "Config reloads (SIGHUP, changed files): applied, or refused as invalid",
                &["result"],
            ),
            ha_info: {
                let opts = Opts::new(format!("{PREFIX}_ha_info"), "Always 1; the connected Home Assistant's version");
                let g = IntGaugeVec::new(opts, &["version"]).expect("metric names are static and valid");
                r.register(Box::new(g.clone())).expect("each metric is registered once");
                g
            },
            last_error: Arc::new(Mutex::new(None)),
            registry: r,
        };
        for code in ErrorCode::ALL {
            for outcome in ["rejected", "failed", "expired", "ignored"] {
                if outcome_label(code) == outcome {
                    m.commands.with_label_values(&[outcome, code.as_str()]);
                }
            }
        }
        m.commands.with_label_values(&["done", ""]);
        m.results_dropped.with_label_values(&["backlog"]);
        let build = IntGaugeVec::new(
            Opts::new(format!("{PREFIX}_build_info"), "Always 1; the gateway's version"),
            &["version"],
        )
        .expect("metric names are static and valid");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.registry.register(Box::new(build)).expect("each metric is registered once");
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector is registered once");
        for kind in ["call", "set", "get", "route", "other"] {
            m.messages_received.with_label_values(&[kind]);
        }
        for result in ["applied", "refused"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// Counts one final outcome; remembers it as the last error unless it
    /// was ignored by design (retained, duplicate, flow control).
    pub fn outcome(&self, outcome: &Outcome) {
        let (label, reason) = match outcome.error {
            None => ("done", ""),
            Some(code) => (outcome_label(code), code.as_str()),
        };
        self.commands.with_label_values(&[label, reason]).inc();
        if let (Some(code), false) = (outcome.error, label == "ignored") {
            let error = LastError::new(code, outcome.detail.as_deref(), std::time::SystemTime::now());
            *self.last_error.lock().expect("last_error lock is never poisoned: no panics under it") = Some(error);
        }
    }

    /// Final outcomes counted so far, every outcome and reason together.
    pub fn commands_finished(&self) -> u64 {
        use prometheus::core::Collector;
        self.commands.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
    }

    /// The Home Assistant version connected now: the only `ha_info` series.
    pub fn set_ha_version(&self, version: &str) {
        self.ha_info.reset();
        self.ha_info.with_label_values(&[version]).set(1);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding gathered metrics into a Vec cannot fail");
        String::from_utf8(buf).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The gauge value of an HA state: a number as is, on/off-like states as 1/0,
/// anything else (unknown, unavailable, text) none.
pub fn entity_state_value(state: &str) -> Option<f64> {
    match state {
        "on" | "open" | "home" | "true" | "locked" | "detected" => Some(1.0),
        "off" | "closed" | "not_home" | "false" | "unlocked" | "clear" => Some(0.0),
        s => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// The `outcome` label of an error code.
pub fn outcome_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Expired | ErrorCode::Stale => "expired",
        ErrorCode::Duplicate => "ignored",
        ErrorCode::Retained
        | ErrorCode::ShuttingDown
        | ErrorCode::Debounced
        | ErrorCode::Throttled
        | ErrorCode::Coalesced => "ignored",
        ErrorCode::HaError
        | ErrorCode::HaUnauthorized
        | ErrorCode::HaUnavailable
        | ErrorCode::HaTimeout
        | ErrorCode::ResponseUnsupported
        | ErrorCode::ResponseTooLarge => "failed",
        _ => "rejected",
    }
}

/// The `class` label of an HA call result.
pub fn status_class(result: Result<u16, crate::ha::HaErrorKind>) -> &'static str {
    use crate::ha::HaErrorKind as K;
    match result {
        Ok(200..=299) => "2xx",
        Ok(_) => "other",
        Err(K::Unauthorized) => "401",
        Err(K::RateLimited) => "429",
        Err(K::Server) => "5xx",
        Err(K::Rejected) => "4xx",
        Err(K::Timeout) => "timeout",
        Err(K::Connect) => "connect",
        Err(K::Tls) => "tls",
        Err(K::Transport) => "transport",
        Err(K::InvalidResponse) => "invalid_response",
    }
}

/// What `/readyz` checks.
#[derive(Debug, Default)]
pub struct Health {
    pub mqtt_connected: AtomicBool,
    pub ha_reachable: AtomicBool,
    pub ha_token_ok: AtomicBool,
    /// Woken when HA answers again after being unreachable: commands waiting
    /// out a connection error go at once instead of at their next backoff.
    pub ha_back: tokio::sync::Notify,
    /// The stage whose failure is stopping the gateway: `/healthz` says dead.
    pub failed: std::sync::OnceLock<&'static str>,
}

impl Health {
    /// Records what an answer (or its absence) says about HA, in the flags
    /// and the `ha_up` gauge. The one place that decides it.
    pub fn observe(&self, metrics: &Metrics, result: Result<(), crate::ha::HaErrorKind>) {
        use crate::ha::HaErrorKind as K;
        let (reachable, token_ok) = match result {
            Ok(()) => (true, true),
            Err(K::Unauthorized) => (true, false),
            Err(K::Connect | K::Tls | K::Timeout | K::Transport | K::Server) => (false, Self::get(&self.ha_token_ok)),
            Err(K::Rejected | K::RateLimited | K::InvalidResponse) => (true, true),
        };
        let was_reachable = self.ha_reachable.swap(reachable, Ordering::Relaxed);
        Self::set(&self.ha_token_ok, token_ok);
        if reachable && !was_reachable {
            self.ha_back.notify_waiters();
        }
        metrics.ha_up.set(i64::from(reachable && token_ok));
    }

    pub fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }

    pub fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha_info_has_only_the_current_version() {
        let m = Metrics::new();
        assert!(!m.render().contains("mqtt_ha_gateway_ha_info{"), "no series before a version is known");
        m.set_ha_version("2024.3.3");
        m.set_ha_version("2026.2.3");
        let text = m.render();
        assert!(text.contains("mqtt_ha_gateway_ha_info{version=\"2026.2.3\"} 1"), "{text}");
        assert!(!text.contains("version=\"2024.3.3\""), "{text}");
    }

    #[test]
    fn the_last_error_is_the_last_failure_not_what_was_ignored_by_design() {
        let m = Metrics::new();
        assert_eq!(*m.last_error.lock().unwrap(), None);
        m.outcome(&Outcome::failed(ErrorCode::HaError, Some(400), "é".repeat(150)));
        m.outcome(&Outcome::failed(ErrorCode::Debounced, None, None));
        m.outcome(&Outcome::done(200, Vec::new()));
        let last = m.last_error.lock().unwrap().clone().expect("the failure is remembered");
        assert_eq!(last.code, ErrorCode::HaError, "neither the debounced one nor the done one replaced it");
        assert_eq!(last.detail.unwrap(), "é".repeat(100), "cut at a character boundary, at most 200 bytes");
        assert_eq!(m.commands_finished(), 3);
    }

    /// Responses that cannot be given are failures, counted under their code.
    #[test]
    fn response_codes_are_failures() {
        let table = [
            (ErrorCode::ResponseUnsupported, "failed"),
            (ErrorCode::ResponseTooLarge, "failed"),
            (ErrorCode::HaError, "failed"),
            (ErrorCode::InvalidPayload, "rejected"),
        ];
        for (code, label) in table {
            assert_eq!(outcome_label(code), label, "{code}");
        }
        let text = Metrics::new().render();
        for reason in ["response_unsupported", "response_too_large"] {
            let series = format!("mqtt_ha_gateway_commands_total{{outcome=\"failed\",reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        }
    }
}
