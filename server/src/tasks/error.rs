//! Why a task operation failed (mapped to a gRPC status at the edge, in
//! `api/status.rs`).

use crate::store::StoreError;

/// Why a task operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskServiceError {
    /// The request is malformed (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// Policy, ceilings or delegation refused it.
    #[error("{0}")]
    Denied(String),
    /// The caller holds several identities that permit the task and named
    /// none (the message names them).
    #[error("{0}")]
    Ambiguous(String),
    /// No such task, or not the caller's.
    #[error("task {0} not found")]
    NotFound(String),
    /// The task is no longer active.
    #[error("task {0} is {1}")]
    NotActive(String, &'static str),
    /// Signing failed: `message` says why; the signer's error, if any, is
    /// kept as the source.
    #[error("signing failed: {message}")]
    Signing {
        /// Why, whole.
        message: String,
        /// The signer's own error.
        #[source]
        source: Option<lanyard_core::error::BoxError>,
    },
    /// Another change to the same task won repeatedly.
    #[error("task {0} is being changed concurrently; retry")]
    Contended(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A policy holds the task for a person's approval (the caller asks
    /// for one, and begins again once it is approved).
    #[error("BeginTask {} needs a person's approval", .0.task_type)]
    NeedsApproval(Box<super::BeginApproval>),
}

impl TaskServiceError {
    /// Signing failed because of `source`.
    pub fn signing(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Signing {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// The random source failed (nothing else to keep).
    pub fn no_randomness() -> Self {
        Self::Signing {
            message: "random source failed".into(),
            source: None,
        }
    }
}

impl From<lanyard_core::TaskError> for TaskServiceError {
    fn from(e: lanyard_core::TaskError) -> Self {
        Self::Invalid(e.to_string())
    }
}
