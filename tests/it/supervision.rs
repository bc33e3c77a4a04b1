//! Supervision: a stage that dies is fatal and visible — logged with its
//! name, `/healthz` 503, the process exits 70 — and nothing is lost by it,
//! because what was not acked stays with the broker.

use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_ha_gateway::supervise::{FailStage, EXIT_STAGE_FAILED};
use tokio_util::sync::CancellationToken;

use crate::support::{rig, Gateway, TestClient, PREFIX};

const T: Duration = Duration::from_secs(30);

fn failing(stage: &str) -> FailStage {
    FailStage { stage: stage.to_owned(), trigger: CancellationToken::new() }
}

#[tokio::test]
async fn every_stage_that_panics_stops_the_gateway_with_its_name() {
    let Some(rig) = rig("supervision_each_stage").await else { return };
    let stages =
        ["ingress", "dispatcher", "publisher", "acker", "mirror", "probe", "token_watcher", "reloader", "http"];
    for stage in stages {
        let fail = failing(stage);
        let trigger = fail.trigger.clone();
        let gateway = Gateway::start_full(&rig.config, &[], true, Some(fail)).await;
        gateway.wait_metric("mqtt_connected", T, |v| v == 1.0).await;
        assert_eq!(gateway.get("/healthz").await.0, 200, "{stage}: alive before the failure");
        trigger.cancel();
        let error = gateway.stopped(T).await.expect_err("a dead stage stops the gateway");
        assert_eq!(error.0.stage, stage);
        assert_eq!(error.0.panic.as_deref(), Some(format!("failure injected into stage {stage}").as_str()));
    }
}

/// The publisher dies while a call is in flight: `/healthz` says so at once
/// (the drain waits for the call), and the command, never acked, runs for
/// the next gateway.
#[tokio::test]
async fn a_dead_publisher_makes_healthz_fail_and_loses_no_command() {
    let Some(rig) = rig("supervision_publisher").await else { return };
    let mut client = TestClient::connect(rig.broker.port, "supervision", &[&format!("{PREFIX}/result/#")]).await;
    // The drain waits for this call (up to the 15 s grace): a window wide
    // enough to see /healthz even on a loaded machine.
    rig.ha.set_delay(Duration::from_secs(8));
    let fail = failing("publisher");
    let trigger = fail.trigger.clone();
    let gateway = Gateway::start_full(&rig.config, &[], false, Some(fail)).await;
    gateway.wait_metric("mqtt_connected", T, |v| v == 1.0).await;
    client.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.kept","correlation":"k1"}"#).await;
    rig.ha.wait_calls(T, "the call in flight", |c| c.len() == 1).await;
    trigger.cancel();
    let deadline = tokio::time::Instant::now() + T;
    let body = loop {
        let (status, body) = gateway.get("/healthz").await;
        if status == 503 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "/healthz stayed {status} after the publisher died");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({"alive": false, "failed_stage": "publisher"}));
    assert_eq!(gateway.stopped(T).await.unwrap_err().0.stage, "publisher");

    // Not acked by the dead gateway: the broker redelivers it to the next one.
    rig.ha.set_delay(Duration::ZERO);
    let next = Gateway::start(&rig.config, &[]).await;
    let result = client.result(&format!("{PREFIX}/result/light/turn_on")).await;
    assert_eq!(result["correlation"], "k1");
    assert_eq!(result["ok"], true);
    assert_eq!(rig.ha.calls().len(), 2, "run once by each gateway");
    next.stop().await;
}

/// The binary logs the stage and exits 70 for its supervisor to restart it.
#[tokio::test]
async fn the_process_exits_70_when_a_stage_fails() {
    let Some(rig) = rig("supervision_exit_code").await else { return };
    let log = rig.dir.path().join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"))
        .args(["run", "--config"])
        .arg(&rig.config)
        .env("HA_GATEWAY_TEST_FAIL_STAGE", "acker")
        .env_remove("MQTT_HA_GATEWAY_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the gateway binary");
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit after its acker failed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(i32::from(EXIT_STAGE_FAILED)));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("a stage failed") && log.contains("acker"), "the log names the stage:\n{log}");
}
