//! Routes through the whole gateway: one message fanning out to several
//! calls, results naming the route, and reloading routes and access rules
//! without losing or re-running queued commands; a debounced route at run time.

use std::time::Duration;

use serde_json::json;

use crate::support::{Broker, FakeHa, Gateway, TestClient, PREFIX};

const T: Duration = Duration::from_secs(10);

struct Rig {
    _broker: Broker,
    ha: FakeHa,
    client: TestClient,
    device: TestClient,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

/// A broker, a fake HA, a config with `routes` in `routes.d/main.toml`.
async fn rig(test: &str, routes: &str) -> Option<Rig> {
    let base = crate::support::rig(test).await?;
    base.routes("main", routes);
    let crate::support::Rig { broker, ha, dir, config, .. } = base;
    let client = TestClient::connect(
        broker.port,
        &format!("{test}-results"),
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;
    let device = TestClient::connect(broker.port, &format!("{test}-device"), &[]).await;
    Some(Rig { _broker: broker, ha, client, device, dir, config })
}

const BUTTON: &str = r#"
[[route]]
name = "hall button"
topic = "zigbee2mqtt/hall_button"
map = { single = "light.toggle:light.hall", double = "scene.turn_on:scene.evening" }

[[route]]
name = "every button press also dims the porch"
topic = "zigbee2mqtt/+"
when = "value_json.action is defined"
service = "light.turn_on"
entity_id = "light.porch"
data = { brightness_pct = 20 }
"#;

#[tokio::test]
async fn one_message_can_make_several_calls_and_is_acked_after_all() {
    let Some(mut rig) = rig("routes_fanout", BUTTON).await else { return };
    let gateway = Gateway::start(&rig.config, &[]).await;
    rig.client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    rig.device.publish("zigbee2mqtt/hall_button", r#"{"action":"single","linkquality":80}"#).await;
    let toggle = rig.client.result(&format!("{PREFIX}/result/light/toggle")).await;
    assert_eq!(toggle["route"], "hall button");
    assert_eq!(toggle["ok"], true);
    let dim = rig.client.result(&format!("{PREFIX}/result/light/turn_on")).await;
    assert_eq!(dim["route"], "every button press also dims the porch");
    let calls = rig.ha.wait_calls(T, "two calls", |c| c.len() == 2).await;
    let mut bodies: Vec<_> = calls.iter().map(|c| (c.service.clone(), c.body.clone())).collect();
    bodies.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        bodies,
        [
            ("toggle".to_owned(), json!({"entity_id":"light.hall"})),
            ("turn_on".to_owned(), json!({"brightness_pct":20,"entity_id":"light.porch"}))
        ]
    );
    gateway.wait_metric("acks_pending", T, |v| v == 0.0).await;
    // The broker delivers one copy per matching subscription (here two);
    // each copy is evaluated only against its own filter's routes.
    assert_eq!(gateway.metric(r#"messages_received_total{kind="route"}"#), 2.0);

    // A message no route turns into a call is acked and counted, nothing else.
    rig.device.publish("zigbee2mqtt/hall_button", r#"{"battery":80}"#).await;
    gateway.wait_metric("route_skipped_total", T, |v| v == 2.0).await;
    gateway.wait_metric("acks_pending", T, |v| v == 0.0).await;
    assert_eq!(rig.ha.calls().len(), 2);
    gateway.stop().await;
}

#[tokio::test]
async fn routes_and_access_rules_reload_without_losing_queued_commands() {
    let Some(mut rig) = rig("routes_reload", BUTTON).await else { return };
    let gateway = Gateway::start_with(&rig.config, &[("QUEUE__CONCURRENCY", "1")], true).await;
    rig.client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    // A backlog: HA is slow, ten toggles wait in the queue.
    rig.ha.set_delay(Duration::from_millis(100));
    for _ in 0..10 {
        rig.device.publish("zigbee2mqtt/hall_button", r#"{"action":"double"}"#).await;
    }
    rig.ha.wait_calls(T, "the backlog to start", |c| !c.is_empty()).await;
    // All ten admitted under the old routes before the reload: a message the
    // gateway receives after it is routed by the new rules, as it should be.
    // Each press comes twice, one copy per matching subscription (the
    // button's topic and `zigbee2mqtt/+`): twenty messages.
    gateway.wait_metric(r#"messages_received_total{kind="route"}"#, T, |v| v >= 20.0).await;

    // Replace the routes: the button now drives another light; SIGHUP.
    std::fs::write(
        rig.dir.path().join("routes.d/main.toml"),
        r#"
[[route]]
name = "new button"
topic = "zigbee2mqtt/new_button"
map = { single = "light.turn_on:light.new" }
"#,
    )
    .unwrap();
    gateway.hup();
    gateway.wait_metric(r#"config_reloads_total{result="applied"}"#, T, |v| v >= 1.0).await;
    // Until the new subscription is active, publish repeatedly (each press is a new message).
    let deadline = tokio::time::Instant::now() + T;
    loop {
        rig.device.publish("zigbee2mqtt/new_button", r#"{"action":"single"}"#).await;
        if rig.ha.calls().iter().any(|c| c.body["entity_id"] == "light.new") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new route never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The backlog admitted under the old routes ran exactly once each.
    let calls = rig
        .ha
        .wait_calls(Duration::from_secs(20), "the backlog", |c| {
            c.iter().filter(|c| c.service == "turn_on" && c.domain == "scene").count() == 10
        })
        .await;
    assert_eq!(calls.iter().filter(|c| c.domain == "scene").count(), 10, "none lost, none re-run");
    // The old route is gone.
    rig.device.publish("zigbee2mqtt/hall_button", r#"{"action":"double"}"#).await;
    rig.device.publish("zigbee2mqtt/new_button", r#"{"action":"single"}"#).await;
    let n = rig.ha.calls().iter().filter(|c| c.body["entity_id"] == "light.new").count();
    rig.ha
        .wait_calls(T, "one more new-button call", |c| {
            c.iter().filter(|c| c.body["entity_id"] == "light.new").count() > n
        })
        .await;
    assert_eq!(rig.ha.calls().iter().filter(|c| c.domain == "scene").count(), 10);

    // An invalid config is refused; the old rules stay.
    let applied = gateway.metric(r#"config_reloads_total{result="applied"}"#);
    std::fs::write(
        rig.dir.path().join("routes.d/main.toml"),
        "[[route]]\ntopic = \"a/#/b\"\nservice = \"light.toggle\"\n",
    )
    .unwrap();
    gateway.hup();
    // The reloader ran and refused it (it logs every problem), then the
    // routes still work.
    gateway.wait_metric(r#"config_reloads_total{result="refused"}"#, T, |v| v >= 1.0).await;
    assert_eq!(gateway.metric(r#"config_reloads_total{result="applied"}"#), applied, "the invalid config was applied");
    let before = rig.ha.calls().len();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        rig.device.publish("zigbee2mqtt/new_button", r#"{"action":"single"}"#).await;
        if rig.ha.calls().len() > before + 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "routes stopped working after a refused reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Access rules reload too: deny lights, and the route's call is refused.
    std::fs::write(rig.dir.path().join("routes.d/main.toml"), "").unwrap();
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        r#"allow_services = ["light.*", "switch.*", "scene.turn_on", "input_boolean.*"]"#,
        r#"allow_services = ["switch.*"]"#,
    );
    std::fs::write(&rig.config, text).unwrap();
    gateway.hup();
    gateway.wait_metric(r#"config_reloads_total{result="applied"}"#, T, |v| v > applied).await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if rig.client.call("light.turn_on", r#"{"entity_id":"light.x"}"#).await["error"] == "service_denied" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "access rules never reloaded");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_debounced_route_calls_once_with_the_last_value_after_the_quiet_time() {
    const DIMMER: &str = r#"
[[route]]
name = "dimmer"
topic = "zigbee2mqtt/dimmer"
service = "light.turn_on"
entity_id = "light.dimmer"
data = { brightness = "{{ value_json.level }}" }
debounce = "300ms"
"#;
    let Some(mut rig) = rig("routes_debounce", DIMMER).await else { return };
    let gateway = Gateway::start(&rig.config, &[]).await;
    rig.client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    // A knob turned: ten levels, 20 ms apart, each well within the quiet time.
    const N: u64 = 10;
    let mut last_sent = tokio::time::Instant::now();
    for level in 1..=N {
        last_sent = tokio::time::Instant::now();
        rig.device.publish("zigbee2mqtt/dimmer", json!({"level": level * 10}).to_string()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = rig.ha.wait_calls(T, "the debounced call", |c| !c.is_empty()).await;
    // Every message is accounted for: one done, the others debounced; so no
    // further call can come.
    let (done, debounced) =
        (r#"commands_total{outcome="done",reason=""}"#, r#"commands_total{outcome="ignored",reason="debounced"}"#);
    let deadline = tokio::time::Instant::now() + T;
    while gateway.metric(done) + gateway.metric(debounced) < N as f64 {
        assert!(tokio::time::Instant::now() < deadline, "not every message reached an outcome");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.wait_metric("acks_pending", T, |v| v == 0.0).await;
    let calls_now = rig.ha.calls();
    assert_eq!(
        calls_now.len(),
        1,
        "one call for the burst: {:?}",
        calls_now.iter().map(|c| &c.body).collect::<Vec<_>>()
    );
    assert_eq!(calls[0].body, json!({"entity_id": "light.dimmer", "brightness": 100}), "the last value");
    let quiet = calls[0].at - last_sent;
    assert!(quiet >= Duration::from_millis(300), "called {quiet:?} after the last message, before the quiet time");
    assert_eq!(gateway.metric(debounced), (N - 1) as f64, "the earlier ones are counted as debounced");
    assert_eq!(gateway.metric(done), 1.0);
    gateway.stop().await;
}
