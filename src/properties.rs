//! Property tests of the input boundary (proptest): topic parsing, payload
//! translation and the access policy never panic, and whatever they accept
//! builds exactly `/api/services/<domain>/<service>` and passes the policy.
//! The fuzz targets in `fuzz/` check the same properties with coverage
//! guidance.

use proptest::prelude::*;
use serde_json::Value;
use url::Url;

use crate::access::{AccessPolicy, SENSITIVE_DOMAINS};
use crate::command::Action;
use crate::ha::service_path;
use crate::topic::{CommandTopic, TopicPrefix};
use crate::translate::{translate, Limits};

fn slug() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(_[a-z0-9]{1,6}){0,2}"
}

/// Topics that look like ours, with hostile levels mixed in.
fn topic() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        slug(),
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just(String::new()),
        Just("Light".to_owned()),
        Just("l\u{456}ght".to_owned()),
        Just("a__b".to_owned()),
        "\\PC{0,12}",
    ];
    (prop_oneof![Just("call"), Just("set"), Just("get"), Just("x")], prop::collection::vec(level, 0..4))
        .prop_map(|(kind, levels)| format!("ha-gateway/{kind}/{}", levels.join("/")))
}

fn check_path(topic: &CommandTopic) {
    if let CommandTopic::Call { domain, service } = topic {
        let call = crate::command::ServiceCall::new(domain.clone(), service.clone(), Default::default());
        let url = Url::parse("http://ha.local:8123/").unwrap().join(&service_path(&call)).unwrap();
        assert_eq!(url.path(), format!("/api/services/{domain}/{service}"));
        assert!(url.query().is_none() && url.fragment().is_none());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics_and_accepted_topics_build_exact_paths(t in topic()) {
        let prefix = TopicPrefix::new("ha-gateway").unwrap();
        if let Ok(parsed) = prefix.parse_command(&t) {
            check_path(&parsed);
        }
    }

    #[test]
    fn translation_never_panics_and_keeps_the_contract(
        t in topic(),
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            "\\{\"entity_id\":\"[a-z._, ]{0,20}\",\"correlation\":[0-9]{0,3},\"ts\":[0-9]{0,10}\\}".prop_map(String::into_bytes),
            "(ON|off|Toggle|DIM|\\{\"state\":\"ON\"\\}|\\[\\])".prop_map(String::into_bytes),
        ],
    ) {
        let prefix = TopicPrefix::new("ha-gateway").unwrap();
        let Ok(parsed) = prefix.parse_command(&t) else { return Ok(()) };
        if let Ok(translated) = translate(&parsed, &payload, &Limits::default()) {
            if let Action::Call(call) = &translated.action {
                prop_assert!(!call.data.contains_key("correlation"));
                prop_assert!(!call.data.contains_key("ts"));
                // The body sent to HA is re-serialised from the checked value.
                let body = serde_json::to_vec(&call.data).unwrap();
                prop_assert!(serde_json::from_slice::<Value>(&body).is_ok());
                if let CommandTopic::Set(entity) = &parsed {
                    prop_assert_eq!(call.data.get("entity_id"), Some(&Value::String(entity.to_string())));
                }
            }
        }
    }

    #[test]
    fn the_policy_never_lets_a_wildcard_reach_a_sensitive_domain(
        domain in prop_oneof![slug(), prop::sample::select(SENSITIVE_DOMAINS).prop_map(str::to_owned)],
        service in slug(),
        pattern in prop_oneof![Just("*".to_owned()), Just("*.*".to_owned()), slug().prop_map(|s| format!("*.{s}")), slug().prop_map(|d| format!("{d}.*"))],
        entity in slug(),
    ) {
        let policy = AccessPolicy::new(std::slice::from_ref(&pattern)).unwrap();
        let call = crate::command::ServiceCall::new(
            crate::topic::Slug::parse(&domain).unwrap(),
            crate::topic::Slug::parse(&service).unwrap(),
            serde_json::json!({"entity_id": format!("{domain}.{entity}")}).as_object().unwrap().clone(),
        );
        if policy.authorize(&call, "ha-gateway/call/x/y").is_ok() {
            let literal = pattern.split_once('.').map(|(d, _)| d) == Some(domain.as_str());
            prop_assert!(!SENSITIVE_DOMAINS.contains(&domain.as_str()) || literal, "{pattern} reached {domain}.{service}");
        }
    }
}
