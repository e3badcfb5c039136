//! Lanyard's policy engine: Cedar policy sets, validated against the schema
//! shipped in `schema/lanyard.cedarschema`, compiled into slices per action
//! and resource so that a decision only scans the policies that can apply,
//! and decided with the IDs and `@reason` annotations of the policies that
//! decided.
//!
//! The rest of Lanyard sees only [`PolicyBook`], [`Request`] and
//! [`Decision`]: Cedar stays behind this crate (it is also the slowest crate
//! of the workspace to compile).

pub mod approval;
mod book;
pub mod context;
mod error;
mod reads;
mod request;

pub use approval::{Approval, Approvers};
pub use book::{Decision, PolicyBook};
pub use context::{CallFacts, call_strings};
pub use error::PolicyError;
pub use request::{Action, Principal, Request, TaskContext, Unknown};

/// The Cedar schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../schema/lanyard.cedarschema");
