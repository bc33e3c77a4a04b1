//! The gateway as a device in Home Assistant (`[discovery]`): the discovery
//! configs, the state document and its updates, HA's birth message and the
//! reload button, against a real Mosquitto and the fake HA. The real HA
//! showing the device is in `tests/e2e` (`the_gateway_is_a_device_in_home_assistant`).

use std::time::Duration;

use serde_json::json;

use crate::support::{rig, Gateway, TestClient, PREFIX};

const T: Duration = Duration::from_secs(10);

const NODE: &str = "gateway-under-test";

const DISCOVERY: &[(&str, &str)] = &[("DISCOVERY__ENABLED", "true"), ("DISCOVERY__STATE_INTERVAL", "100ms")];

fn config_topic(component: &str, object_id: &str) -> String {
    format!("homeassistant/{component}/{NODE}/{object_id}/config")
}

fn state_topic() -> String {
    format!("{PREFIX}/bridge/{NODE}/state")
}

#[tokio::test]
async fn discovery_announces_the_gateway_and_keeps_its_state() {
    let Some(rig) = rig("discovery_announce").await else { return };
    let port = rig.broker.port;
    let mut ha = TestClient::connect(port, "fake-ha-mqtt", &["homeassistant/#", &format!("{PREFIX}/bridge/#")]).await;
    let mut results = TestClient::connect(port, "results", &[&format!("{PREFIX}/result/#")]).await;
    let gateway = Gateway::start_with(&rig.config, DISCOVERY, true).await;

    let entities = [
        ("binary_sensor", "connection"),
        ("sensor", "queue_depth"),
        ("sensor", "commands_per_minute"),
        ("sensor", "last_error"),
        ("button", "reload"),
    ];
    for (component, object_id) in entities {
        let config = ha.expect(&config_topic(component, object_id), T, |m| m.retain).await.json();
        assert_eq!(config["unique_id"], format!("{NODE}_{object_id}"));
        assert_eq!(config["availability_topic"], format!("{PREFIX}/status"));
        assert_eq!(config["device"]["sw_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(config["device"]["identifiers"], json!([format!("mqtt-ha-gateway_{NODE}")]));
    }
    let state = ha.expect(&state_topic(), T, |m| m.retain && m.json()["connection"] == "ON").await.json();
    assert_eq!(state, json!({"connection": "ON", "queue_depth": 0, "commands_per_minute": 0, "last_error": null}));

    // Commands HA is slow to answer: the queue depth shows them, then empties.
    rig.ha.set_delay(Duration::from_millis(600));
    for light in ["a", "b", "c"] {
        results.publish(&format!("{PREFIX}/call/light/turn_on"), format!(r#"{{"entity_id":"light.{light}"}}"#)).await;
    }
    ha.expect(&state_topic(), T, |m| m.json()["queue_depth"] == 3).await;
    results.collect(&format!("{PREFIX}/result/"), 3, T).await;
    rig.ha.set_delay(Duration::ZERO);
    // The slot is freed just before the outcome is counted: wait for both.
    ha.expect(&state_topic(), T, |m| m.json()["queue_depth"] == 0 && m.json()["commands_per_minute"] == 3).await;

    // A command HA refuses: the count and the last error follow.
    rig.ha.script([crate::support::Reply::status(400)]);
    results.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.a"}"#).await;
    assert_eq!(results.result(&format!("{PREFIX}/result/light/turn_on")).await["error"], "ha_error");
    let state = ha.expect(&state_topic(), T, |m| m.json()["last_error"].is_object()).await.json();
    assert_eq!(state["commands_per_minute"], 4);
    assert_eq!(state["last_error"]["code"], "ha_error");
    assert!(state["last_error"]["at"].as_str().unwrap().ends_with('Z'), "{state}");

    // HA's birth message: every config again, once however often it comes.
    ha.take(&config_topic("button", "reload"));
    for _ in 0..10 {
        ha.publish("homeassistant/status", "online").await;
    }
    ha.expect(&config_topic("button", "reload"), T, |_| true).await;
    // The button: the same reload as SIGHUP. It comes after the births, on
    // the same connection: once it is handled, so are they.
    ha.publish(&format!("{PREFIX}/bridge/{NODE}/reload"), "reload").await;
    gateway.wait_metric(r#"config_reloads_total{result="applied"}"#, T, |v| v == 1.0).await;
    assert!(ha.take(&config_topic("button", "reload")).is_empty(), "ten births, one announcement");
    // Nothing of this reached the command path.
    let received: f64 = ["call", "set", "get", "route", "other"]
        .iter()
        .map(|kind| gateway.metric(&format!(r#"messages_received_total{{kind="{kind}"}}"#)))
        .sum();
    assert_eq!(received, 4.0, "only the calls");
    gateway.stop().await;
}

#[tokio::test]
async fn discovery_is_off_by_default_and_its_topics_are_then_plain_topics() {
    let Some(rig) = rig("discovery_off").await else { return };
    let port = rig.broker.port;
    let mut watcher = TestClient::connect(port, "watcher", &["homeassistant/#", &format!("{PREFIX}/#")]).await;
    let gateway = Gateway::start_with(&rig.config, &[], true).await;
    watcher.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    watcher.publish("homeassistant/status", "online").await;
    watcher.publish(&format!("{PREFIX}/bridge/{NODE}/reload"), "reload").await;
    // A call after them, on the same connection: its result means they were handled.
    watcher.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.a"}"#).await;
    watcher.expect(&format!("{PREFIX}/result/light/turn_on"), T, |_| true).await;
    for (component, object_id) in [("binary_sensor", "connection"), ("button", "reload")] {
        assert!(watcher.take(&config_topic(component, object_id)).is_empty(), "no {object_id} config");
    }
    assert!(watcher.take(&state_topic()).is_empty(), "no bridge state");
    assert_eq!(gateway.metric(r#"config_reloads_total{result="applied"}"#), 0.0);
    gateway.stop().await;
}
