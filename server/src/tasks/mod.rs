//! Tasks on the server: decisions (entry ceilings, then Cedar when a policy
//! set is loaded), the task records (one owner, compare-and-swap state
//! changes, cascades to delegated sub-tasks), delegation tokens, and
//! minting the task SVIDs that carry the grant.

mod begin_approval;
mod candidates;
mod credential;
mod decide;
mod delegation;
mod entries;
mod error;
mod index;
mod mint;
mod recheck;
mod release;
mod service;
mod wit;

pub use begin_approval::BeginApproval;
pub use credential::{CredentialAsk, CredentialGrant};
pub use decide::{BeginVerdict, Caller, ToolVerdict};
pub use error::TaskServiceError;
pub use index::TaskFootprint;
pub(crate) use mint::check_audiences;
pub use mint::{MintedTask, TaskSvid};
pub use recheck::{REPORT_GRACE, Recheck};
pub use release::{Release, ReleaseAsk, TaskCredential};
pub use service::{BeginInput, TaskParts, Tasks};
