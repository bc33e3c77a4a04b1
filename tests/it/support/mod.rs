//! The test harness: a real Mosquitto, a fake HA, the gateway and an MQTT
//! client, started together by [`setup`].

pub mod broker;
pub mod client;
pub mod console;
pub mod fake_ha;
pub mod fake_ws;
pub mod gateway;
pub mod proxy;
pub mod skip;
pub mod taking_broker;

use std::path::PathBuf;

pub use broker::Broker;
pub use client::TestClient;
#[allow(unused_imports)] // not every user of the harness scripts replies
pub use fake_ha::{FakeHa, Reply, Supports};
pub use gateway::{Gateway, PREFIX};

pub const TOKEN: &str = "test-token-0123456789";

/// A broker, a fake HA and a config file for them; the test starts the
/// gateway itself (in-process, as a process, behind a proxy…).
pub struct Rig {
    pub broker: Broker,
    pub ha: FakeHa,
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    /// `gateway.toml` for this broker and HA.
    pub config: PathBuf,
}

/// `None` when no broker can run here (the test says SKIPPED).
pub async fn rig(test: &str) -> Option<Rig> {
    Some(rig_on(Broker::start(test)?).await)
}

/// The same around a broker the test started its own way (persistent…).
pub async fn rig_on(broker: Broker) -> Rig {
    let ha = FakeHa::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = gateway::write_config(dir.path(), broker.port, &ha.url(), &token_file);
    Rig { broker, ha, dir, token_file, config }
}

impl Rig {
    /// Rewrites the config for another broker port or HA URL (a proxy in between).
    pub fn config_for(&self, broker_port: u16, ha_url: &str) -> PathBuf {
        gateway::write_config(self.dir.path(), broker_port, ha_url, &self.token_file)
    }

    /// Writes `routes` as `routes.d/<name>.toml` beside the config.
    pub fn routes(&self, name: &str, routes: &str) {
        let dir = self.dir.path().join("routes.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.toml")), routes).unwrap();
    }
}

/// Everything a command-path test needs.
pub struct Env {
    pub broker: Broker,
    pub ha: FakeHa,
    pub client: TestClient,
    pub gateway: Gateway,
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub token_file: PathBuf,
}

/// Starts broker, fake HA, gateway (with `overrides`) and a client subscribed
/// to everything the gateway publishes. `None` when no broker can run here.
pub async fn setup(test: &str, overrides: &[(&str, &str)]) -> Option<Env> {
    let Rig { broker, ha, dir, token_file, config } = rig(test).await?;
    let client = TestClient::connect(
        broker.port,
        &format!("tester-{test}"),
        &[
            &format!("{PREFIX}/result/#"),
            &format!("{PREFIX}/state/#"),
            &format!("{PREFIX}/status"),
            &format!("{PREFIX}/ha_status"),
            &format!("{PREFIX}/dead_letter"),
            "reply/#",
        ],
    )
    .await;
    let gateway = Gateway::start(&config, overrides).await;
    Some(Env { broker, ha, client, gateway, _dir: dir, config, token_file })
}

impl Env {
    /// Waits until the gateway is subscribed: it publishes `online` after
    /// subscribing, and the broker handles our subscribe first.
    pub async fn wait_online(&mut self) {
        self.client
            .expect(&format!("{PREFIX}/status"), std::time::Duration::from_secs(10), |m| &m.payload[..] == b"online")
            .await;
        // The SUBSCRIBE was queued before the online publish on one connection,
        // so the broker has processed it once "online" is delivered.
    }
}
