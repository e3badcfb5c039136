//! Serving gRPC on unix sockets the way a node-local security service must:
//! sockets only in directories no other user controls, HTTP/2 interop with
//! every gRPC client's idea of `:authority`, and the client side's channel.
//!
//! Shared by the agent's Workload API socket, the server's admin socket and
//! their command-line clients. This is socket policy, not wire format, so it
//! lives apart from `lanyard-proto`.

pub mod authority;
mod frames;
pub mod hpack;
pub mod limits;
pub mod shim;
pub mod socket;

pub use limits::{ConnLimiter, ConnPermit, LimitError, Limited, accept_backoff};
pub use shim::{AuthorityShim, HeaderBudget, ShimLimits};
pub use socket::{
    SocketDir, SocketError, bind_unix_listener, own_uid, secure_dir, socket_path, unix_channel,
};
