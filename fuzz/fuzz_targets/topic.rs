//! Any topic: parsing never panics, and an accepted `call` topic builds
//! exactly `/api/services/<domain>/<service>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_ha_gateway::command::ServiceCall;
use mqtt_ha_gateway::ha::service_path;
use mqtt_ha_gateway::topic::{CommandTopic, TopicPrefix};

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else { return };
    let prefix = TopicPrefix::new("ha-gateway").expect("a valid prefix");
    if let Ok(CommandTopic::Call { domain, service }) = prefix.parse_command(topic) {
        let call = ServiceCall::new(domain.clone(), service.clone(), Default::default());
        let url = url::Url::parse("http://ha.local:8123/").unwrap().join(&service_path(&call)).unwrap();
        assert_eq!(url.path(), format!("/api/services/{domain}/{service}"));
        assert!(url.query().is_none() && url.fragment().is_none());
    }
});
