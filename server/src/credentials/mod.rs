//! Credential providers: what a task may be handed besides its SVIDs (an
//! exchanged OAuth token, a secret the server holds, a transaction token),
//! for the task's lifetime at most. [`provider`] is the declared provider
//! and its checks, [`registry`] the providers in the store, and [`seal`]
//! keeps a secret provider's value sealed at rest; [`txn_token`] mints
//! a task's transaction token.

pub mod provider;
pub mod registry;
pub mod seal;
pub mod txn_token;

pub use provider::{ClientAuth, CredentialProvider, ProviderKind};
pub use registry::{CredentialError, Credentials, ProviderSpec};
pub use seal::{SealError, Sealed, SealingKeys, Secret};
