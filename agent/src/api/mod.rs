//! The services on the agent's unix socket.
//!
//! - `status`: one error type and its mapping to gRPC status, with the
//!   texts SPIFFE clients match on.
//! - `caller`: who is calling: the security header, attestation of the
//!   process behind the connection (reused briefly per connection), and the
//!   re-check of that process before every answer and stream send.
//! - `streams`: the driver that follows the agent's snapshot for a stream.
//! - `expiry`: one timer for all streams, ticking when an SVID expires.
//! - `workload`: the `SpiffeWorkloadAPI` handlers.
//! - `wit`: the WIT-SVID profile's streams (served when enabled).
//! - `task`: the `lanyard.task.v1.TaskIdentity` handlers.
//! - `broker`: the `lanyard.broker.v1.CredentialBroker` handler.

mod broker;
mod caller;
mod expiry;
mod status;
mod streams;
mod task;
mod wit;
mod workload;

pub use broker::BrokerApi;
pub use caller::{ATTESTATION_REUSE, Callers};
pub use expiry::ExpiryTicker;
pub use status::{SECURITY_HEADER, WorkloadError};
pub use task::{MAX_TASKS_PER_PROCESS, TaskApi};
pub use workload::WorkloadApi;
