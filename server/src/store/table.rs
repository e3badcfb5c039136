//! What a backend knows about the records it keeps: which table, its key,
//! its JSON, and the columns kept beside it. The names here are the names
//! on disk (sled trees, PostgreSQL tables): they do not change.

use serde_json::Value;

use super::{ChangeKind, DocKind};

/// A kind of record: one sled tree, one PostgreSQL table (documents share
/// one, by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Registration entries (key: entry ID; identity: [`super::entry_identity`]).
    Entries,
    /// Agents (key: agent SPIFFE ID).
    Agents,
    /// Join tokens (key: the token's hash).
    JoinTokens,
    /// CA keys of every server (key: key ID; owner: the server).
    CaKeys,
    /// JWT signing keys of every server (key: key ID; owner: the server).
    JwtKeys,
    /// Tasks (key: task ID).
    Tasks,
    /// Policy versions (key: the version number, listed in numeric order).
    Policies,
    /// Delegation tokens (key: the token's hash).
    Delegations,
    /// Small documents of one kind (revocations, quarantines, CRLs, issued
    /// batches).
    Docs(DocKind),
}

impl Table {
    /// Every table, for backups and migrations.
    pub const ALL: [Table; 15] = [
        Table::Entries,
        Table::Agents,
        Table::JoinTokens,
        Table::CaKeys,
        Table::JwtKeys,
        Table::Tasks,
        Table::Policies,
        Table::Delegations,
        Table::Docs(DocKind::Revocation),
        Table::Docs(DocKind::Quarantine),
        Table::Docs(DocKind::Crl),
        Table::Docs(DocKind::Issued),
        Table::Docs(DocKind::Credential),
        Table::Docs(DocKind::Lease),
        Table::Docs(DocKind::Approval),
    ];

    /// Its name on disk (sled tree; PostgreSQL table without the
    /// `lanyard_` prefix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Entries => "entries",
            Self::Agents => "agents",
            Self::JoinTokens => "join_tokens",
            Self::CaKeys => "ca_keys",
            Self::JwtKeys => "jwt_keys",
            Self::Tasks => "tasks",
            Self::Policies => "policies",
            Self::Delegations => "delegations",
            Self::Docs(_) => "docs",
        }
    }

    /// What one record is called in an error message.
    pub fn what(self) -> &'static str {
        match self {
            Self::Entries => "entry",
            Self::Agents => "agent",
            Self::JoinTokens => "join token",
            Self::CaKeys => "CA key",
            Self::JwtKeys => "JWT key",
            Self::Tasks => "task",
            Self::Policies => "policy version",
            Self::Delegations => "delegation token",
            Self::Docs(DocKind::Revocation) => "revocation",
            Self::Docs(DocKind::Quarantine) => "quarantine",
            Self::Docs(DocKind::Crl) => "CRL",
            Self::Docs(DocKind::Issued) => "issued batch",
            Self::Docs(DocKind::Credential) => "credential provider",
            Self::Docs(DocKind::Lease) => "credential lease",
            Self::Docs(DocKind::Approval) => "approval",
        }
    }

    /// The change its writes announce; `None` for records nobody follows
    /// (single-use tokens are read where they are taken).
    pub fn change(self) -> Option<ChangeKind> {
        match self {
            Self::Entries => Some(ChangeKind::Entry),
            Self::Agents => Some(ChangeKind::Agent),
            Self::CaKeys | Self::JwtKeys => Some(ChangeKind::Authority),
            Self::Tasks => Some(ChangeKind::Task),
            Self::Policies => Some(ChangeKind::Policy),
            Self::Docs(kind) => kind.change(),
            Self::JoinTokens | Self::Delegations => None,
        }
    }

    /// The bytes a key sorts by: its own (UTF-8, byte order), except a
    /// policy version, whose big-endian number keeps versions in numeric
    /// order (also its key in sled). `None` when a policy key is not a
    /// number.
    pub fn order(self, key: &str) -> Option<Vec<u8>> {
        match self {
            Self::Policies => key.parse::<u64>().ok().map(|v| v.to_be_bytes().to_vec()),
            _ => Some(key.as_bytes().to_vec()),
        }
    }

    /// A key back from its [`Table::order`] bytes.
    pub fn key_of(self, order: &[u8]) -> String {
        match self {
            Self::Policies => order.try_into().map(u64::from_be_bytes).map_or_else(
                |_| String::from_utf8_lossy(order).into_owned(),
                |v| v.to_string(),
            ),
            _ => String::from_utf8_lossy(order).into_owned(),
        }
    }
}

/// A record to write: its key, its JSON and what the table keeps beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The record's key in its table.
    pub key: String,
    /// The record.
    pub data: Value,
    /// A value no two records of the table may share (an entry's SPIFFE ID,
    /// parent and selectors).
    pub identity: Option<String>,
    /// The server a key belongs to (CA and JWT keys).
    pub owner: Option<String>,
}

impl Row {
    /// A record with nothing beside it.
    pub fn new(key: impl Into<String>, data: Value) -> Self {
        Self {
            key: key.into(),
            data,
            identity: None,
            owner: None,
        }
    }
}

/// How [`super::Store::write`] treats a record that is (or is not) there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Only a new key (`AlreadyExists` otherwise).
    New,
    /// Only an existing key (`NotFound` otherwise).
    Replace,
    /// Either.
    Upsert,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_versions_sort_as_numbers_and_come_back() {
        let t = Table::Policies;
        assert!(t.order("9").unwrap() < t.order("10").unwrap());
        assert_eq!(t.key_of(&t.order("42").unwrap()), "42");
        assert_eq!(t.order("x"), None);
        assert_eq!(Table::Tasks.key_of(&Table::Tasks.order("a").unwrap()), "a");
    }
}
