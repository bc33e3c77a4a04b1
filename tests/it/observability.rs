//! Metrics, health and logs: `/metrics` counts after a scripted set of
//! commands (parsed, not grepped), `/readyz` follows HA going away and coming
//! back, HA states exported as gauges, JSON logs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::support::{setup, Reply, PREFIX};

const T: Duration = Duration::from_secs(10);

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the exposition format: `name{l="v",…} value` lines, comments skipped.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            Sample { name, labels, value }
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

#[tokio::test]
async fn metrics_count_a_scripted_set_of_commands() {
    let Some(mut env) = setup("metrics", &[]).await else { return };
    env.wait_online().await;
    env.ha.script([Reply::status(200), Reply::status(200), Reply::status(400)]);
    for entity in ["light.a", "light.b"] {
        assert_eq!(env.client.call("light.turn_on", json!({"entity_id": entity}).to_string()).await["ok"], true);
    }
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.c"}"#).await["error"], "ha_error");
    assert_eq!(env.client.call("lock.unlock", r#"{"entity_id":"lock.d"}"#).await["error"], "service_denied");
    assert_eq!(env.client.call("light.turn_on", "{").await["error"], "invalid_json");
    assert_eq!(env.client.set("switch.e", "ON", "switch.turn_on").await["ok"], true);

    let (status, text) = env.gateway.get("/metrics").await;
    assert_eq!(status, 200);
    let m = parse(&text);
    let g = |name: &str, labels: &[(&str, &str)]| value(&m, &format!("mqtt_ha_gateway_{name}"), labels);
    assert_eq!(g("messages_received_total", &[("kind", "call")]), Some(5.0));
    assert_eq!(g("messages_received_total", &[("kind", "set")]), Some(1.0));
    assert_eq!(g("commands_total", &[("outcome", "done")]), Some(3.0));
    assert_eq!(g("commands_total", &[("outcome", "failed"), ("reason", "ha_error")]), Some(1.0));
    assert_eq!(g("commands_total", &[("outcome", "rejected"), ("reason", "service_denied")]), Some(1.0));
    assert_eq!(g("commands_total", &[("outcome", "rejected"), ("reason", "invalid_json")]), Some(1.0));
    assert_eq!(g("ha_calls_total", &[("class", "2xx")]), Some(3.0));
    assert_eq!(g("ha_calls_total", &[("class", "4xx")]), Some(1.0));
    assert_eq!(g("ha_request_duration_seconds_count", &[]), Some(4.0));
    assert_eq!(g("command_duration_seconds_count", &[]), Some(6.0));
    assert_eq!(g("queue_capacity", &[]), Some(10_000.0));
    assert_eq!(g("queue_depth", &[]), Some(0.0));
    assert_eq!(g("mqtt_connected", &[]), Some(1.0));
    assert_eq!(g("build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(value(&m, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6), "process metrics");
    // Labels come from fixed sets: no entity id or topic ever appears.
    for s in &m {
        for v in s.labels.values() {
            assert!(!v.contains("light.") && !v.contains('/'), "{s:?}");
        }
    }
    env.gateway.stop().await;
}

#[tokio::test]
async fn readyz_follows_home_assistant_going_away_and_coming_back() {
    let Some(mut env) = setup("readyz", &[("HOME_ASSISTANT__PROBE_INTERVAL", "100ms")]).await else { return };
    env.wait_online().await;
    let ready = |(status, body): (u16, String)| (status, serde_json::from_str::<serde_json::Value>(&body).unwrap());
    let deadline = tokio::time::Instant::now() + T;
    while env.gateway.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = ready(env.gateway.get("/readyz").await);
    assert_eq!(body["failing"], json!([]));

    env.ha.stop();
    let deadline = tokio::time::Instant::now() + T;
    let body = loop {
        let (status, body) = ready(env.gateway.get("/readyz").await);
        if status == 503 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready with HA gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["checks"]["ha_reachable"], false);
    assert_eq!(body["failing"], json!(["ha_reachable"]));
    assert_eq!(env.gateway.get("/healthz").await.0, 200, "alive all the same");

    env.ha.restart().await;
    let deadline = tokio::time::Instant::now() + T;
    while env.gateway.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not ready again after HA came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.gateway.stop().await;
}

/// No commands and no websocket (the mirror cannot connect): only
/// `home_assistant.probe_interval` keeps `/readyz` and `ha_up` true to HA.
#[tokio::test]
async fn readyz_and_ha_up_follow_home_assistant_within_one_probe_interval_while_idle() {
    let dead_ws = format!("ws://127.0.0.1:{}/api/websocket", crate::support::broker::free_port());
    let overrides = [("HOME_ASSISTANT__PROBE_INTERVAL", "1s"), ("HOME_ASSISTANT__WEBSOCKET_URL", dead_ws.as_str())];
    let Some(mut env) = setup("readyz_idle", &overrides).await else { return };
    env.wait_online().await;
    env.gateway.wait_metric("ha_up", T, |v| v == 1.0).await;
    assert_eq!(env.gateway.get("/readyz").await.0, 200);

    // One interval, plus room for a busy machine; far less than the 10 s
    // a blind probe took.
    let within = Duration::from_millis(2500);
    env.ha.stop();
    let stopped = tokio::time::Instant::now();
    env.gateway.wait_metric("ha_up", within, |v| v == 0.0).await;
    assert_eq!(env.gateway.get("/readyz").await.0, 503);
    eprintln!("ha_up fell {:?} after HA stopped", stopped.elapsed());

    env.ha.restart().await;
    env.gateway.wait_metric("ha_up", within, |v| v == 1.0).await;
    assert_eq!(env.gateway.get("/readyz").await.0, 200);
    env.gateway.stop().await;
}

#[tokio::test]
async fn listed_home_assistant_entities_become_gauges() {
    let entities = ("METRICS__ENTITIES__INCLUDE", r#"["sensor.water_usage", "binary_sensor.leak"]"#);
    let Some(mut env) = setup("entity_gauges", &[entities]).await else { return };
    env.wait_online().await;
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.ha.set_state("sensor.water_usage", "12.5", json!({"unit_of_measurement": "L/min"}));
    env.ha.set_state("binary_sensor.leak", "on", json!({}));
    env.ha.set_state("sensor.not_listed", "3", json!({}));
    let gauge = |text: &str, id: &str| value(&parse(text), "mqtt_ha_gateway_ha_entity_state", &[("entity_id", id)]);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, text) = env.gateway.get("/metrics").await;
        if gauge(&text, "sensor.water_usage") == Some(12.5) && gauge(&text, "binary_sensor.leak") == Some(1.0) {
            let m = parse(&text);
            let water =
                m.iter().find(|s| s.labels.get("entity_id").map(String::as_str) == Some("sensor.water_usage")).unwrap();
            assert_eq!(water.labels["unit"], "L/min");
            assert_eq!(water.labels["domain"], "sensor");
            assert_eq!(gauge(&text, "sensor.not_listed"), None, "only listed entities");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gauges never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Unavailable: the series goes away rather than showing a stale value.
    env.ha.set_state("sensor.water_usage", "unavailable", json!({"unit_of_measurement": "L/min"}));
    let deadline = tokio::time::Instant::now() + T;
    while gauge(&env.gateway.get("/metrics").await.1, "sensor.water_usage").is_some() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.gateway.stop().await;
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let Some(env) = setup("json_logs", &[]).await else { return };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"))
        .args(["run", "--config"])
        .arg(&env.config)
        .env("MQTT_HA_GATEWAY_LOG__FORMAT", "json")
        .env("MQTT_HA_GATEWAY_MQTT__CLIENT_ID", "json-logger")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().take(2).map(Result::unwrap).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(v["level"], "INFO", "{v}");
        assert!(v["fields"]["message"].is_string(), "{v}");
    }
}
