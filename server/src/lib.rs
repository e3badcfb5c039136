//! The Lanyard server: CA, registration entries, node attestation, the
//! server API agents call over mTLS, and the local admin API.

pub mod attestation;
pub mod ca;
pub mod registry;
pub mod store;
