//! Lanyard's pure domain: SPIFFE IDs, selectors and matching, registration
//! entries, X.509-SVID minting and validation, rotation math.
//!
//! Nothing here performs I/O or reads the clock directly; time comes in
//! through [`clock::Clock`].

pub mod agent_id;
pub mod audit;
pub mod backoff;
pub mod clock;
pub mod config;
pub(crate) mod der;
pub mod duration;
pub mod entry;
pub mod error;
pub mod jwt;
pub mod k8s;
pub mod peer;
pub mod revocation;
pub mod rotation;
pub mod selector;
pub mod selector_kinds;
pub mod spiffe_id;
pub mod task;
pub mod tls;
pub mod x509;

pub use entry::{EntryError, EntryId, RegistrationEntry, TaskLimits};
pub use selector::{Selector, SelectorError, SelectorIndex};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use task::{TaskClaims, TaskError, TaskGrant, TaskId, TaskRequest};
