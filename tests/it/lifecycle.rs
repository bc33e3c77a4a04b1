//! The gateway as a process: `kill -9` with a backlog loses nothing; SIGTERM
//! drains, publishes `offline` and exits 0.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{rig, TestClient, PREFIX};

fn spawn_gateway(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "mqtt_ha_gateway=debug")
        .env_remove("MQTT_HA_GATEWAY_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start the gateway binary")
}

#[tokio::test]
async fn kill_9_with_a_backlog_loses_no_qos1_command() {
    let Some(rig) = rig("kill9").await else {
        return;
    };
    let mut client = TestClient::connect(rig.broker.port, "killer", &[&format!("{PREFIX}/status")]).await;
    rig.ha.set_delay(Duration::from_millis(5));
    let log = rig.dir.path().join("gateway1.log");
    let mut gw = spawn_gateway(&rig.config, &log);
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;

    const N: u64 = 300;
    for n in 0..N {
        client
            .publish(
                &format!("{PREFIX}/call/light/turn_on"),
                json!({"entity_id": format!("light.l{}", n % 7), "n": n}).to_string(),
            )
            .await;
    }
    rig.ha.wait_calls(Duration::from_secs(20), "a third of the calls", |c| c.len() as u64 >= N / 3).await;
    gw.kill().expect("SIGKILL the gateway");
    gw.wait().unwrap();
    let before = rig.ha.calls().len();
    assert!((before as u64) < N, "the kill came mid-stream ({before} of {N} done)");
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"offline").await;

    let mut gw = spawn_gateway(&rig.config, &rig.dir.path().join("gateway2.log"));
    let calls = rig
        .ha
        .wait_calls(Duration::from_secs(60), "every command after the restart", |c| {
            c.iter().map(|c| c.body["n"].as_u64().unwrap()).collect::<HashSet<_>>().len() as u64 == N
        })
        .await;
    let duplicates = calls.len() as u64 - N;
    eprintln!("kill -9 after {before} calls: all {N} delivered, {duplicates} executed twice");
    gw.kill().unwrap();
    gw.wait().unwrap();
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_exits_0() {
    let Some(rig) = rig("sigterm").await else {
        return;
    };
    let mut client = TestClient::connect(
        rig.broker.port,
        "terminator",
        &[&format!("{PREFIX}/status"), &format!("{PREFIX}/result/#")],
    )
    .await;
    rig.ha.set_delay(Duration::from_millis(500));
    let mut gw = spawn_gateway(&rig.config, &rig.dir.path().join("gateway.log"));
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    client.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.slow"}"#).await;
    // Wait until the call is in flight (HA has it but has not answered).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.ha.in_flight() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the call never reached HA");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = Command::new("kill").args(["-TERM", &gw.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || gw.wait().unwrap()).await.unwrap();
    assert_eq!(exit.code(), Some(0), "exit 0 after draining");
    assert_eq!(
        client.result(&format!("{PREFIX}/result/light/turn_on")).await["ok"],
        true,
        "the in-flight call finished"
    );
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"offline").await;
}

#[tokio::test]
async fn after_the_broker_restarts_the_gateway_reconnects_and_resubscribes() {
    let Some(mut env) = crate::support::setup("broker_restart", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.broker.restart();
    env.gateway.wait_metric("mqtt_reconnects_total", Duration::from_secs(20), |v| v >= 1.0).await;
    // The new broker knows no session: the gateway must have subscribed again.
    let mut client = TestClient::connect(
        env.broker.port,
        "after-restart",
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    assert_eq!(client.set("light.kitchen", "ON", "light.turn_on").await["ok"], true);
    assert_eq!(env.gateway.metric("mqtt_connected"), 1.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_kept_session_without_subscriptions_is_repaired_on_connect() {
    let Some(rig) = rig("bare_session").await else { return };
    // Someone (a crash between CONNECT and SUBSCRIBE, an old prefix) left a
    // session under the gateway's client id with no subscriptions in it.
    {
        let mut opts = rumqttc::v5::MqttOptions::new("gateway-under-test", "127.0.0.1", rig.broker.port);
        opts.set_clean_start(false);
        let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        props.session_expiry_interval = Some(3600);
        opts.set_connect_properties(props);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
        loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)) =
                eventloop.poll().await.expect("connect")
            {
                break;
            }
        }
        client.disconnect().await.unwrap();
        while !matches!(
            eventloop.poll().await,
            Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
        ) {}
    }
    let mut client =
        TestClient::connect(rig.broker.port, "repair", &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")])
            .await;
    let gateway = crate::support::Gateway::start(&rig.config, &[]).await;
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    assert_eq!(client.set("light.kitchen", "ON", "light.turn_on").await["ok"], true);
    gateway.stop().await;
}

#[tokio::test]
async fn sigterm_under_load_exits_0_and_the_rest_runs_after_a_restart() {
    let Some(rig) = rig("sigterm_load").await else { return };
    let mut client = TestClient::connect(rig.broker.port, "terminator-load", &[&format!("{PREFIX}/status")]).await;
    rig.ha.set_delay(Duration::from_millis(30));
    let mut gw = spawn_gateway(&rig.config, &rig.dir.path().join("gateway1.log"));
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    const N: u64 = 120;
    for n in 0..N {
        client
            .publish(
                &format!("{PREFIX}/call/light/turn_on"),
                json!({"entity_id": format!("light.l{}", n % 9), "n": n}).to_string(),
            )
            .await;
    }
    rig.ha.wait_calls(Duration::from_secs(20), "a quarter", |c| c.len() as u64 >= N / 4).await;
    assert!(Command::new("kill").args(["-TERM", &gw.id().to_string()]).status().unwrap().success());
    let exit = tokio::task::spawn_blocking(move || gw.wait().unwrap()).await.unwrap();
    assert_eq!(exit.code(), Some(0), "drained and exited 0 under load");
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"offline").await;
    let mut gw = spawn_gateway(&rig.config, &rig.dir.path().join("gateway2.log"));
    rig.ha
        .wait_calls(Duration::from_secs(60), "every command", |c| {
            c.iter().map(|c| c.body["n"].as_u64().unwrap()).collect::<HashSet<_>>().len() as u64 == N
        })
        .await;
    gw.kill().unwrap();
    gw.wait().unwrap();
}
