//! Faults on the wire and in Home Assistant, each ending with "nothing lost":
//! every accepted QoS 1 command executed at least once, and the gateway's
//! counters balanced (messages received = commands finished).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::proxy::{FaultProxy, Mode};
use crate::support::{rig, FakeHa, Gateway, Reply, TestClient, PREFIX};

const T: Duration = Duration::from_secs(30);

/// Sum of all samples of a metric family.
fn total(gateway: &Gateway, family: &str) -> f64 {
    let name = format!("mqtt_ha_gateway_{family}");
    gateway
        .metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with(&name)
                && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Every message received reached exactly one final outcome.
async fn assert_balanced(gateway: &Gateway) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (received, finished) = (total(gateway, "messages_received_total"), total(gateway, "commands_total"));
        if received == finished && gateway.metric("acks_pending") == 0.0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "unbalanced: {received} received, {finished} finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_all(client: &TestClient, n: u64) {
    for i in 0..n {
        let body = json!({"entity_id": format!("light.l{}", i % 13), "n": i}).to_string();
        client.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
}

fn distinct(ha: &FakeHa) -> usize {
    ha.calls().iter().filter_map(|c| c.body["n"].as_u64()).collect::<HashSet<_>>().len()
}

#[tokio::test]
async fn home_assistant_failing_a_third_of_the_calls_loses_nothing() {
    let Some(rig) = rig("chaos_5xx").await else { return };
    let config = rig.config_for(rig.broker.port, &rig.ha.url());
    let gateway = Gateway::start(&config, &[("HOME_ASSISTANT__MAX_ATTEMPTS", "10")]).await;
    rig.ha.script((0..90).map(|i| Reply::status([500, 200, 503][i % 3])));
    let client = TestClient::connect(rig.broker.port, "chaos-5xx", &[]).await;
    publish_all(&client, 60).await;
    rig.ha.wait_calls(T, "all 60 done", |c| c.iter().filter(|c| c.body["n"].is_u64()).count() >= 60).await;
    gateway.wait_metric(r#"commands_total{outcome="done",reason=""}"#, T, |v| v == 60.0).await;
    assert_eq!(distinct(&rig.ha), 60);
    assert!(gateway.metric("retries_total") >= 20.0, "the failures were retried");
    assert_balanced(&gateway).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_blackholed_home_assistant_is_caught_by_the_timeout_and_nothing_is_lost() {
    let Some(rig) = rig("chaos_blackhole").await else { return };
    let proxy = FaultProxy::start(rig.ha.addr).await;
    let config = rig.config_for(rig.broker.port, &format!("http://{}", proxy.addr));
    let overrides = [
        ("HOME_ASSISTANT__REQUEST_TIMEOUT", "300ms"),
        ("HOME_ASSISTANT__MAX_ATTEMPTS", "50"),
        ("HOME_ASSISTANT__RETRY_MAX", "200ms"),
    ];
    let gateway = Gateway::start(&config, &overrides).await;
    let mut client = TestClient::connect(rig.broker.port, "chaos-bh", &[&format!("{PREFIX}/status")]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    proxy.set(Mode::Blackhole);
    publish_all(&client, 10).await;
    gateway.wait_metric(r#"ha_calls_total{class="timeout"}"#, T, |v| v >= 1.0).await;
    proxy.set(Mode::Pass);
    gateway.wait_metric(r#"commands_total{outcome="done",reason=""}"#, T, |v| v == 10.0).await;
    assert_eq!(distinct(&rig.ha), 10, "turn_on is idempotent: re-sent after the timeout, all done");
    assert_balanced(&gateway).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_reset_broker_connection_mid_stream_loses_no_command() {
    let Some(rig) = rig("chaos_reset").await else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", rig.broker.port).parse().unwrap()).await;
    let config = rig.config_for(proxy.addr.port(), &rig.ha.url());
    rig.ha.set_delay(Duration::from_millis(10));
    let gateway = Gateway::start(&config, &[("QUEUE__CONCURRENCY", "2")]).await;
    let mut client = TestClient::connect(rig.broker.port, "chaos-reset", &[&format!("{PREFIX}/status")]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    const N: u64 = 150;
    publish_all(&client, N).await;
    rig.ha.wait_calls(T, "a third", |c| c.len() as u64 >= N / 3).await;
    proxy.set(Mode::Reset);
    gateway.wait_metric("mqtt_connected", T, |v| v == 0.0).await;
    proxy.set(Mode::Pass);
    gateway.wait_metric("mqtt_reconnects_total", T, |v| v >= 1.0).await;
    rig.ha.wait_calls(T, "every command after the reconnect", |_| distinct(&rig.ha) as u64 == N).await;
    let executions = rig.ha.calls().len() as u64;
    eprintln!(
        "connection reset: {N} commands, {} executed twice, {} redeliveries recognised",
        executions - N,
        gateway.metric("duplicates_total")
    );
    assert_balanced(&gateway).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_client_id_takeover_does_not_start_a_reconnect_fight() {
    let Some(rig) = rig("chaos_takeover").await else { return };
    let config = rig.config_for(rig.broker.port, &rig.ha.url());
    let gateway = Gateway::start(&config, &[("MQTT__RECONNECT_MIN", "50ms"), ("MQTT__RECONNECT_MAX", "2s")]).await;
    gateway.wait_metric("mqtt_connected", T, |v| v == 1.0).await;
    // A misconfigured second client with the same client id, reconnecting
    // every 50 ms whenever it is thrown out.
    let port = rig.broker.port;
    let rogue = tokio::spawn(async move {
        let mut opts = rumqttc::v5::MqttOptions::new("gateway-under-test", "127.0.0.1", port);
        opts.set_clean_start(true);
        let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let started = tokio::time::Instant::now();
    gateway.wait_metric("mqtt_reconnects_total", T, |v| v >= 6.0).await;
    rogue.abort();
    // Without backoff the six reconnections would take ~0.3 s; backing off
    // (50 ms doubling, jitter at most halving) they take at least 1.5 s.
    assert!(started.elapsed() >= Duration::from_millis(1500), "six reconnections in {:?}", started.elapsed());
    gateway.wait_metric("mqtt_connected", T, |v| v == 1.0).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_slow_broker_link_delays_commands_but_loses_none() {
    let Some(rig) = rig("chaos_latency").await else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", rig.broker.port).parse().unwrap()).await;
    proxy.set(Mode::Latency(Duration::from_millis(30)));
    let config = rig.config_for(proxy.addr.port(), &rig.ha.url());
    let gateway = Gateway::start(&config, &[]).await;
    let mut client = TestClient::connect(rig.broker.port, "chaos-latency", &[&format!("{PREFIX}/status")]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    publish_all(&client, 30).await;
    gateway.wait_metric(r#"commands_total{outcome="done",reason=""}"#, T, |v| v == 30.0).await;
    assert_eq!(distinct(&rig.ha), 30);
    assert_balanced(&gateway).await;
    assert_eq!(proxy.connections(), 1, "latency alone never breaks the connection");
    gateway.stop().await;
}

#[tokio::test]
async fn a_blackholed_broker_link_is_detected_by_keep_alive_and_nothing_is_lost() {
    let Some(rig) = rig("chaos_broker_blackhole").await else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", rig.broker.port).parse().unwrap()).await;
    let config = rig.config_for(proxy.addr.port(), &rig.ha.url());
    let gateway = Gateway::start(&config, &[("MQTT__KEEP_ALIVE", "5s")]).await;
    let mut client = TestClient::connect(rig.broker.port, "chaos-bbh", &[&format!("{PREFIX}/status")]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    proxy.set(Mode::Blackhole);
    // Sent into the void: the broker believes the gateway still listens.
    publish_all(&client, 10).await;
    // No TCP error ever comes; the missing PINGRESP gives the link away.
    gateway.wait_metric("mqtt_connected", T, |v| v == 0.0).await;
    proxy.set(Mode::Pass);
    gateway.wait_metric("mqtt_reconnects_total", T, |v| v >= 1.0).await;
    // The session kept them: redelivered and executed after the reconnect.
    rig.ha.wait_calls(T, "the ten commands", |_| distinct(&rig.ha) == 10).await;
    assert_balanced(&gateway).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_burst_of_20k_commands_is_all_delivered_with_bounded_memory() {
    let Some(rig) = rig("chaos_burst").await else { return };
    let config = rig.config_for(rig.broker.port, &rig.ha.url());
    let capacity = 2_000.0;
    let gateway =
        Gateway::start(&config, &[("QUEUE__CAPACITY", "2000"), ("QUEUE__CONCURRENCY", "16"), ("LOG__LEVEL", "warn")])
            .await;
    let mut client = TestClient::connect(rig.broker.port, "chaos-burst", &[&format!("{PREFIX}/status")]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    const N: u64 = 20_000;
    let sender = tokio::spawn(async move {
        publish_all(&client, N).await;
        client
    });
    // While it flows: the queue never holds more than its capacity; the
    // broker holds the rest of the backlog.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut max_depth = 0.0f64;
    while gateway.metric(r#"commands_total{outcome="done",reason=""}"#) < N as f64 {
        max_depth = max_depth.max(gateway.metric("queue_depth"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} done",
            gateway.metric(r#"commands_total{outcome="done",reason=""}"#)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _client = sender.await.unwrap();
    assert!(max_depth <= capacity, "queue held {max_depth} > {capacity}");
    assert_eq!(distinct(&rig.ha), N as usize, "all delivered");
    assert_balanced(&gateway).await;
    eprintln!(
        "burst: {N} commands, queue depth peaked at {max_depth}, overflow parked at most {}",
        gateway.metric("queue_overflow")
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_no_command() {
    let Some(broker) = crate::support::Broker::start_persistent("chaos_broker_restart") else { return };
    let crate::support::Rig { mut broker, ha, config, dir: _dir, .. } = crate::support::rig_on(broker).await;
    ha.set_delay(Duration::from_millis(20));
    let gateway = Gateway::start(&config, &[("QUEUE__CONCURRENCY", "1")]).await;
    gateway.wait_metric("mqtt_connected", T, |v| v == 1.0).await;
    {
        let client = TestClient::connect(broker.port, "chaos-broker-restart", &[]).await;
        publish_all(&client, 100).await;
        // Every publish was accepted (PUBACK) before the restart.
        client.client.disconnect().await.unwrap();
    }
    ha.wait_calls(T, "a quarter", |c| c.len() >= 25).await;
    broker.restart_gracefully();
    gateway.wait_metric("mqtt_reconnects_total", T, |v| v >= 1.0).await;
    ha.wait_calls(T, "every command after the restart", |_| distinct(&ha) == 100).await;
    assert_balanced(&gateway).await;
    gateway.stop().await;
}
