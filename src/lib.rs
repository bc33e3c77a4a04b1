//! mqtt-ha-gateway: MQTT commands become rate-limited, authenticated Home
//! Assistant service calls, and their results go back to MQTT.
//!
//! # Layout
//! The data path, in order (see ARCHITECTURE.md):
//! - [`config`]: load and validate settings (the only reader of env vars).
//! - [`ingress`]: the MQTT connection: registers, parks or sheds messages.
//! - [`admission`]: one message → its commands and rejections (pure).
//! - [`topic`], [`translate`], [`access`]: pure parsing, payload rules, policy.
//! - [`routes`]: `[[route]]` filters and templates: any device's messages → calls.
//! - [`queue`]: per-entity order, concurrency, rate limit, expiry, retries.
//! - [`ha`]: the Home Assistant REST client and its token gate.
//! - [`publisher`]: results back to MQTT; frees slots.
//! - [`mirror`]: HA's states, live, as retained MQTT messages (websocket).
//! - [`discovery`]: the gateway as a device in HA (MQTT discovery).
//! - [`ack`]: PUBACKs in arrival order once outcomes are final.
//! - [`metrics`], [`http`]: Prometheus metrics and health endpoints.
//! - [`reload`]: SIGHUP / file change → new access rules and routes.
//! - [`ui`]: the web console on the metrics listener (off unless `[ui] enabled`).
//! - [`supervise`]: named stage tasks; one ending before shutdown is fatal.
//! - [`secret`], [`bounds`], [`backoff`], [`state_json`]: leaves every stage may use.
//! - [`app`]: wiring and shutdown; the only module that knows all others.
//! - [`backoff`], [`bounds`]: pure helpers (jittered backoff; limits every stage agrees on).
#![forbid(unsafe_code)]

pub mod access;
pub(crate) mod ack;
pub(crate) mod admission;
pub mod app;
pub(crate) mod backoff;
pub(crate) mod bounds;
pub mod command;
pub mod config;
pub(crate) mod discovery;
pub mod ha;
pub(crate) mod http;
pub(crate) mod ingress;
pub mod metrics;
pub(crate) mod mirror;
#[cfg(test)]
mod properties;
pub(crate) mod publisher;
pub(crate) mod queue;
pub mod reload;
pub mod routes;
pub(crate) mod secret;
pub(crate) mod slots;
pub mod state_json;
pub mod supervise;
pub mod topic;
pub mod translate;
pub mod ui;

/// An error and its causes on one line (`outer: inner: root`): the top
/// message alone often hides what really failed ("connection refused").
pub(crate) fn describe_error(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}
