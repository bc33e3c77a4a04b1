//! The gateway beside Home Assistant's own MQTT integration, set up as a
//! config entry pointing at the test broker (`hatool mqtt`): HA's
//! `mqtt_statestream` and the gateway's statestream layout side by side, and
//! the gateway as a device in HA through MQTT discovery.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::ha::Release;
use crate::support::{TestClient, PREFIX};
use crate::{rig, rig_with, Rig, Token, T};

/// What both publish: the entities a test drives.
const STREAMED: [&str; 4] = ["light.kitchen", "light.hall", "script.flash", "sensor.statestream_probe"];

/// The retained tree under `base`, with `base/` cut off every topic.
async fn tree(port: u16, base: &str) -> BTreeMap<String, String> {
    TestClient::retained(port, base, T)
        .await
        .into_iter()
        .map(|(topic, payload): (String, Bytes)| {
            let rest = topic.strip_prefix(&format!("{base}/")).expect("under base").to_owned();
            (rest, String::from_utf8(payload.to_vec()).expect("statestream payloads are text"))
        })
        .collect()
}

/// Waits until `pred(tree)` holds; the last tree read.
async fn wait_tree(
    port: u16,
    base: &str,
    what: &str,
    pred: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let t = tree(port, base).await;
        if pred(&t) {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "{base}: {what} never came: {t:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The topics of `entity` in a tree without its base (`light/kitchen/…`).
fn of_entity(topic: &str, entity: &str) -> bool {
    topic.starts_with(&format!("{}/", entity.replacen('.', "/", 1)))
}

/// An attribute topic whose attribute HA's current state no longer has:
/// HA's `mqtt_statestream` leaves its last value retained.
async fn stale(ha: &crate::ha::Ha, topic: &str) -> bool {
    let Some(entity) = STREAMED.iter().find(|e| of_entity(topic, e)) else { return false };
    let name = &topic[entity.len() + 1..];
    if ["state", "last_updated", "last_changed"].contains(&name) {
        return false;
    }
    ha.maybe_state(entity).await.is_some_and(|s| s["attributes"].get(name).is_none())
}

/// Waits until both publishers caught up: the gateway's tree of the
/// [`STREAMED`] entities is HA's less the attributes HA left behind
/// (returned too). Entities a call changed beside them (the input helpers
/// behind the template light) are the gateway's too, and not compared.
async fn wait_same(rig: &Rig, port: u16) -> (BTreeMap<String, String>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut ha = tree(port, "hastream").await;
        let mut gateway = tree(port, "gwstream").await;
        gateway.retain(|topic, _| STREAMED.iter().any(|e| of_entity(topic, e)));
        let mut left = Vec::new();
        for topic in ha.keys().filter(|t| !gateway.contains_key(*t)).cloned().collect::<Vec<_>>() {
            if stale(&rig.ha, &topic).await {
                ha.remove(&topic);
                left.push(topic);
            }
        }
        if ha == gateway {
            return (gateway, left);
        }
        if tokio::time::Instant::now() >= deadline {
            let only_ha: Vec<_> = ha.iter().filter(|(t, p)| gateway.get(*t) != Some(p)).collect();
            let only_gw: Vec<_> = gateway.iter().filter(|(t, p)| ha.get(*t) != Some(p)).collect();
            panic!("the trees differ\nHA's mqtt_statestream only: {only_ha:#?}\nthe gateway only: {only_gw:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The attributes of several JSON types HA's encoder and the gateway's must
/// write alike.
fn probe_attributes() -> serde_json::Value {
    json!({
        "unit_of_measurement": "°C",
        "friendly_name": "Probe ü",
        "float": 0.1,
        "whole": 20.0,
        "big": 1e20,
        "small": 1.5e-7,
        "negative": -273.15,
        "int": 3,
        "big_int": 1152921504606846976u64,
        "flag": false,
        "none": null,
        "list": [1, 2.5, "x", null, true],
        "nested": {"b": {"é": [1, {"d": "🌡"}]}, "a": null},
        "quoted": "a\"b\\c\n\t",
        "at": "2030-01-01T12:00:00+00:00",
        "a/b": 1,
        "going": "soon removed"
    })
}

/// HA's `mqtt_statestream` and the gateway's `layout = "statestream"`, on the
/// same entities of a real HA, publish the same retained topics and payloads
/// (floats, unicode, lists, nested objects, datetimes, timestamps); the
/// gateway also dumps current states at start, clears the topic of a
/// removed attribute (HA leaves its last value) and of a removed entity.
pub async fn statestream_matches_home_assistants_own(release: Release) {
    let include = serde_json::to_string(&STREAMED).unwrap();
    let overrides = [
        ("STATE__LAYOUT", "statestream"),
        ("STATE__STATESTREAM__BASE_TOPIC", "gwstream"),
        ("STATE__STATESTREAM__PUBLISH_ATTRIBUTES", "true"),
        ("STATE__STATESTREAM__PUBLISH_TIMESTAMPS", "true"),
        ("STATE__INCLUDE", include.as_str()),
    ];
    let Some(mut rig) = rig(release, "e2e_statestream", Token::Own, &overrides).await else {
        return;
    };
    let port = rig.broker_port();
    // HA's MQTT integration, then mqtt_statestream, which needs the entry at start.
    rig.ha.tool(&["mqtt", "--port", &port.to_string()]);
    let entities: String = STREAMED.iter().map(|e| format!("      - {e}\n")).collect();
    let package = format!(
        "mqtt_statestream:\n  base_topic: hastream\n  publish_attributes: true\n  publish_timestamps: true\n  include:\n    entities:\n{entities}"
    );
    let packages = rig.ha.state_dir.join("config/packages");
    std::fs::create_dir_all(&packages).unwrap();
    std::fs::write(packages.join("statestream.yaml"), package).unwrap();
    rig.ha.stop();
    rig.ha.start_again();

    // The gateway's dump at (re)connection: every included entity, before any change.
    let dumped =
        wait_tree(port, "gwstream", "the dump", |t| t.get("light/kitchen/state").map(String::as_str) == Some("off"))
            .await;
    assert!(dumped.contains_key("light/hall/last_changed"), "{dumped:#?}");

    // HA's statestream listens once HA has started: wait until it publishes.
    for n in 0.. {
        rig.ha.tool(&["set-state", "--entity", "sensor.statestream_probe", "--state", &format!("warmup {n}")]);
        let seen = tree(port, "hastream").await;
        if seen.get("sensor/statestream_probe/state") == Some(&format!("warmup {n}")) {
            break;
        }
        assert!(n < 100, "HA's mqtt_statestream never published: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !tree(port, "hastream").await.contains_key("light/kitchen/state"),
        "HA's statestream publishes no state before it changes (the gateway's dump does)"
    );

    // Changes: attributes of every JSON type, a call, a script with a datetime attribute.
    let attributes = probe_attributes().to_string();
    rig.ha.tool(&["set-state", "--entity", "sensor.statestream_probe", "--state", "21.5", "--attributes", &attributes]);
    let r = rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","brightness":128}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rig.client.call("script.turn_on", r#"{"entity_id":"script.flash"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    rig.ha
        .wait_state("script.flash", T, |s| s["state"] == "off" && s["attributes"]["last_triggered"].is_string())
        .await;
    rig.ha.wait_state("light.hall", T, |s| s["state"] == "off").await;
    let (same, _) = wait_same(&rig, port).await;
    for (topic, payload) in [
        ("sensor/statestream_probe/state", "21.5"),
        ("sensor/statestream_probe/unit_of_measurement", r#""\u00b0C""#),
        ("sensor/statestream_probe/big", "1e+20"),
        ("sensor/statestream_probe/small", "1.5e-07"),
        ("sensor/statestream_probe/whole", "20.0"),
        ("sensor/statestream_probe/list", r#"[1, 2.5, "x", null, true]"#),
        ("sensor/statestream_probe/nested", r#"{"b": {"\u00e9": [1, {"d": "\ud83c\udf21"}]}, "a": null}"#),
        ("sensor/statestream_probe/a/b", "1"),
        ("light/kitchen/state", "on"),
        ("light/kitchen/brightness", "128"),
    ] {
        assert_eq!(same.get(topic).map(String::as_str), Some(payload), "{topic}");
    }
    let triggered = &same["script/flash/last_triggered"];
    assert!(triggered.starts_with('"') && triggered.contains('T'), "a datetime attribute: {triggered}");
    for stamp in ["last_updated", "last_changed"] {
        assert!(same.contains_key(&format!("light/kitchen/{stamp}")), "{stamp}");
    }

    // An attribute gone: HA leaves its last value retained; the gateway clears it.
    let mut fewer = probe_attributes();
    fewer.as_object_mut().unwrap().remove("going");
    rig.ha.tool(&[
        "set-state",
        "--entity",
        "sensor.statestream_probe",
        "--state",
        "22",
        "--attributes",
        &fewer.to_string(),
    ]);
    wait_tree(port, "hastream", "the new probe state", |t| {
        t.get("sensor/statestream_probe/state").map(String::as_str) == Some("22")
    })
    .await;
    let (_, left) = wait_same(&rig, port).await;
    assert!(left.contains(&"sensor/statestream_probe/going".to_owned()), "{left:?}");
    let ha = tree(port, "hastream").await;
    assert_eq!(ha.get("sensor/statestream_probe/going").map(String::as_str), Some(r#""soon removed""#));

    // An entity gone: the gateway clears every topic of it; HA publishes nothing.
    let r = reqwest::Client::new()
        .delete(format!("{}/api/states/sensor.statestream_probe", rig.ha.url))
        .bearer_auth(&rig.ha.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let gateway = wait_tree(port, "gwstream", "the probe's removal", |t| {
        !t.keys().any(|k| k.starts_with("sensor/statestream_probe/"))
    })
    .await;
    assert!(gateway.contains_key("light/kitchen/state"), "{gateway:#?}");
    let ha = tree(port, "hastream").await;
    assert_eq!(ha.get("sensor/statestream_probe/state").map(String::as_str), Some("22"), "HA's stays");
    assert!(TestClient::retained(port, &format!("{PREFIX}/state"), T).await.is_empty(), "no json layout beside it");
    rig.gateway.stop().await;
}

/// The gateway's entities in HA (ids from the device name and entity names).
const CONNECTION: &str = "binary_sensor.mqtt_ha_gateway_connection";
const QUEUE_DEPTH: &str = "sensor.mqtt_ha_gateway_queue_depth";
const PER_MINUTE: &str = "sensor.mqtt_ha_gateway_commands_per_minute";
const LAST_ERROR: &str = "sensor.mqtt_ha_gateway_last_error";
const RELOAD: &str = "button.mqtt_ha_gateway_reload_rules";

async fn wait_entity(ha: &crate::ha::Ha, entity: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = ha.maybe_state(entity).await;
        if let Some(s) = s.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{entity} never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `[discovery] enabled`, a real HA whose MQTT integration uses the
/// test broker shows the gateway as a device: its entities appear and
/// follow the gateway, the reload button pressed in HA reloads the rules,
/// and after HA restarts its birth message brings the entities back (their
/// retained configs were cleared while it was down, so only the birth can).
pub async fn the_gateway_is_a_device_in_home_assistant(release: Release) {
    let overrides = [("DISCOVERY__ENABLED", "true"), ("DISCOVERY__STATE_INTERVAL", "200ms")];
    let Some(mut rig) = rig_with(release, "e2e_discovery", Token::Own, &overrides, true).await else {
        return;
    };
    let port = rig.broker_port();
    rig.ha.tool(&["mqtt", "--port", &port.to_string()]);
    let connection = wait_entity(&rig.ha, CONNECTION, |s| s["state"] == "on").await;
    assert_eq!(connection["attributes"]["device_class"], "connectivity");
    wait_entity(&rig.ha, QUEUE_DEPTH, |s| s["state"] == "0").await;
    wait_entity(&rig.ha, PER_MINUTE, |s| s["state"] == "0").await;
    wait_entity(&rig.ha, LAST_ERROR, |s| s["state"] == "none").await;
    wait_entity(&rig.ha, RELOAD, |_| true).await;

    // Commands: the count per minute and the last error follow.
    let r = rig.client.call("light.does_not_exist", r#"{"entity_id":"light.kitchen"}"#).await;
    assert_eq!(r["error"], "ha_error", "{r}");
    assert_eq!(rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen"}"#).await["ok"], true);
    assert_eq!(rig.client.call("light.turn_off", r#"{"entity_id":"light.kitchen"}"#).await["ok"], true);
    let error = wait_entity(&rig.ha, LAST_ERROR, |s| s["state"] == "ha_error").await;
    assert_eq!(error["attributes"]["code"], "ha_error", "{error}");
    wait_entity(&rig.ha, PER_MINUTE, |s| s["state"] == "3").await;

    // The button, pressed through HA: the same reload as SIGHUP.
    let r = reqwest::Client::new()
        .post(format!("{}/api/services/button/press", rig.ha.url))
        .bearer_auth(&rig.ha.admin_token)
        .json(&json!({"entity_id": RELOAD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    rig.gateway.wait_metric(r#"config_reloads_total{result="applied"}"#, T, |v| v == 1.0).await;

    // HA restarts; its discovery topics lose their retained configs meanwhile.
    rig.ha.stop();
    let configs = TestClient::retained(port, "homeassistant", T).await;
    assert_eq!(configs.len(), 5, "{configs:?}");
    for topic in configs.keys() {
        rig.client.client.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, true, Vec::new()).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + T;
    while !TestClient::retained(port, "homeassistant", T).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "configs not cleared");
    }
    rig.ha.start_again();
    wait_entity(&rig.ha, LAST_ERROR, |s| s["state"] == "ha_error").await;
    wait_entity(&rig.ha, CONNECTION, |s| s["state"] == "on").await;
    wait_entity(&rig.ha, PER_MINUTE, |s| s["state"] == "3").await;
    assert_eq!(TestClient::retained(port, "homeassistant", T).await.len(), 5, "announced again");
    rig.gateway.stop().await;
}
