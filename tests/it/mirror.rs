//! The state mirror: snapshot on start, live updates over the websocket,
//! removals, resync after a gap, `ha_status`, no double publishing, and the
//! get topic.

use std::time::Duration;

use serde_json::json;

use crate::support::{setup, Env, Gateway, PREFIX};

const T: Duration = Duration::from_secs(10);

fn seed(env: &Env) {
    env.ha.set_state("light.a", "on", json!({"brightness": 10}));
    env.ha.set_state("sensor.t", "21.5", json!({"unit_of_measurement": "°C"}));
    env.ha.set_state("switch.x", "off", json!({}));
    env.ha.set_state("sensor.t_battery", "90", json!({}));
}

const MIRROR: &[(&str, &str)] =
    &[("STATE__INCLUDE", r#"["light.*", "sensor.*"]"#), ("STATE__EXCLUDE", r#"["sensor.*_battery"]"#)];

/// Starts with states seeded before the gateway, so they come from the snapshot.
async fn mirrored_env(test: &str, extra: &[(&str, &str)]) -> Option<Env> {
    let mut overrides = MIRROR.to_vec();
    overrides.extend_from_slice(extra);
    let mut env = setup(test, &overrides).await?;
    seed(&env);
    // The gateway started before the seed; restart it so the snapshot carries the states.
    env.gateway.stop().await;
    env.gateway = Gateway::start(&env.config, &overrides).await;
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    Some(env)
}

#[tokio::test]
async fn the_snapshot_publishes_included_entities_retained_and_live_changes_follow() {
    let Some(mut env) = mirrored_env("mirror_live", &[]).await else { return };
    let light = env.client.expect(&format!("{PREFIX}/state/light/a"), T, |_| true).await;
    assert!(light.retain);
    assert_eq!(light.json()["state"], "on");
    assert_eq!(light.json()["attributes"], json!({"brightness": 10}));
    let sensor = env.client.expect(&format!("{PREFIX}/state/sensor/t"), T, |_| true).await;
    assert_eq!(sensor.json()["state"], "21.5");
    assert_eq!(env.gateway.metric("mirrored_entities"), 2.0, "switch.x is not included, the battery is excluded");

    env.ha.set_state("sensor.t", "22.0", json!({"unit_of_measurement": "°C"}));
    let update = env.client.expect(&format!("{PREFIX}/state/sensor/t"), T, |m| m.json()["state"] == "22.0").await;
    assert!(update.retain);

    // A new subscriber sees the current state at once (retained).
    let mut late = crate::support::TestClient::connect(env.broker.port, "late", &[&format!("{PREFIX}/state/#")]).await;
    let seen = late.expect(&format!("{PREFIX}/state/sensor/t"), T, |_| true).await;
    assert_eq!(seen.json()["state"], "22.0");

    // Removed in HA: the retained topic is cleared.
    env.ha.remove_state("sensor.t");
    env.client.expect(&format!("{PREFIX}/state/sensor/t"), T, |m| m.payload.is_empty()).await;
    env.gateway.wait_metric("mirrored_entities", T, |v| v == 1.0).await;
    env.gateway.stop().await;
}

#[tokio::test]
async fn after_a_websocket_gap_the_mirror_resyncs_and_says_ha_was_offline() {
    let Some(mut env) = mirrored_env("mirror_gap", &[]).await else { return };
    env.client.expect(&format!("{PREFIX}/state/light/a"), T, |_| true).await;
    env.ha.drop_websockets(true);
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"offline").await;
    // Changes while the gateway is not listening…
    {
        let mut inner_changes = vec![];
        inner_changes.push(env.ha.set_state("light.a", "off", json!({"brightness": 0})));
        env.ha.remove_state("sensor.t");
        env.ha.set_state("light.b", "on", json!({}));
    }
    env.ha.accept_websockets();
    // …are all there after the reconnect's snapshot.
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.client
        .expect(&format!("{PREFIX}/state/light/a"), T, |m| !m.payload.is_empty() && m.json()["state"] == "off")
        .await;
    env.client
        .expect(&format!("{PREFIX}/state/light/b"), T, |m| !m.payload.is_empty() && m.json()["state"] == "on")
        .await;
    env.client.expect(&format!("{PREFIX}/state/sensor/t"), T, |m| m.payload.is_empty()).await;
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_call_publishes_its_state_at_once_and_the_event_does_not_repeat_it() {
    let Some(mut env) = mirrored_env("mirror_dedup", &[]).await else { return };
    env.client.expect(&format!("{PREFIX}/state/light/a"), T, |_| true).await;
    let before = env.gateway.metric("state_publishes_total");
    let r = env.client.call("light.turn_off", r#"{"entity_id":"light.a"}"#).await;
    assert_eq!(r["ok"], true);
    // The fake, like HA, also sends the same new state as a websocket event.
    // A marker event after it proves the event was handled before we count.
    env.ha.set_state("sensor.marker", "1", json!({}));
    env.client.expect(&format!("{PREFIX}/state/sensor/marker"), T, |_| true).await;
    // The marker came after light.a's new state (one connection, in order).
    // Only "off" counts: the first gateway of `mirrored_env` may also have
    // published "on" live, before this one's snapshot did.
    let off: Vec<_> = env
        .client
        .take(&format!("{PREFIX}/state/light/a"))
        .into_iter()
        .filter(|m| !m.payload.is_empty() && m.json()["state"] == "off")
        .collect();
    assert_eq!(off.len(), 1, "one state message for light.a");
    assert_eq!(env.gateway.metric("state_publishes_total") - before, 2.0, "light.a once, the marker once");

    // An event older than what was published never overwrites it.
    let mut stale = env.ha.state("light.a").unwrap();
    stale["state"] = json!("on");
    stale["last_updated"] = json!("2000-01-01T00:00:00+00:00");
    env.ha.send_event(stale);
    env.ha.set_state("sensor.marker", "2", json!({}));
    env.client.expect(&format!("{PREFIX}/state/sensor/marker"), T, |m| m.json()["state"] == "2").await;
    assert_eq!(env.gateway.metric("state_publishes_total") - before, 3.0, "the stale event was dropped");
    env.gateway.stop().await;
}

#[tokio::test]
async fn entities_touched_by_calls_are_mirrored_even_without_an_include_list() {
    let Some(mut env) = setup("mirror_touched", &[]).await else { return };
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.ha.set_state("switch.untouched", "on", json!({}));
    assert_eq!(env.client.call("switch.turn_on", r#"{"entity_id":"switch.plug"}"#).await["ok"], true);
    env.client.expect(&format!("{PREFIX}/state/switch/plug"), T, |m| m.json()["state"] == "on").await;
    // Changed in HA by someone else: the mirror follows.
    env.ha.set_state("switch.plug", "off", json!({}));
    env.client.expect(&format!("{PREFIX}/state/switch/plug"), T, |m| m.json()["state"] == "off").await;
    assert_eq!(env.gateway.metric("mirrored_entities"), 1.0, "switch.untouched is not published");
    env.gateway.stop().await;
}

#[tokio::test]
async fn the_get_topic_publishes_the_current_state_from_home_assistant() {
    let Some(mut env) = mirrored_env("mirror_get", &[]).await else { return };
    env.client.expect(&format!("{PREFIX}/state/light/a"), T, |_| true).await;
    // Not mirrored, but readable on demand.
    env.client.publish(&format!("{PREFIX}/get/switch/x"), "").await;
    let s = env.client.expect(&format!("{PREFIX}/state/switch/x"), T, |_| true).await;
    assert!(s.retain);
    assert_eq!(s.json()["state"], "off");
    // Published again even though nothing changed: the asker wants it now.
    env.client.publish(&format!("{PREFIX}/get/light/a"), "").await;
    env.client.expect(&format!("{PREFIX}/state/light/a"), T, |m| m.json()["state"] == "on").await;
    // MQTT 5 request/response gets the state itself.
    env.client.publish_request(&format!("{PREFIX}/get/sensor/t"), "", "reply/get", b"q1").await;
    let reply = env.client.expect("reply/get", T, |_| true).await;
    assert_eq!(reply.json()["state"], "21.5");
    assert_eq!(reply.correlation_data.as_deref(), Some(&b"q1"[..]));
    // Unknown entity: HA's 404 in the result; excluded entity: refused.
    let r = env.client.get_result("light.nope").await;
    assert_eq!(
        (r["ok"].clone(), r["status"].clone(), r["error"].clone()),
        (json!(false), json!(404), json!("ha_error"))
    );
    let r = env.client.get_result("sensor.t_battery").await;
    assert_eq!(r["error"], "entity_denied");
    env.gateway.stop().await;
}

#[tokio::test]
async fn when_home_assistant_refuses_the_websocket_token_ha_status_is_offline() {
    let Some(mut env) = setup("mirror_auth", &[("HOME_ASSISTANT__AUTH_BACKOFF", "60s")]).await else { return };
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.ha.set_token("rotated");
    env.ha.drop_websockets(false);
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"offline").await;
    env.gateway.wait_metric("ha_websocket_connected", T, |v| v == 0.0).await;
    assert!(env.ha.ws_connections() <= 1, "no reconnect storm with a refused token");
    env.gateway.stop().await;
}

/// HA 2024.3 answers `GET /api/services` with a 500 when an integration's
/// service descriptions fail to load (its camera services import numpy):
/// the catalogue stays unknown, the mirror runs all the same.
#[tokio::test]
async fn a_services_catalogue_home_assistant_cannot_give_does_not_stop_the_mirror() {
    let Some(mut env) = setup("mirror_no_catalogue", MIRROR).await else { return };
    env.ha.fail_read("/api/services", Some(500));
    seed(&env);
    env.gateway.stop().await;
    env.gateway = Gateway::start(&env.config, MIRROR).await;
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    let light = env.client.expect(&format!("{PREFIX}/state/light/a"), T, |_| true).await;
    assert_eq!(light.json()["state"], "on");
    assert!(env.ha.reads().1 >= 1, "the catalogue was asked for");
    // Calls go as commands ask.
    env.client.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.a"}"#).await;
    let r = env.client.expect(&format!("{PREFIX}/result/light/turn_on"), T, |_| true).await;
    assert_eq!(r.json()["ok"], true);
    env.gateway.stop().await;
}

/// A session that fails after authenticating (here: its snapshot) is retried
/// with the growing backoff, not at once over and over.
#[tokio::test]
async fn a_session_failing_after_authentication_backs_off() {
    let mut overrides = MIRROR.to_vec();
    overrides.extend([("HOME_ASSISTANT__RETRY_MIN", "50ms"), ("HOME_ASSISTANT__RETRY_MAX", "1s")]);
    let Some(mut env) = setup("mirror_backoff", &overrides).await else { return };
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.ha.fail_read("/api/states", Some(500));
    let before = env.ha.ws_accepted();
    env.ha.drop_websockets(false);
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"offline").await;
    // retry_min 50ms, max 1s: the 5th try comes after at least
    // 25+50+100+200+400 ms of backoff (half of each ceiling); without the
    // backoff growing, after 5 × at most 50 ms.
    let started = tokio::time::Instant::now();
    let deadline = started + T;
    while env.ha.ws_accepted() - before < 5 {
        assert!(tokio::time::Instant::now() < deadline, "no 5 reconnects in {T:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700), "5 reconnects in {elapsed:?}: the backoff did not grow");
    // Once HA answers again, the mirror is back.
    env.ha.fail_read("/api/states", None);
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    env.gateway.stop().await;
}

const STATESTREAM: &[(&str, &str)] = &[
    ("STATE__LAYOUT", "statestream"),
    ("STATE__STATESTREAM__BASE_TOPIC", "homestate"),
    ("STATE__STATESTREAM__PUBLISH_ATTRIBUTES", "true"),
    ("STATE__STATESTREAM__PUBLISH_TIMESTAMPS", "true"),
];

fn text(tree: &std::collections::BTreeMap<String, bytes::Bytes>, topic: &str) -> Option<String> {
    tree.get(topic).map(|p| String::from_utf8(p.to_vec()).unwrap())
}

/// `layout = "statestream"`: HA's `mqtt_statestream` topics, plus what it
/// lacks — every current state at start, cleared topics for a removed
/// attribute or entity, include/exclude, a resync after a gap.
#[tokio::test]
async fn the_statestream_layout_dumps_at_start_follows_changes_and_clears_what_is_gone() {
    let Some(mut env) = mirrored_env("mirror_statestream", STATESTREAM).await else { return };
    let port = env.broker.port;
    let mut stream = crate::support::TestClient::connect(port, "statestream-watcher", &["homestate/#"]).await;
    stream.expect("homestate/sensor/t/state", T, |m| &m.payload[..] == b"21.5").await;
    let tree = crate::support::TestClient::retained(port, "homestate", T).await;
    let light = env.ha.state("light.a").unwrap();
    let expected = [
        ("homestate/light/a/state", "on".to_owned()),
        ("homestate/light/a/brightness", "10".to_owned()),
        ("homestate/light/a/last_updated", light["last_updated"].as_str().unwrap().to_owned()),
        ("homestate/light/a/last_changed", light["last_changed"].as_str().unwrap().to_owned()),
        ("homestate/sensor/t/state", "21.5".to_owned()),
        ("homestate/sensor/t/unit_of_measurement", r#""\u00b0C""#.to_owned()),
    ];
    for (topic, payload) in &expected {
        assert_eq!(text(&tree, topic).as_deref(), Some(payload.as_str()), "{topic} in {tree:?}");
    }
    assert_eq!(tree.len(), 8, "light.a and sensor.t only (battery excluded, switch not included): {tree:?}");
    let json_layout = crate::support::TestClient::retained(port, &format!("{PREFIX}/state"), T).await;
    assert!(json_layout.is_empty(), "no json layout beside it: {json_layout:?}");

    // A change that drops an attribute: the new values, and the attribute's topic cleared.
    env.ha.set_state("sensor.t", "22.0", json!({"values": [1, 2.5], "nested": {"k": "ü"}}));
    stream.expect("homestate/sensor/t/state", T, |m| &m.payload[..] == b"22.0").await;
    stream.expect("homestate/sensor/t/unit_of_measurement", T, |m| m.payload.is_empty()).await;
    let tree = crate::support::TestClient::retained(port, "homestate/sensor", T).await;
    assert_eq!(text(&tree, "homestate/sensor/t/values").as_deref(), Some("[1, 2.5]"));
    assert_eq!(text(&tree, "homestate/sensor/t/nested").as_deref(), Some(r#"{"k": "\u00fc"}"#));
    assert!(!tree.contains_key("homestate/sensor/t/unit_of_measurement"), "{tree:?}");

    // Removed in HA: every topic of it cleared.
    env.ha.remove_state("sensor.t");
    stream.expect("homestate/sensor/t/state", T, |m| m.payload.is_empty()).await;
    let tree = crate::support::TestClient::retained(port, "homestate/sensor", T).await;
    assert!(tree.is_empty(), "nothing of sensor.t is left: {tree:?}");

    // Changes during a websocket gap arrive with the resync.
    env.ha.drop_websockets(true);
    env.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"offline").await;
    env.ha.set_state("light.a", "off", json!({}));
    env.ha.accept_websockets();
    stream.expect("homestate/light/a/state", T, |m| &m.payload[..] == b"off").await;
    stream.expect("homestate/light/a/brightness", T, |m| m.payload.is_empty()).await;
    env.gateway.stop().await;
}
