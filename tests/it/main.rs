//! Integration tests: the gateway against a real Mosquitto and a fake HA.
//! The real-HA tier lives in `tests/e2e`.

mod chaos;
mod commands;
mod config_cli;
mod delivery;
mod discovery;
mod examples;
mod faults;
mod hostile;
mod lifecycle;
mod mirror;
mod observability;
mod queue;
mod responses;
mod routes;
mod scale;
mod supervision;
mod support;
mod transport;
mod ui;
