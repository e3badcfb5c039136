//! The agent's configuration: one pipeline from the TOML file, `LANYARD_*`
//! variables and flags to a validated [`Config`]; the Kubernetes attestor's
//! part in [`k8s`].

mod base;
pub mod k8s;
mod tables;

pub use base::*;
pub use tables::*;
