//! Admission's table: a message in, what becomes of it out — no broker, no
//! HA, no channels.

use std::time::{Duration, SystemTime};

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use tokio::time::Instant;

use super::*;

fn config(extra: &[(&str, &str)]) -> crate::config::Config {
    let mut vars = vec![("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN".to_owned(), "abc".to_owned())];
    vars.extend(extra.iter().map(|(k, v)| (format!("MQTT_HA_GATEWAY_{k}"), v.to_string())));
    crate::config::load(std::path::Path::new("absent.toml"), false, vars).expect("a valid test config")
}

/// The rules `config` loads, and an empty `[state]` filter.
fn rules_of(config: &crate::config::Config) -> (Rules, StateFilter) {
    (Rules { access: config.access.clone(), routes: Arc::clone(&config.routes) }, StateFilter::empty())
}

fn context<'a>(config: &'a crate::config::Config, rules: &'a Rules, filter: &'a StateFilter) -> Context<'a> {
    Context {
        prefix: &config.mqtt.prefix,
        rules,
        limits: &config.limits,
        state_filter: filter,
        max_age: config.queue.max_age,
    }
}

/// Decides one message on `topic` with `payload` under `config`.
fn decide_on(config: &crate::config::Config, topic: &str, payload: &[u8], retain: bool) -> Decision {
    let (rules, filter) = rules_of(config);
    let ctx = context(config, &rules, &filter);
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec(), None);
    publish.retain = retain;
    let msg = Message { publish: &publish, seq: 1, received_at: Instant::now(), only: None };
    decide(&ctx, None, &msg, SystemTime::now())
}

/// The error code of the only rejection, or "queued" for one admitted call.
fn verdict(d: &Decision) -> String {
    match (d.admitted.as_slice(), d.rejected.as_slice()) {
        ([_], []) => "queued".to_owned(),
        ([], [r]) => r.outcome.error.expect("a rejection has an error code").as_str().to_owned(),
        _ => format!("{} admitted, {} rejected", d.admitted.len(), d.rejected.len()),
    }
}

/// What is tried, topic, payload, retained, kind, verdict.
type Row<'a> = (&'a str, &'a str, &'a [u8], bool, Kind, &'a str);

#[test]
fn hostile_and_valid_commands() {
    let config = config(&[("ACCESS__ALLOW_SERVICES", r#"["light.*", "scene.turn_on"]"#)]);
    let deep = format!("{{\"entity_id\":\"light.a\",\"x\":{}1{}}}", "[".repeat(100), "]".repeat(100));
    let old = r#"{"entity_id":"light.a","ts":"2001-01-01T00:00:00Z"}"#;
    let long_topic = format!("ha-gateway/call/light/{}", "a".repeat(70_000));
    // (what, topic, payload, retained, kind, verdict)
    let table: &[Row] = &[
        ("a valid call", "ha-gateway/call/light/turn_on", br#"{"entity_id":"light.a"}"#, false, Kind::Call, "queued"),
        ("a set", "ha-gateway/set/light/a", b"ON", false, Kind::Set, "queued"),
        ("a get", "ha-gateway/get/light/a", b"", false, Kind::Get, "queued"),
        ("malformed JSON", "ha-gateway/call/light/turn_on", b"{\"entity_id\":", false, Kind::Call, "invalid_json"),
        ("not UTF-8", "ha-gateway/call/light/turn_on", &[0xff, 0xfe], false, Kind::Call, "invalid_json"),
        ("deep JSON", "ha-gateway/call/light/turn_on", deep.as_bytes(), false, Kind::Call, "json_too_complex"),
        ("dot-dot domain", "ha-gateway/call/../turn_on", b"{}", false, Kind::Other, "invalid_topic"),
        ("a retained command", "ha-gateway/call/light/turn_on", b"{}", true, Kind::Call, "retained"),
        ("a service not allowed", "ha-gateway/call/lock/unlock", b"{}", false, Kind::Call, "service_denied"),
        ("a stale ts", "ha-gateway/call/light/turn_on", old.as_bytes(), false, Kind::Call, "stale"),
        ("a topic too long", &long_topic, b"{}", false, Kind::Other, "topic_too_long"),
    ];
    for &(what, topic, payload, retain, kind, want) in table {
        let d = decide_on(&config, topic, payload, retain);
        assert_eq!((d.kind, verdict(&d).as_str()), (kind, want), "{what}");
    }
}

#[test]
fn a_message_under_no_route_is_acked_at_once_and_routes_fan_out() {
    let mut config = config(&[("ACCESS__ALLOW_SERVICES", r#"["light.*"]"#)]);
    let routes: crate::routes::raw::RawRoutesFile = toml_routes(
        r#"
        [[route]]
        topic = "zigbee2mqtt/{device}"
        service = "light.toggle"
        entity_id = "light.{{ device }}"
        [[route]]
        topic = "zigbee2mqtt/+"
        service = "lock.{{ 'unlock' }}"
        entity_id = "lock.front"
        "#,
    );
    config.routes = Arc::new(RouteTable::compile(&routes.route, &config.access).expect("routes compile"));
    let d = decide_on(&config, "elsewhere/x", b"{}", false);
    assert_eq!((d.kind, d.parts()), (Kind::Route, 0), "no route: nothing to wait for");
    let d = decide_on(&config, "zigbee2mqtt/hall", b"{}", false);
    assert_eq!((d.admitted.len(), d.rejected.len()), (1, 1), "one call queued, one refused by [access]");
    assert_eq!(d.rejected[0].outcome.error, Some(ErrorCode::ServiceDenied));
    assert_eq!(d.admitted[0].action.name(), "light.toggle");
}

fn toml_routes(text: &str) -> crate::routes::raw::RawRoutesFile {
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Toml::string(text)).extract().expect("valid routes")
}

#[test]
fn a_repeated_correlation_is_a_duplicate_within_the_window() {
    let config = config(&[]);
    let (rules, filter) = rules_of(&config);
    let ctx = context(&config, &rules, &filter);
    let mut dedupe = Dedupe::new(Duration::from_secs(60));
    let publish = Publish::new("ha-gateway/call/light/turn_on", QoS::AtLeastOnce, r#"{"correlation":"c1"}"#, None);
    let msg = Message { publish: &publish, seq: 1, received_at: Instant::now(), only: None };
    let first = decide(&ctx, Some(&mut dedupe), &msg, SystemTime::now());
    assert!(!first.duplicate && first.admitted.len() == 1);
    let again = decide(&ctx, Some(&mut dedupe), &msg, SystemTime::now());
    assert!(again.duplicate);
    assert_eq!(verdict(&again), "duplicate");
}

#[test]
fn dedupe_remembers_topic_and_correlation_within_its_window() {
    let window = Duration::from_secs(10);
    let t0 = Instant::now();
    let c = |v: &str| serde_json::json!(v);
    let mut d = Dedupe::new(window);
    // (topic, correlation, seconds after t0, first?)
    let table: &[(&str, &str, u64, bool, &str)] = &[
        ("a/call/light/turn_on", "c1", 0, true, "new"),
        ("a/call/light/turn_on", "c1", 1, false, "same topic and correlation within the window"),
        ("a/call/light/turn_off", "c1", 1, true, "another topic"),
        ("a/call/light/turn_on", "c2", 2, true, "another correlation"),
        ("a/call/light/turn_on", "c1", 10, false, "at the window's end: still a duplicate"),
        ("a/call/light/turn_on", "c1", 11, true, "after the window"),
        ("a/call/light/turn_on", "c1", 12, false, "remembered again"),
    ];
    for &(topic, correlation, at, first, why) in table {
        assert_eq!(d.first(topic, &c(correlation), t0 + Duration::from_secs(at)), first, "{why}");
    }
    // Beyond MAX the oldest is forgotten, even within the window.
    let mut d = Dedupe::new(window);
    for i in 0..Dedupe::MAX {
        assert!(d.first("t", &serde_json::json!(i), t0));
    }
    assert!(!d.first("t", &serde_json::json!(1), t0), "all remembered");
    assert!(d.first("t", &serde_json::json!("one more"), t0), "the oldest makes room");
    assert!(d.first("t", &serde_json::json!(0), t0), "the oldest was forgotten");

    // A remembered key costs the same whatever its length: a hash.
    let mut d = Dedupe::new(window);
    assert!(d.first(&"t".repeat(500), &c(&"x".repeat(500)), t0));
    assert_eq!(std::mem::size_of_val(&d.order[0].1), 8, "a 64-bit hash per key, not the key");
}
