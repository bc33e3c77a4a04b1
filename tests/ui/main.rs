//! The web console in a real browser (Debian's chromium, driven by
//! playwright-core from npm, both installed by `tests/ui/install`): the
//! gateway between a real Mosquitto and a real Home Assistant for the
//! button press that travels to HA and back, and a second gateway on a
//! non-loopback address (127.0.0.2) with a password, in front of the
//! in-process fake HA, for the dead letter and its replay.
//!
//! The browser checks live in `browser/console.mjs`; this test starts
//! everything, publishes when the page is ready, and wants exit status 0.
//! Screenshots go to a temporary directory, or to `$MQTT_HA_UI_SCREENSHOTS`
//! (`docs/ui` refreshes the ones `docs/ui.md` shows).
//! Without node, npm or chromium (and no root to install them) the test is
//! skipped outside CI and fails under CI, like every tier.

#[allow(dead_code)]
#[path = "../it/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../e2e/ha.rs"]
mod ha;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Broker, FakeHa, Gateway, Reply, TestClient, PREFIX, TOKEN};

const T: Duration = Duration::from_secs(30);
const PASSWORD: &str = "a console password for the test";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/ui/install`: the node_modules directory, or `Err(why)` when a
/// prerequisite is missing.
fn install() -> Result<PathBuf, String> {
    let out = Command::new(root().join("tests/ui/install")).output().expect("run tests/ui/install");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(3) {
        return Err(stderr.lines().last().unwrap_or("a prerequisite is missing").to_owned());
    }
    assert!(out.status.success(), "tests/ui/install failed:\n{stderr}");
    eprint!("{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(stdout.lines().last().expect("install prints the node_modules path")))
}

const ROUTES: &str = r#"
[[route]]
name = "hall button"
topic = "zigbee2mqtt/hall_button"
map = { single = "light.toggle:light.kitchen" }

[[route]]
name = "garage button"
topic = "zigbee2mqtt/garage_button"
map = { single = "light.toggle:light.kitchen" }
"#;

/// A gateway config in `dir` for this broker and HA, with the routes, an
/// access rule that keeps the garage button to the garage lights, and
/// the console on.
fn config(dir: &Path, broker: u16, ha_url: &str, token_file: &Path) -> PathBuf {
    let path = support::gateway::write_config(dir, broker, ha_url, token_file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[[access.rule]]\ntopic = \"zigbee2mqtt/garage_button\"\nallow_entities = [\"light.garage_*\"]\n\n[ui]\nenabled = true\n");
    std::fs::write(&path, text).unwrap();
    std::fs::create_dir_all(dir.join("routes.d")).unwrap();
    std::fs::write(dir.join("routes.d/devices.toml"), ROUTES).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_works_in_a_real_browser() {
    let test = "ui_browser";
    let node_modules = match tokio::task::spawn_blocking(install).await.unwrap() {
        Ok(dir) => dir,
        Err(why) => return support::skip::skip(test, &why),
    };
    let Some(broker) = Broker::start(test) else { return };
    let Some(real_ha) =
        tokio::task::spawn_blocking(|| ha::Ha::start("ui_browser", ha::Release::V2026_2)).await.unwrap()
    else {
        return;
    };

    // The console on 127.0.0.1, no password, in front of the real HA.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("ha_token");
    real_ha.tool(&["new-token", "--name", "ui browser test", "--out", &token_file.display().to_string()]);
    let live_config = config(dir.path(), broker.port, &real_ha.url, &token_file);
    let mut client = TestClient::connect(broker.port, "ui-browser-results", &[&format!("{PREFIX}/status")]).await;
    let live = Gateway::start(&live_config, &[]).await;
    client.expect(&format!("{PREFIX}/status"), T, |m| &m.payload[..] == b"online").await;
    live.wait_metric("ha_up", T, |v| v == 1.0).await;
    live.wait_metric(&format!(r#"ha_info{{version="{}"}}"#, real_ha.release.version()), T, |v| v == 1.0).await;

    // The console on 127.0.0.2 with a password, in front of the fake HA,
    // with a dead letter waiting: HA was unavailable for it.
    let login_broker = Broker::start(test).expect("a broker started above");
    let fake = FakeHa::start(TOKEN).await;
    let login_dir = tempfile::tempdir().unwrap();
    let fake_token = login_dir.path().join("token");
    std::fs::write(&fake_token, TOKEN).unwrap();
    let password_file = login_dir.path().join("ui_password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let login_config = config(login_dir.path(), login_broker.port, &fake.url(), &fake_token);
    let overrides = [
        ("METRICS__LISTEN", "127.0.0.2:0"),
        ("UI__PASSWORD_FILE", password_file.to_str().unwrap()),
        ("HOME_ASSISTANT__MAX_ATTEMPTS", "1"),
    ];
    let login = Gateway::start(&login_config, &overrides).await;
    let mut login_client =
        TestClient::connect(login_broker.port, "ui-browser-login", &[&format!("{PREFIX}/result/#")]).await;
    fake.script([Reply::status(503)]);
    login_client.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.porch"}"#).await;
    let r = login_client.result(&format!("{PREFIX}/result/light/turn_on")).await;
    assert_eq!(r["error"], "ha_unavailable", "{r}");

    let shots = match std::env::var_os("MQTT_HA_UI_SCREENSHOTS") {
        Some(d) => root().join(d),
        None => dir.path().join("screenshots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = Command::new("node")
        .arg(root().join("tests/ui/browser/console.mjs"))
        .env("UI_NODE_MODULES", &node_modules)
        .env("UI_LIVE_URL", format!("http://{}", live.metrics_addr))
        .env("UI_LOGIN_URL", format!("http://{}", login.metrics_addr))
        .env("UI_PASSWORD", PASSWORD)
        .env("UI_HA_VERSION", real_ha.release.version())
        .env("UI_SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    let mut stdin = node.stdin.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("browser: {line}");
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let device = TestClient::connect(broker.port, "ui-browser-button", &[]).await;
    let mut checks = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.recv()).await {
        if line == "ready-live" {
            device.publish("zigbee2mqtt/hall_button", r#"{"action":"single","battery":97,"linkquality":120}"#).await;
            writeln!(stdin, "published").unwrap();
        } else if let Some(check) = line.strip_prefix("ok ") {
            checks.push(check.split(' ').next().unwrap_or_default().to_owned());
        }
    }
    let status = tokio::task::spawn_blocking(move || node.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the browser checks failed ({status}); passed: {checks:?}");
    let expected = [
        "page-loads",
        "live-view",
        "tester-call",
        "tester-denied",
        "status",
        "config",
        "csrf-refused",
        "login-required",
        "replay",
    ];
    assert_eq!(checks, expected, "every browser check ran");
    assert_eq!(fake.calls().len(), 2, "the replay reached HA");
    live.stop().await;
    login.stop().await;
}
