//! The web console through the whole gateway: the live view, the route
//! tester, status, config with file and line, login and CSRF, dead letters
//! and their replay through the normal path, and no secret in any answer.
//! (The browser itself is driven in `tests/ui`.)

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::console::ConsoleClient;
use crate::support::{setup, Gateway, Reply, TestClient, PREFIX, TOKEN};

const T: Duration = Duration::from_secs(10);

const ROUTES: &str = r#"
[[route]]
name = "hall button"
topic = "zigbee2mqtt/hall_button"
map = { single = "light.toggle:light.hall" }

[[route]]
name = "garage button"
topic = "zigbee2mqtt/garage_button"
map = { single = "light.toggle:light.kitchen" }

[[route]]
name = "presses only"
topic = "shellies/+/input/0"
when = "value == '1'"
service = "light.toggle"
entity_id = "light.porch"

[[route]]
name = "dimmer"
topic = "sensors/dimmer"
service = "light.turn_on"
entity_id = "light.porch"
data = { brightness = "{{ value | int(strict=true) }}" }
"#;

/// Routes, and an access rule that keeps the garage button off the kitchen light.
fn with_routes(config: &std::path::Path) {
    let dir = config.parent().unwrap();
    std::fs::create_dir_all(dir.join("routes.d")).unwrap();
    std::fs::write(dir.join("routes.d/devices.toml"), ROUTES).unwrap();
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("\n[[access.rule]]\ntopic = \"zigbee2mqtt/garage_button\"\nallow_entities = [\"light.garage_*\"]\n");
    std::fs::write(config, text).unwrap();
}

#[tokio::test]
async fn the_console_is_off_unless_enabled() {
    let Some(env) = setup("ui_off", &[]).await else { return };
    assert_eq!(env.gateway.get("/ui/").await.0, 404);
    assert_eq!(env.gateway.get("/ui/api/status").await.0, 404);
    env.gateway.stop().await;
}

#[tokio::test]
async fn the_live_view_shows_each_message_its_route_call_and_outcome() {
    let Some(mut env) = setup("ui_live", &[]).await else { return };
    with_routes(&env.config);
    env.gateway.stop().await;
    env.gateway = Gateway::start(&env.config, &[("UI__ENABLED", "true")]).await;
    env.wait_online().await;
    let mut ui = ConsoleClient::new(env.gateway.metrics_addr);
    let (status, page) = ui.get_text("/ui/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/ui/app.js\""), "{page}");
    assert_eq!(ui.open().await["login_required"], false, "a loopback listener without a password");

    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.kitchen","brightness":40}"#).await;
    assert_eq!(r["ok"], true);
    let e = ui.wait_entry("topic=call/light", T, |e| e["outcome"] == "ok").await;
    assert_eq!(e["topic"], format!("{PREFIX}/call/light/turn_on"));
    assert_eq!(e["matched"], json!({"kind": "command"}));
    assert_eq!(
        e["call"],
        json!({"service": "light.turn_on", "data": {"entity_id": "light.kitchen", "brightness": 40}})
    );
    assert_eq!((e["status"].clone(), e["attempts"].clone()), (json!(200), json!(1)));
    assert_eq!(e["changed"], json!([{"entity_id": "light.kitchen", "state": "on"}]));

    let device = TestClient::connect(env.broker.port, "ui-live-device", &[]).await;
    device.publish("zigbee2mqtt/hall_button", r#"{"action":"single"}"#).await;
    device.publish("zigbee2mqtt/garage_button", r#"{"action":"single"}"#).await;
    device.publish("shellies/sw1/input/0", "0").await;
    let hall = ui.wait_entry("entity=light.hall", T, |_| true).await;
    assert_eq!((hall["matched"]["name"].clone(), hall["outcome"].clone()), (json!("hall button"), json!("ok")));
    let garage = ui.wait_entry("topic=garage", T, |_| true).await;
    assert_eq!(
        (garage["outcome"].clone(), garage["payload"].clone()),
        (json!("entity_denied"), json!(r#"{"action":"single"}"#))
    );
    let skipped = ui.wait_entry("outcome=no_route", T, |_| true).await;
    assert_eq!((skipped["topic"].clone(), skipped["payload"].clone()), (json!("shellies/sw1/input/0"), json!("0")));
    let (_, errors) = ui.get("/ui/api/history?outcome=error").await;
    assert_eq!(errors["entries"].as_array().unwrap().len(), 1, "only the garage press failed: {errors}");

    // The live stream starts with what is kept.
    let r = reqwest::Client::new()
        .get(format!("{}/ui/api/live", ui.base))
        .header("cookie", ui.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut r = r;
    let chunk = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(chunk.contains("\nevent: entries\ndata: [") && chunk.contains("hall button"), "{chunk}");

    // The mirror reads HA's version when its websocket connects.
    env.gateway.wait_metric(r#"ha_info{version="2026.2.3"}"#, T, |v| v == 1.0).await;
    let (_, status) = ui.get("/ui/api/status").await;
    assert_eq!(
        (status["mqtt"]["connected"].clone(), status["home_assistant"]["reachable"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(status["home_assistant"]["version"], "2026.2.3");
    assert_eq!(status["outcomes"]["ok"], 2, "{status}");
    assert_eq!(status["queue"]["capacity"], 10000);
    env.gateway.stop().await;
}

#[tokio::test]
async fn the_route_tester_runs_admission_without_calling_home_assistant() {
    let Some(mut env) = setup("ui_tester", &[]).await else { return };
    with_routes(&env.config);
    env.gateway.stop().await;
    env.gateway = Gateway::start(&env.config, &[("UI__ENABLED", "true")]).await;
    let mut ui = ConsoleClient::new(env.gateway.metrics_addr);
    ui.open().await;
    let test = |topic: &str, payload: &str| json!({"topic": topic, "payload": payload});

    let (status, r) = ui.post("/ui/api/test", test("zigbee2mqtt/hall_button", r#"{"action":"single"}"#)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["results"][0]["call"],
        json!({"service": "light.toggle", "data": {"entity_id": "light.hall"}, "return_response": false})
    );
    assert_eq!(r["results"][0]["route"], "hall button");

    let (_, r) = ui.post("/ui/api/test", test("zigbee2mqtt/garage_button", r#"{"action":"single"}"#)).await;
    let denied = &r["results"][0];
    assert_eq!(
        (denied["result"].clone(), denied["access"]["code"].clone()),
        (json!("denied"), json!("entity_denied")),
        "{r}"
    );
    assert!(denied["access"]["reason"].as_str().unwrap().contains("allow_entities"), "{r}");

    let (_, r) = ui.post("/ui/api/test", test("shellies/sw1/input/0", "0")).await;
    assert_eq!(r["results"][0]["reason"], "its when condition is false", "{r}");
    let (_, r) = ui.post("/ui/api/test", test(&format!("{PREFIX}/call/lock/unlock"), "{}")).await;
    assert_eq!(r["results"][0]["access"]["code"], "service_denied", "{r}");
    let (_, r) = ui.post("/ui/api/test", test(&format!("{PREFIX}/call/light/turn_on"), "{not json")).await;
    assert_eq!(r["results"][0]["error"]["code"], "invalid_json", "{r}");
    // A template that fails on this payload: the error, with where.
    let (_, r) = ui.post("/ui/api/test", test("sensors/dimmer", "bright")).await;
    let error = &r["results"][0]["error"];
    assert_eq!(error["code"], "template_error", "{r}");
    assert!(error["detail"].as_str().unwrap().contains(r#"route "dimmer" data.brightness:1"#), "{r}");
    let (_, r) = ui.post("/ui/api/test", test("nobody/listens/here", "x")).await;
    assert!(r["summary"].as_str().unwrap().starts_with("no route matches"), "{r}");

    assert!(env.ha.calls().is_empty(), "the tester never calls HA");
    assert_eq!(env.gateway.metric(r#"messages_received_total{kind="route"}"#), 0.0, "nor counts as traffic");
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_non_loopback_listener_wants_a_login_and_every_post_a_csrf_token() {
    let Some(mut env) = setup("ui_login", &[]).await else { return };
    let password_file = env.config.parent().unwrap().join("ui_password");
    std::fs::write(&password_file, "correct horse\n").unwrap();
    env.gateway.stop().await;
    let overrides = [
        ("UI__ENABLED", "true"),
        ("UI__PASSWORD_FILE", password_file.to_str().unwrap()),
        ("METRICS__LISTEN", "127.0.0.2:0"),
    ];
    env.gateway = Gateway::start(&env.config, &overrides).await;
    assert_eq!(env.gateway.metrics_addr.ip().to_string(), "127.0.0.2");
    let mut ui = ConsoleClient::new(env.gateway.metrics_addr);
    assert_eq!(ui.open().await, json!({"login_required": true, "logged_in": false}));
    for path in ["/ui/api/status", "/ui/api/history", "/ui/api/config", "/ui/api/dead-letters", "/ui/api/live"] {
        assert_eq!(ui.get(path).await.0, 401, "{path} without a login");
    }
    assert_eq!(ui.post("/ui/api/test", json!({"topic": "a"})).await.0, 401);
    assert_eq!(ui.login("wrong").await, 401);
    assert_eq!(ui.login("correct horse").await, 200);
    assert_eq!(ui.get("/ui/api/status").await.0, 200);

    let body = json!({"topic": "zigbee2mqtt/x", "payload": ""});
    assert_eq!(ui.post_with("/ui/api/test", body.clone(), None).await.0, 403, "no CSRF token");
    let (status, r) = ui.post_with("/ui/api/test", body.clone(), Some("0123456789abcdef")).await;
    assert_eq!((status, r["error"].clone()), (403, json!("csrf token missing or wrong")));
    assert_eq!(ui.post("/ui/api/test", body.clone()).await.0, 200);
    // The password also works as a bearer token, for scripts.
    let r = reqwest::Client::new()
        .get(format!("{}/ui/api/status", ui.base))
        .bearer_auth("correct horse")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ui.post("/ui/api/logout", json!({})).await.0, 204);
    assert_eq!(ui.get("/ui/api/status").await.0, 401, "logged out");
    env.gateway.stop().await;

    // Without a password such a listener is refused at load.
    let vars = [
        ("MQTT_HA_GATEWAY_UI__ENABLED".to_owned(), "true".to_owned()),
        ("MQTT_HA_GATEWAY_METRICS__LISTEN".to_owned(), "127.0.0.2:9184".to_owned()),
    ];
    let e = mqtt_ha_gateway::config::load(&env.config, true, vars).unwrap_err();
    assert!(e.to_string().contains("ui.password_file: required: metrics.listen 127.0.0.2:9184"), "{e}");
}

#[tokio::test]
async fn without_a_password_only_local_host_names_are_served() {
    let Some(mut env) = setup("ui_host", &[]).await else { return };
    env.gateway.stop().await;
    env.gateway = Gateway::start(&env.config, &[("UI__ENABLED", "true")]).await;
    let url = format!("http://{}/ui/api/session", env.gateway.metrics_addr);
    let r = reqwest::Client::new().get(url).header("host", "rebound.example:9184").send().await.unwrap();
    assert_eq!(r.status(), 403, "a DNS-rebound name is refused");
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_dead_letter_replays_through_access_and_the_queue() {
    let overrides = [("UI__ENABLED", "true"), ("HOME_ASSISTANT__MAX_ATTEMPTS", "1")];
    let Some(mut env) = setup("ui_replay", &[]).await else { return };
    env.gateway.stop().await;
    env.gateway = Gateway::start_with(&env.config, &overrides, true).await;
    env.wait_online().await;
    env.ha.script([Reply::status(503)]);
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.hall"}"#).await;
    assert_eq!(r["error"], "ha_unavailable");
    let mut ui = ConsoleClient::new(env.gateway.metrics_addr);
    ui.open().await;
    let (_, list) = ui.get("/ui/api/dead-letters").await;
    let dead = &list["dead_letters"][0];
    assert_eq!(
        (dead["reason"].clone(), dead["attempts"].clone(), dead["status"].clone()),
        (json!("ha_unavailable"), json!(1), json!(503)),
        "{list}"
    );
    let id = dead["id"].as_u64().unwrap();
    let (_, status) = ui.get("/ui/api/status").await;
    assert_eq!(status["dead_letters_last_hour"], 1);

    assert_eq!(ui.post_with(&format!("/ui/api/dead-letters/{id}/replay"), json!({}), Some("forged")).await.0, 403);
    assert_eq!(env.ha.calls().len(), 1, "a refused replay sends nothing");
    let (code, r) = ui.post(&format!("/ui/api/dead-letters/{id}/replay"), json!({})).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["pending"].clone(), r["results"][0]["outcome"].clone(), r["results"][0]["status"].clone()),
        (json!(false), json!("ok"), json!(200)),
        "{r}"
    );
    assert_eq!(env.ha.calls().len(), 2, "HA got the call again");
    let result = env.client.result(&format!("{PREFIX}/result/light/turn_on")).await;
    assert_eq!(result["ok"], true, "the replay's result goes to MQTT like any other");

    // The access check applies to a replay: once light.* is no longer
    // allowed, the same dead letter is denied.
    let config = std::fs::read_to_string(&env.config).unwrap().replace(r#""light.*", "#, "");
    std::fs::write(&env.config, config).unwrap();
    env.gateway.hup();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, c) = ui.get("/ui/api/config").await;
        if c["last_reload"]["applied"] == true {
            assert!(!c["rules"]["access"][0]["rule"].to_string().contains("light.*"), "{c}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reload: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, r) = ui.post(&format!("/ui/api/dead-letters/{id}/replay"), json!({})).await;
    assert_eq!(r["results"][0]["outcome"], "service_denied", "{r}");
    assert_eq!(env.ha.calls().len(), 2);
    env.gateway.stop().await;
}

#[tokio::test]
async fn the_config_page_shows_each_rule_with_its_file_and_line_and_refused_reloads() {
    let Some(mut env) = setup("ui_config", &[]).await else { return };
    with_routes(&env.config);
    env.gateway.stop().await;
    env.gateway = Gateway::start_with(&env.config, &[("UI__ENABLED", "true")], true).await;
    let mut ui = ConsoleClient::new(env.gateway.metrics_addr);
    ui.open().await;
    let (_, c) = ui.get("/ui/api/config").await;
    let routes = c["rules"]["routes"].as_array().unwrap();
    let sources: Vec<&str> = routes.iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!((sources[0], sources[2]), ("routes.d/devices.toml:2", "routes.d/devices.toml:12"));
    assert_eq!(
        routes[0]["rule"],
        json!({"name": "hall button", "topic": "zigbee2mqtt/hall_button", "map": {"single": "light.toggle:light.hall"}})
    );
    let access = c["rules"]["access"].as_array().unwrap();
    let services = access.iter().find(|a| a["name"] == "access.allow_services").unwrap();
    assert_eq!(services["source"], "gateway.toml:19", "{services}");
    assert_eq!(c["last_reload"], Value::Null);

    std::fs::write(
        env.config.parent().unwrap().join("routes.d/devices.toml"),
        "[[route]]\ntopic = \"a/b\"\nservice = \"lock.unlock\"\n",
    )
    .unwrap();
    env.gateway.hup();
    let deadline = tokio::time::Instant::now() + T;
    let c = loop {
        let (_, c) = ui.get("/ui/api/config").await;
        if !c["last_reload"].is_null() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(c["last_reload"]["applied"], false, "{c}");
    assert!(
        c["last_reload"]["errors"][0].as_str().unwrap().contains("lock.unlock is not in access.allow_services"),
        "{c}"
    );
    assert_eq!(c["rules"]["routes"].as_array().unwrap().len(), 4, "the running rules stay");
    env.gateway.stop().await;
}

/// Every answer of the console, on a gateway that holds an HA token and an
/// MQTT password: neither appears anywhere.
#[tokio::test]
async fn no_answer_of_the_console_carries_a_secret() {
    const MQTT_PASSWORD: &str = "mqtt-password-4c1d";
    let overrides = [
        ("UI__ENABLED", "true"),
        ("MQTT__USERNAME", "gateway"),
        ("MQTT__PASSWORD", MQTT_PASSWORD),
        ("HOME_ASSISTANT__MAX_ATTEMPTS", "1"),
    ];
    let Some(mut env) = setup("ui_secrets", &[]).await else { return };
    with_routes(&env.config);
    env.gateway.stop().await;
    env.gateway = Gateway::start(&env.config, &overrides).await;
    env.wait_online().await;
    env.ha.script([Reply::status(503)]);
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.hall"}"#).await["error"], "ha_unavailable");
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.hall"}"#).await["ok"], true);
    let mut ui = ConsoleClient::new(env.gateway.metrics_addr);
    let mut answers = vec![ui.open().await.to_string()];
    for path in [
        "/ui/",
        "/ui/app.js",
        "/ui/style.css",
        "/ui/api/status",
        "/ui/api/history",
        "/ui/api/config",
        "/ui/api/dead-letters",
    ] {
        let (status, body) = ui.get_text(path).await;
        assert_eq!(status, 200, "{path}");
        answers.push(body);
    }
    for topic in [format!("{PREFIX}/call/light/turn_on"), "zigbee2mqtt/hall_button".into(), "x".into()] {
        answers.push(ui.post("/ui/api/test", json!({"topic": topic, "payload": "{}"})).await.1.to_string());
    }
    let (_, list) = ui.get("/ui/api/dead-letters").await;
    let id = list["dead_letters"][0]["id"].as_u64().expect("a dead letter");
    answers.push(ui.post(&format!("/ui/api/dead-letters/{id}/replay"), json!({})).await.1.to_string());
    answers.push(ui.post_with("/ui/api/login", json!({"password": "x"}), None).await.1.to_string());
    let all = answers.join("\n");
    assert!(all.contains("light.hall"), "the answers were read");
    for secret in [TOKEN, MQTT_PASSWORD] {
        assert!(!all.contains(secret), "a console answer carries {secret}");
    }
    env.gateway.stop().await;
}
