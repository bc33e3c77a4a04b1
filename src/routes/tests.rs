use serde_json::json;

use super::*;

fn access(patterns: &[&str]) -> AccessPolicy {
    AccessPolicy::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn route(topic: &str) -> RawRoute {
    RawRoute { topic: topic.into(), ..Default::default() }
}

fn table(routes: Vec<RawRoute>) -> RouteTable {
    RouteTable::compile(&routes, &access(&["*"])).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Calls as (service, data), skips as "skip:<why>", failures as "fail:<code>".
fn outcomes(t: &RouteTable, topic: &str, payload: &str) -> Vec<String> {
    t.evaluate(topic, payload.as_bytes(), None)
        .into_iter()
        .map(|r| match r {
            RouteResult::Call { call, .. } => format!("{} {}", call.name(), Value::Object(call.data)),
            RouteResult::Skipped { why, .. } => format!("skip:{why}"),
            RouteResult::Failed { code, .. } => format!("fail:{code}"),
        })
        .collect()
}

#[test]
fn a_zigbee2mqtt_button_through_a_map() {
    let mut r = route("zigbee2mqtt/hall_button");
    r.map = [("single", "light.toggle:light.hall"), ("double", "scene.turn_on:scene.evening")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let t = table(vec![r]);
    let table_rows = [
        (r#"{"action":"single","battery":90}"#, vec![r#"light.toggle {"entity_id":"light.hall"}"#.to_owned()]),
        (r#"{"action":"double"}"#, vec![r#"scene.turn_on {"entity_id":"scene.evening"}"#.to_owned()]),
        (r#"{"action":"release"}"#, vec!["skip:map".to_owned()]),
        ("single", vec![r#"light.toggle {"entity_id":"light.hall"}"#.to_owned()]),
    ];
    for (payload, expected) in table_rows {
        assert_eq!(outcomes(&t, "zigbee2mqtt/hall_button", payload), expected, "{payload}");
    }
    assert!(outcomes(&t, "zigbee2mqtt/other", "{}").is_empty());
}

#[test]
fn templates_captures_and_formats() {
    let mut shelly = route("shellies/{device}/input/{channel}");
    shelly.when = Some("value == '1'".into());
    shelly.service = Some("light.toggle".into());
    shelly.entity_id = Some("light.{{ device | replace('-', '_') }}_{{ channel }}".into());
    let mut dimmer = route("dimmers/+/level");
    dimmer.format = Some("number".into());
    dimmer.service = Some("light.turn_on".into());
    dimmer.entity_id = Some("light.{{ topic[1] }}".into());
    dimmer.data = [("brightness".to_owned(), json!("{{ (value * 2.55) | int }}")), ("transition".to_owned(), json!(1))]
        .into_iter()
        .collect();
    let mut json_route = route("sensors/#");
    json_route.format = Some("json".into());
    json_route.service = Some("input_number.set_value".into());
    json_route.entity_id = Some("input_number.{{ topic[-1] }}".into());
    json_route.data = [("value".to_owned(), json!("{{ value_json.t }}"))].into_iter().collect();
    let t = table(vec![shelly, dimmer, json_route]);
    let rows: [(&str, &str, Vec<&str>); 7] = [
        ("shellies/shelly1-ab/input/0", "1", vec![r#"light.toggle {"entity_id":"light.shelly1_ab_0"}"#]),
        ("shellies/shelly1-ab/input/0", "0", vec!["skip:when"]),
        (
            "dimmers/desk/level",
            "50",
            vec![r#"light.turn_on {"brightness":127,"transition":1,"entity_id":"light.desk"}"#],
        ),
        ("dimmers/desk/level", "loud", vec!["fail:invalid_payload"]),
        (
            "sensors/garden/temp",
            r#"{"t":21.5}"#,
            vec![r#"input_number.set_value {"value":21.5,"entity_id":"input_number.temp"}"#],
        ),
        ("sensors/garden/temp", "warm", vec!["fail:invalid_json"]),
        ("shellies/x/input", "1", vec![]),
    ];
    for (topic, payload, expected) in rows {
        assert_eq!(outcomes(&t, topic, payload), expected, "{topic} {payload}");
    }
}

#[test]
fn several_routes_may_match_one_message() {
    let mut a = route("home/+/button");
    a.service = Some("light.toggle".into());
    a.entity_id = Some("light.a".into());
    let mut b = route("home/#");
    b.service = Some("input_boolean.toggle".into());
    b.entity_id = Some("input_boolean.log".into());
    let t = table(vec![a, b]);
    assert_eq!(outcomes(&t, "home/hall/button", "x").len(), 2);
    assert_eq!(outcomes(&t, "home/hall", "x").len(), 1);
    // A copy delivered for one subscription is evaluated against its routes only.
    let only: HashSet<String> = ["home/+/button".to_owned()].into_iter().collect();
    assert_eq!(t.evaluate("home/hall/button", b"x", Some(&only)).len(), 1);
}

#[test]
fn render_failures_and_bad_services_are_template_errors() {
    let mut r = route("t/1");
    r.service = Some("{{ value }}".into());
    let mut strict = route("t/2");
    strict.service = Some("light.turn_on".into());
    strict.data = [("x".to_owned(), json!("{{ value | int(strict=true) + undefined_fn() }}"))].into_iter().collect();
    let t = table(vec![r, strict]);
    assert_eq!(outcomes(&t, "t/1", "light.turn_on"), vec![r#"light.turn_on {}"#]);
    assert_eq!(outcomes(&t, "t/1", "Light.ON"), vec!["fail:template_error"]);
    assert_eq!(
        outcomes(&t, "t/1", "../../x"),
        vec!["fail:template_error"],
        "a rendered service passes the slug rule too"
    );
    assert_eq!(outcomes(&t, "t/2", "1"), vec!["fail:template_error"]);
}

#[test]
fn compile_errors_name_the_route_and_key() {
    let mut bad_filter = route("a/#/b");
    bad_filter.service = Some("light.toggle".into());
    let mut bad_template = route("x");
    bad_template.name = Some("broken".into());
    bad_template.service = Some("light.turn_on".into());
    bad_template.data = [("brightness".to_owned(), json!("{{ value | "))].into_iter().collect();
    let mut denied = route("y");
    denied.service = Some("lock.unlock".into());
    let mut coalesced_toggle = route("z");
    coalesced_toggle.service = Some("light.toggle".into());
    coalesced_toggle.latest_wins = true;
    let mut both = route("w");
    both.service = Some("light.toggle".into());
    both.map = [("a".to_owned(), "light.toggle".to_owned())].into_iter().collect();
    let mut neither = route("v");
    neither.debounce = Some("soon".into());
    let errors = RouteTable::compile(
        &[bad_filter, bad_template, denied, coalesced_toggle, both, neither],
        &access(&["light.*"]),
    )
    .unwrap_err();
    let keys: Vec<(usize, &str, &str)> = errors.iter().map(|e| (e.route, e.name.as_str(), e.key.as_str())).collect();
    assert_eq!(
        keys,
        [
            (0, "a/#/b", "topic"),
            (1, "broken", "data.brightness"),
            (2, "y", "service"),
            (3, "z", "service"),
            (4, "w", "service"),
            (5, "v", "service"),
            (5, "v", "debounce"),
        ]
    );
}

#[test]
fn flow_keys_separate_targets() {
    let mut r = route("dimmers/{room}");
    r.service = Some("light.turn_on".into());
    r.entity_id = Some("light.{{ room }}".into());
    r.latest_wins = true;
    let t = table(vec![r]);
    let key = |topic: &str| match &t.evaluate(topic, b"1", None)[0] {
        RouteResult::Call { flow_key, flow, .. } => {
            assert!(flow.latest_wins);
            flow_key.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(key("dimmers/hall"), key("dimmers/desk"));
    assert_eq!(key("dimmers/hall"), key("dimmers/hall"));
}

/// `return_response = true` marks the route's calls; without it they ask nothing.
#[test]
fn return_response_marks_the_routes_calls() {
    let mut asking = route("weather/ask");
    asking.service = Some("weather.get_forecasts".into());
    asking.entity_id = Some("weather.home".into());
    asking.return_response = true;
    let mut plain = route("weather/plain");
    plain.service = Some("weather.get_forecasts".into());
    let t = table(vec![asking, plain]);
    for (topic, expected) in [("weather/ask", true), ("weather/plain", false)] {
        let asked: Vec<bool> = t
            .evaluate(topic, b"{}", None)
            .into_iter()
            .map(|r| match r {
                RouteResult::Call { call, .. } => call.return_response,
                other => panic!("{topic}: {other:?}"),
            })
            .collect();
        assert_eq!(asked, vec![expected], "{topic}");
    }
    let text = "[[route]]\ntopic = \"a\"\nservice = \"weather.get_forecasts\"\nreturn_response = true\n";
    let parsed: raw::RawRoutesFile =
        figment::Figment::from(<figment::providers::Toml as figment::providers::Format>::string(text))
            .extract()
            .unwrap();
    assert!(parsed.route[0].return_response, "the key is read from TOML");
}

/// `when` as HA users write it (`{{ … }}`, judged like HA's template
/// conditions: `true`/`on`/`yes`/`1`/a non-zero number) and as a bare expression.
#[test]
fn when_takes_home_assistants_template_form_and_a_bare_expression() {
    let rows: [(&str, &str, bool); 14] = [
        ("value_json.action == 'single'", r#"{"action":"single"}"#, true),
        ("value_json.action == 'single'", r#"{"action":"double"}"#, false),
        ("{{ value_json.action == 'single' }}", r#"{"action":"single"}"#, true),
        ("{{ value_json.action == 'single' }}", r#"{"action":"double"}"#, false),
        ("  {{value_json.action in ['single', 'double']}}  ", r#"{"action":"double"}"#, true),
        ("{{ value_json.n }}", r#"{"n":2}"#, true),
        ("{{ value_json.n }}", r#"{"n":0}"#, false),
        ("{{ value }}", "on", true),
        ("{{ value }}", "OFF", false),
        ("{{ value }}", "maybe", false),
        ("{% if value | int > 20 %}true{% endif %}", "21", true),
        ("{% if value | int > 20 %}true{% endif %}", "19", false),
        ("{{ value_json.a }} and {{ value_json.b }}", r#"{"a":1,"b":2}"#, false),
        ("{{ value_json.missing }}", r#"{}"#, false),
    ];
    for (when, payload, expected) in rows {
        let mut r = route("z/button");
        r.when = Some(when.into());
        r.service = Some("light.toggle".into());
        r.entity_id = Some("light.hall".into());
        let t = RouteTable::compile(&[r], &access(&["*"])).unwrap_or_else(|e| panic!("{when}: {e:?}"));
        let out = outcomes(&t, "z/button", payload);
        assert_eq!(out[0] != "skip:when", expected, "when = {when:?} with {payload}: {out:?}");
    }
}

/// A `when` that does not compile names the route, the key, where, and the
/// likely fix in HA's words.
#[test]
fn a_when_that_does_not_compile_says_where_and_how_to_fix_it() {
    let rows = [
        ("value_json.action == 'single' }}", "line 1, column 31", "{{ … }}"),
        ("{{ value_json.action == }}", "line 1", "{{ … }}"),
        ("{{ trigger.payload_json.action == 'single' }}", "trigger", "value_json"),
        ("{{ value_json.action == 'single' ", "line 1", "{{ … }}"),
    ];
    for (when, place, hint) in rows {
        let mut r = route("z/button");
        r.name = Some("button".into());
        r.when = Some(when.into());
        r.service = Some("light.toggle".into());
        r.entity_id = Some("light.hall".into());
        let errs = match RouteTable::compile(&[r], &access(&["*"])) {
            Err(errs) => format!("{errs:?}"),
            Ok(_) => panic!("{when:?} compiled"),
        };
        assert!(errs.contains(r#"name: "button", key: "when""#), "{when:?}: {errs}");
        assert!(errs.contains(place), "{when:?}: {errs}");
        assert!(errs.contains(hint), "{when:?}: {errs}");
    }
}

/// `format = "eventstream"`: the messages HA's `mqtt_eventstream` publishes
/// (and accepts), run as the calls they name.
#[test]
fn eventstream_messages_become_the_calls_they_name() {
    let mut r = route("homeassistant/eventstream");
    r.format = Some("eventstream".into());
    let t = table(vec![r]);
    let call = |data: &str| format!(r#"{{"event_type":"call_service","event_data":{data}}}"#);
    let rows: [(String, &str); 9] = [
        (
            call(r#"{"domain":"light","service":"turn_on","service_data":{"entity_id":"light.hall","brightness":40}}"#),
            r#"light.turn_on {"entity_id":"light.hall","brightness":40}"#,
        ),
        (call(r#"{"domain":"scene","service":"turn_on"}"#), "scene.turn_on {}"),
        (call(r#"{"domain":"scene","service":"turn_on","service_data":null}"#), "scene.turn_on {}"),
        (r#"{"event_type":"state_changed","event_data":{"entity_id":"light.hall"}}"#.into(), "skip:event_type"),
        (call(r#"{"domain":"light"}"#), "fail:invalid_payload"),
        (call(r#"{"domain":"Light","service":"turn_on"}"#), "fail:invalid_payload"),
        (call(r#"{"domain":"light","service":"turn_on","service_data":[1]}"#), "fail:invalid_payload"),
        (r#"{"event_data":{}}"#.into(), "fail:invalid_payload"),
        ("call_service".into(), "fail:invalid_json"),
    ];
    for (payload, expected) in rows {
        assert_eq!(outcomes(&t, "homeassistant/eventstream", &payload), vec![expected.to_owned()], "{payload}");
    }
}

#[test]
fn an_eventstream_route_takes_no_service_of_its_own() {
    let mut r = route("homeassistant/eventstream");
    r.format = Some("eventstream".into());
    r.service = Some("light.toggle".into());
    r.entity_id = Some("light.hall".into());
    let errs = RouteTable::compile(&[r], &access(&["*"])).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["service", "entity_id"], "{errs:?}");
}
