//! A real Home Assistant Core, through the scripts in `tests/ha/`.
//!
//! Without Python 3.11 the tier is skipped (see `support::skip`); under CI
//! (`CI=true`) that is a failure instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

pub struct Ha {
    pub url: String,
    pub admin_token: String,
    pub user_token_file: PathBuf,
    pub state_dir: PathBuf,
    python: String,
    tool: String,
    _dir: Option<tempfile::TempDir>,
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ha")
}

fn python_ok() -> bool {
    let python = std::env::var("MQTT_HA_GATEWAY_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .args(["-c", "import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)"])
        .status()
        .is_ok_and(|s| s.success())
}

impl Ha {
    /// Starts a fresh HA in its own temp dir; `None` (after saying why) when
    /// this machine cannot run one and we are not in CI.
    pub fn start(test: &str) -> Option<Ha> {
        if !python_ok() {
            crate::support::skip::skip(test, "Python 3.11 not found for Home Assistant (set MQTT_HA_GATEWAY_PYTHON)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ha = Self::start_in(dir.path());
        ha._dir = Some(dir);
        Some(ha)
    }

    fn start_in(state_dir: &Path) -> Ha {
        let out = Command::new(scripts().join("start"))
            .arg(state_dir)
            .env("HA_PARENT_PID", std::process::id().to_string())
            .output()
            .expect("run tests/ha/start");
        assert!(
            out.status.success(),
            "tests/ha/start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let get = |k: &str| env.get(k).unwrap_or_else(|| panic!("{k} missing from tests/ha/start output")).clone();
        Ha {
            url: get("HA_URL"),
            admin_token: std::fs::read_to_string(get("HA_TOKEN_FILE")).unwrap().trim().to_owned(),
            user_token_file: PathBuf::from(get("HA_USER_TOKEN_FILE")),
            state_dir: PathBuf::from(get("HA_STATE_DIR")),
            python: get("HA_PYTHON"),
            tool: get("HA_TOOL"),
            _dir: None,
        }
    }

    /// Stops HA (graceful, like a user's restart) and starts it again on the same config and port.
    pub fn stop(&self) {
        let status = Command::new(scripts().join("stop")).arg(&self.state_dir).status().unwrap();
        assert!(status.success(), "tests/ha/stop failed");
    }

    pub fn start_again(&mut self) {
        let again = Self::start_in(&self.state_dir);
        assert_eq!(again.url, self.url, "restarted on the same port");
        self.admin_token = again.admin_token;
    }

    /// Runs `hatool.py <args> --state-dir …`.
    pub fn tool(&self, args: &[&str]) {
        let out = Command::new(&self.python)
            .arg(&self.tool)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "hatool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `GET /api/states/<entity>` with the admin token.
    pub async fn state(&self, entity: &str) -> Value {
        let r = reqwest::Client::new()
            .get(format!("{}/api/states/{entity}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "state of {entity}");
        r.json().await.unwrap()
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
