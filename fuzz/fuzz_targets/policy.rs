//! A pattern line and a call (`domain.service` line, JSON data): the policy
//! never panics, and what it allows matches a pattern — through one that
//! names the domain when the domain is sensitive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_ha_gateway::access::{AccessPolicy, SENSITIVE_DOMAINS};
use mqtt_ha_gateway::command::ServiceCall;
use mqtt_ha_gateway::topic::Slug;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.splitn(3, '\n');
    let (Some(pattern), Some(name), data) = (lines.next(), lines.next(), lines.next()) else { return };
    let Ok(policy) = AccessPolicy::new(&[pattern.to_owned()]) else { return };
    let Some((d, s)) = name.split_once('.') else { return };
    let (Some(domain), Some(service)) = (Slug::parse(d), Slug::parse(s)) else { return };
    let data = data.and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
    let data = data.and_then(|v| v.as_object().cloned()).unwrap_or_default();
    let call = ServiceCall::new(domain, service, data);
    if policy.authorize(&call, "ha-gateway/call/x/y").is_ok() && SENSITIVE_DOMAINS.contains(&d) {
        assert_eq!(pattern.split_once('.').map(|(pd, _)| pd), Some(d), "{pattern} reached {name}");
    }
});
