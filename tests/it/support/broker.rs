//! A real Mosquitto broker per test, on a free loopback port.
//!
//! Where `mosquitto` is not installed the test is skipped (see `skip`); under
//! CI (`CI=true`) a missing broker fails the test instead.
//! `MQTT_HA_TEST_NO_BROKER=1` makes it look missing (to see a skip).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// Keeps sessions and queued messages on disk across restarts.
    persistent: bool,
}

/// `MQTT_HA_TEST_NO_BROKER=1`: behave as if Mosquitto were not installed.
pub fn hidden() -> bool {
    std::env::var("MQTT_HA_TEST_NO_BROKER").is_ok_and(|v| v == "1")
}

fn find_mosquitto() -> Option<PathBuf> {
    if hidden() {
        return None;
    }
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("mosquitto")).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"].map(PathBuf::from))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port").local_addr().unwrap().port()
}

impl Broker {
    /// Starts a broker, or returns `None` (after saying why) when `mosquitto`
    /// is not installed and we are not in CI.
    pub fn start(test: &str) -> Option<Broker> {
        let Some(binary) = find_mosquitto() else {
            super::skip::skip(test, "mosquitto is not installed (apt-get install mosquitto)");
            return None;
        };
        let dir = tempfile::tempdir().expect("create a temp dir");
        let mut broker = Broker { port: free_port(), child: None, dir, binary, persistent: false };
        broker.spawn();
        Some(broker)
    }

    /// A broker that saves sessions and queued messages to disk when it stops.
    pub fn start_persistent(test: &str) -> Option<Broker> {
        let mut broker = Self::start(test)?;
        broker.persistent = true;
        let dir = broker.persist_dir();
        std::fs::create_dir(&dir).expect("create the persistence dir");
        // Started as root, mosquitto drops to its own user, which must be
        // able to reach and write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("open the broker's dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("open the persistence dir");
        broker.restart();
        Some(broker)
    }

    fn persist_dir(&self) -> PathBuf {
        self.dir.path().join("persist")
    }

    /// Identity of the saved database: mosquitto writes `mosquitto.db.new`
    /// beside the old file and renames it, so every save has a new inode.
    fn saved_inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.persist_dir().join("mosquitto.db")).ok().map(|m| m.ino())
    }

    /// Makes a persistent broker save now (SIGUSR1) and waits until it has:
    /// everything it acknowledged before this call is then on disk.
    pub fn save(&self) {
        assert!(self.persistent, "only a persistent broker saves");
        // A save in progress may have started before the last
        // acknowledgement: let it finish, so the change we wait for is ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.persist_dir().join("mosquitto.db.new").exists() {
            assert!(Instant::now() < deadline, "mosquitto never finished a save");
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = self.saved_inode();
        let child = self.child.as_ref().expect("the broker runs");
        let status = Command::new("kill").args(["-USR1", &child.id().to_string()]).status().expect("run kill");
        assert!(status.success());
        while self.saved_inode() == before {
            assert!(Instant::now() < deadline, "mosquitto did not save its database");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the broker gracefully (SIGTERM: a persistent one saves its
    /// state) and starts it again on the same port.
    pub fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
            assert!(status.success());
            child.wait().expect("mosquitto exits");
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{}\nmax_queued_messages 200000\nsys_interval 1\nlog_dest stderr\nlog_type error\nlog_type warning\n{}",
                self.port,
                if self.persistent {
                    format!("persistence true\npersistence_location {}/", self.persist_dir().display())
                } else {
                    "persistence false".to_owned()
                },
                std::env::var("TEST_BROKER_LOG").map(|_| "log_type all\n").unwrap_or("")
            ),
        )
        .expect("write the broker config");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start listening on {}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Broker {
    /// Kills the broker (SIGKILL) and starts a new one on the same port.
    /// Without persistence, sessions and retained messages are lost; with
    /// it, the broker comes back with what it saved last.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
