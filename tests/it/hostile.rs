//! Hostile input: for every row, nothing reaches Home Assistant, a result
//! with the right reason is published, the gateway stays connected, and a
//! valid command right after is executed.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::support::{setup, PREFIX};

/// What is tried, topic under the prefix, payload, retain, result topic under the prefix, expected error.
type Row = (&'static str, String, Vec<u8>, bool, String, &'static str);

fn rows() -> Vec<Row> {
    let p = |s: &str| s.to_owned();
    let deep = format!("{{\"entity_id\":\"light.a\",\"x\":{}1{}}}", "[".repeat(100), "]".repeat(100));
    let wide = format!(
        "{{\"entity_id\":\"light.a\",{}}}",
        (0..600).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(",")
    );
    let huge_correlation = format!("{{\"entity_id\":\"light.a\",\"correlation\":\"{}\"}}", "c".repeat(4096));
    let invalid = || p("result/_invalid/_invalid");
    vec![
        (
            "malformed JSON",
            p("call/light/turn_on"),
            b"{\"entity_id\":".to_vec(),
            false,
            p("result/light/turn_on"),
            "invalid_json",
        ),
        (
            "not UTF-8",
            p("call/light/turn_on"),
            vec![0xff, 0xfe, 0x7b],
            false,
            p("result/light/turn_on"),
            "invalid_json",
        ),
        ("not UTF-8 on set", p("set/light/a"), vec![0xc3, 0x28], false, p("result/light/set"), "invalid_payload"),
        (
            "1 MiB payload",
            p("call/light/turn_on"),
            vec![b' '; 1024 * 1024],
            false,
            p("result/light/turn_on"),
            "payload_too_large",
        ),
        ("deep JSON", p("call/light/turn_on"), deep.into_bytes(), false, p("result/light/turn_on"), "json_too_complex"),
        ("600 keys", p("call/light/turn_on"), wide.into_bytes(), false, p("result/light/turn_on"), "json_too_complex"),
        (
            "huge correlation",
            p("call/light/turn_on"),
            huge_correlation.into_bytes(),
            false,
            p("result/light/turn_on"),
            "correlation_too_large",
        ),
        ("dot-dot domain", p("call/../turn_on"), b"{}".to_vec(), false, invalid(), "invalid_topic"),
        ("encoded dots", p("call/%2e%2e/turn_on"), b"{}".to_vec(), false, invalid(), "invalid_topic"),
        ("uppercase", p("call/LIGHT/turn_on"), b"{}".to_vec(), false, invalid(), "invalid_topic"),
        ("look-alike letter", p("call/lіght/turn_on"), b"{}".to_vec(), false, invalid(), "invalid_topic"),
        ("empty segment", p("call//turn_on"), b"{}".to_vec(), false, invalid(), "invalid_topic"),
        // An extra segment (call/light/turn_on/x) matches no subscription (call/+/+): never received.
        ("double underscore", p("set/light/a__b"), b"ON".to_vec(), false, invalid(), "invalid_topic"),
        (
            "restart HA",
            p("call/homeassistant/restart"),
            b"{}".to_vec(),
            false,
            p("result/homeassistant/restart"),
            "service_denied",
        ),
        (
            "shell command",
            p("call/shell_command/anything"),
            b"{}".to_vec(),
            false,
            p("result/shell_command/anything"),
            "service_denied",
        ),
        (
            "unlock through *",
            p("call/lock/unlock"),
            b"{\"entity_id\":\"lock.front_door\"}".to_vec(),
            false,
            p("result/lock/unlock"),
            "service_denied",
        ),
        (
            "whole area",
            p("call/light/turn_on"),
            b"{\"area_id\":\"kitchen\"}".to_vec(),
            false,
            p("result/light/turn_on"),
            "target_denied",
        ),
        (
            "all entities",
            p("call/light/turn_off"),
            b"{\"entity_id\":\"all\"}".to_vec(),
            false,
            p("result/light/turn_off"),
            "target_denied",
        ),
        (
            "comma list",
            p("call/light/turn_off"),
            b"{\"entity_id\":\"light.a,light.b\"}".to_vec(),
            false,
            p("result/light/turn_off"),
            "target_denied",
        ),
        (
            "nested target",
            p("call/light/turn_on"),
            b"{\"target\":{\"entity_id\":\"light.a\"}}".to_vec(),
            false,
            p("result/light/turn_on"),
            "target_denied",
        ),
        (
            "registry id",
            p("call/light/turn_on"),
            b"{\"entity_id\":\"4f2a9c0d1e7b46a3b8c5d6e7f8091a2b\"}".to_vec(),
            false,
            p("result/light/turn_on"),
            "entity_denied",
        ),
        ("retained", p("set/light/a"), b"ON".to_vec(), true, p("result/light/set"), "retained"),
        (
            "stale ts",
            p("call/light/turn_on"),
            b"{\"entity_id\":\"light.a\",\"ts\":1000000000}".to_vec(),
            false,
            p("result/light/turn_on"),
            "stale",
        ),
    ]
}

#[tokio::test]
async fn hostile_input_never_reaches_home_assistant() {
    // `*` would allow everything that is not sensitive; the table checks the rest holds.
    let Some(mut env) = setup("hostile", &[("ACCESS__ALLOW_SERVICES", r#"["*"]"#)]).await else { return };
    env.wait_online().await;
    for (what, topic, payload, retain, result_topic, expected) in rows() {
        env.client.publish_qos(&format!("{PREFIX}/{topic}"), payload, QoS::AtLeastOnce, retain).await;
        let r = env.client.expect(&format!("{PREFIX}/{result_topic}"), Duration::from_secs(10), |_| true).await.json();
        assert_eq!(r["ok"], false, "{what}: {r}");
        assert_eq!(r["error"], expected, "{what}: {r}");
        assert!(env.ha.calls().is_empty(), "{what}: a request reached HA");
        assert_eq!(env.gateway.metric("mqtt_connected"), 1.0, "{what}: still connected");
        assert!(
            env.gateway.metric(&format!(r#"commands_total{{outcome="{}",reason="{expected}"}}"#, outcome(expected)))
                >= 1.0,
            "{what}: counted under its reason"
        );
    }
    // A valid command right after is executed.
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.a"}"#).await;
    assert_eq!(r["ok"], true);
    assert_eq!(env.ha.calls().len(), 1);
    env.gateway.stop().await;
}

fn outcome(code: &str) -> &'static str {
    match code {
        "retained" => "ignored",
        "stale" => "expired",
        _ => "rejected",
    }
}

#[tokio::test]
async fn a_redelivered_command_with_the_same_correlation_runs_once() {
    let Some(mut env) = setup("dedupe", &[("QUEUE__DEDUPE_WINDOW", "1m")]).await else { return };
    env.wait_online().await;
    let toggle = r#"{"entity_id":"light.a","correlation":"press-41"}"#;
    assert_eq!(env.client.call("light.toggle", toggle).await["ok"], true);
    let again = env.client.call("light.toggle", toggle).await;
    assert_eq!(again["error"], "duplicate");
    assert_eq!(again["correlation"], "press-41");
    assert_eq!(
        env.client.call("light.toggle", r#"{"entity_id":"light.a","correlation":"press-42"}"#).await["ok"],
        true
    );
    assert_eq!(env.ha.calls().len(), 2, "the repeated toggle was not sent");
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_topic_rule_limits_a_device_to_its_own_entities() {
    let rule = ("ACCESS__RULE", r#"[{topic = "ha-gateway/call/+/+", allow_entities = ["light.kitchen_*"]}]"#);
    let Some(mut env) = setup("topic_rule", &[rule]).await else { return };
    env.wait_online().await;
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.kitchen_main"}"#).await["ok"], true);
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.bedroom"}"#).await["error"], "entity_denied");
    assert_eq!(env.client.call("light.turn_on", "{}").await["error"], "entity_denied");
    assert_eq!(env.ha.calls().len(), 1);
    env.gateway.stop().await;
}
