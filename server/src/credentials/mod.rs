//! Credential providers: what a task may be handed besides its SVIDs (an
//! exchanged OAuth token, a secret the server holds, a transaction token),
//! for the task's lifetime at most. [`provider`] is the declared provider
//! and its checks, [`registry`] the providers in the store, and [`seal`]
//! keeps a secret provider's value sealed at rest; [`txn_token`] mints
//! a task's transaction token, [`oauth`] talks to authorization servers,
//! [`broker`] hands a task a credential and records its [`lease`], and
//! [`ending`] ends leases with their task.

pub mod broker;
pub mod ending;
pub mod lease;
pub mod oauth;
pub mod provider;
pub mod registry;
pub mod seal;
pub mod txn_token;

pub use broker::{Broker, BrokerError, CredentialRequest, Handed};
pub use lease::{CredentialType, Lease, Leases};
pub use provider::{ClientAuth, CredentialProvider, Grant, ProviderKind};
pub use registry::{CredentialError, Credentials, ProviderSpec};
pub use seal::{SealError, Sealed, SealingKeys, Secret};
