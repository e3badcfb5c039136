//! The Lanyard server: CA, registration entries, node attestation, the
//! server API agents call over mTLS, and the local admin API.

pub mod agents;
pub mod api;
pub mod app;
pub mod approvals;
pub mod attestation;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod config;
pub mod console;
pub mod credentials;
pub mod enforce;
pub mod follow;
pub mod node_attest;
pub mod policy;
pub mod private_file;
pub mod registry;
pub mod store;
pub mod tasks;
pub mod tls;

pub use app::{Bound, build};
pub use config::Config;
