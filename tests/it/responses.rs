//! Service responses and knowing which HA we talk to: `return_response` in
//! payloads and routes, response-only services asked for by themselves,
//! `response_unsupported` decided from the services catalogue and HA's
//! version without calling HA, the catalogue read again when HA comes back,
//! `response_too_large`, `ha_info`, and the version logged per connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::{rig, Env, Gateway, Supports, TestClient, PREFIX};

const T: Duration = Duration::from_secs(10);
const ALLOW: &str = r#"["light.*", "weather.*", "calendar.*"]"#;

/// Broker, fake HA reporting `version`, and the gateway (with `overrides`),
/// started once HA's version and catalogue are known (`ha_status online`
/// follows them).
async fn start(test: &str, version: &str, overrides: &[(&str, &str)]) -> Option<Env> {
    let r = rig(test).await?;
    r.ha.set_version(version);
    let filters = [format!("{PREFIX}/result/#"), format!("{PREFIX}/status"), format!("{PREFIX}/ha_status")];
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let client = TestClient::connect(r.broker.port, &format!("tester-{test}"), &filters).await;
    let mut all = vec![("ACCESS__ALLOW_SERVICES", ALLOW)];
    all.extend_from_slice(overrides);
    let gateway = Gateway::start(&r.config, &all).await;
    let mut env =
        Env { broker: r.broker, ha: r.ha, client, gateway, _dir: r.dir, config: r.config, token_file: r.token_file };
    env.wait_online().await;
    ha_online(&mut env.client).await;
    Some(env)
}

async fn ha_online(client: &mut TestClient) {
    client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
}

/// The result's `message`, taken out (it is prose; the rest is compared whole).
fn message(result: &mut Value) -> String {
    result.as_object_mut().unwrap().remove("message").and_then(|m| m.as_str().map(str::to_owned)).unwrap_or_default()
}

#[tokio::test]
async fn an_asked_response_comes_back_under_response() {
    let Some(mut env) = start("response_asked", "2026.2.3", &[]).await else { return };
    env.ha.set_response("calendar.get_events", json!({"calendar.home": {"events": [{"summary": "bins"}]}}));
    let result = env
        .client
        .call("calendar.get_events", r#"{"entity_id":"calendar.home","return_response":true,"correlation":1}"#)
        .await;
    assert_eq!(
        result,
        json!({"ok":true,"status":200,"changed":["calendar.home"],"correlation":1,
               "response":{"calendar.home":{"events":[{"summary":"bins"}]}}})
    );
    let calls = env.ha.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].return_response, "asked with ?return_response");
    assert_eq!(calls[0].body, json!({"entity_id":"calendar.home"}), "return_response is not service data");

    // Not asked (and optional): no query, no response.
    let result = env.client.call("calendar.get_events", r#"{"entity_id":"calendar.home"}"#).await;
    assert_eq!(result, json!({"ok":true,"status":200,"changed":["calendar.home"]}));
    assert!(!env.ha.calls()[1].return_response);
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_response_only_service_is_asked_for_without_the_command_asking() {
    let Some(mut env) = start("response_only", "2026.2.3", &[]).await else { return };
    let result = env.client.call("weather.get_forecasts", r#"{"entity_id":"weather.home","type":"daily"}"#).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["response"]["weather.home"]["forecast"][0]["temperature"], 21.5, "{result}");
    let calls = env.ha.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].return_response, "the gateway asked by itself: HA answers 400 otherwise");
    env.gateway.stop().await;
}

#[tokio::test]
async fn asking_a_service_that_returns_nothing_is_refused_without_calling_ha() {
    let Some(mut env) = start("response_unsupported", "2026.2.3", &[]).await else { return };
    let mut result = env
        .client
        .call("light.turn_on", r#"{"entity_id":"light.kitchen","return_response":true,"correlation":"r"}"#)
        .await;
    let why = message(&mut result);
    assert_eq!(result, json!({"ok":false,"changed":[],"error":"response_unsupported","correlation":"r"}));
    assert!(why.contains("light.turn_on returns no service response"), "{why}");
    let mut bad = env.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","return_response":"yes"}"#).await;
    assert_eq!(message(&mut bad), "");
    assert_eq!(bad["error"], "invalid_payload", "{bad}");
    // A service the catalogue does not list goes as asked; HA's 400 is an ha_error.
    let unknown = env.client.call("light.flash", r#"{"entity_id":"light.kitchen","return_response":true}"#).await;
    assert_eq!((unknown["error"].clone(), unknown["status"].clone()), (json!("ha_error"), json!(400)), "{unknown}");
    let calls = env.ha.calls();
    assert_eq!(calls.len(), 1, "only the unlisted service reached HA: {calls:?}");
    assert_eq!((calls[0].service.as_str(), calls[0].return_response), ("flash", true));
    let failed = r#"commands_total{outcome="failed",reason="response_unsupported"}"#;
    assert_eq!(env.gateway.metric(failed), 1.0);
    env.gateway.stop().await;
}

/// HA 2024.3 ignores `?return_response` and fails response-only services
/// with a 500: neither may reach it.
#[tokio::test]
async fn an_old_ha_gets_no_response_requests() {
    let Some(mut env) = start("response_old_ha", "2024.3.3", &[]).await else { return };
    for (service, payload) in [
        ("calendar.get_events", r#"{"entity_id":"calendar.home","return_response":true}"#),
        ("weather.get_forecasts", r#"{"entity_id":"weather.home","type":"daily"}"#),
    ] {
        let mut result = env.client.call(service, payload).await;
        let why = message(&mut result);
        assert_eq!(result, json!({"ok":false,"changed":[],"error":"response_unsupported"}), "{service}");
        assert!(why.contains("Home Assistant 2024.8 or newer"), "{service}: {why}");
    }
    assert!(env.ha.calls().is_empty(), "nothing reached HA: {:?}", env.ha.calls());
    // Calls without responses go on as before.
    let plain = env.client.call("calendar.get_events", r#"{"entity_id":"calendar.home"}"#).await;
    assert_eq!(plain["ok"], true, "{plain}");
    assert_eq!(env.gateway.metric(r#"ha_info{version="2024.3.3"}"#), 1.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn the_catalogue_and_version_are_read_again_when_ha_comes_back() {
    let Some(mut env) = start("response_catalogue_refresh", "2026.1.0", &[]).await else { return };
    let asked = r#"{"entity_id":"calendar.home","return_response":true}"#;
    assert_eq!(env.client.call("calendar.get_events", asked).await["ok"], true);
    assert_eq!(env.gateway.metric(r#"ha_info{version="2026.1.0"}"#), 1.0);
    let reads = env.ha.reads();

    // HA restarts as a newer version in which the service returns nothing.
    env.ha.stop();
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"offline").await;
    env.ha.set_version("2026.2.3");
    env.ha.set_services(&[("calendar", "get_events", Supports::None), ("light", "turn_on", Supports::None)]);
    env.ha.restart().await;
    ha_online(&mut env.client).await;
    let (config_reads, services_reads, _) = env.ha.reads();
    assert_eq!((config_reads, services_reads), (reads.0 + 1, reads.1 + 1), "read once per connection");

    let calls_before = env.ha.calls().len();
    let mut result = env.client.call("calendar.get_events", asked).await;
    message(&mut result);
    assert_eq!(result["error"], "response_unsupported", "the new catalogue decides: {result}");
    assert_eq!(env.ha.calls().len(), calls_before, "refused without a call");
    let metrics = env.gateway.get("/metrics").await.1;
    let info: Vec<&str> = metrics.lines().filter(|l| l.starts_with("mqtt_ha_gateway_ha_info{")).collect();
    assert_eq!(info, vec![r#"mqtt_ha_gateway_ha_info{version="2026.2.3"} 1"#], "only the current version");
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_response_over_max_result_bytes_is_left_out_and_said_so() {
    let Some(mut env) = start("response_too_large", "2026.2.3", &[("LIMITS__MAX_RESULT_BYTES", "2048")]).await else {
        return;
    };
    env.ha.set_response("calendar.get_events", json!({"calendar.home": {"events": "x".repeat(4096)}}));
    let mut result = env
        .client
        .call("calendar.get_events", r#"{"entity_id":"calendar.home","return_response":true,"correlation":7}"#)
        .await;
    let why = message(&mut result);
    assert_eq!(
        result,
        json!({"ok":false,"status":200,"changed":["calendar.home"],"error":"response_too_large","correlation":7})
    );
    assert!(why.contains("limits.max_result_bytes is 2048"), "{why}");
    assert_eq!(env.ha.calls().len(), 1, "the service ran once");
    let small = json!({"calendar.home": {"events": []}});
    env.ha.set_response("calendar.get_events", small.clone());
    let result =
        env.client.call("calendar.get_events", r#"{"entity_id":"calendar.home","return_response":true}"#).await;
    assert_eq!(result["response"], small, "a response under the limit is published");
    assert_eq!(env.gateway.metric(r#"commands_total{outcome="failed",reason="response_too_large"}"#), 1.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_route_can_ask_for_the_response() {
    let Some(r) = rig("response_route").await else { return };
    r.routes(
        "forecast",
        r#"
[[route]]
name = "forecast"
topic = "ask/forecast"
service = "calendar.get_events"
entity_id = "calendar.home"
return_response = true
"#,
    );
    let mut client =
        TestClient::connect(r.broker.port, "tester-response-route", &[&format!("{PREFIX}/result/#")]).await;
    let gateway = Gateway::start(&r.config, &[("ACCESS__ALLOW_SERVICES", ALLOW)]).await;
    // The route's subscription is in place once a published message gets a result.
    let deadline = Instant::now() + T;
    let result = loop {
        client.publish("ask/forecast", "go").await;
        let got = client
            .try_expect(&format!("{PREFIX}/result/calendar/get_events"), Duration::from_millis(500), |_| true)
            .await;
        if let Some(m) = got {
            break m.json();
        }
        assert!(Instant::now() < deadline, "the route never answered");
    };
    assert_eq!(result["route"], "forecast", "{result}");
    assert!(result["response"].is_object(), "{result}");
    assert!(r.ha.calls().iter().all(|c| c.return_response));
    gateway.stop().await;
}

/// Polls `done` until it holds; panics after `T`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Home Assistant <version>` once per websocket connection, not per probe.
#[tokio::test]
async fn the_version_is_logged_once_per_connection() {
    let Some(r) = rig("version_logged").await else { return };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"))
        .args(["run", "--config"])
        .arg(&r.config)
        .env("MQTT_HA_GATEWAY_LOG__FORMAT", "json")
        .env("MQTT_HA_GATEWAY_MQTT__CLIENT_ID", "version-logger")
        .env("MQTT_HA_GATEWAY_HOME_ASSISTANT__PROBE_INTERVAL", "50ms")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            sink.lock().unwrap().push(line);
        }
    });
    let logged =
        || lines.lock().unwrap().iter().filter(|l| l.contains("\"message\":\"Home Assistant 2026.2.3\"")).count();
    let probes = || r.ha.reads().2;
    until("the first connection's line", || logged() == 1).await;
    let seen = probes();
    until("five probes", || probes() >= seen + 5).await;
    assert_eq!(logged(), 1, "probes log nothing");

    r.ha.drop_websockets(false);
    until("the second connection's line", || logged() == 2).await;
    let seen = probes();
    until("five more probes", || probes() >= seen + 5).await;
    assert_eq!(logged(), 2, "{:?}", lines.lock().unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `check --online` against the fake HA: the version, and a warning (exit
/// code unchanged) outside the tested range.
#[tokio::test]
async fn check_online_prints_the_version_and_warns_outside_the_tested_range() {
    let Some(r) = rig("check_version").await else { return };
    let check = |config: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"))
                .args(["check", "--online", "--config"])
                .arg(&config)
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await
        .unwrap()
    };
    let (code, out) = check(r.config.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("home assistant: version 2026.2.3"), "{out}");
    assert!(!out.contains("warning:"), "{out}");

    r.ha.set_version("2023.11.3");
    let (code, out) = check(r.config.clone()).await;
    assert_eq!(code, Some(0), "a warning does not fail the check: {out}");
    assert!(
        out.contains("warning: home_assistant: version 2023.11.3 is outside the tested range 2024.3.3 – 2026.2.3"),
        "{out}"
    );
}
