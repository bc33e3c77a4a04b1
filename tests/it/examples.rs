//! The shipped route examples (`config/examples/*.toml`): each one loads as a
//! `routes.d` file with exactly the `allow_services` its header asks for, and
//! does what its comments say with the messages its device publishes. Also
//! the route workflow of the binary: `check` names route problems by key
//! path, `run --dry-run` reports calls without making them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqtt_ha_gateway::config;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::fake_ha::Call;
use crate::support::{Broker, FakeHa, Gateway, TestClient, PREFIX, TOKEN};

const T: Duration = Duration::from_secs(10);

/// Every example the docs promise; a deleted one fails the config test.
const EXAMPLES: [&str; 8] = [
    "ha-automation-mqtt-trigger.toml",
    "mqtt-eventstream.toml",
    "zigbee2mqtt-button.toml",
    "zigbee2mqtt-dimmer.toml",
    "tasmota.toml",
    "shelly.toml",
    "esphome.toml",
    "sensor-to-input-number.toml",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples")
}

fn read_example(name: &str) -> String {
    let path = examples_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `allow_services = [...]` the example's header comment asks for, as
/// written there: the tests run each example with exactly that list, so the
/// comment cannot drift from what the routes call.
fn allow_services(name: &str, text: &str) -> String {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("allow_services = "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{name}: the header comment names no `allow_services = [...]`"))
}

/// The harness's gateway config, with `files` (name, text) in `routes.d/`.
fn config_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = crate::support::gateway::write_config(dir.path(), 1883, "http://127.0.0.1:8123", &token_file);
    std::fs::create_dir(dir.path().join("routes.d")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("routes.d").join(name), text).unwrap();
    }
    (dir, config)
}

fn load(config: &Path, allow: &str) -> Result<config::Config, config::ConfigErrors> {
    let vars = [(format!("{}ACCESS__ALLOW_SERVICES", config::ENV_PREFIX), allow.to_owned())];
    config::load(config, true, vars)
}

#[test]
fn every_example_file_is_a_valid_config() {
    let mut present: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("config/examples exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    present.sort();
    for name in EXAMPLES {
        assert!(present.iter().any(|p| p == name), "config/examples/{name} is missing (found {present:?})");
    }
    let mut all = Vec::new();
    let mut allow_all = Vec::new();
    let mut total = 0;
    for name in &present {
        let text = read_example(name);
        let allow = allow_services(name, &text);
        let (_dir, config) = config_dir(&[(name, &text)]);
        let loaded = load(&config, &allow).unwrap_or_else(|e| panic!("config/examples/{name} is refused:\n{e}"));
        assert!(!loaded.routes.is_empty(), "{name} has no [[route]]");
        total += loaded.routes.len();
        allow_all.push(allow.trim_start_matches('[').trim_end_matches(']').to_owned());
        all.push((name.as_str(), text));
    }
    // All of them at once, as a user copying the whole directory would.
    let files: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (_dir, config) = config_dir(&files);
    let loaded = load(&config, &format!("[{}]", allow_all.join(", "))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.routes.len(), total);
}

/// A broker, a fake HA, and the gateway with one example in `routes.d` and
/// the example's own `allow_services`; online (its routes are subscribed).
struct Rig {
    _broker: Broker,
    ha: FakeHa,
    /// Sees results and status.
    results: TestClient,
    /// Plays the device: a plain MQTT client.
    device: TestClient,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

async fn rig(test: &str, example: &str) -> Option<Rig> {
    let text = read_example(example);
    let allow = allow_services(example, &text);
    let base = crate::support::rig(test).await?;
    base.routes(example.trim_end_matches(".toml"), &text);
    let crate::support::Rig { broker, ha, dir, config, .. } = base;
    let mut results = TestClient::connect(
        broker.port,
        &format!("{test}-results"),
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;
    let device = TestClient::connect(broker.port, &format!("{test}-device"), &[]).await;
    let gateway = Gateway::start(&config, &[("ACCESS__ALLOW_SERVICES", &allow)]).await;
    // "online" goes out after the route subscriptions, on the same connection.
    results.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    Some(Rig { _broker: broker, ha, results, device, gateway, _dir: dir })
}

impl Rig {
    /// The next result on `<prefix>/result/<domain>/<service>`.
    async fn result(&mut self, service: &str) -> Value {
        self.results.result(&format!("{PREFIX}/result/{}", service.replacen('.', "/", 1))).await
    }

    /// Waits until HA has received `n` calls; returns them all.
    async fn calls(&self, n: usize) -> Vec<Call> {
        self.ha.wait_calls(T, &format!("{n} calls"), |c| c.len() >= n).await
    }
}

/// `(domain.service, body)` of each call, for comparing.
fn summary(calls: &[Call]) -> Vec<(String, Value)> {
    calls.iter().map(|c| (format!("{}.{}", c.domain, c.service), c.body.clone())).collect()
}

fn call(service: &str, body: Value) -> (String, Value) {
    (service.to_owned(), body)
}

#[tokio::test]
async fn zigbee2mqtt_button_maps_actions_to_services() {
    let Some(mut rig) = rig("ex_button", "zigbee2mqtt-button.toml").await else { return };
    let topic = "zigbee2mqtt/hall_button";
    // Not in the map, then a press: only the press makes a call.
    rig.device.publish(topic, r#"{"action":"release","battery":97,"linkquality":120}"#).await;
    rig.device.publish(topic, r#"{"action":"single","battery":97,"linkquality":120}"#).await;
    let calls = rig.calls(1).await;
    assert_eq!(summary(&calls), [call("light.toggle", json!({"entity_id":"light.hall"}))]);
    let result = rig.result("light.toggle").await;
    assert_eq!(result, json!({"ok":true,"status":200,"changed":["light.hall"],"route":"hall-button"}));

    // A battery report without an action, then a double press.
    rig.device.publish(topic, r#"{"battery":96,"linkquality":118}"#).await;
    rig.device.publish(topic, r#"{"action":"double","battery":96,"linkquality":118}"#).await;
    rig.calls(2).await;
    rig.device.publish(topic, r#"{"action":"hold","battery":96,"linkquality":118}"#).await;
    let calls = rig.calls(3).await;
    assert_eq!(
        summary(&calls),
        [
            call("light.toggle", json!({"entity_id":"light.hall"})),
            call("scene.turn_on", json!({"entity_id":"scene.evening"})),
            call("light.turn_off", json!({"entity_id":"light.hall"})),
        ]
    );
    assert_eq!(rig.result("scene.turn_on").await["route"], "hall-button");
    assert_eq!(rig.result("light.turn_off").await["route"], "hall-button");
    assert_eq!(rig.gateway.metric("route_skipped_total"), 2.0, "release and the battery report");

    // format = "json": a payload that is not JSON is reported, not guessed at.
    rig.device.publish(topic, "single").await;
    let r = rig.results.result(&format!("{PREFIX}/result/_invalid/_invalid")).await;
    assert_eq!((&r["ok"], &r["error"], &r["route"]), (&json!(false), &json!("invalid_json"), &json!("hall-button")));
    assert_eq!(rig.ha.calls().len(), 3);
    assert_eq!(rig.gateway.metric(r#"messages_received_total{kind="route"}"#), 6.0);
    rig.gateway.stop().await;
}

#[tokio::test]
async fn zigbee2mqtt_dimmer_steps_and_the_last_level_wins() {
    let Some(mut rig) = rig("ex_dimmer", "zigbee2mqtt-dimmer.toml").await else { return };
    let topic = "zigbee2mqtt/living_dimmer";
    rig.device.publish(topic, r#"{"action":"brightness_move_up","action_rate":50}"#).await;
    rig.device.publish(topic, r#"{"action":"brightness_stop"}"#).await;
    rig.device.publish(topic, r#"{"action":"brightness_move_down","action_rate":50}"#).await;
    let calls = rig.calls(2).await;
    assert_eq!(
        summary(&calls),
        [
            call("light.turn_on", json!({"brightness_step_pct":20,"entity_id":"light.living_room"})),
            call("light.turn_on", json!({"brightness_step_pct":-20,"entity_id":"light.living_room"})),
        ]
    );
    for _ in 0..2 {
        assert_eq!(rig.result("light.turn_on").await["route"], "living-dimmer-steps");
    }
    assert_eq!(rig.gateway.metric("route_skipped_total"), 1.0, "brightness_stop");

    // A knob turned quickly: 20 levels while HA is busy with the first.
    rig.ha.set_delay(Duration::from_millis(300));
    for level in 1..=20 {
        rig.device.publish(topic, format!(r#"{{"brightness":{},"linkquality":90}}"#, level * 12)).await;
    }
    let last = json!({"brightness":240,"entity_id":"light.living_room"});
    let calls = rig.ha.wait_calls(T, "the last level", |c| c.last().is_some_and(|c| c.body == last)).await;
    let levels: Vec<i64> = calls[2..].iter().map(|c| c.body["brightness"].as_i64().unwrap()).collect();
    assert!(levels.len() < 20, "latest_wins replaced waiting levels: {levels:?}");
    assert!(levels.windows(2).all(|w| w[0] < w[1]), "levels stay in order: {levels:?}");
    assert_eq!(calls.last().unwrap().body, last, "HA ends at the last level");
    // Every replaced level is accounted for, and none is still waiting.
    let replaced = 20.0 - levels.len() as f64;
    rig.gateway.wait_metric(r#"commands_total{outcome="ignored",reason="coalesced"}"#, T, |v| v == replaced).await;
    rig.gateway.wait_metric("acks_pending", T, |v| v == 0.0).await;
    assert_eq!(rig.ha.calls().len(), calls.len());
    for _ in &levels {
        let r = rig.result("light.turn_on").await;
        assert_eq!((&r["ok"], &r["route"]), (&json!(true), &json!("living-dimmer-level")));
    }
    rig.gateway.stop().await;
}

#[tokio::test]
async fn tasmota_power_and_sensor_reach_entities_named_after_the_device() {
    let Some(mut rig) = rig("ex_tasmota", "tasmota.toml").await else { return };
    rig.device.publish("stat/Kitchen-Plug/POWER", "ON").await;
    rig.calls(1).await;
    assert_eq!(
        rig.result("switch.turn_on").await,
        json!({"ok":true,"status":200,"changed":["switch.kitchen_plug"],"route":"tasmota-power"})
    );
    rig.device.publish("stat/Kitchen-Plug/POWER", "OFF").await;
    rig.calls(2).await;
    assert_eq!(rig.result("switch.turn_off").await["route"], "tasmota-power");

    let sensor = "tele/Kitchen-Plug/SENSOR";
    // Another sensor's report: no AM2301, no call.
    rig.device.publish(sensor, r#"{"Time":"2025-01-01T12:00:00","DS18B20":{"Temperature":19.5},"TempUnit":"C"}"#).await;
    rig.device
        .publish(
            sensor,
            r#"{"Time":"2025-01-01T12:05:00","AM2301":{"Temperature":21.4,"Humidity":48.2,"DewPoint":10.0},"TempUnit":"C"}"#,
        )
        .await;
    let calls = rig.calls(3).await;
    assert_eq!(
        summary(&calls),
        [
            call("switch.turn_on", json!({"entity_id":"switch.kitchen_plug"})),
            call("switch.turn_off", json!({"entity_id":"switch.kitchen_plug"})),
            call("input_number.set_value", json!({"value":21.4,"entity_id":"input_number.kitchen_plug_temperature"})),
        ]
    );
    let r = rig.result("input_number.set_value").await;
    assert_eq!((&r["ok"], &r["route"]), (&json!(true), &json!("tasmota-temperature")));
    assert_eq!(rig.gateway.metric("route_skipped_total"), 1.0);
    rig.gateway.stop().await;
}

#[tokio::test]
async fn shelly_button_toggles_on_press_only() {
    let Some(mut rig) = rig("ex_shelly", "shelly.toml").await else { return };
    let input = "shellies/shelly1-AB12CD/input/0";
    // Press (1), release (0), press again: two toggles, the release skipped.
    rig.device.publish(input, "1").await;
    rig.device.publish(input, "0").await;
    rig.device.publish(input, "1").await;
    rig.calls(2).await;
    rig.device.publish("shellies/shellydimmer-EF34/input/1", "1").await;
    let calls = rig.calls(3).await;
    assert_eq!(
        summary(&calls),
        [
            call("light.toggle", json!({"entity_id":"light.shelly1_ab12cd_0"})),
            call("light.toggle", json!({"entity_id":"light.shelly1_ab12cd_0"})),
            call("light.toggle", json!({"entity_id":"light.shellydimmer_ef34_1"})),
        ]
    );
    assert_eq!(rig.gateway.metric("route_skipped_total"), 1.0, "the release");
    assert_eq!(rig.result("light.toggle").await["route"], "shelly-button");
    rig.gateway.stop().await;
}

#[tokio::test]
async fn esphome_binary_sensors_by_map_and_a_throttled_temperature() {
    let Some(mut rig) = rig("ex_esphome", "esphome.toml").await else { return };
    let doorbell = "front-door/binary_sensor/doorbell/state";
    rig.device.publish(doorbell, "OFF").await;
    rig.device.publish(doorbell, "ON").await;
    rig.calls(1).await;
    assert_eq!(rig.result("script.turn_on").await["route"], "esphome-binary-sensors");
    // A sensor that is not in the map: counted as skipped, no call.
    rig.device.publish("garage/binary_sensor/doorbell/state", "ON").await;
    rig.gateway.wait_metric("route_skipped_total", T, |v| v == 2.0).await;
    rig.device.publish("hallway/binary_sensor/motion/state", "ON").await;
    let calls = rig.calls(2).await;
    assert_eq!(
        summary(&calls),
        [
            call("script.turn_on", json!({"entity_id":"script.doorbell_chime"})),
            call("light.turn_on", json!({"entity_id":"light.hallway"})),
        ]
    );
    assert_eq!(rig.result("light.turn_on").await["route"], "esphome-binary-sensors");

    // Five readings in a burst: throttle lets the first through.
    let temperature = "living-room/sensor/temperature/state";
    for v in ["21.53", "21.6", "21.7", "21.8", "21.9"] {
        rig.device.publish(temperature, v).await;
    }
    rig.gateway.wait_metric(r#"commands_total{outcome="ignored",reason="throttled"}"#, T, |v| v == 4.0).await;
    let calls = rig.calls(3).await;
    assert_eq!(
        summary(&calls[2..]),
        [call("input_number.set_value", json!({"value":21.5,"entity_id":"input_number.living_room_temperature"}))]
    );
    let r = rig.result("input_number.set_value").await;
    assert_eq!((&r["ok"], &r["route"]), (&json!(true), &json!("esphome-temperature")));
    rig.gateway.wait_metric("acks_pending", T, |v| v == 0.0).await;
    assert_eq!(rig.ha.calls().len(), 3);

    // ESPHome publishes "nan" when a sensor cannot be read: not a number,
    // so the route reports invalid_payload and HA gets nothing.
    rig.device.publish("kitchen/sensor/temperature/state", "nan").await;
    let r = rig.results.collect(&format!("{PREFIX}/result/"), 1, T).await.remove(0);
    let payload = r.json();
    assert_eq!(
        (&payload["error"], &payload["route"]),
        (&json!("invalid_payload"), &json!("esphome-temperature")),
        "a \"nan\" reading must not become a call; got {} {payload}; HA got {:?}",
        r.topic,
        summary(&rig.ha.calls()[3..])
    );
    assert_eq!(rig.ha.calls().len(), 3, "no call for nan: {:?}", summary(&rig.ha.calls()[3..]));
    rig.gateway.stop().await;
}

#[tokio::test]
async fn a_plain_number_becomes_an_input_number_value_at_most_every_5s() {
    let Some(mut rig) = rig("ex_sensor", "sensor-to-input-number.toml").await else { return };
    let topic = "garden/soil/moisture";
    // Not a number: a result says so, nothing reaches HA, the throttle is untouched.
    rig.device.publish(topic, "error").await;
    let r = rig.results.result(&format!("{PREFIX}/result/_invalid/_invalid")).await;
    assert_eq!((&r["error"], &r["route"]), (&json!("invalid_payload"), &json!("soil-moisture")));
    // A reading with a newline, as println!/print() send it, then four more at once.
    for v in [" 41.5\n", "42", "43", "44", "45"] {
        rig.device.publish(topic, v).await;
    }
    let calls = rig.calls(1).await;
    assert_eq!(
        summary(&calls),
        [call("input_number.set_value", json!({"value":41.5,"entity_id":"input_number.soil_moisture"}))]
    );
    assert_eq!(
        rig.result("input_number.set_value").await,
        json!({"ok":true,"status":200,"changed":["input_number.soil_moisture"],"route":"soil-moisture"})
    );
    rig.gateway.wait_metric(r#"commands_total{outcome="ignored",reason="throttled"}"#, T, |v| v == 4.0).await;
    rig.gateway.wait_metric("acks_pending", T, |v| v == 0.0).await;
    assert_eq!(rig.ha.calls().len(), 1, "one call per 5 s");
    assert_eq!(rig.gateway.metric(r#"commands_total{outcome="rejected",reason="invalid_payload"}"#), 1.0);
    rig.gateway.stop().await;
}

/// The binary with a clean `MQTT_HA_GATEWAY_*` environment.
fn binary(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("MQTT_HA_GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn check_names_route_problems_with_their_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        r#"
[access]
allow_services = ["light.*", "switch.*"]

[[route]]
name = "bad-filter"
topic = "a/#/b"
service = "light.turn_on"

[[route]]
name = "bad-format"
topic = "a/format"
format = "xml"
service = "light.turn_on"

[[route]]
name = "bad-template"
topic = "a/template"
service = "light.turn_on"
data.brightness = "{{ value_json.level | int "

[[route]]
name = "not-allowed"
topic = "a/lock"
service = "lock.unlock"

[[route]]
name = "coalesced-toggle"
topic = "a/toggle"
service = "light.toggle"
latest_wins = true

[[route]]
name = "both"
topic = "a/both"
service = "light.turn_on"
map.single = "light.toggle"
"#,
    )
    .unwrap();
    // routes.d comes after the file's own routes; an unnamed route is named by its topic.
    std::fs::create_dir(dir.path().join("routes.d")).unwrap();
    std::fs::write(dir.path().join("routes.d/extra.toml"), "[[route]]\ntopic = \"a/none\"\n").unwrap();
    let out = binary(&["check", "--config", config.to_str().unwrap()])
        .env("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", "t")
        .output()
        .expect("run the binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (key, says) in [
        ("route[0] (bad-filter).topic", "#"),
        ("route[1] (bad-format).format", "xml"),
        ("route[2] (bad-template).data.brightness", "template"),
        ("route[3] (not-allowed).service", "lock.unlock is not in access.allow_services"),
        ("route[4] (coalesced-toggle).service", "latest_wins"),
        ("route[5] (both).service", "either service or map"),
        ("route[6] (a/none).service", "needs a service"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("error: {key}: ")))
            .unwrap_or_else(|| panic!("no `error: {key}: …` in:\n{text}"));
        assert!(line.contains(says), "{line:?} should mention {says:?}");
    }
    assert!(text.contains("7 problem(s)"), "{text}");
}

/// A child process we started, stopped with SIGTERM (and killed if a test fails first).
struct Process(Child);

impl Process {
    /// Sends SIGTERM to this process and waits for its exit without
    /// blocking the runtime (the fake HA runs on it and must keep answering).
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not stop within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn dry_run_reports_calls_without_making_them() {
    let Some(base) = crate::support::rig("ex_dry_run").await else { return };
    base.routes(
        "dimmer",
        r#"
[[route]]
name = "room-dimmer"
topic = "devices/{room}/dimmer"
format = "json"
service = "light.turn_on"
entity_id = "light.{{ room }}"
data.brightness = "{{ (value_json.level * 2.54) | int }}"
data.transition = 1
"#,
    );
    let crate::support::Rig { broker, ha, dir, config, .. } = base;
    let mut results = TestClient::connect(
        broker.port,
        "ex_dry_run-results",
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;
    let device = TestClient::connect(broker.port, "ex_dry_run-device", &[]).await;
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut gateway = Process(
        binary(&["run", "--dry-run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the binary"),
    );
    results.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;

    device.publish("devices/kitchen/dimmer", r#"{"level":50}"#).await;
    let r = results.result(&format!("{PREFIX}/result/light/turn_on")).await;
    assert_eq!(
        r,
        json!({"ok":true,"changed":[],"route":"room-dimmer","dry_run":true,
               "call":{"service":"light.turn_on","data":{"brightness":127,"transition":1,"entity_id":"light.kitchen"}}}),
        "its log:\n{}",
        std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
    );
    // The call topic is dry too.
    let r = results.call("switch.turn_off", r#"{"entity_id":"switch.fan"}"#).await;
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["call"], json!({"service":"switch.turn_off","data":{"entity_id":"switch.fan"}}));
    assert!(ha.calls().is_empty(), "dry run sent {:?}", summary(&ha.calls()));

    let status = gateway.terminate().await;
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    assert!(status.success(), "exit {status:?} after SIGTERM; its log:\n{log}");
    assert!(ha.calls().is_empty(), "dry run sent {:?}", summary(&ha.calls()));
}

#[tokio::test]
async fn an_ha_automation_moved_to_a_route_keeps_its_template_condition() {
    let Some(mut rig) = rig("ex_automation", "ha-automation-mqtt-trigger.toml").await else { return };
    let topic = "zigbee2mqtt/hall_button";
    rig.device.publish(topic, r#"{"action":"double","battery":97}"#).await;
    rig.device.publish(topic, r#"{"action":"single","battery":97}"#).await;
    let calls = rig.calls(1).await;
    assert_eq!(summary(&calls), [call("light.toggle", json!({"entity_id":"light.hall"}))]);
    assert_eq!(rig.result("light.toggle").await["route"], "hall-button-automation");
    assert_eq!(rig.gateway.metric("route_skipped_total"), 1.0, "the double press");
    rig.gateway.stop().await;
}

#[tokio::test]
async fn mqtt_eventstream_publishers_get_their_calls_run() {
    let Some(mut rig) = rig("ex_eventstream", "mqtt-eventstream.toml").await else { return };
    let topic = "homeassistant/eventstream";
    rig.device.publish(topic, r#"{"event_type":"state_changed","event_data":{"entity_id":"light.hall"}}"#).await;
    rig.device
        .publish(
            topic,
            r#"{"event_type":"call_service","event_data":{"domain":"light","service":"turn_on","service_data":{"entity_id":"light.hall","brightness":90}}}"#,
        )
        .await;
    let calls = rig.calls(1).await;
    assert_eq!(summary(&calls), [call("light.turn_on", json!({"entity_id":"light.hall","brightness":90}))]);
    assert_eq!(rig.result("light.turn_on").await["route"], "eventstream");
    rig.device
        .publish(topic, r#"{"event_type":"call_service","event_data":{"domain":"switch","service":"turn_on"}}"#)
        .await;
    let denied = rig.result("switch.turn_on").await;
    assert_eq!((denied["ok"].clone(), denied["error"].clone()), (json!(false), json!("service_denied")), "{denied}");
    assert_eq!(rig.ha.calls().len(), 1, "the denied call never reached HA");
    rig.gateway.stop().await;
}

/// `config/examples/gateway/mqtt-statestream.toml`, merged into a
/// gateway.toml: HA's `mqtt_statestream` topics for the entities its filters
/// name, dumped at start; and docs/migration.md shows exactly its settings.
#[tokio::test]
async fn the_statestream_example_publishes_what_mqtt_statestream_did() {
    let example = read_example("gateway/mqtt-statestream.toml");
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/migration.md")).unwrap();
    let settings: String =
        example.lines().skip_while(|l| l.starts_with('#') || l.is_empty()).map(|l| format!("{l}\n")).collect();
    assert!(guide.contains(&settings), "docs/migration.md shows the example's settings:\n{settings}");

    let Some(base) = crate::support::rig("ex_statestream").await else { return };
    let config = std::fs::read_to_string(&base.config).unwrap() + &example;
    std::fs::write(&base.config, config).unwrap();
    base.ha.set_state("light.kitchen", "on", json!({"brightness": 128, "friendly_name": "Küche"}));
    base.ha.set_state("light.hall", "off", json!({}));
    base.ha.set_state("sensor.living_room_temperature", "21.5", json!({"unit_of_measurement": "°C"}));
    base.ha.set_state("switch.fan_plug", "on", json!({}));
    let gateway = Gateway::start(&base.config, &[]).await;
    let port = base.broker.port;
    let mut watcher = TestClient::connect(port, "ex-statestream", &["homestate/#"]).await;
    watcher.expect("homestate/sensor/living_room_temperature/state", T, |m| &m.payload[..] == b"21.5").await;
    let tree: Vec<(String, String)> = TestClient::retained(port, "homestate", T)
        .await
        .into_iter()
        .filter(|(t, _)| !t.ends_with("/last_updated") && !t.ends_with("/last_changed"))
        .map(|(t, p)| (t, String::from_utf8(p.to_vec()).unwrap()))
        .collect();
    let expected = [
        ("homestate/light/kitchen/brightness", "128"),
        ("homestate/light/kitchen/friendly_name", r#""K\u00fcche""#),
        ("homestate/light/kitchen/state", "on"),
        ("homestate/sensor/living_room_temperature/state", "21.5"),
        ("homestate/sensor/living_room_temperature/unit_of_measurement", r#""\u00b0C""#),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(t, p)| (t.to_string(), p.to_string())).collect();
    assert_eq!(tree, expected, "light.hall excluded, switch.fan_plug not included");
    let stamps = TestClient::retained(port, "homestate/light/kitchen", T).await;
    assert!(stamps.contains_key("homestate/light/kitchen/last_updated"), "{stamps:?}");
    gateway.stop().await;
}
