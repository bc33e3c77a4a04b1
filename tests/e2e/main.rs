//! End-to-end tests: the gateway between a real Mosquitto and a real Home
//! Assistant Core (installed from PyPI by `tests/ha/install`, onboarded by
//! script, real long-lived tokens). Every test runs against each
//! [`Release`]: `ha_2024_3::…` and `ha_2026_2::…` (see [`for_each_release`]).

mod ecosystem;
mod ha;

#[allow(dead_code)]
#[path = "../it/support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;

use ecosystem::{statestream_matches_home_assistants_own, the_gateway_is_a_device_in_home_assistant};
use ha::{Ha, Release};
use support::{Broker, Gateway, TestClient, PREFIX};

const T: Duration = Duration::from_secs(20);

struct Rig {
    _broker: Broker,
    ha: Ha,
    client: TestClient,
    gateway: Gateway,
    dir: tempfile::TempDir,
    token_file: std::path::PathBuf,
}

impl Rig {
    fn broker_port(&self) -> u16 {
        self._broker.port
    }
}

/// Whose token the gateway uses.
#[derive(Clone, Copy, PartialEq)]
enum Token {
    /// A long-lived token of the admin made for the gateway alone.
    Own,
    /// The non-admin user's token.
    User,
}

/// Broker + real HA + gateway (token from a file in the rig's temp dir).
async fn rig(release: Release, test: &str, token: Token, overrides: &[(&str, &str)]) -> Option<Rig> {
    rig_with(release, test, token, overrides, false).await
}

/// [`rig`]; with `reload`, the gateway reloads its rules on SIGHUP's
/// equivalent, as the binary does.
async fn rig_with(release: Release, test: &str, token: Token, overrides: &[(&str, &str)], reload: bool) -> Option<Rig> {
    let test = &format!("{test}_{}", release.name().replace('.', "_"));
    let broker = Broker::start(test)?;
    let ha = tokio::task::spawn_blocking({
        let test = test.to_owned();
        move || Ha::start(&test, release)
    })
    .await
    .unwrap()?;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("ha_token");
    match token {
        Token::User => std::fs::copy(&ha.user_token_file, &token_file).map(|_| ()).unwrap(),
        Token::Own => {
            ha.tool(&["new-token", "--name", &format!("gateway {test}"), "--out", &token_file.display().to_string()]);
        }
    }
    let config = support::gateway::write_config(dir.path(), broker.port, &ha.url, &token_file);
    let mut overrides = overrides.to_vec();
    let allows = overrides.iter().any(|(k, _)| *k == "ACCESS__ALLOW_SERVICES");
    (!allows).then(|| overrides.push((
        "ACCESS__ALLOW_SERVICES",
        r#"["light.*", "switch.*", "cover.*", "fan.*", "climate.set_temperature", "counter.increment", "script.turn_on", "scene.turn_on"]"#,
    )));
    let mut client = TestClient::connect(
        broker.port,
        &format!("e2e-{test}"),
        &[
            &format!("{PREFIX}/result/#"),
            &format!("{PREFIX}/state/#"),
            &format!("{PREFIX}/status"),
            &format!("{PREFIX}/ha_status"),
        ],
    )
    .await;
    let gateway = Gateway::start_with(&config, &overrides, reload).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    Some(Rig { _broker: broker, ha, client, gateway, dir, token_file })
}

async fn call_and_set_change_real_entities(release: Release) {
    let Some(mut rig) = rig(release, "e2e_call_set", Token::Own, &[]).await else {
        return;
    };
    rig.gateway.wait_metric("ha_up", T, |v| v == 1.0).await;
    // The mirror read HA's version on connecting.
    rig.gateway.wait_metric(&format!(r#"ha_info{{version="{}"}}"#, release.version()), T, |v| v == 1.0).await;
    let (status, body) = rig.gateway.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let r =
        rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","brightness":128,"correlation":"k-1"}"#).await;
    assert_eq!(
        (r["ok"].clone(), r["status"].clone(), r["correlation"].clone()),
        (json!(true), json!(200), json!("k-1")),
        "{r}"
    );
    assert!(r["changed"].as_array().unwrap().contains(&json!("light.kitchen")), "{r}");
    let s = rig.ha.wait_state("light.kitchen", T, |s| s["state"] == "on").await;
    assert_eq!(s["attributes"]["brightness"], 128);
    let mirrored = rig.client.expect(&format!("{PREFIX}/state/light/kitchen"), T, |m| m.json()["state"] == "on").await;
    assert!(mirrored.retain);

    assert_eq!(rig.client.set("switch.fan_plug", "ON", "switch.turn_on").await["ok"], true);
    rig.ha.wait_state("switch.fan_plug", T, |s| s["state"] == "on").await;
    assert_eq!(rig.client.set("switch.fan_plug", "toggle", "switch.toggle").await["ok"], true);
    rig.ha.wait_state("switch.fan_plug", T, |s| s["state"] == "off").await;

    assert_eq!(rig.client.set("light.hall", r#"{"state":"ON","brightness":40}"#, "light.turn_on").await["ok"], true);
    let s = rig.ha.wait_state("light.hall", T, |s| s["state"] == "on").await;
    assert_eq!(s["attributes"]["brightness"], 40);

    assert_eq!(
        rig.client.call("cover.set_cover_position", r#"{"entity_id":"cover.living_room_blind","position":40}"#).await
            ["ok"],
        true
    );
    rig.ha
        .wait_state("cover.living_room_blind", T, |s| s["attributes"]["current_position"].as_f64() == Some(40.0))
        .await;

    assert_eq!(
        rig.client.call("climate.set_temperature", r#"{"entity_id":"climate.living_room","temperature":22.5}"#).await
            ["ok"],
        true
    );
    rig.ha.wait_state("climate.living_room", T, |s| s["attributes"]["temperature"] == 22.5).await;

    // A denied service never reaches HA: the lock stays as it was.
    let before = rig.ha.state("lock.front_door").await["state"].clone();
    assert_eq!(rig.client.call("lock.unlock", r#"{"entity_id":"lock.front_door"}"#).await["error"], "service_denied");
    assert_eq!(rig.ha.state("lock.front_door").await["state"], before);
    rig.gateway.stop().await;
}

async fn home_assistants_own_answers_are_reported(release: Release) {
    let Some(mut rig) = rig(release, "e2e_errors", Token::Own, &[]).await else {
        return;
    };
    let r = rig.client.call("light.does_not_exist", r#"{"entity_id":"light.kitchen","correlation":1}"#).await;
    assert_eq!(r, json!({"ok":false,"status":400,"changed":[],"error":"ha_error","correlation":1}));

    let r = rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","brightness":"abc"}"#).await;
    assert_eq!((r["status"].clone(), r["error"].clone()), (json!(400), json!("ha_error")), "{r}");

    // HA answers 200 and changes nothing for an entity that does not exist.
    let r = rig.client.call("light.turn_on", r#"{"entity_id":"light.nope"}"#).await;
    assert_eq!(r, json!({"ok":true,"status":200,"changed":[]}));
    assert_eq!(rig.gateway.metric(r#"commands_total{outcome="failed",reason="ha_error"}"#), 2.0);
    rig.gateway.stop().await;

    // `check --online` reaches the real broker and HA with the real token…
    let config = rig.dir.path().join("gateway.toml");
    let (code, out) = check_online(&config, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepts the token"), "{out}");
    assert!(out.contains(&format!("home assistant: version {}", release.version())), "{out}");
    assert!(!out.contains("outside the tested range"), "{out}");
    assert_eq!(out.contains("returns no service responses over REST"), !release.has_rest_responses(), "{out}");
    // …and says clearly when HA refuses the token.
    let wrong = rig.dir.path().join("wrong");
    std::fs::write(&wrong, "not-a-valid-token").unwrap();
    let (code, out) =
        check_online(&config, &[("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN_FILE", wrong.to_str().unwrap())]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: home_assistant: the token was refused"), "{out}");
}

async fn a_revoked_token_stops_sending_and_a_new_one_resumes(release: Release) {
    let Some(mut rig) =
        rig(release, "e2e_revoke", Token::Own, &[("QUEUE__MAX_AGE", "4s"), ("QUEUE__CONCURRENCY", "1")]).await
    else {
        return;
    };
    rig.gateway.wait_metric("ha_up", T, |v| v == 1.0).await;
    let token_file = rig.token_file.display().to_string();
    rig.ha.tool(&["revoke", "--token-file", &token_file]);

    for n in 0..5 {
        rig.client.publish(&format!("{PREFIX}/set/light/kitchen"), if n % 2 == 0 { "ON" } else { "OFF" }).await;
    }
    let results = rig.client.collect(&format!("{PREFIX}/result/"), 5, T).await;
    for m in &results {
        let r = m.json();
        assert_eq!(r["ok"], false, "{r}");
        assert!(["ha_unauthorized", "expired"].contains(&r["error"].as_str().unwrap()), "{r}");
    }
    let (status, body) = rig.gateway.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("ha_token_accepted"), "{body}");
    assert!(rig.gateway.metric(r#"ha_calls_total{class="401"}"#) <= 1.0, "one refusal, then silence");

    // The operator creates a new token and puts it in the file.
    rig.ha.tool(&["new-token", "--name", "rotated", "--out", &token_file]);
    assert_eq!(rig.client.set("light.kitchen", "ON", "light.turn_on").await["ok"], true);
    rig.ha.wait_state("light.kitchen", T, |s| s["state"] == "on").await;
    let deadline = tokio::time::Instant::now() + T;
    while rig.gateway.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.gateway.stop().await;
}

async fn commands_sent_while_home_assistant_restarts_are_executed_after(release: Release) {
    let Some(mut rig) = rig(
        release,
        "e2e_restart",
        Token::Own,
        &[("QUEUE__MAX_AGE", "120s"), ("HOME_ASSISTANT__MAX_ATTEMPTS", "1000"), ("HOME_ASSISTANT__RETRY_MAX", "500ms")],
    )
    .await
    else {
        return;
    };
    assert_eq!(rig.client.call("counter.increment", r#"{"entity_id":"counter.script_runs"}"#).await["ok"], true);
    let count = |s: &serde_json::Value| s["state"].as_str().unwrap().parse::<usize>().unwrap();
    let before = count(&rig.ha.state("counter.script_runs").await);

    let ha = &rig.ha;
    tokio::task::block_in_place(|| ha.stop());
    const N: usize = 10;
    for _ in 0..N {
        rig.client.publish(&format!("{PREFIX}/call/counter/increment"), r#"{"entity_id":"counter.script_runs"}"#).await;
    }
    rig.gateway.wait_metric(r#"ha_calls_total{class="connect"}"#, T, |v| v >= 1.0).await;
    tokio::task::block_in_place(|| rig.ha.start_again());
    let results = rig.client.collect(&format!("{PREFIX}/result/counter/increment"), N, Duration::from_secs(60)).await;
    assert!(
        results.iter().all(|m| m.json()["ok"] == true),
        "{:?}",
        results.iter().map(|m| m.json()).collect::<Vec<_>>()
    );
    // The counter survives HA's restart (restored state): every command ran exactly once.
    let s = rig.ha.wait_state("counter.script_runs", T, |s| count(s) >= before + N).await;
    assert_eq!(count(&s), before + N);
    rig.gateway.stop().await;
    drop(rig.dir);
}

async fn a_non_admin_token_can_call_services(release: Release) {
    let Some(mut rig) = rig(release, "e2e_user", Token::User, &[]).await else {
        return;
    };
    rig.gateway.wait_metric("ha_up", T, |v| v == 1.0).await;
    let r = rig.client.set("light.hall", "ON", "light.turn_on").await;
    assert_eq!(r["ok"], true, "a non-admin user may call services through the REST API: {r}");
    rig.ha.wait_state("light.hall", T, |s| s["state"] == "on").await;
    rig.gateway.stop().await;
}

async fn check_online(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"));
    cmd.args(["check", "--online", "--config"]).arg(config).envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

async fn the_mirror_follows_real_home_assistant_states(release: Release) {
    let include = ("STATE__INCLUDE", r#"["light.*", "sensor.*"]"#);
    let Some(mut rig) = rig(release, "e2e_mirror", Token::Own, &[include]).await else { return };
    rig.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;
    // The snapshot: every included entity, retained.
    let kitchen = rig.client.expect(&format!("{PREFIX}/state/light/kitchen"), T, |_| true).await;
    assert!(kitchen.retain);
    assert_eq!(kitchen.json()["state"], rig.ha.state("light.kitchen").await["state"]);
    // `last_reported` (HA 2024.4+) passes through where HA sends it.
    assert_eq!(kitchen.json().get("last_reported").is_some(), release.since_2024_4(), "{}", kitchen.json());
    rig.client.expect(&format!("{PREFIX}/state/sensor/living_room_temperature"), T, |_| true).await;

    // Changed in HA directly (not through the gateway): MQTT follows.
    let http = reqwest::Client::new();
    let post = |entity: &str, body: serde_json::Value| {
        http.post(format!("{}/api/states/{entity}", rig.ha.url)).bearer_auth(&rig.ha.admin_token).json(&body).send()
    };
    post("sensor.e2e_probe", json!({"state": "41", "attributes": {"unit_of_measurement": "W"}})).await.unwrap();
    let probe = rig.client.expect(&format!("{PREFIX}/state/sensor/e2e_probe"), T, |m| m.json()["state"] == "41").await;
    assert_eq!(probe.json()["attributes"]["unit_of_measurement"], "W");

    // Removed from HA: the retained topic is cleared.
    let deleted = http
        .delete(format!("{}/api/states/sensor.e2e_probe", rig.ha.url))
        .bearer_auth(&rig.ha.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    rig.client.expect(&format!("{PREFIX}/state/sensor/e2e_probe"), T, |m| m.payload.is_empty()).await;

    // Restart the gateway: a change made meanwhile is in its snapshot.
    rig.gateway.stop().await;
    post("sensor.e2e_probe", json!({"state": "7"})).await.unwrap();
    let config = rig.dir.path().join("gateway.toml");
    let overrides = [include, ("ACCESS__ALLOW_SERVICES", r#"["light.*"]"#)];
    rig.gateway = Gateway::start(&config, &overrides).await;
    rig.client
        .expect(&format!("{PREFIX}/state/sensor/e2e_probe"), T, |m| !m.payload.is_empty() && m.json()["state"] == "7")
        .await;

    // The get topic reads the state from HA on demand.
    rig.client.publish(&format!("{PREFIX}/get/light/hall"), "").await;
    let hall = rig.client.expect(&format!("{PREFIX}/state/light/hall"), T, |_| true).await;
    assert_eq!(hall.json()["state"], rig.ha.state("light.hall").await["state"]);

    // Restart HA: ha_status goes offline, then the mirror resyncs.
    let ha = &rig.ha;
    tokio::task::block_in_place(|| ha.stop());
    rig.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"offline").await;
    tokio::task::block_in_place(|| rig.ha.start_again());
    rig.client.expect(&format!("{PREFIX}/ha_status"), Duration::from_secs(60), |m| &m.payload[..] == b"online").await;
    // States made with POST /api/states do not survive HA's restart: cleared.
    rig.client.expect(&format!("{PREFIX}/state/sensor/e2e_probe"), T, |m| m.payload.is_empty()).await;
    rig.gateway.stop().await;
}

/// Writes `routes` into the rig's `routes.d/` and restarts the gateway with them.
async fn with_routes(rig: &mut Rig, routes: &str, allow: &str) {
    std::fs::create_dir_all(rig.dir.path().join("routes.d")).unwrap();
    std::fs::write(rig.dir.path().join("routes.d/devices.toml"), routes).unwrap();
    let config = rig.dir.path().join("gateway.toml");
    let old = std::mem::replace(&mut rig.gateway, Gateway::start(&config, &[("ACCESS__ALLOW_SERVICES", allow)]).await);
    old.stop().await;
    rig.client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
}

async fn a_zigbee2mqtt_button_route_toggles_a_real_light(release: Release) {
    let Some(mut rig) = rig(release, "e2e_route_button", Token::Own, &[]).await else { return };
    let routes = r#"
[[route]]
name = "hall button"
topic = "zigbee2mqtt/hall_button"
map = { single = "light.toggle:light.kitchen", double = "light.turn_on:light.hall" }
"#;
    with_routes(&mut rig, routes, r#"["light.*"]"#).await;
    let device = TestClient::connect(rig._broker.port, "e2e-z2m-button", &[]).await;
    let before = rig.ha.state("light.kitchen").await["state"].as_str().unwrap().to_owned();
    device.publish("zigbee2mqtt/hall_button", r#"{"action":"single","battery":97,"linkquality":120}"#).await;
    let r = rig.client.result(&format!("{PREFIX}/result/light/toggle")).await;
    assert_eq!((r["ok"].clone(), r["route"].clone()), (json!(true), json!("hall button")), "{r}");
    let flipped = if before == "on" { "off" } else { "on" };
    rig.ha.wait_state("light.kitchen", T, |s| s["state"] == flipped).await;
    device.publish("zigbee2mqtt/hall_button", r#"{"action":"double"}"#).await;
    rig.ha.wait_state("light.hall", T, |s| s["state"] == "on").await;
    rig.gateway.stop().await;
}

async fn a_plain_sensor_value_route_sets_a_real_input_number(release: Release) {
    let Some(mut rig) = rig(release, "e2e_route_sensor", Token::Own, &[]).await else { return };
    let routes = r#"
[[route]]
name = "living room thermometer"
topic = "esp/{room}/temperature"
format = "number"
service = "input_number.set_value"
entity_id = "input_number.{{ room }}_temperature"
data = { value = "{{ (value | float) | round(1) }}" }
"#;
    with_routes(&mut rig, routes, r#"["input_number.set_value"]"#).await;
    let device = TestClient::connect(rig._broker.port, "e2e-esp", &[]).await;
    device.publish("esp/living_room/temperature", "23.46").await;
    let r = rig.client.result(&format!("{PREFIX}/result/input_number/set_value")).await;
    assert_eq!(r["ok"], true, "{r}");
    rig.ha.wait_state("input_number.living_room_temperature", T, |s| s["state"] == "23.5").await;
    // A value HA refuses (out of range) gives HA's own answer in the result.
    device.publish("esp/living_room/temperature", "99").await;
    let r = rig.client.result(&format!("{PREFIX}/result/input_number/set_value")).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("ha_error")), "{r}");
    // Not a number: refused before HA.
    device.publish("esp/living_room/temperature", "warm").await;
    let r = rig.client.result(&format!("{PREFIX}/result/_invalid/_invalid")).await;
    assert_eq!(r["error"], "invalid_payload", "{r}");
    rig.gateway.stop().await;
}

/// Service responses (HA 2024.8+): asked for by the command, or by the
/// gateway itself for a response-only service; refused without calling HA
/// where the service or HA has none.
async fn service_responses_come_back_where_home_assistant_gives_them(release: Release) {
    let allow = ("ACCESS__ALLOW_SERVICES", r#"["light.*", "script.house_summary", "weather.get_forecasts"]"#);
    let Some(mut rig) = rig(release, "e2e_responses", Token::Own, &[allow]).await else { return };
    // Online: HA's version and services catalogue have been read.
    rig.client.expect(&format!("{PREFIX}/ha_status"), T, |m| &m.payload[..] == b"online").await;

    // A script with `response_variable` (tests/ha/config), asked for its response.
    let r = rig.client.call("script.house_summary", r#"{"return_response":true,"correlation":"s-1"}"#).await;
    if release.has_rest_responses() {
        assert_eq!((r["ok"].clone(), r["correlation"].clone()), (json!(true), json!("s-1")), "{r}");
        assert_eq!(r["response"]["kitchen"], rig.ha.state("light.kitchen").await["state"], "{r}");
        assert!(r["response"]["lights_on"].is_u64(), "{r}");
    } else {
        assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("response_unsupported")), "{r}");
        assert!(r["message"].as_str().unwrap().contains("2024.8"), "{r}");
    }

    // A response-only built-in service, not asked: the gateway asks for it.
    let r = rig.client.call("weather.get_forecasts", r#"{"entity_id":"weather.home","type":"daily"}"#).await;
    if release.has_rest_responses() {
        assert_eq!(r["ok"], true, "{r}");
        let forecast = r["response"]["weather.home"]["forecast"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(!forecast.is_empty(), "{r}");
        assert!(forecast[0]["temperature"].is_number(), "{r}");
    } else {
        assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("response_unsupported")), "{r}");
    }

    // Asking a service that returns nothing: refused, HA never called.
    let calls = rig.gateway.metric(r#"ha_calls_total{class="2xx"}"#);
    let r = rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","return_response":true}"#).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("response_unsupported")), "{r}");
    assert_eq!(rig.ha.state("light.kitchen").await["state"], "off");
    assert_eq!(rig.gateway.metric(r#"ha_calls_total{class="2xx"}"#), calls, "no call was made");
    assert!(rig.gateway.metric(r#"commands_total{outcome="failed",reason="response_unsupported"}"#) >= 1.0);
    // The same call without asking runs.
    assert_eq!(rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen"}"#).await["ok"], true);
    rig.ha.wait_state("light.kitchen", T, |s| s["state"] == "on").await;
    rig.gateway.stop().await;
}

/// `label_id` and `floor_id` targets (HA 2024.4+) reach the labelled (or
/// floor's) entities when `allow_targets` names them, and nothing otherwise.
async fn labels_and_floors_are_targets_since_2024_4(release: Release) {
    let targets = ("ACCESS__ALLOW_TARGETS", r#"["label_id", "floor_id"]"#);
    let Some(mut rig) = rig(release, "e2e_labels", Token::Own, &[targets]).await else { return };
    let label = rig.ha.tool(&["label", "--name", "E2E lights", "--entity", "light.kitchen", "--entity", "light.hall"]);
    rig.ha.tool(&["area", "--name", "E2E hall", "--entity", "switch.fan_plug"]);
    let floor = rig.ha.tool(&["floor", "--name", "E2E ground floor", "--area", "E2E hall"]);

    let r = rig.client.call("light.turn_on", format!(r#"{{"label_id":"{label}"}}"#)).await;
    assert_eq!(r["ok"], true, "{r}");
    rig.ha.wait_state("light.kitchen", T, |s| s["state"] == "on").await;
    rig.ha.wait_state("light.hall", T, |s| s["state"] == "on").await;
    let r = rig.client.call("switch.turn_on", format!(r#"{{"floor_id":"{floor}"}}"#)).await;
    assert_eq!(r["ok"], true, "{r}");
    rig.ha.wait_state("switch.fan_plug", T, |s| s["state"] == "on").await;

    // Without them in allow_targets: denied, nothing reached.
    let config = rig.dir.path().join("gateway.toml");
    let allow = ("ACCESS__ALLOW_SERVICES", r#"["light.*", "switch.*"]"#);
    let old = std::mem::replace(&mut rig.gateway, Gateway::start(&config, &[allow]).await);
    old.stop().await;
    rig.client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    let r = rig.client.call("light.turn_off", format!(r#"{{"label_id":"{label}"}}"#)).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("target_denied")), "{r}");
    let r = rig.client.call("switch.turn_off", format!(r#"{{"floor_id":"{floor}"}}"#)).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("target_denied")), "{r}");
    // A plain call made after the denials runs: had they reached HA, they would be done by now.
    assert_eq!(rig.client.call("light.turn_on", r#"{"entity_id":"light.kitchen"}"#).await["ok"], true);
    for entity in ["light.kitchen", "light.hall", "switch.fan_plug"] {
        assert_eq!(rig.ha.state(entity).await["state"], "on", "{entity}");
    }
    rig.gateway.stop().await;
}

/// What HA's `mqtt_eventstream` publishers send, run for real: a
/// `call_service` event turns a light on; other events are skipped; a
/// service outside `allow_services` is denied as any command is.
async fn mqtt_eventstream_call_service_events_run(release: Release) {
    let Some(mut rig) = rig(release, "e2e_eventstream", Token::Own, &[]).await else { return };
    let routes = r#"
[[route]]
name = "eventstream"
topic = "homeassistant/eventstream"
format = "eventstream"
"#;
    with_routes(&mut rig, routes, r#"["light.*"]"#).await;
    let publisher = TestClient::connect(rig._broker.port, "e2e-eventstream", &[]).await;
    let event = |domain: &str, service: &str, data: serde_json::Value| {
        json!({"event_type": "call_service", "event_data": {"domain": domain, "service": service, "service_data": data}})
            .to_string()
    };
    publisher.publish("homeassistant/eventstream", r#"{"event_type":"state_changed","event_data":{}}"#).await;
    publisher
        .publish(
            "homeassistant/eventstream",
            event("light", "turn_on", json!({"entity_id": "light.hall", "brightness": 90})),
        )
        .await;
    let r = rig.client.result(&format!("{PREFIX}/result/light/turn_on")).await;
    assert_eq!((r["ok"].clone(), r["route"].clone()), (json!(true), json!("eventstream")), "{r}");
    let s = rig.ha.wait_state("light.hall", T, |s| s["state"] == "on").await;
    assert_eq!(s["attributes"]["brightness"], 90);
    assert_eq!(rig.gateway.metric("route_skipped_total"), 1.0, "the state_changed event made no call");

    publisher
        .publish("homeassistant/eventstream", event("switch", "turn_on", json!({"entity_id": "switch.coffee_maker"})))
        .await;
    let r = rig.client.result(&format!("{PREFIX}/result/switch/turn_on")).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("service_denied")), "{r}");
    assert_eq!(rig.ha.state("switch.coffee_maker").await["state"], "off");
    rig.gateway.stop().await;
}

/// One `#[tokio::test]` per test and [`Release`], in a module per release:
/// `cargo test --test e2e ha_2026_2::` runs one release. The second list
/// holds tests of what only newer releases have.
macro_rules! for_each_release {
    (all: [$($all:ident),* $(,)?], since_2024_4: [$($new:ident),* $(,)?] $(,)?) => {
        mod ha_2024_3 {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $all() {
                    super::$all(super::Release::V2024_3).await
                }
            )*
        }
        mod ha_2026_2 {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $all() {
                    super::$all(super::Release::V2026_2).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $new() {
                    super::$new(super::Release::V2026_2).await
                }
            )*
        }
    };
}

for_each_release! {
    all: [
        call_and_set_change_real_entities,
        home_assistants_own_answers_are_reported,
        a_revoked_token_stops_sending_and_a_new_one_resumes,
        commands_sent_while_home_assistant_restarts_are_executed_after,
        a_non_admin_token_can_call_services,
        the_mirror_follows_real_home_assistant_states,
        a_zigbee2mqtt_button_route_toggles_a_real_light,
        a_plain_sensor_value_route_sets_a_real_input_number,
        service_responses_come_back_where_home_assistant_gives_them,
        mqtt_eventstream_call_service_events_run,
        statestream_matches_home_assistants_own,
        the_gateway_is_a_device_in_home_assistant,
    ],
    since_2024_4: [labels_and_floors_are_targets_since_2024_4],
}
