//! Runs the gateway in-process (or as a process) against a test broker and
//! HA, with typed helpers for metrics and health.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtt_ha_gateway::app::{self, Running};
use mqtt_ha_gateway::config;
use mqtt_ha_gateway::metrics::Metrics;
use mqtt_ha_gateway::supervise::{FailStage, StageFailed};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const PREFIX: &str = "ha-gateway";

/// A config file for a broker and an HA, with `extra` TOML appended to the
/// named sections through env-style overrides.
pub fn write_config(dir: &Path, broker_port: u16, ha_url: &str, token_file: &Path) -> PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "gateway-under-test"
topic_prefix = "{PREFIX}"
reconnect_min = "50ms"
reconnect_max = "500ms"

[home_assistant]
url = "{ha_url}"
token_file = "{}"
retry_min = "20ms"
retry_max = "200ms"

[queue]
rate_per_second = 0

[access]
allow_services = ["light.*", "switch.*", "scene.turn_on", "input_boolean.*"]

[metrics]
listen = "127.0.0.1:0"
"#,
            token_file.display()
        ),
    )
    .unwrap();
    path
}

pub struct Gateway {
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    shutdown: CancellationToken,
    running: Option<Running>,
}

impl Gateway {
    /// Starts the gateway from `config_file` with `overrides` as
    /// `MQTT_HA_GATEWAY_*` variables (e.g. `("QUEUE__CAPACITY", "5")`).
    pub async fn start(config_file: &Path, overrides: &[(&str, &str)]) -> Gateway {
        Self::start_with(config_file, overrides, false).await
    }

    /// Like `start`; with `reload`, the gateway reloads rules and routes from
    /// the same file (and overrides) on `hup()` and on file changes, as the
    /// binary does on SIGHUP.
    pub async fn start_with(config_file: &Path, overrides: &[(&str, &str)], reload: bool) -> Gateway {
        Self::start_full(config_file, overrides, reload, None).await
    }

    /// Like `start_with`, with the stage named by `fail` panicking once its
    /// trigger is cancelled (supervision tests).
    pub async fn start_full(
        config_file: &Path,
        overrides: &[(&str, &str)],
        reload: bool,
        fail: Option<FailStage>,
    ) -> Gateway {
        // RUST_LOG=mqtt_ha_gateway=debug shows the gateway's logs in test output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let owned: Vec<(String, String)> =
            overrides.iter().map(|(k, v)| (format!("{}{k}", config::ENV_PREFIX), v.to_string())).collect();
        let config = config::load(config_file, true, owned.clone()).unwrap_or_else(|e| panic!("{e}"));
        let shutdown = CancellationToken::new();
        let reloader = reload.then(|| {
            let path = config_file.to_path_buf();
            mqtt_ha_gateway::reload::Reloader {
                load: Box::new(move || config::load(&path, true, owned.clone())),
                watch: vec![config_file.to_path_buf(), config::routes_dir(config_file)],
            }
        });
        let options = app::Options { dry_run: false, reloader, fail_stage: fail };
        let running = app::start(config, options, shutdown.clone()).await.expect("gateway starts");
        Gateway {
            metrics_addr: running.metrics_addr,
            metrics: running.metrics.clone(),
            shutdown,
            running: Some(running),
        }
    }

    /// SIGHUP-equivalent: reload rules and routes, re-read the token file.
    pub fn hup(&self) {
        if let Some(r) = &self.running {
            r.hup.send_modify(|n| *n += 1);
        }
    }

    /// SIGTERM-equivalent: drains and waits. Panics if a stage had failed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let result =
                tokio::time::timeout(Duration::from_secs(30), r.wait()).await.expect("gateway stops within 30 s");
            result.expect("no stage failed while the gateway ran");
        }
    }

    /// Waits for the gateway to stop by itself (a stage failed), without
    /// asking it to: its result.
    pub async fn stopped(mut self, timeout: Duration) -> Result<(), StageFailed> {
        let r = self.running.take().expect("the gateway runs");
        tokio::time::timeout(timeout, r.wait()).await.expect("the gateway stopped by itself in time")
    }

    /// The value of one sample, e.g. `commands_total{outcome="done",reason=""}`
    /// (the `mqtt_ha_gateway_` prefix is added); 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_in(&self.metrics.render(), sample)
    }

    /// Waits until `pred(metric(sample))`; panics after `timeout`.
    pub async fn wait_metric(&self, sample: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(sample);
            if pred(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting on {sample} (now {v}); {}", self.summary());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Where the commands are, for a failure message: outcomes, HA's
    /// answers, retries, the queue and the acks.
    pub fn summary(&self) -> String {
        const SHOWN: [&str; 6] =
            ["commands_total", "ha_calls_total", "retries_total", "queue_depth", "acks_pending", "ha_up"];
        self.metrics
            .render()
            .lines()
            .filter_map(|l| l.strip_prefix("mqtt_ha_gateway_"))
            .filter(|l| SHOWN.iter().any(|m| l.starts_with(m)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `GET` a path of the metrics server: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr, path).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.expect("metrics server answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Finds a sample in Prometheus text.
pub fn metric_in(text: &str, sample: &str) -> f64 {
    let wanted = format!("mqtt_ha_gateway_{sample}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == wanted).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}
