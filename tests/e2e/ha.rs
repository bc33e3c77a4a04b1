//! A real Home Assistant Core of one [`Release`], through the scripts in
//! `tests/ha/`.
//!
//! Without what a release needs (Python 3.11 for 2024.3; root, `chroot` and
//! `debootstrap` for 2026.2's Debian 13 root) its tests are skipped (see
//! `support::skip`); under CI (`CI=true`) that is a failure instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The Home Assistant releases every e2e test runs against: the oldest and
/// the newest this machine can install (see `tests/ha/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Release {
    V2024_3,
    V2026_2,
}

impl Release {
    /// The name `tests/ha/install` and `start` take.
    pub fn name(self) -> &'static str {
        match self {
            Self::V2024_3 => "2024.3",
            Self::V2026_2 => "2026.2",
        }
    }

    /// The exact version its lock file pins (what HA reports).
    pub fn version(self) -> &'static str {
        match self {
            Self::V2024_3 => "2024.3.3",
            Self::V2026_2 => "2026.2.3",
        }
    }

    /// Service responses over REST (`?return_response`) came in 2024.8.
    pub fn has_rest_responses(self) -> bool {
        self >= Self::V2026_2
    }

    /// Labels, floors and `last_reported` came in 2024.4.
    pub fn since_2024_4(self) -> bool {
        self >= Self::V2026_2
    }
}

pub struct Ha {
    pub release: Release,
    pub url: String,
    pub admin_token: String,
    pub user_token_file: PathBuf,
    pub state_dir: PathBuf,
    tool: PathBuf,
    _dir: Option<tempfile::TempDir>,
    /// Whether dropping this handle stops HA (not for the handle
    /// `start_again` reads HA's new token from).
    owner: bool,
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ha")
}

/// Exit status of `tests/ha/install` and `start` when a prerequisite of the
/// release is missing (the message says which).
const MISSING_PREREQUISITE: i32 = 3;

fn python_ok() -> bool {
    let python = std::env::var("MQTT_HA_GATEWAY_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .args(["-c", "import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)"])
        .status()
        .is_ok_and(|s| s.success())
}

impl Ha {
    /// Starts a fresh HA of `release` in its own temp dir; `None` (after
    /// saying why) when this machine cannot run it and we are not in CI.
    pub fn start(test: &str, release: Release) -> Option<Ha> {
        if release == Release::V2024_3 && !python_ok() {
            crate::support::skip::skip(test, "Python 3.11 not found for Home Assistant (set MQTT_HA_GATEWAY_PYTHON)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        match Self::start_in(dir.path(), release) {
            Ok(mut ha) => {
                ha._dir = Some(dir);
                Some(ha)
            }
            Err(missing) => {
                crate::support::skip::skip(test, &format!("Home Assistant {}: {missing}", release.name()));
                None
            }
        }
    }

    /// `Err` only for a missing prerequisite; any other failure panics.
    fn start_in(state_dir: &Path, release: Release) -> Result<Ha, String> {
        let out = Command::new(scripts().join("start"))
            .arg(state_dir)
            .arg(release.name())
            .env("HA_PARENT_PID", std::process::id().to_string())
            .output()
            .expect("run tests/ha/start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(MISSING_PREREQUISITE) {
            return Err(stderr.lines().last().unwrap_or("a prerequisite is missing").to_owned());
        }
        assert!(
            out.status.success(),
            "tests/ha/start {} failed:\n{}\n{stderr}",
            release.name(),
            String::from_utf8_lossy(&out.stdout),
        );
        let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let get = |k: &str| env.get(k).unwrap_or_else(|| panic!("{k} missing from tests/ha/start output")).clone();
        assert_eq!(get("HA_VERSION"), release.version(), "tests/ha/start {} started another release", release.name());
        Ok(Ha {
            release,
            url: get("HA_URL"),
            admin_token: std::fs::read_to_string(get("HA_TOKEN_FILE")).unwrap().trim().to_owned(),
            user_token_file: PathBuf::from(get("HA_USER_TOKEN_FILE")),
            state_dir: PathBuf::from(get("HA_STATE_DIR")),
            tool: PathBuf::from(get("HA_TOOL")),
            _dir: None,
            owner: true,
        })
    }

    /// Stops HA (graceful, like a user's restart) and starts it again on the same config and port.
    pub fn stop(&self) {
        let status = Command::new(scripts().join("stop")).arg(&self.state_dir).status().unwrap();
        assert!(status.success(), "tests/ha/stop failed");
    }

    pub fn start_again(&mut self) {
        let mut again = Self::start_in(&self.state_dir, self.release).expect("started before");
        again.owner = false;
        assert_eq!(again.url, self.url, "restarted on the same port");
        self.admin_token = again.admin_token.clone();
    }

    /// Runs `hatool.py <args> --state-dir …`; its stdout, trimmed.
    pub fn tool(&self, args: &[&str]) -> String {
        let out = Command::new(&self.tool).args(args).arg("--state-dir").arg(&self.state_dir).output().unwrap();
        assert!(out.status.success(), "hatool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `GET /api/states/<entity>` with the admin token; `None` while HA
    /// does not know the entity.
    pub async fn maybe_state(&self, entity: &str) -> Option<Value> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/states/{entity}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        (r.status() == 200).then_some(r.json().await.unwrap())
    }

    /// `GET /api/states/<entity>` with the admin token.
    pub async fn state(&self, entity: &str) -> Value {
        self.maybe_state(entity).await.unwrap_or_else(|| panic!("state of {entity}: not found"))
    }

    /// Waits until `pred(state(entity))` holds.
    pub async fn wait_state(&self, entity: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.state(entity).await;
            if pred(&s) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{entity} never reached the expected state: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Ha {
    /// Stops HA with its test (the watchdog would only at the end of the
    /// test binary); a state dir `start` made elsewhere goes too.
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let _ = Command::new(scripts().join("stop")).arg(&self.state_dir).status();
        let ours = self._dir.as_ref().is_some_and(|d| d.path() == self.state_dir);
        if !ours && self.state_dir.join("ha.env").is_file() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}
