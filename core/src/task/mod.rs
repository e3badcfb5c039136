//! Task-scoped identity: the names a task request carries, the ordered data
//! sensitivity levels, the grant the server decides, the entry ceilings
//! that bound it, and the task claims carried by task SVIDs (an X.509
//! extension and JWT claims) with their canonical digest.

mod canonical;
mod ceilings;
mod claims;
mod grant;
mod names;
mod record;
mod sensitivity;

pub use canonical::{CanonicalError, canonical_json, canonical_json_any};
pub use ceilings::{CeilingDecision, check_ceilings, credential_allowed};
pub use claims::{TASK_CLAIMS_OID, TaskClaims, task_claims_oid_der};
pub use grant::{Actor, TaskGrant, TaskRequest};
pub use names::{
    MAX_DESTINATIONS, MAX_INTENT_LEN, MAX_TOOLS, TaskError, TaskId, check_credential_name,
    check_destination, check_on_behalf_of, check_task_type, check_tool,
};
pub use record::{TaskRecord, TaskState};
pub use sensitivity::SensitivityLevels;
