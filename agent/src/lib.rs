//! The Lanyard node agent: attests the processes that call its unix socket
//! and serves them SVIDs through the SPIFFE Workload API, and task-scoped
//! SVIDs through `lanyard.task.v1.TaskIdentity`.

pub mod api;
pub mod app;
pub mod attestor;
pub mod audit_queue;
pub mod cache;
pub mod cli;
pub mod config;
pub mod held;
pub mod identity;
pub mod jwt_cache;
pub mod listener;
pub mod metrics;
pub mod pdp;
pub mod storage;
pub mod upstream;
pub mod wit_cache;
pub mod workload_scope;

pub use app::{Bound, build};
pub use config::Config;
