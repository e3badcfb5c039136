//! The Lanyard server: CA, registration entries, node attestation, the
//! server API agents call over mTLS, and the local admin API.

pub mod store;
