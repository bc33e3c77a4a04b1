//! Acknowledgements across broker connections: a PUBACK belongs to the
//! connection its message arrived on, and never goes out on the next one.

use std::time::Duration;

use serde_json::json;

use crate::support::proxy::{FaultProxy, Mode};
use crate::support::{rig, Gateway, TestClient, PREFIX};

const T: Duration = Duration::from_secs(30);

/// Commands finish in HA while the broker link is down. Their acks must not
/// be sent on the next connection: the broker redelivers those commands
/// right after CONNACK, and if the tracker had already forgotten them they
/// would run again, and their second PUBACK could ack whatever message the
/// broker gave that packet id next.
#[tokio::test]
async fn commands_finishing_while_the_broker_link_is_down_are_not_acked_across_the_reconnect() {
    let Some(rig) = rig("delivery_across_reconnect").await else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", rig.broker.port).parse().unwrap()).await;
    let config = rig.config_for(proxy.addr.port(), &rig.ha.url());
    let gateway = Gateway::start(&config, &[("QUEUE__CONCURRENCY", "8")]).await;
    let mut client = TestClient::connect(rig.broker.port, "delivery-tester", &[&format!("{PREFIX}/status")]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    rig.ha.set_delay(Duration::from_millis(800));

    const N: usize = 8;
    for i in 0..N {
        let body = json!({"entity_id": format!("light.d{i}"), "n": i}).to_string();
        client.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
    rig.ha.wait_calls(T, "every call in flight", |c| c.len() == N).await;
    proxy.set(Mode::Reset);
    gateway.wait_metric("mqtt_connected", T, |v| v == 0.0).await;
    // Every call ends while the link is down, and its outcome reaches the acker.
    gateway.wait_metric(r#"commands_total{outcome="done",reason=""}"#, T, |v| v == N as f64).await;
    assert_eq!(gateway.metric("mqtt_connected"), 0.0, "the link was down while the commands finished");
    proxy.set(Mode::Pass);
    gateway.wait_metric("mqtt_connected", T, |v| v == 1.0).await;

    // The broker redelivers the unacked commands: each is either bound to
    // its finished original (counted as a duplicate, acked) or runs again.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let settled = gateway.metric("duplicates_total") as usize + rig.ha.calls().len() - N;
        if settled >= N && gateway.metric("acks_pending") == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "redeliveries never settled ({settled} of {N})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.ha.calls().len(), N, "a command acked across the reconnect ran again after its redelivery");
    assert_eq!(gateway.metric("duplicates_total"), N as f64, "every redelivery was bound to its original");
    gateway.stop().await;
}
