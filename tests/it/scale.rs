//! Scale-out: two gateway instances share the commands through an MQTT 5
//! shared subscription; every command runs exactly once (no faults).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::{rig, Gateway, Rig, TestClient, PREFIX};

#[tokio::test]
async fn two_instances_share_the_commands_and_run_each_once() {
    let Some(Rig { broker, ha, config, dir: _dir, .. }) = rig("scale").await else { return };
    let mut client = TestClient::connect(
        broker.port,
        "scale-client",
        &[&format!("{PREFIX}/status/#"), &format!("{PREFIX}/result/#")],
    )
    .await;
    let group = ("MQTT__SHARED_GROUP", "gateways");
    let a = Gateway::start(&config, &[group, ("MQTT__CLIENT_ID", "gw-a")]).await;
    let b = Gateway::start(&config, &[group, ("MQTT__CLIENT_ID", "gw-b")]).await;
    // Each instance has its own status topic.
    for id in ["gw-a", "gw-b"] {
        client.expect(&format!("{PREFIX}/status/{id}"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    }
    const N: u64 = 200;
    for n in 0..N {
        client
            .publish(
                &format!("{PREFIX}/call/light/turn_on"),
                json!({"entity_id": format!("light.l{n}"), "n": n}).to_string(),
            )
            .await;
    }
    let calls = ha.wait_calls(Duration::from_secs(30), "every command", |c| c.len() as u64 >= N).await;
    client.collect(&format!("{PREFIX}/result/"), N as usize, Duration::from_secs(30)).await;
    let distinct: HashSet<u64> = calls.iter().map(|c| c.body["n"].as_u64().unwrap()).collect();
    assert_eq!(distinct.len() as u64, N, "every command executed");
    assert_eq!(ha.calls().len() as u64, N, "none twice");
    let done = |g: &Gateway| g.metric(r#"commands_total{outcome="done",reason=""}"#);
    let (da, db) = (done(&a), done(&b));
    assert_eq!(da + db, N as f64);
    assert!(da > 0.0 && db > 0.0, "both instances worked: {da} + {db}");
    a.stop().await;
    b.stop().await;
}
