//! The agent's side of its connection to the server: its own identity
//! (obtained by node attestation, renewed, kept in the data dir), the mTLS
//! channel to the server, and finding the servers by DNS.

pub mod bootstrap;
pub mod client;
pub mod creds;
pub mod dns;
