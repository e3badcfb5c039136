//! Lanyard end to end, as one test binary: real servers and agents over
//! real sockets, real workload processes, real SPIFFE clients (the `spiffe`
//! crate, Python's grpcio), real TLS stacks and a real PostgreSQL. One
//! module per subject; `cargo test -p lanyard-integration-tests -- enforce::`
//! runs one of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod enforce_support;

mod agent_cli;
mod agent_metrics;
mod audit;
mod audit_calls;
mod audit_delivery;
mod console;
mod crash;
mod credentials;
mod dns;
mod enforce;
mod faults;
mod gate;
mod hostile;
mod identities;
mod interop;
mod jwt_e2e;
mod k8s;
mod multi_server;
mod oidc;
mod postgres;
mod rotation;
mod tasks;
mod wit_e2e;
mod x509_e2e;
