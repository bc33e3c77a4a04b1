//! The gateway against a fair ceiling, every system in a process of its own.
//!
//! The ceiling is the best simple program for the job: rumqttc → reqwest
//! with keep-alive, a task per message that waits for one of `concurrency`
//! HTTP slots (the MQTT event loop never waits), automatic PUBACKs, and a
//! result published for every call. It keeps none of the gateway's
//! guarantees (per-entity order, acks after the outcome, access checks,
//! retries, bounded queue).
//!
//! Each system runs as its own process beside its own Mosquitto and its own
//! fake Home Assistant (a process too; the fake the integration tests use,
//! which answers at once), and the load — N QoS 1 `call` commands as fast as
//! they go, then M at 200/s — comes from a fourth process, which times every
//! command from its publish to its result. Measured per system: commands/s,
//! the system process's CPU per command (from /proc) and its peak RSS in
//! the burst; then, in a fresh process of the system, publish → result
//! p50/p99 at 200/s and its RSS after that run. The systems run one after
//! the other, `CEILING_ROUNDS` times (default 1), and the table gives the
//! median of the rounds with ratios to the loop at the same concurrency.
//!
//! With `CEILING_HA=2026.2` it measures against a real Home Assistant
//! instead (see `real_ha`): the gateway next to direct keep-alive HTTP.
//!
//! `cargo bench --bench ceiling` (`CEILING_ONLY=loop8,gateway8` for some
//! systems, `CEILING_WRAP="valgrind --tool=callgrind"` to run the loop and
//! the gateway under a profiler, `CEILING_COMMANDS=5000,500` for other
//! sizes, `CEILING_GATEWAY=<path>` for another build of the gateway);
//! `cargo test --all-targets` runs it with 200/100 commands as a smoke
//! test. Nothing is asserted about speed.
//! Bounded: at most 20 000 + 2 000 commands per system and round, 120 s per
//! run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

mod common;
use common::{cpu_seconds, percentile, rss_kib};

use support::PREFIX;

/// The longest any one run (a burst, a paced run) may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Entities the commands go round (different entities run concurrently).
const ENTITIES: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq)]
enum System {
    /// The ceiling with this many HTTP calls in flight.
    Loop(usize),
    /// `mqtt-ha-gateway run`, defaults but for the rate limit (off) and
    /// `queue.concurrency`.
    Gateway { concurrency: usize, states: States },
}

/// How much of the state mirror a gateway runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum States {
    /// As configured by default: the states a call changed are published
    /// (retained), and HA's `state_changed` events are read.
    Published,
    /// `[state] exclude = ["*"]`: no state is published after a call; the
    /// websocket's events are still read (and dropped).
    Excluded,
    /// Excluded, and the websocket pointed at a closed port: no event is
    /// read either (the mirror retries in the background). Not a setting
    /// for users: it measures what reading HA's events costs.
    NoMirror,
}

impl System {
    fn name(self) -> String {
        match self {
            System::Loop(c) => format!("minimal loop, {c} in flight"),
            System::Gateway { concurrency, states } => format!(
                "gateway, concurrency {concurrency}{}",
                match states {
                    States::Published => "",
                    States::Excluded => ", no state publish",
                    States::NoMirror => ", no state publish, no websocket",
                }
            ),
        }
    }

    /// Its name in `CEILING_ONLY`.
    fn key(self) -> String {
        match self {
            System::Loop(c) => format!("loop{c}"),
            System::Gateway { concurrency, states } => format!(
                "gateway{concurrency}{}",
                match states {
                    States::Published => "",
                    States::Excluded => "-nostate",
                    States::NoMirror => "-nomirror",
                }
            ),
        }
    }

    fn concurrency(self) -> usize {
        match self {
            System::Loop(c) | System::Gateway { concurrency: c, .. } => c,
        }
    }
}

/// What the load process reports for one run.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One system's numbers in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Measured {
    burst: Run,
    cpu_us: f64,
    ha_cpu_us: f64,
    /// The high-water mark of its resident memory after the burst.
    peak_mib: f64,
    paced: Run,
    /// Resident memory after the paced run (a fresh process).
    rss_mib: f64,
}

/// A child process that is killed when dropped (a failed round leaves
/// nothing running); the role processes also end when their stdin closes.
struct Proc {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// `handshake`: the process reports on stdout (a role); otherwise its
    /// output goes where ours does.
    fn spawn(mut command: Command, handshake: bool) -> Proc {
        if handshake {
            command.stdout(Stdio::piped());
        }
        let mut child = command.stdin(Stdio::piped()).spawn().expect("start a benchmark process");
        let stdout = child.stdout.take().map(BufReader::new);
        Proc { child, stdout }
    }

    /// A role of this same binary (see `role`).
    fn role(args: &[&str]) -> Proc {
        let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
        command.arg("--role").args(args);
        Proc::spawn(command, true)
    }

    /// A role of this same binary, under `CEILING_WRAP` like the gateway:
    /// the system measured (the loop).
    fn system_role(args: &[&str]) -> Proc {
        let mut command = wrapped(&std::env::current_exe().expect("the bench binary"));
        command.arg("--role").args(args);
        Proc::spawn(command, true)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the process printed (its handshake or report).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.as_mut().expect("stdout").read_line(&mut line).expect("read a benchmark process");
        assert!(!line.is_empty(), "a benchmark process ended early");
        line.trim_end().to_owned()
    }
}

impl Drop for Proc {
    /// Asks the process to end (a role when its stdin closes, the gateway
    /// on SIGTERM), so a profiler around it writes its report; kills it
    /// after 30 s.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- roles

/// `--role fakeha`: the fake HA in a process of its own; prints its URL.
async fn fake_ha() {
    let ha = support::FakeHa::start(support::TOKEN).await;
    println!("{}", ha.url());
    until_stdin_closes().await;
}

/// `--role loop <broker port> <HA url> <concurrency>`: the ceiling. Prints
/// `ready` once subscribed.
async fn minimal_loop(port: u16, ha: String, concurrency: usize) {
    let mut options = mqtt_options("ceiling-loop", port);
    // As the gateway does: without it rumqttc keeps a slot for each of the
    // broker's Receive Maximum (65 535) in-flight publishes, ~13 MiB.
    options.set_outgoing_inflight_upper_limit(256);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    client.subscribe(format!("{PREFIX}/call/+/+"), QoS::AtLeastOnce).await.unwrap();
    let http = reqwest::Client::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let ha: Arc<str> = ha.into();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    println!("ready");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (client, http, slots, ha) = (client.clone(), http.clone(), Arc::clone(&slots), Arc::clone(&ha));
                    tokio::spawn(async move {
                        let _slot = slots.acquire_owned().await.unwrap();
                        call(&client, &http, &ha, &p.topic, &p.payload).await;
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("minimal loop: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    until_stdin_closes().await;
}

/// One command of the ceiling: `<prefix>/call/<domain>/<service>` with a
/// JSON body → the HTTP call (the `correlation` taken out, as HA refuses
/// keys it does not know) → a result like the gateway's: `ok`, HA's
/// status, the correlation.
async fn call(client: &AsyncClient, http: &reqwest::Client, ha: &str, topic: &[u8], payload: &[u8]) {
    let topic = std::str::from_utf8(topic).unwrap_or_default();
    let Some((domain, service)) = topic.rsplit_once("/call/").and_then(|(_, s)| s.split_once('/')) else { return };
    let mut body: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let correlation = body.as_object_mut().and_then(|o| o.remove("correlation")).unwrap_or(Value::Null);
    let answer =
        http.post(format!("{ha}/api/services/{domain}/{service}")).bearer_auth(support::TOKEN).json(&body).send().await;
    let result = match answer {
        Ok(response) => {
            let status = response.status();
            let _ = response.bytes().await;
            json!({"ok": status.is_success(), "status": status.as_u16(), "correlation": correlation})
        }
        Err(e) => json!({"ok": false, "error": e.to_string(), "correlation": correlation}),
    };
    let _ = client
        .publish(format!("{PREFIX}/result/{domain}/{service}"), QoS::AtLeastOnce, false, result.to_string())
        .await;
}

/// `--role load <broker port> <n> <per second, 0 = as fast as it goes>
/// <domain/service> <entity,entity,…>`: publishes `n` QoS 1 commands on
/// `<prefix>/call/<domain>/<service>`, round the entities, each with its
/// number as `correlation`, and waits for every result; prints
/// `<commands/s> <p50 ms> <p99 ms>` (publish → result).
async fn load(port: u16, n: usize, per_second: u64, service: &str, entities: &[&str]) {
    let (client, mut eventloop) =
        AsyncClient::new(mqtt_options(&format!("ceiling-load-{}", std::process::id()), port), 1024);
    client.subscribe(format!("{PREFIX}/result/#"), QoS::AtLeastOnce).await.unwrap();
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let at = Instant::now();
                    let result: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if let Some(i) = result["correlation"].as_u64() {
                        let _ = results_tx.send((i as usize, at));
                    }
                }
                _ => {}
            }
        }
    });
    subscribed.await.unwrap();
    let mut pace = (per_second > 0).then(|| tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second)));
    let topic = format!("{PREFIX}/call/{service}");
    let start = Instant::now();
    let publishing = {
        let client = client.clone();
        let mut stamps = Vec::with_capacity(n);
        async move {
            for i in 0..n {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                stamps.push(Instant::now());
                let body = json!({"entity_id": entities[i % entities.len()], "correlation": i}).to_string();
                client.publish(topic.as_str(), QoS::AtLeastOnce, false, body).await.unwrap();
            }
            stamps
        }
    };
    let mut received = vec![None; n];
    let mut count = 0;
    let collecting = async {
        while count < n {
            let Some((i, at)) = results.recv().await else { break };
            if i < n && received[i].is_none() {
                received[i] = Some(at);
                count += 1;
            }
        }
    };
    let (stamps, ()) = tokio::time::timeout(RUN_LIMIT, async { tokio::join!(publishing, collecting) })
        .await
        .unwrap_or_else(|_| panic!("load: {count} of {n} results within {RUN_LIMIT:?}"));
    let elapsed = start.elapsed();
    let latencies: Vec<Duration> =
        stamps.iter().zip(&received).filter_map(|(sent, got)| Some(got.as_ref()?.duration_since(*sent))).collect();
    report_run(n, elapsed, latencies);
}

/// Prints `<per second> <p50 ms> <p99 ms>`, what [`parse_run`] reads.
fn report_run(n: usize, elapsed: Duration, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{} {} {}",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
}

/// `--role direct <HA url> <token file> <n> <per second> <in flight>
/// <entity,…> <domain/service>`: the same calls made straight to Home
/// Assistant over keep-alive HTTP, at most `in flight` at once; prints
/// `<calls/s> <p50 ms> <p99 ms>` (request → answer).
async fn direct(ha: &str, token: &str, n: usize, per_second: u64, in_flight: usize, service: &str, entities: &[&str]) {
    let http = reqwest::Client::new();
    let url = format!("{ha}/api/services/{service}");
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut pace = (per_second > 0).then(|| tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second)));
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let slot = Arc::clone(&slots).acquire_owned().await.unwrap();
        let request = http.post(&url).bearer_auth(token).json(&json!({"entity_id": entities[i % entities.len()]}));
        calls.spawn(async move {
            let sent = Instant::now();
            let answer = request.send().await.expect("Home Assistant answers");
            assert!(answer.status().is_success(), "Home Assistant said {}", answer.status());
            let _ = answer.bytes().await;
            drop(slot);
            sent.elapsed()
        });
    }
    let latencies = tokio::time::timeout(RUN_LIMIT, calls.join_all()).await.expect("every call within the limit");
    report_run(n, start.elapsed(), latencies);
}

fn mqtt_options(id: &str, port: u16) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    opts.set_network_options(net);
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

async fn until_stdin_closes() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
}

fn role(args: &[String]) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let number = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| panic!("role argument {i}: {:?}", arg(i)));
    rt.block_on(async {
        match arg(0) {
            "fakeha" => fake_ha().await,
            "loop" => minimal_loop(number(1) as u16, arg(2).to_owned(), number(3) as usize).await,
            "load" => {
                let entities: Vec<&str> = arg(5).split(',').collect();
                load(number(1) as u16, number(2) as usize, number(3), arg(4), &entities).await
            }
            "direct" => {
                let entities: Vec<&str> = arg(6).split(',').collect();
                let token = std::fs::read_to_string(arg(2)).expect("the token file");
                direct(arg(1), token.trim(), number(3) as usize, number(4), number(5) as usize, arg(7), &entities).await
            }
            other => panic!("unknown role {other:?}"),
        }
    });
    std::io::stdout().flush().unwrap();
}

// ---------------------------------------------------------------- driver

/// Starts `system` beside its own broker and fake HA, runs the burst and
/// the paced run from a load process, and measures.
fn measure(system: System, burst: usize, paced: usize) -> Option<Measured> {
    let broker = support::Broker::start("bench-ceiling")?;
    let mut ha = Proc::role(&["fakeha"]);
    let ha_url = ha.line();
    let dir = tempfile::tempdir().unwrap();
    let start = || match system {
        System::Loop(concurrency) => {
            let mut p = Proc::system_role(&["loop", &broker.port.to_string(), &ha_url, &concurrency.to_string()]);
            assert_eq!(p.line(), "ready");
            p
        }
        System::Gateway { concurrency, states } => {
            let mut env = vec![("QUEUE__CONCURRENCY", concurrency.to_string())];
            if states != States::Published {
                env.push(("STATE__EXCLUDE", r#"["*"]"#.to_owned()));
            }
            if states == States::NoMirror {
                let closed = format!("ws://127.0.0.1:{}/api/websocket", support::broker::free_port());
                env.push(("HOME_ASSISTANT__WEBSOCKET_URL", closed));
            }
            start_gateway(&dir, broker.port, &ha_url, None, &env)
        }
    };
    let entities: Vec<String> = (0..ENTITIES).map(|i| format!("light.l{i}")).collect();
    let run = |n: usize, per_second: u64| load_run(broker.port, n, per_second, "light/turn_on", &entities);

    // The burst, then the process's CPU and its memory's high-water mark.
    let process = start();
    let pid = process.pid().to_string();
    let (cpu, ha_cpu) = (cpu_seconds(&pid), cpu_seconds(&ha.pid().to_string()));
    let burst_run = run(burst, 0);
    let cpu = settled_cpu(&pid) - cpu;
    let ha_cpu = settled_cpu(&ha.pid().to_string()) - ha_cpu;
    let (_, peak) = rss_kib(process.pid());
    drop(process);

    // The paced run in a fresh process: the memory of a steady 200/s, not
    // what the allocator kept from the burst.
    let process = start();
    let paced_run = run(paced, 200);
    let (rss, _) = rss_kib(process.pid());
    drop((process, ha, broker));
    Some(Measured {
        burst: burst_run,
        cpu_us: cpu * 1e6 / burst as f64,
        ha_cpu_us: ha_cpu * 1e6 / burst as f64,
        peak_mib: peak as f64 / 1024.0,
        paced: paced_run,
        rss_mib: rss as f64 / 1024.0,
    })
}

/// The process's CPU time once it stops growing (results, states and acks
/// still going out when the last result arrived), at most 3 s later.
fn settled_cpu(pid: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = cpu_seconds(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_seconds(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// One run of a load process (see `load`).
fn load_run(broker: u16, n: usize, per_second: u64, service: &str, entities: &[String]) -> Run {
    let mut load = Proc::role(&[
        "load",
        &broker.to_string(),
        &n.to_string(),
        &per_second.to_string(),
        service,
        &entities.join(","),
    ]);
    parse_run(&load.line())
}

/// `<per second> <p50 ms> <p99 ms>`, as `load` and `direct` print it.
fn parse_run(line: &str) -> Run {
    let fields: Vec<f64> = line.split(' ').map(|f| f.parse().expect("a number")).collect();
    Run { per_second: fields[0], p50_ms: fields[1], p99_ms: fields[2] }
}

/// `mqtt-ha-gateway run` as users run it (the integration tests' config:
/// rate limit off, `light.*` and `input_boolean.*` allowed; `env` as
/// `MQTT_HA_GATEWAY_*` overrides; the fake HA's token unless `token_file`),
/// waited for until `/readyz` is 200.
fn start_gateway(
    dir: &tempfile::TempDir,
    broker: u16,
    ha: &str,
    token_file: Option<&std::path::Path>,
    env: &[(&str, String)],
) -> Proc {
    let token_file = token_file.map(std::path::Path::to_path_buf).unwrap_or_else(|| {
        let file = dir.path().join("token");
        std::fs::write(&file, support::TOKEN).unwrap();
        file
    });
    let config = support::gateway::write_config(dir.path(), broker, ha, &token_file);
    let port = support::broker::free_port();
    // CEILING_GATEWAY=<path>: another build of the gateway (another profile).
    let binary = std::env::var_os("CEILING_GATEWAY")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_mqtt-ha-gateway")), std::path::PathBuf::from);
    let mut command = wrapped(&binary);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("MQTT_HA_GATEWAY_METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env("MQTT_HA_GATEWAY_LOG__LEVEL", "warn")
        .envs(env.iter().map(|(k, v)| (format!("MQTT_HA_GATEWAY_{k}"), v)));
    let process = Proc::spawn(command, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(port) {
        assert!(Instant::now() < deadline, "the gateway was not ready within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    process
}

/// `program`, run by `CEILING_WRAP` when set (e.g. `valgrind
/// --tool=callgrind`): the systems measured, the loop and the gateway alike,
/// under a profiler.
fn wrapped(program: &std::path::Path) -> Command {
    let wrap = std::env::var("CEILING_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut command = Command::new(first);
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// `GET /readyz` answers 200 (plain HTTP/1.0 on a std socket: no runtime
/// in the driver).
fn ready(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// Against a real Home Assistant (`CEILING_HA=2026.2`, started and
/// onboarded by `tests/ha/start`): the gateway next to the same calls made
/// directly over keep-alive HTTP, at the same concurrency, on the test
/// config's eight `input_boolean`s (`input_boolean.toggle`).
fn real_ha(release: &str, burst: usize, paced: usize) {
    let state = tempfile::tempdir().unwrap();
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ha");
    let out = Command::new(scripts.join("start"))
        .arg(state.path())
        .arg(release)
        .env("HA_PARENT_PID", std::process::id().to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/ha/start");
    assert!(out.status.success(), "tests/ha/start {release} failed");
    let env: std::collections::HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let (url, token, ha_pid, version) = (&env["HA_URL"], &env["HA_TOKEN_FILE"], &env["HA_PID"], &env["HA_VERSION"]);
    let stop = || {
        let _ = Command::new(scripts.join("stop")).arg(state.path()).status();
    };
    let Some(broker) = support::Broker::start("bench-ceiling-ha") else { return stop() };
    let entities: Vec<String> = [
        "kitchen_light",
        "hall_light",
        "fan_plug",
        "coffee_maker",
        "heater",
        "front_door_locked",
        "bedroom_fan",
        "window_open",
    ]
    .iter()
    .map(|e| format!("input_boolean.{e}"))
    .collect();
    let service = "input_boolean/toggle";
    let direct = |n: usize, per_second: u64, in_flight: usize| {
        let (n, per_second, in_flight, entities) =
            (n.to_string(), per_second.to_string(), in_flight.to_string(), entities.join(","));
        let mut p = Proc::role(&["direct", url, token, &n, &per_second, &in_flight, &entities, service]);
        parse_run(&p.line())
    };
    let dir = tempfile::tempdir().unwrap();
    println!();
    println!("Home Assistant {version}: {burst} `{service}` calls as fast as they go, then {paced} at 20/s; HA's CPU per call from /proc");
    println!();
    println!("| system | calls/s | HA CPU µs/call | p50 at 20/s | p99 at 20/s |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, fast: Run, ha_cpu: f64, slow: Run| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
            fast.per_second,
            ha_cpu * 1e6 / burst as f64,
            slow.p50_ms,
            slow.p99_ms
        );
    };
    for in_flight in [1, 8] {
        let cpu = cpu_seconds(ha_pid);
        let fast = direct(burst, 0, in_flight);
        let ha_cpu = settled_cpu(ha_pid) - cpu;
        row(&format!("direct HTTP, {in_flight} in flight"), fast, ha_cpu, direct(paced, 20, in_flight));
    }
    for (name, env) in [
        ("gateway, concurrency 8, rate limit off", vec![("QUEUE__CONCURRENCY", "8".to_owned())]),
        (
            "gateway, defaults (20/s, burst 40, concurrency 8)",
            vec![("QUEUE__RATE_PER_SECOND", "20".to_owned()), ("QUEUE__BURST", "40".to_owned())],
        ),
    ] {
        let gateway = start_gateway(&dir, broker.port, url, Some(std::path::Path::new(token)), &env);
        let cpu = cpu_seconds(ha_pid);
        let fast = load_run(broker.port, burst, 0, service, &entities);
        let ha_cpu = settled_cpu(ha_pid) - cpu;
        row(name, fast, ha_cpu, load_run(broker.port, paced, 20, service, &entities));
        drop(gateway);
    }
    drop(broker);
    stop();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        return role(&args[1..]);
    }
    // `cargo test --all-targets` runs benches without `--bench`: keep it quick.
    let quick = !args.iter().any(|a| a == "--bench");
    let (mut burst, mut paced) = if quick { (200, 100) } else { (20_000, 2_000) };
    // CEILING_COMMANDS=5000,500: other sizes (at most the full ones).
    if let Some((b, p)) = std::env::var("CEILING_COMMANDS").ok().as_deref().and_then(|v| v.split_once(',')) {
        burst = b.trim().parse::<usize>().unwrap_or(burst).clamp(1, 20_000);
        paced = p.trim().parse::<usize>().unwrap_or(paced).clamp(1, 2_000);
    }
    let rounds: usize = std::env::var("CEILING_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1).max(1);
    let systems = [
        System::Loop(8),
        System::Gateway { concurrency: 8, states: States::Published },
        System::Gateway { concurrency: 8, states: States::Excluded },
        System::Gateway { concurrency: 8, states: States::NoMirror },
        System::Loop(64),
        System::Gateway { concurrency: 64, states: States::Published },
    ];
    // CEILING_ONLY=loop8,gateway8 (keys: loop8, gateway8, gateway8-nostate,
    // gateway8-nomirror, loop64, gateway64) runs only those.
    let only = std::env::var("CEILING_ONLY").ok();
    let systems: Vec<System> = systems
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|o| o.split(',').any(|k| k.trim() == s.key())))
        .collect();
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); systems.len()];
    // CEILING_HA=2026.2 (or 2024.3): only the real Home Assistant part.
    if let Ok(release) = std::env::var("CEILING_HA") {
        let (burst, paced) = if quick { (50, 20) } else { (2_000, 200) };
        return real_ha(&release, burst, paced);
    }
    for round in 1..=rounds {
        for (system, measured) in systems.iter().zip(results.iter_mut()) {
            let Some(m) = measure(*system, burst, paced) else {
                eprintln!("mosquitto is not installed: no benchmark");
                return;
            };
            println!(
                "round {round}: {}: {:.0} commands/s, {:.0} µs CPU/command (fake HA {:.0}), peak RSS {:.1} MiB; \
                 p50 {:.2} ms, p99 {:.2} ms at 200/s, RSS {:.1} MiB",
                system.name(),
                m.burst.per_second,
                m.cpu_us,
                m.ha_cpu_us,
                m.peak_mib,
                m.paced.p50_ms,
                m.paced.p99_ms,
                m.rss_mib
            );
            measured.push(m);
        }
    }
    let med = |i: usize, f: fn(&Measured) -> f64| median(results[i].iter().map(f).collect());
    println!();
    println!(
        "{burst} QoS 1 commands as fast as they go, then {paced} at 200/s; median of {rounds} round(s); ratios to the loop at the same concurrency"
    );
    println!();
    println!(
        "| system | commands/s | CPU µs/command | peak RSS in the burst | p50 at 200/s | p99 at 200/s | RSS at 200/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, system) in systems.iter().enumerate() {
        let baseline = systems.iter().position(|s| *s == System::Loop(system.concurrency()));
        let ratio = |f: fn(&Measured) -> f64| match baseline {
            Some(b) if b != i => format!(" ({:.2}×)", med(i, f) / med(b, f)),
            _ => String::new(),
        };
        let plus = |f: fn(&Measured) -> f64| match baseline {
            Some(b) if b != i => format!(" ({:+.2} ms)", med(i, f) - med(b, f)),
            _ => String::new(),
        };
        println!(
            "| {} | {:.0}{} | {:.0}{} | {:.1} MiB | {:.2} ms | {:.2} ms{} | {:.1} MiB{} |",
            system.name(),
            med(i, |m| m.burst.per_second),
            ratio(|m| m.burst.per_second),
            med(i, |m| m.cpu_us),
            ratio(|m| m.cpu_us),
            med(i, |m| m.peak_mib),
            med(i, |m| m.paced.p50_ms),
            med(i, |m| m.paced.p99_ms),
            plus(|m| m.paced.p99_ms),
            med(i, |m| m.rss_mib),
            ratio(|m| m.rss_mib),
        );
    }
}
