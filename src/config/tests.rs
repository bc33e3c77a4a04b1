use std::io::Write;

use secrecy::ExposeSecret;

use super::*;

fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let vars = env.iter().map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_string()));
    load(file.path(), true, vars)
}

fn keys(e: ConfigErrors) -> Vec<String> {
    e.0.into_iter().map(|e| e.key).collect()
}

const TOKEN: (&str, &str) = ("HOME_ASSISTANT__TOKEN", "abc");

#[test]
fn defaults_follow_the_contract() {
    let c = load_str("", &[TOKEN]).unwrap();
    assert_eq!((c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.tls), ("127.0.0.1", 1883, false));
    assert_eq!(c.mqtt.client_id, "mqtt-ha-gateway");
    assert_eq!(c.mqtt.prefix.as_str(), "ha-gateway");
    assert_eq!(c.home_assistant.url.as_str(), "http://127.0.0.1:8123/");
    assert_eq!(c.queue.capacity.get(), 10_000);
    assert_eq!(c.queue.rate_per_second.map(|r| r.get()), Some(20));
    assert_eq!(c.queue.burst.get(), 40);
    assert_eq!(c.queue.max_age, Duration::from_secs(60));
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9184");
}

#[test]
fn env_overrides_the_file_with_typed_values() {
    let c = load_str(
        "[queue]\nrate_per_second = 5\n",
        &[
            TOKEN,
            ("QUEUE__RATE_PER_SECOND", "0"),
            ("MQTT__URL", "mqtts://broker.example:8884"),
            ("MQTT__USERNAME", "gw"),
            ("MQTT__PASSWORD", "0123"),
            ("ACCESS__ALLOW_SERVICES", "[\"light.*\", \"cover.open_cover\"]"),
        ],
    )
    .unwrap();
    assert_eq!(c.queue.rate_per_second, None, "0 = unlimited");
    assert_eq!((c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.tls), ("broker.example", 8884, true));
    match c.mqtt.password.unwrap() {
        SecretSource::Inline(p) => assert_eq!(p.expose_secret(), "0123", "a numeric password stays a string"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.access.patterns(), ["light.*", "cover.open_cover"]);
}

#[test]
fn the_token_comes_from_exactly_one_place() {
    assert_eq!(keys(load_str("", &[]).unwrap_err()), ["home_assistant.token"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let toml = format!("[home_assistant]\ntoken_file = \"{}\"\n", file.display());
    let c = load_str(&toml, &[]).unwrap();
    assert_eq!(c.home_assistant.token.read().unwrap().expose_secret(), "from-file");
    assert_eq!(keys(load_str(&toml, &[TOKEN]).unwrap_err()), ["home_assistant.token"]);
    std::fs::write(&file, "  \n").unwrap();
    assert_eq!(keys(load_str(&toml, &[]).unwrap_err()), ["home_assistant.token_file"]);
}

#[test]
fn secrets_never_reach_debug_output() {
    let c = load_str("", &[("HOME_ASSISTANT__TOKEN", "very-secret-token")]).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("very-secret-token"), "{debug}");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let e = load_str(
        r#"
[mqtt]
url = "mqtt://"
keep_alive = "1s"
reconnect_min = "10s"
reconnect_max = "1s"
[home_assistant]
url = "http://h:8123/?x=1"
max_attempts = 0
[queue]
capacity = 5
concurrency = 6
burst = 0
[log]
format = "xml"
"#,
        &[TOKEN],
    )
    .unwrap_err();
    assert_eq!(
        keys(e),
        [
            "mqtt.url",
            "mqtt.keep_alive",
            "mqtt.reconnect_max",
            "home_assistant.url",
            "home_assistant.max_attempts",
            "queue.burst",
            "queue.concurrency",
            "log.format"
        ]
    );
}

#[test]
fn type_errors_and_unknown_keys_name_their_path() {
    assert_eq!(keys(load_str("[queue]\ncapacity = \"many\"\n", &[TOKEN]).unwrap_err()), ["queue.capacity"]);
    assert_eq!(keys(load_str("[mqtt]\nurll = \"x\"\n", &[TOKEN]).unwrap_err()), ["mqtt.urll"]);
    assert_eq!(keys(load_str("", &[TOKEN, ("QUEUE__BOGUS", "1")]).unwrap_err()), ["queue.bogus"]);
    assert_eq!(keys(load_str("[nope]\n", &[TOKEN]).unwrap_err()), ["nope"]);
}

#[test]
fn secrets_never_reach_the_raw_configs_debug_output() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let toml = "[mqtt]\nusername = \"gw\"\npassword = \"mqtt-file-password\"\n\
                [home_assistant]\ntoken = \"ha-file-token\"\n";
    file.write_all(toml.as_bytes()).unwrap();
    let raw = load_raw(file.path(), true, []).unwrap();
    let debug = format!("{raw:?}");
    for secret in ["mqtt-file-password", "ha-file-token"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    // The environment layer: the usual place for the token.
    let env = [("MQTT__PASSWORD", "mqtt-env-password"), ("HOME_ASSISTANT__TOKEN", "ha-env-token")];
    let raw =
        load_raw(file.path(), true, env.iter().map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_string()))).unwrap();
    let debug = format!("{raw:?}");
    for secret in ["mqtt-env-password", "ha-env-token"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    let c = validate(raw).unwrap();
    assert_eq!(c.home_assistant.token.read().unwrap().expose_secret(), "ha-env-token");
}

/// `(key path, message)` of every problem.
fn problems(e: ConfigErrors) -> Vec<(String, String)> {
    e.0.into_iter().map(|e| (e.key, e.message)).collect()
}

#[test]
fn max_payload_bytes_leaves_room_under_the_mqtt_packet_cap() {
    // The broker drops packets over 2 MiB without a word: a payload limit at
    // or above it would promise results that never come.
    for value in ["2097152", "16777216", "1966081"] {
        let e = load_str(&format!("[limits]\nmax_payload_bytes = {value}\n"), &[TOKEN]).unwrap_err();
        let problems = problems(e);
        assert_eq!(problems.len(), 1, "{value}: {problems:?}");
        let (key, message) = &problems[0];
        assert_eq!(key, "limits.max_payload_bytes", "{value}");
        assert!(message.contains("1966080"), "{value}: the maximum is named: {message}");
    }
    let c = load_str("[limits]\nmax_payload_bytes = 1966080\n", &[TOKEN]).unwrap();
    assert_eq!(c.limits.max_payload_bytes, 1_966_080);
}

/// value → Ok(max_result_bytes) or the key's error names the bounds.
#[test]
fn max_result_bytes_is_validated_against_the_packet_cap() {
    let table: &[(&str, Result<usize, &str>)] = &[
        ("", Ok(262_144)),
        ("max_result_bytes = 1024", Ok(1024)),
        ("max_result_bytes = 1966080", Ok(1_966_080)),
        ("max_result_bytes = 1966081", Err("must be between 1024 and 1966080")),
        ("max_result_bytes = 2097152", Err("must be between 1024 and 1966080")),
        ("max_result_bytes = 10", Err("must be between 1024 and 1966080")),
        ("max_result_bytes = \"big\"", Err("")),
    ];
    for (line, expected) in table {
        let got = load_str(&format!("[limits]\n{line}\n"), &[TOKEN]);
        match (got, expected) {
            (Ok(c), Ok(v)) => assert_eq!(c.limits.max_result_bytes, *v, "{line}"),
            (Err(e), Err(message)) => {
                let problems = problems(e);
                assert_eq!(problems.len(), 1, "{line}: {problems:?}");
                assert_eq!(problems[0].0, "limits.max_result_bytes", "{line}");
                assert!(problems[0].1.contains(message), "{line}: {}", problems[0].1);
            }
            (got, expected) => panic!("{line}: got {:?}, expected {expected:?}", got.map(|c| c.limits)),
        }
    }
}

/// The run-time arithmetic each duration setting reaches: added to an
/// `Instant` (a command's deadline in ingress, a retry's wake-up in the
/// executor, debounce and throttle in the dispatcher, rumqttc's keep-alive
/// timer, the auth gate's pause) or multiplied (the auth gate's longest pause).
fn run_durations(c: &Config) {
    let now = tokio::time::Instant::now();
    let (_tx, rx) = tokio::sync::watch::channel(SecretString::from("t"));
    let gate = crate::ha::AuthGate::new(c.home_assistant.auth_backoff, rx);
    for _ in 0..12 {
        gate.refused();
    }
    let _ = now + c.queue.max_age;
    let _ = now + c.home_assistant.retry.max();
    let _ = now + c.mqtt.keep_alive;
    let _ = now + c.mqtt.reconnect.max();
    for result in c.routes.evaluate("flow/x", b"1", None) {
        if let crate::routes::RouteResult::Call { flow, .. } = result {
            for d in [flow.debounce, flow.throttle].into_iter().flatten() {
                let _ = now + d;
            }
        }
    }
}

const FLOW_ROUTE: &str = "[[route]]\nname = \"flow\"\ntopic = \"flow/x\"\nservice = \"light.turn_on\"\n\
                          entity_id = \"light.x\"\n";

#[test]
fn huge_durations_are_refused_at_load_not_overflowed_at_run_time() {
    // 500 000 000 000 years: parses (below u64::MAX seconds) but overflows
    // `Instant + Duration` and `Duration * 10`.
    const HUGE: &str = "500000000000y";
    let table = [
        ("[mqtt]\nkeep_alive = \"{}\"\n", "mqtt.keep_alive"),
        ("[mqtt]\nsession_expiry = \"{}\"\n", "mqtt.session_expiry"),
        ("[mqtt]\nreconnect_max = \"{}\"\n", "mqtt.reconnect_max"),
        ("[mqtt]\nreconnect_min = \"{}\"\nreconnect_max = \"{}\"\n", "mqtt.reconnect_min"),
        ("[home_assistant]\nrequest_timeout = \"{}\"\n", "home_assistant.request_timeout"),
        ("[home_assistant]\nconnect_timeout = \"{}\"\n", "home_assistant.connect_timeout"),
        ("[home_assistant]\nretry_max = \"{}\"\n", "home_assistant.retry_max"),
        ("[home_assistant]\nretry_min = \"{}\"\nretry_max = \"{}\"\n", "home_assistant.retry_min"),
        ("[home_assistant]\nauth_backoff = \"{}\"\n", "home_assistant.auth_backoff"),
        ("[home_assistant]\nprobe_interval = \"{}\"\n", "home_assistant.probe_interval"),
        ("[queue]\nmax_age = \"{}\"\n", "queue.max_age"),
        ("[queue]\ndedupe_window = \"{}\"\n", "queue.dedupe_window"),
        ("debounce = \"{}\"\n", "route[0] (flow).debounce"),
        ("throttle = \"{}\"\n", "route[0] (flow).throttle"),
    ];
    for (toml, key) in table {
        let mut toml = toml.replace("{}", HUGE);
        if key.starts_with("route") {
            toml = format!("{FLOW_ROUTE}{toml}");
        }
        // Were it accepted, the gateway would panic here at run time.
        let result = load_str(&toml, &[TOKEN]).map(|c| run_durations(&c));
        let problems = problems(result.unwrap_err());
        assert!(problems.iter().any(|(k, m)| k == key && m.contains("at most")), "{key}: {problems:?}");
    }
}

#[test]
fn the_longest_accepted_durations_are_safe_at_run_time() {
    let toml = format!(
        "[mqtt]\nkeep_alive = \"65535s\"\nsession_expiry = \"1y\"\nreconnect_min = \"1y\"\nreconnect_max = \"1y\"\n\
         [home_assistant]\nrequest_timeout = \"1y\"\nconnect_timeout = \"1y\"\nretry_min = \"1y\"\nretry_max = \"1y\"\n\
         auth_backoff = \"1y\"\nprobe_interval = \"1y\"\n\
         [queue]\nmax_age = \"1y\"\ndedupe_window = \"1y\"\n\
         {FLOW_ROUTE}debounce = \"1y\"\nthrottle = \"1y\"\n"
    );
    let c = load_str(&toml, &[TOKEN]).unwrap();
    run_durations(&c);
    let just_over =
        [("[mqtt]\nkeep_alive = \"65536s\"\n", "mqtt.keep_alive"), ("[queue]\nmax_age = \"366d\"\n", "queue.max_age")];
    for (toml, key) in just_over {
        assert_eq!(keys(load_str(toml, &[TOKEN]).unwrap_err()), [key]);
    }
}

/// `MQTT_HA_GATEWAY_<SECTION>__<KEY>` sets a key. Other variables that
/// share the prefix but name no section are tools' (the config file's path,
/// the test scripts' cache and Python), not config; a section's name with a
/// single underscore is a typo and stays an error.
#[test]
fn only_variables_naming_a_section_are_config() {
    let c = load_str("", &[TOKEN, ("CACHE_DIR", "/somewhere"), ("PYTHON", "python3.13"), ("QUEUE__CAPACITY", "70")]);
    assert_eq!(c.expect("tools' variables are ignored").queue.capacity.get(), 70);
    let typo = load_str("", &[TOKEN, ("QUEUE_CAPACITY", "7")]).unwrap_err();
    assert!(typo.0.iter().any(|e| e.message.contains("queue_capacity")), "{typo}");
}

#[test]
fn the_statestream_layout_takes_mqtt_statestreams_options() {
    let c = load_str("", &[TOKEN]).unwrap();
    assert_eq!(c.state.layout, Layout::Json(StateOptions::default()), "the json layout stays the default");
    let toml = "[state]\nlayout = \"statestream\"\n[state.statestream]\nbase_topic = \"homestate/\"\npublish_attributes = true\n";
    let c = load_str(toml, &[TOKEN, ("STATE__STATESTREAM__PUBLISH_TIMESTAMPS", "true")]).unwrap();
    let expected = Statestream {
        base_topic: TopicPrefix::new("homestate").unwrap(),
        publish_attributes: true,
        publish_timestamps: true,
    };
    assert_eq!(c.state.layout, Layout::Statestream(expected), "HA's trailing '/' is optional here too");
    // A numeric base topic stays text when it comes from the environment.
    let c =
        load_str("[state]\nlayout = \"statestream\"\n", &[TOKEN, ("STATE__STATESTREAM__BASE_TOPIC", "2024")]).unwrap();
    assert!(matches!(c.state.layout, Layout::Statestream(s) if s.base_topic.as_str() == "2024"));
}

#[test]
fn a_statestream_layout_that_cannot_work_is_refused_with_its_key() {
    let table: &[(&str, &[&str])] = &[
        ("layout = \"statestream\"", &["state.statestream.base_topic"]),
        ("layout = \"statestream\"\nstatestream.base_topic = \"a/+/b\"", &["state.statestream.base_topic"]),
        (
            "layout = \"statestream\"\nstatestream.base_topic = \"s\"\nattribute_topics = true",
            &["state.attribute_topics"],
        ),
        ("layout = \"statestream\"\nstatestream.base_topic = \"s\"\ntimestamps = false", &["state.timestamps"]),
        ("layout = \"yaml\"", &["state.layout"]),
        ("statestream.base_topc = \"s\"", &["state.statestream.base_topc"]),
    ];
    for (state, expected) in table {
        let e = load_str(&format!("[state]\n{state}\n"), &[TOKEN]).unwrap_err();
        assert_eq!(keys(e), *expected, "{state}");
    }
}

#[test]
fn discovery_is_off_by_default_and_takes_its_node_id_from_the_client_id() {
    assert_eq!(load_str("", &[TOKEN]).unwrap().discovery, None);
    let d = load_str("[discovery]\nenabled = true\n", &[TOKEN]).unwrap().discovery.unwrap();
    let expected = DiscoveryConfig {
        prefix: "homeassistant".into(),
        node_id: "mqtt-ha-gateway".into(),
        device_name: "MQTT HA Gateway".into(),
        status_topic: "homeassistant/status".into(),
        state_interval: Duration::from_secs(5),
    };
    assert_eq!(d, expected);
    let table: &[(&str, &[&str])] = &[
        ("node_id = \"gw.1\"", &["discovery.node_id"]),
        ("node_id = \"\"", &["discovery.node_id"]),
        ("prefix = \"home/#\"", &["discovery.prefix"]),
        ("status_topic = \"\"", &["discovery.status_topic"]),
        ("device_name = \" \"", &["discovery.device_name"]),
        ("state_interval = \"10ms\"", &["discovery.state_interval"]),
    ];
    for (line, expected) in table {
        let e = load_str(&format!("[discovery]\nenabled = true\n{line}\n"), &[TOKEN]).unwrap_err();
        assert_eq!(keys(e), *expected, "{line}");
    }
    // A client id HA cannot take as a node id: say which key fixes it.
    let e = load_str("[mqtt]\nclient_id = \"gw.1\"\n[discovery]\nenabled = true\n", &[TOKEN]).unwrap_err();
    assert_eq!(keys(e), ["discovery.node_id"]);
    assert!(
        load_str("[mqtt]\nclient_id = \"gw.1\"\n[discovery]\nenabled = true\nnode_id = \"gw1\"\n", &[TOKEN]).is_ok()
    );
}
