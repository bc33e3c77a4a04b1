//! The command line: `check` names every problem with its key path, `run`
//! exits 64 on an invalid config, env variables override the file.

use std::process::Command;

fn gateway(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"));
    cmd.args(args).env_remove("MQTT_HA_GATEWAY_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("MQTT_HA_GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    let out = cmd.output().expect("run the binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn check_lists_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "bad.toml",
        r#"
[mqtt]
url = "http://broker"
topic_prefix = "a/#"
[home_assistant]
url = "ftp://x"
token_file = "/nonexistent/token"
auth_backoff = "500000000000y"
[queue]
capacity = 0
max_age = "soon"
[access]
allow_services = ["Light.*"]
[limits]
max_payload_bytes = 16777216
[metrics]
listen = "nowhere"
"#,
    );
    let (code, out) = gateway(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{out}");
    for key in [
        "mqtt.url",
        "mqtt.topic_prefix",
        "home_assistant.url",
        "home_assistant.token_file",
        "queue.capacity",
        "queue.max_age",
        "access.allow_services",
        "limits.max_payload_bytes",
        "metrics.listen",
    ] {
        assert!(out.contains(&format!("error: {key}: ")), "{key} missing from:\n{out}");
    }
    // Bounds that would otherwise overflow at run time or lose payloads at the broker.
    assert!(out.contains("error: home_assistant.auth_backoff: must be at most 1year"), "{out}");
    assert!(out.contains("error: limits.max_payload_bytes: must be between 16 and 1966080"), "{out}");
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "typo.toml", "[queue]\ncapacty = 5\n");
    let (code, out) = gateway(&["check", "--config", &cfg], &[("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", "t")]);
    assert_eq!(code, 1);
    assert!(out.contains("error: queue.capacty: unknown field"), "{out}");
}

#[test]
fn run_exits_64_on_an_invalid_config_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "empty.toml", "");
    let (code, out) = gateway(&["run", "--config", &cfg], &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("home_assistant.token"), "{out}");
    let (code, _) = gateway(&["run", "--config", "/nonexistent/gateway.toml"], &[]);
    assert_eq!(code, 64);
}

#[test]
fn env_variables_override_the_file_and_secrets_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "ok.toml", "[queue]\ncapacity = 10\n");
    let secret = "s3cr3t-token-planted-for-the-test";
    let (code, out) = gateway(
        &["check", "--config", &cfg],
        &[("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", secret), ("MQTT_HA_GATEWAY_QUEUE__CONCURRENCY", "11")],
    );
    assert_eq!(code, 1, "concurrency 11 > capacity 10 is refused: {out}");
    assert!(out.contains("error: queue.concurrency:"), "{out}");
    assert!(!out.contains(secret));
    let (code, out) = gateway(&["check", "--config", &cfg], &[("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", secret)]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(secret));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let (code, out) = gateway(
        &["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml")],
        &[("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", "t")],
    );
    assert_eq!(code, 0, "{out}");
}

/// A route's `when` written as HA writes it (`{{ … }}`) passes `check`; one
/// using HA's `trigger` is refused with the name to use instead.
#[test]
fn check_accepts_home_assistant_style_conditions_and_explains_ha_only_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = |when: &str| {
        format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[home_assistant]
url = "http://127.0.0.1:8123"
[access]
allow_services = ["light.toggle"]
[[route]]
name = "hall button"
topic = "zigbee2mqtt/hall_button"
when = "{when}"
service = "light.toggle"
entity_id = "light.hall"
"#
        )
    };
    let token = [("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", "t")];
    let ok = write(&dir, "ok.toml", &config("{{ value_json.action == 'single' }}"));
    let (code, out) = gateway(&["check", "--config", &ok], &token);
    assert_eq!(code, 0, "{out}");
    let bad = write(&dir, "bad.toml", &config("{{ trigger.payload_json.action == 'single' }}"));
    let (code, out) = gateway(&["check", "--config", &bad], &token);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("hall button") && out.contains("when"), "{out}");
    assert!(out.contains("trigger.payload_json is value_json here"), "{out}");
}
