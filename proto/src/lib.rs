//! Lanyard's protobuf definitions and their one conversion boundary to
//! domain types.
//!
//! - [`workload`]: the SPIFFE Workload API, byte-compatible with the spec.
//! - [`types`], [`server`], [`admin`], [`task`], [`broker`]: Lanyard's own APIs.
//! - [`convert`]: `TryFrom` between the messages and `lanyard-core` types.

/// The SPIFFE Workload API (the spec's proto has no package).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
mod generated {
    // The task service reuses the Workload API's SVID messages, which live
    // in the package-less root.
    pub use super::workload::{Jwtsvid, X509svid};
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
                }
            }
        }
    }
    pub mod lanyard {
        pub mod types {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/lanyard.types.v1.rs"));
            }
        }
        pub mod server {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/lanyard.server.v1.rs"));
            }
        }
        pub mod admin {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/lanyard.admin.v1.rs"));
            }
        }
        pub mod task {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/lanyard.task.v1.rs"));
            }
        }
        pub mod broker {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/lanyard.broker.v1.rs"));
            }
        }
    }
}

/// `lanyard.types.v1`: messages shared by the server and admin APIs.
pub use generated::lanyard::types::v1 as types;

/// `lanyard.server.v1`: the server API agents call over mTLS.
pub use generated::lanyard::server::v1 as server;

/// `lanyard.admin.v1`: the admin API on the server's local socket.
pub use generated::lanyard::admin::v1 as admin;

/// `envoy.service.auth.v3`: Envoy's external authorization service, as
/// lanyard-gate serves it (a wire-compatible subset).
pub use generated::envoy::service::auth::v3 as ext_authz;

/// `lanyard.task.v1`: task-scoped identities on the agent's socket.
pub use generated::lanyard::task::v1 as task;

/// `lanyard.broker.v1`: task-bound credentials on the agent's socket.
pub use generated::lanyard::broker::v1 as broker;

pub mod convert;

pub use convert::ProtoError;
