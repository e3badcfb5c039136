//! The server's configuration: one pipeline from the TOML file,
//! `LANYARD_*` variables and flags to a validated [`Config`]; the
//! Kubernetes service-account token clusters in [`psat`].

mod base;
pub mod psat;

pub use base::*;
