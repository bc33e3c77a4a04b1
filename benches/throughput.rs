//! Command-path benchmark: a real Mosquitto, the in-process fake HA on
//! loopback, and the gateway in-process.
//!
//! Measures (1) throughput: N QoS 1 commands published as fast as possible,
//! rate limit off, until every result is back; (2) latency publish → HA at a
//! fixed 200 commands/s; (3) the gateway binary as a process: start-up time
//! to ready, idle RSS, and the state mirror's snapshot of 10 000 entities
//! (time, RSS, bytes per entity); (4) the binary under hostile input (100 000
//! throttled devices, 100 000 invalid QoS 0 commands), RSS before and after;
//! (5) the web console's cost: throughput with `[ui]` off, on, and on with a
//! page streaming the live view.
//! Run with `cargo bench --bench throughput` (`BENCH_ONLY=hostile` for one
//! step); results are printed, never asserted. Bounded: at most 20 000
//! commands or entities (100 000 messages per hostile step), 120 s per step.
//!
//! (1) and (2) share one process and one runtime with the load and the fake
//! HA: use them to profile, not to compare. The comparison with the
//! ceiling, every system in a process of its own, is `benches/ceiling.rs`.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;
use tokio::time::Instant;

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::{setup, PREFIX};

mod common;
use common::{cpu_seconds, percentile, rss_kib};

async fn throughput(n: usize) {
    if let Some((rate, cpu, elapsed)) = commands(n, "bench-throughput", &[], false).await {
        println!(
            "throughput: {n} QoS 1 commands in {elapsed:.2} s = {rate:.0} commands/s (process CPU {cpu:.1} µs/command, incl. broker client and fake HA)"
        );
    }
}

/// `n` QoS 1 commands over 200 entities as fast as the client sends them,
/// rate limit off, until every result is back: (commands/s, process CPU
/// µs per command, seconds). With `page`, a console page streams the
/// live view meanwhile (`extra` must enable `[ui]`).
async fn commands(n: usize, name: &str, extra: &[(&str, &str)], page: bool) -> Option<(f64, f64, f64)> {
    let mut overrides = vec![
        ("QUEUE__RATE_PER_SECOND", "0"),
        ("QUEUE__CAPACITY", "10000"),
        ("QUEUE__CONCURRENCY", "16"),
        ("LOG__LEVEL", "warn"),
    ];
    overrides.extend_from_slice(extra);
    let Some(mut env) = setup(name, &overrides).await else {
        eprintln!("mosquitto is not installed: no benchmark");
        return None;
    };
    env.wait_online().await;
    let stream = page.then(|| tokio::spawn(live_page(env.gateway.metrics_addr)));
    let start = Instant::now();
    let cpu_start = cpu_seconds("self");
    for i in 0..n {
        let body = json!({"entity_id": format!("light.l{}", i % 200), "n": i}).to_string();
        env.client.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
    env.client.collect(&format!("{PREFIX}/result/"), n, Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    let cpu = cpu_seconds("self") - cpu_start;
    assert_eq!(env.ha.calls().len(), n, "every command reached HA");
    if let Some(stream) = stream {
        stream.abort();
    }
    env.gateway.stop().await;
    Some((n as f64 / elapsed.as_secs_f64(), cpu * 1e6 / n as f64, elapsed.as_secs_f64()))
}

/// A console page's live view: the session, then the event stream, read
/// until the task is aborted. Returns the bytes read.
async fn live_page(addr: std::net::SocketAddr) -> usize {
    let mut console = support::console::ConsoleClient::new(addr);
    console.open().await;
    let mut r = reqwest::Client::new()
        .get(format!("http://{addr}/ui/api/live"))
        .header("cookie", console.cookie.clone().expect("a session"))
        .send()
        .await
        .expect("the live stream opens");
    let mut bytes = 0;
    while let Ok(Some(chunk)) = r.chunk().await {
        bytes += chunk.len();
    }
    bytes
}

/// The console's one step on the command path, alone: `Journal::record`
/// of a finished command (as the publisher calls it), `n` times, with the
/// default history of 500; ns per outcome. No page open: nobody waits.
fn journal_record(n: usize) {
    use mqtt_ha_gateway::command::{Action, ErrorCode, Origin, Outcome, Report, ServiceCall};
    use mqtt_ha_gateway::topic::Slug;
    let journal = mqtt_ha_gateway::ui::Journal::new(500);
    let payload = bytes::Bytes::from_static(br#"{"entity_id":"light.kitchen","brightness":128}"#);
    let origin = Origin { topic: std::sync::Arc::from("ha-gateway/call/light/turn_on"), payload };
    let data = json!({"entity_id": "light.kitchen", "brightness": 128}).as_object().unwrap().clone();
    let call = ServiceCall::new(Slug::parse("light").unwrap(), Slug::parse("turn_on").unwrap(), data);
    let changed = vec![mqtt_ha_gateway::state_json::RawState::from_value(
        &json!({"entity_id": "light.kitchen", "state": "on", "attributes": {}}),
    )];
    let reports: Vec<Report> = (0..n)
        .map(|i| Report {
            service: Some((call.domain.clone(), call.service.clone())),
            origin: Some(origin.clone()),
            action: Some(Action::Call(call.clone())),
            outcome: Outcome { attempts: 1, ..Outcome::done(200, changed.clone()) },
            ..Report::rejected(i as u64, Instant::now(), String::new(), ErrorCode::Expired, String::new())
        })
        .collect();
    let started = std::time::Instant::now();
    for r in reports {
        journal.record(r, false);
    }
    let per = started.elapsed().as_secs_f64() * 1e9 / n as f64;
    println!("console journal: {n} outcomes recorded at {per:.0} ns each (history 500, no page open)");
}

/// The web console's cost on the command path: the throughput run with
/// `[ui]` off, on with no page open, and on with a page streaming every
/// outcome.
async fn console(n: usize) {
    let runs = [
        ("off", "false", false),
        ("on, no page open", "true", false),
        ("on, a page streaming the live view", "true", true),
    ];
    for (label, enabled, page) in runs {
        if let Some((rate, cpu, _)) = commands(n, "bench-console", &[("UI__ENABLED", enabled)], page).await {
            println!("console {label}: {n} commands at {rate:.0} commands/s, process CPU {cpu:.1} µs/command");
        }
    }
}

async fn latency(n: usize, per_second: u64) {
    let Some(mut env) = setup("bench-latency", &[("QUEUE__RATE_PER_SECOND", "0"), ("LOG__LEVEL", "warn")]).await else {
        return;
    };
    env.wait_online().await;
    let mut sent = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second));
    for i in 0..n {
        tick.tick().await;
        sent.push(Instant::now());
        let body = json!({"entity_id": format!("light.l{}", i % 50), "n": i}).to_string();
        env.client.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
    let calls = env.ha.wait_calls(Duration::from_secs(60), "all latency calls", |c| c.len() == n).await;
    let mut latencies: Vec<Duration> =
        calls.iter().map(|c| c.at - sent[c.body["n"].as_u64().unwrap() as usize]).collect();
    latencies.sort();
    env.client.collect(&format!("{PREFIX}/result/"), n, Duration::from_secs(60)).await;
    println!(
        "latency publish→HA at {per_second}/s over {n} commands: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    env.gateway.stop().await;
}

/// Starts `mqtt-ha-gateway run` (rate limit off, 16 calls in flight, metrics
/// on `port`, `env` as `MQTT_HA_GATEWAY_*` overrides) and waits until
/// `/readyz` answers 200.
async fn start_binary(config: &std::path::Path, port: u16, env: &[(&str, &str)]) -> std::process::Child {
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("MQTT_HA_GATEWAY_METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env("MQTT_HA_GATEWAY_QUEUE__RATE_PER_SECOND", "0")
        .env("MQTT_HA_GATEWAY_QUEUE__CONCURRENCY", "16")
        .envs(env.iter().map(|(k, v)| (format!("MQTT_HA_GATEWAY_{k}"), *v)))
        .spawn()
        .expect("start the gateway binary");
    let url = format!("http://127.0.0.1:{port}/readyz");
    while !matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(60), "gateway not ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child
}

/// A broker, the fake HA, a config for them in a temporary folder (kept
/// while the returned `TempDir` lives) and a free port for the metrics
/// listener; `None` without Mosquitto.
async fn binary_setup(
    name: &str,
) -> Option<(support::Broker, support::FakeHa, tempfile::TempDir, std::path::PathBuf, u16)> {
    let broker = support::Broker::start(name)?;
    let ha = support::FakeHa::start(support::TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, support::TOKEN).unwrap();
    let config = support::gateway::write_config(dir.path(), broker.port, &ha.url(), &token_file);
    Some((broker, ha, dir, config, support::broker::free_port()))
}

/// The binary as users run it: ready time, idle RSS, mirror snapshot cost.
async fn process(entities: usize) {
    let Some((broker, ha, _dir, config, port)) = binary_setup("bench-process").await else { return };
    let mut client = support::TestClient::connect(broker.port, "bench-mirror", &[&format!("{PREFIX}/state/#")]).await;

    let started = Instant::now();
    let mut child = start_binary(&config, port, &[("STATE__INCLUDE", r#"["*"]"#), ("LOG__LEVEL", "warn")]).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = started.elapsed();
    let (idle, _) = rss_kib(child.id());
    println!("process: ready in {:.0} ms; idle RSS {:.1} MiB", ready.as_secs_f64() * 1e3, idle as f64 / 1024.0);

    // The mirror's cost: HA gets `entities` states, the websocket is dropped,
    // and the reconnect's snapshot publishes them all.
    for i in 0..entities {
        ha.set_state(
            &format!("sensor.s{i}"),
            &i.to_string(),
            serde_json::json!({"unit_of_measurement": "W", "friendly_name": format!("Sensor {i}")}),
        );
    }
    let start = Instant::now();
    ha.drop_websockets(false);
    client.collect(&format!("{PREFIX}/state/sensor/"), entities, Duration::from_secs(60)).await;
    let took = start.elapsed();
    let (rss, peak) = rss_kib(child.id());
    println!(
        "mirror: {entities} entities snapshot-published in {:.2} s; RSS {:.1} MiB (peak {:.1} MiB), {:.0} bytes/entity over idle",
        took.as_secs_f64(),
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        (rss.saturating_sub(idle) * 1024) as f64 / entities as f64
    );

    // The gateway's own CPU per command: the process alone, not the client
    // or the fake HA.
    let done = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(r#"mqtt_ha_gateway_commands_total{outcome="done",reason=""} "#))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_start = cpu_seconds(&child.id().to_string());
    let publisher = support::TestClient::connect(broker.port, "bench-process-cpu", &[]).await;
    for i in 0..entities {
        let body = json!({"entity_id": format!("light.c{}", i % 200)}).to_string();
        publisher.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
    let sent = Instant::now();
    loop {
        let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
        if done(&text) >= entities as f64 {
            break;
        }
        assert!(sent.elapsed() < Duration::from_secs(120), "the process did not finish the commands");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_seconds(&child.id().to_string()) - cpu_start;
    println!(
        "process CPU: {entities} commands in {:.2} s, {:.0} µs CPU per command (the gateway process alone)",
        sent.elapsed().as_secs_f64(),
        cpu * 1e6 / entities as f64
    );

    let (rss, peak) = hold_backlog(&broker, &ha, addr, child.id(), entities, "l").await;
    println!(
        "backlog: {entities} commands queued (after the steps above); RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The binary under hostile input, each step's RSS (and peak) read from
/// /proc: (a) `devices` distinct devices through a `{device}` route with a
/// 1 s `throttle`, in two waves a window apart (the throttle must forget the
/// first wave's devices); (b) `devices` invalid QoS 0 commands as fast as the
/// client sends them (each owes a result; at most 1 024 wait for the
/// publisher, the rest are dropped and counted).
async fn hostile(devices: usize) {
    let Some(rig) = support::rig("bench-hostile").await else { return };
    // HA knows no `light.` entity for `switch.turn_on` and changes nothing
    // (the fake HA keeps no state for it either), as for devices HA does
    // not know: only the gateway's own bookkeeping grows.
    rig.routes(
        "bench",
        "[[route]]\nname = \"devices\"\ntopic = \"zigbee2mqtt/{device}\"\nservice = \"switch.turn_on\"\n\
         entity_id = \"light.{{ device }}\"\nthrottle = \"1s\"\n",
    );
    let port = support::broker::free_port();
    let mut child = start_binary(&rig.config, port, &[("LOG__LEVEL", "error")]).await;
    let url = format!("http://127.0.0.1:{port}");
    let metric = |sample: &'static str| {
        let url = url.clone();
        async move {
            match reqwest::get(format!("{url}/metrics")).await {
                Ok(r) => support::gateway::metric_in(&r.text().await.unwrap_or_default(), sample),
                Err(_) => 0.0,
            }
        }
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (idle, _) = rss_kib(child.id());
    let publisher = support::TestClient::connect(rig.broker.port, "bench-hostile", &[]).await;
    let done = r#"commands_total{outcome="done",reason=""}"#;
    for wave in 0..2 {
        let t = Instant::now();
        for i in 0..devices {
            publisher.publish(&format!("zigbee2mqtt/w{wave}d{i}"), r#"{"state":"ON"}"#).await;
        }
        while metric(done).await < ((wave + 1) * devices) as f64 {
            assert!(t.elapsed() < Duration::from_secs(120), "wave {wave} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (rss, peak) = rss_kib(child.id());
        println!(
            "hostile throttle: wave {} of {devices} distinct devices in {:.1} s; RSS {:.1} → {:.1} MiB (peak {:.1} MiB)",
            wave + 1,
            t.elapsed().as_secs_f64(),
            mib(idle),
            mib(rss),
            mib(peak)
        );
        // Every first wave's throttle window is over before the second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    let (before, _) = rss_kib(child.id());
    let received = r#"messages_received_total{kind="call"}"#;
    let rejected = r#"commands_total{outcome="rejected",reason="invalid_json"}"#;
    let t = Instant::now();
    for _ in 0..devices {
        publisher.publish_qos(&format!("{PREFIX}/call/light/turn_on"), "{not json", QoS::AtMostOnce, false).await;
    }
    // QoS 0: the broker may drop some; wait until all it delivered are counted.
    let mut last = -1.0;
    loop {
        let (r, n) = (metric(received).await, metric(rejected).await);
        if r == n && r == last {
            break;
        }
        last = r;
        assert!(t.elapsed() < Duration::from_secs(120), "the flood was not handled ({n} of {r})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rss, peak) = rss_kib(child.id());
    println!(
        "hostile flood: {devices} invalid QoS 0 commands sent, {:.0} received in {:.1} s, {:.0} results dropped \
         (backlog); RSS {:.1} → {:.1} MiB (peak {:.1} MiB)",
        last,
        t.elapsed().as_secs_f64(),
        metric(r#"results_dropped_total{reason="backlog"}"#).await,
        mib(before),
        mib(rss),
        mib(peak)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Route matching with many routes: the trie index, then full evaluation
/// (templates rendered) of the matching route.
fn route_matching(routes: usize, messages: usize) {
    use mqtt_ha_gateway::access::AccessPolicy;
    use mqtt_ha_gateway::config::RawRoute;
    use mqtt_ha_gateway::routes::RouteTable;
    let raw: Vec<RawRoute> = (0..routes)
        .map(|i| match i % 4 {
            // Zigbee2MQTT-style exact topics with a map…
            0 => RawRoute {
                topic: format!("zigbee2mqtt/button_{i}"),
                map: [("single".to_owned(), format!("light.toggle:light.l{i}"))].into_iter().collect(),
                ..Default::default()
            },
            // …Shelly-style captures, Tasmota-style wildcards, templated data.
            1 => RawRoute {
                topic: format!("shellies/{{device}}/input/{i}"),
                when: Some("value == '1'".into()),
                service: Some("light.toggle".into()),
                entity_id: Some("light.{{ device }}".into()),
                ..Default::default()
            },
            2 => RawRoute {
                topic: format!("stat/+/POWER{i}"),
                service: Some("switch.turn_on".into()),
                entity_id: Some("switch.s{{ topic[1] }}".into()),
                ..Default::default()
            },
            _ => RawRoute {
                topic: format!("sensors/{i}/value"),
                format: Some("number".into()),
                service: Some("input_number.set_value".into()),
                entity_id: Some(format!("input_number.n{i}")),
                data: [("value".to_owned(), serde_json::json!("{{ value * 2 }}"))].into_iter().collect(),
                ..Default::default()
            },
        })
        .collect();
    let table = RouteTable::compile(&raw, &AccessPolicy::new(&["*".to_owned()]).unwrap()).expect("routes compile");
    let topics: Vec<(String, &[u8])> = (0..messages)
        .map(|n| {
            let i = (n * 7919) % routes;
            match i % 4 {
                0 => (format!("zigbee2mqtt/button_{i}"), &br#"{"action":"single"}"#[..]),
                1 => (format!("shellies/sw{n}/input/{i}"), &b"1"[..]),
                2 => (format!("stat/{n}/POWER{i}"), &b"ON"[..]),
                _ => (format!("sensors/{i}/value"), &b"21.5"[..]),
            }
        })
        .collect();
    let started = std::time::Instant::now();
    let mut calls = 0usize;
    for (topic, payload) in &topics {
        calls += table.evaluate(topic, payload, None).len();
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / messages as f64;
    assert_eq!(calls, messages, "every message matched exactly one route");
    let unmatched = std::time::Instant::now();
    for (topic, _) in &topics {
        assert!(table.evaluate(&format!("{topic}/x"), b"", None).is_empty());
    }
    let per_miss = unmatched.elapsed().as_secs_f64() * 1e6 / messages as f64;
    println!("routes: {routes} routes, {messages} messages: {per:.1} µs per message matched and rendered, {per_miss:.2} µs per unmatched topic");
}

/// `n` commands held: HA answers slowly, the queue fills to `n`. Returns the
/// gateway process's RSS and peak RSS then, in KiB.
async fn hold_backlog(
    broker: &support::Broker,
    ha: &support::FakeHa,
    addr: std::net::SocketAddr,
    pid: u32,
    n: usize,
    tag: &str,
) -> (u64, u64) {
    ha.set_delay(Duration::from_secs(30));
    let publisher = support::TestClient::connect(broker.port, &format!("bench-backlog-{tag}"), &[]).await;
    for i in 0..n {
        let body = json!({"entity_id": format!("light.{tag}{i}")}).to_string();
        publisher.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
    let full = Instant::now();
    loop {
        let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
        let depth = text
            .lines()
            .find_map(|l| l.strip_prefix("mqtt_ha_gateway_queue_depth "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if depth >= n as f64 {
            break;
        }
        assert!(full.elapsed() < Duration::from_secs(60), "the queue never filled ({depth})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rss_kib(pid)
}

/// `BENCH_ONLY=backlog`: a fresh gateway process with the default config
/// (states of the entities called published), `n` commands queued.
async fn backlog(n: usize) {
    let Some((broker, ha, _dir, config, port)) = binary_setup("bench-backlog").await else { return };
    let mut child = start_binary(&config, port, &[("LOG__LEVEL", "warn")]).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (idle, _) = rss_kib(child.id());
    let (rss, peak) = hold_backlog(&broker, &ha, addr, child.id(), n, "q").await;
    println!(
        "backlog alone: {n} commands queued in a fresh process; RSS {:.1} MiB (peak {:.1} MiB, idle {:.1} MiB), {:.0} bytes per queued command",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        idle as f64 / 1024.0,
        (rss.saturating_sub(idle) * 1024) as f64 / n as f64
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    // `cargo test --all-targets` runs benches in test mode with `--bench`
    // absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, m, entities, devices) = if quick { (200, 100, 100, 1_000) } else { (20_000, 2_000, 10_000, 100_000) };
    // BENCH_ONLY=hostile (a comma-separated list of routes, throughput,
    // latency, console, process, backlog, hostile) runs only those steps.
    let only = std::env::var("BENCH_ONLY").ok();
    let run = |step: &str| only.as_deref().is_none_or(|o| o.split(',').any(|s| s.trim() == step));
    if run("routes") {
        route_matching(1_000, if quick { 1_000 } else { 100_000 });
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if run("throughput") {
            throughput(n).await;
        }
        if run("latency") {
            latency(m, 200).await;
        }
        if run("console") {
            journal_record(if quick { 1_000 } else { 200_000 });
            console(n).await;
        }
        if run("process") {
            process(entities).await;
        }
        if run("backlog") {
            backlog(entities).await;
        }
        if run("hostile") {
            hostile(devices).await;
        }
    });
}
