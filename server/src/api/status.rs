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
            TaskServiceError::NotActive(..) | TaskServiceError::Ambiguous(_) => {
                Status::failed_precondition(e.to_string())
            }
            TaskServiceError::Contended(_) => Status::aborted(e.to_string()),
            TaskServiceError::Signing { .. } | TaskServiceError::Store(_) => {
                tracing::error!(err = %e, "task service internal error");
                Status::internal("internal error")
            }
        }
    }
}
