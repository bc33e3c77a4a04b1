//! Skipping a test whose peer (Mosquitto, Home Assistant) cannot run here,
//! visibly: outside CI the test says `SKIPPED` and passes, and appends
//! `tier<TAB>test<TAB>reason` to the file named by `MQTT_HA_TEST_SKIP_LOG`
//! (set by `scripts/test`, which prints a summary of the tiers from it).
//! Under CI (`CI=true`) every tier must run: a missing peer fails the test.

use std::io::Write;

/// The environment variable naming the skip log. (Not `MQTT_HA_GATEWAY_…`:
/// the gateway binary reads those as config overrides.)
pub const SKIP_LOG: &str = "MQTT_HA_TEST_SKIP_LOG";

/// The tier of the test binary this harness is compiled into (the
/// benchmark, run in test mode by `cargo test --all-targets`, uses it too).
fn tier() -> &'static str {
    match env!("CARGO_CRATE_NAME") {
        "it" => "integration",
        "e2e" => "e2e",
        "ui" => "ui",
        _ => "bench",
    }
}

/// Skips `test` for `reason` (what is missing and how to get it); panics
/// under CI.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason}; under CI every tier must run");
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        let line = format!("{}\t{test}\t{}\n", tier(), reason.replace(['\t', '\n'], " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("{test}: cannot record the skip in {}: {e}", path.to_string_lossy());
        }
    }
}
