//! The real `lanyard-server` binary, as one test binary: its admin
//! commands, its audit commands, its credential providers and its metrics
//! endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit_cli;
mod cli;
mod credentials;
mod metrics;
mod run_cli;
