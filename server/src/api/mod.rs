//! The gRPC services, at the edge: they convert between the wire and the
//! domain modules, which never import them.

pub mod admin;
pub mod node;
