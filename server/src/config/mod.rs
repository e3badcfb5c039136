//! The server's configuration: one pipeline from the TOML file,
//! `LANYARD_*` variables and flags to a validated [`Config`]; the
//! Kubernetes service-account token clusters in [`psat`]; the JWT issuer
//! and OpenID Connect discovery in [`oidc`].

pub mod approvers;
mod base;
pub mod console;
pub mod oidc;
pub mod psat;

pub use base::*;
