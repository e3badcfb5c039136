//! The audit chain: one versioned record type for every security-relevant
//! event, hash-chained (each record holds the previous record's hash and
//! its own hash is SHA-256 over the previous hash and the record's
//! RFC 8785 JSON), checkpoints signed by a dedicated audit key, and a
//! verifier that checks an export offline with the public key.
//!
//! Pure: nothing here writes a file or reads the clock. The server's
//! segment files and the agent's queue are built on these types.

mod checkpoint;
mod key;
mod record;
mod verify;

pub use checkpoint::Checkpoint;
pub use key::{
    AuditKey, AuditKeyError, AuditPublicKey, CHAIN_LINE, parse_bound_public_keys, parse_public_keys,
};
pub use record::{
    AuditError, Correlation, Event, GENESIS, Kind, Origin, Sealed, Subject, TaskRef, hash_line,
    seal,
};
pub use verify::{ChainSummary, Line, Verifier, VerifyError, classify};

/// The record format version written today.
pub const RECORD_VERSION: u64 = 1;
