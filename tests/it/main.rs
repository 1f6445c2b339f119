//! Integration tests: one test binary (link time), one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod concurrency;
mod config;
mod config_safety;
mod configstore;
mod conformance;
mod durability;
mod enrollment_batch;
mod fleet_config;
mod fleet_core;
mod front_door;
mod install_script;
mod interop;
mod matrix;
mod mtls;
mod owntelemetry;
mod protocol;
mod rollouts;
mod routing;
mod support;
mod telemetry;
mod tls;
mod token_cache;
