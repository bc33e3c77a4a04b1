//! Command-path benchmark: a real Mosquitto, the in-process fake HA on
//! loopback, and the gateway in-process.
//!
//! Measures (1) throughput: N QoS 1 commands published as fast as possible,
//! rate limit off, until every result is back; (2) latency publish → HA at a
//! fixed 200 commands/s. Run with `cargo bench --bench throughput`; results
//! are printed, never asserted. Bounded: at most 20 000 commands, 60 s each.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::{setup, PREFIX};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn throughput(n: usize) {
    let Some(mut env) = setup(
        "bench-throughput",
        &[
            ("QUEUE__RATE_PER_SECOND", "0"),
            ("QUEUE__CAPACITY", "10000"),
            ("QUEUE__CONCURRENCY", "16"),
            ("LOG__LEVEL", "warn"),
        ],
    )
    .await
    else {
        eprintln!("mosquitto is not installed: no benchmark");
        return;
    };
    env.wait_online().await;
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    for i in 0..n {
        let body = json!({"entity_id": format!("light.l{}", i % 200), "n": i}).to_string();
        env.client.publish(&format!("{PREFIX}/call/light/turn_on"), body).await;
    }
    env.client.collect(&format!("{PREFIX}/result/"), n, Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu_start;
    assert_eq!(env.ha.calls().len(), n, "every command reached HA");
    println!(
        "throughput: {n} QoS 1 commands in {:.2} s = {:.0} commands/s (process CPU {:.1} µs/command, incl. broker client and fake HA)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / n as f64
    );
    env.gateway.stop().await;
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

/// User + system CPU time of this process, from /proc (Linux); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    // `cargo test --all-targets` runs benches in test mode with `--bench`
    // absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, m) = if quick { (200, 100) } else { (20_000, 2_000) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        throughput(n).await;
        latency(m, 200).await;
    });
}
