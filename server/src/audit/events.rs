//! Who did something, as audit records name them.

/// The actor of a server-side event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A caller of the admin socket (its uid, where known).
    Admin(Option<u32>),
    /// An agent, by its SPIFFE ID.
    Agent(String),
    /// The server itself (rotation, retention, cascades).
    Server,
}

impl Actor {
    /// The name records carry: `uid:N`, a SPIFFE ID, or `server`.
    pub fn name(&self) -> String {
        match self {
            Actor::Admin(Some(uid)) => format!("uid:{uid}"),
            Actor::Admin(None) => "admin".to_owned(),
            Actor::Agent(id) => id.clone(),
            Actor::Server => "server".to_owned(),
        }
    }
}
