//! The command path end to end: call and set topics, results, correlation,
//! MQTT 5 request/response, access, invalid input and retained commands.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

use crate::support::{setup, PREFIX};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn call_and_set_reach_home_assistant_and_results_come_back() {
    let Some(mut env) = setup("call_and_set", &[]).await else {
        return;
    };
    env.wait_online().await;

    let result =
        env.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","brightness":128,"correlation":"c-1"}"#).await;
    assert_eq!(result, json!({"ok":true,"status":200,"changed":["light.kitchen"],"correlation":"c-1"}));
    let calls = env.ha.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].domain.as_str(), calls[0].service.as_str()), ("light", "turn_on"));
    assert_eq!(calls[0].body, json!({"entity_id":"light.kitchen","brightness":128}), "correlation is not sent to HA");
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer test-token-0123456789"));

    let state = env.client.expect(&format!("{PREFIX}/state/light/kitchen"), T, |_| true).await;
    assert!(state.retain, "state is retained");
    assert_eq!(state.json()["state"], "on");

    let result = env.client.set("switch.fan_plug", "off", "switch.turn_off").await;
    assert_eq!(result["ok"], true);
    assert_eq!(result["changed"], json!(["switch.fan_plug"]));
    let last = env.ha.calls().pop().unwrap();
    assert_eq!((last.domain.as_str(), last.service.as_str()), ("switch", "turn_off"));
    assert_eq!(last.body, json!({"entity_id":"switch.fan_plug"}));

    let result =
        env.client.set("light.hall", r#"{"state":"ON","brightness":3,"correlation":{"n":1}}"#, "light.turn_on").await;
    assert_eq!(result["correlation"], json!({"n":1}));
    assert_eq!(env.ha.calls().pop().unwrap().body, json!({"entity_id":"light.hall","brightness":3}));

    assert_eq!(env.gateway.metric(r#"commands_total{outcome="done",reason=""}"#), 3.0);
    assert_eq!(env.gateway.metric(r#"messages_received_total{kind="set"}"#), 2.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn mqtt5_response_topic_and_correlation_data_are_honoured() {
    let Some(mut env) = setup("response_topic", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.client
        .publish_request(
            &format!("{PREFIX}/call/scene/turn_on"),
            r#"{"entity_id":"scene.evening"}"#,
            "reply/me",
            b"\x01\x02id",
        )
        .await;
    let reply = env.client.expect("reply/me", T, |_| true).await;
    assert_eq!(reply.correlation_data.as_deref(), Some(&b"\x01\x02id"[..]));
    assert_eq!(reply.json()["ok"], true);
    // The result topic carries it too, for dashboards watching result/#.
    assert_eq!(env.client.result(&format!("{PREFIX}/result/scene/turn_on")).await["ok"], true);
    env.gateway.stop().await;
}

#[tokio::test]
async fn denied_services_never_reach_home_assistant() {
    let Some(mut env) = setup("denied", &[]).await else {
        return;
    };
    env.wait_online().await;
    let result = env.client.call("lock.unlock", r#"{"entity_id":"lock.front_door","correlation":7}"#).await;
    assert_eq!(result, json!({"ok":false,"changed":[],"error":"service_denied","correlation":7}));
    let result = env.client.call("homeassistant.restart", "").await;
    assert_eq!(result["error"], "service_denied");
    assert!(env.ha.calls().is_empty());
    assert_eq!(env.gateway.metric(r#"commands_total{outcome="rejected",reason="service_denied"}"#), 2.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn invalid_topics_and_payloads_are_rejected_before_any_request() {
    let Some(mut env) = setup("invalid", &[]).await else {
        return;
    };
    env.wait_online().await;
    let invalid = format!("{PREFIX}/result/_invalid/_invalid");
    for topic in ["call/Light/turn_on", "call/light/turn__on", "call/_x/turn_on", "set/light/Kitchen", "set/light/a%2e"]
    {
        env.client.publish(&format!("{PREFIX}/{topic}"), "{}").await;
        let r = env.client.result(&invalid).await;
        assert_eq!(r["error"], "invalid_topic", "{topic}");
        assert_eq!(r["topic"], format!("{PREFIX}/{topic}"));
    }
    assert_eq!(env.client.call("light.turn_on", "not json").await["error"], "invalid_json");
    assert_eq!(env.client.set("light.kitchen", "DIM", "light.set").await["error"], "invalid_payload");
    env.client.publish(&format!("{PREFIX}/call/light/turn_on"), vec![b' '; 70 * 1024]).await;
    assert_eq!(env.client.result(&format!("{PREFIX}/result/light/turn_on")).await["error"], "payload_too_large");
    assert!(env.ha.calls().is_empty(), "nothing reached HA");
    assert_eq!(env.gateway.metric(r#"commands_total{outcome="rejected",reason="invalid_topic"}"#), 5.0);
    assert_eq!(env.gateway.metric(r#"messages_received_total{kind="other"}"#), 5.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn retained_commands_are_ignored_at_subscribe_time_and_live() {
    let Some(broker) = crate::support::Broker::start("retained") else {
        return;
    };
    // A retained command waiting on the broker before the gateway starts.
    let pre = crate::support::TestClient::connect(broker.port, "pre", &[]).await;
    pre.publish_qos(&format!("{PREFIX}/set/light/kitchen"), "ON", QoS::AtLeastOnce, true).await;
    drop(pre);
    let ha = crate::support::FakeHa::start(crate::support::TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, crate::support::TOKEN).unwrap();
    let config = crate::support::gateway::write_config(dir.path(), broker.port, &ha.url(), &token_file);
    let mut client = crate::support::TestClient::connect(
        broker.port,
        "c",
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;
    let gateway = crate::support::Gateway::start(&config, &[]).await;
    let r = client.result(&format!("{PREFIX}/result/light/set")).await;
    assert_eq!(r["error"], "retained");
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    client
        .publish_qos(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.a"}"#, QoS::AtLeastOnce, true)
        .await;
    assert_eq!(client.result(&format!("{PREFIX}/result/light/turn_on")).await["error"], "retained");
    // A normal command afterwards still works, so nothing above was lost in a queue.
    assert_eq!(client.call("light.turn_off", r#"{"entity_id":"light.a"}"#).await["ok"], true);
    assert_eq!(ha.calls().len(), 1, "only the live, unretained command ran");
    assert_eq!(gateway.metric(r#"commands_total{outcome="ignored",reason="retained"}"#), 2.0);
    gateway.stop().await;
}
