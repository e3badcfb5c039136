//! Domain errors as gRPC statuses, in one place for both services.

use tonic::Status;

use crate::tasks::TaskServiceError;

impl From<TaskServiceError> for Status {
    fn from(e: TaskServiceError) -> Self {
        match &e {
            TaskServiceError::Invalid(_) => Status::invalid_argument(e.to_string()),
            TaskServiceError::Denied(_) => {
                tracing::info!(err = %e, "task refused");
                Status::permission_denied(e.to_string())
            }
            TaskServiceError::NotFound(_) => Status::not_found(e.to_string()),
            TaskServiceError::NotActive(..)
            | TaskServiceError::Ambiguous(_)
            | TaskServiceError::NeedsApproval(_) => Status::failed_precondition(e.to_string()),
            TaskServiceError::Contended(_) => Status::aborted(e.to_string()),
            TaskServiceError::Signing { .. } | TaskServiceError::Store(_) => {
                tracing::error!(err = %e, "task service internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<crate::approvals::AskError> for Status {
    fn from(e: crate::approvals::AskError) -> Self {
        match e {
            crate::approvals::AskError::Invalid(m) => Status::invalid_argument(m),
            crate::approvals::AskError::Store(e) => {
                tracing::error!(err = %e, "approval request failed");
                Status::unavailable("the approval store is unavailable")
            }
        }
    }
}

impl From<crate::credentials::CredentialError> for Status {
    fn from(e: crate::credentials::CredentialError) -> Self {
        use crate::credentials::{CredentialError, SealError};
        match &e {
            CredentialError::Invalid(_) => Status::invalid_argument(e.to_string()),
            CredentialError::NotFound(_) => Status::not_found(e.to_string()),
            CredentialError::Exists(_) => Status::already_exists(e.to_string()),
            CredentialError::WrongKind { .. } => Status::failed_precondition(e.to_string()),
            CredentialError::Contended(_) => Status::aborted(e.to_string()),
            // Another server's key file, or an altered row: say which, the
            // operator must act on it.
            CredentialError::Seal(SealError::UnknownKey(_) | SealError::Tampered) => {
                tracing::error!(err = %e, "a sealed secret does not open");
                Status::failed_precondition(e.to_string())
            }
            CredentialError::Seal(_) | CredentialError::Store(_) => {
                tracing::error!(err = %lanyard_core::error::report(&e), "credential provider internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<crate::credentials::BrokerError> for Status {
    fn from(e: crate::credentials::BrokerError) -> Self {
        use crate::credentials::BrokerError;
        use crate::credentials::oauth::OauthError;
        match e {
            BrokerError::Invalid(m) => Status::invalid_argument(m),
            BrokerError::Task(t) => t.into(),
            BrokerError::Credential(c) => c.into(),
            BrokerError::Refused(m) => Status::permission_denied(m),
            BrokerError::Oauth(o @ OauthError::Unreachable { .. }) => {
                Status::unavailable(o.to_string())
            }
            // The authorization server's refusal is the answer (its error
            // code and description, never the body).
            BrokerError::Oauth(o @ OauthError::Refused { .. }) => {
                Status::permission_denied(o.to_string())
            }
            BrokerError::Oauth(o @ OauthError::BadAnswer(_)) => Status::internal(o.to_string()),
            BrokerError::NoTrust(m) => Status::failed_precondition(m),
        }
    }
}
