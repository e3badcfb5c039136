//! The records Lanyard keeps, once, above every backend: which table each
//! lives in, its key, what beside it, which changes are announced, and the
//! decoding (a record that does not decode is `Corrupt`, named by table and
//! key, and left untouched).

use lanyard_core::task::TaskRecord;
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    AgentRecord, CaKeyRecord, DelegationRecord, DocKind, JoinTokenRecord, JwtKeyRecord,
    PolicyRecord, Row, Store, StoreError, Swap, Table, Write,
};

fn json<T: Serialize>(v: &T) -> Result<Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::caused(format!("encode: {e}"), e))
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, v: Value) -> Result<T, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        key: format!("{}/{key}", table.name()),
        reason: e.to_string(),
    })
}

impl dyn Store {
    async fn get_as<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get(table, key)
            .await?
            .map(|v| decode(table, key, v))
            .transpose()
    }

    async fn list_as<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, StoreError> {
        self.list(table)
            .await?
            .into_iter()
            .map(|(k, v)| decode(table, &k, v))
            .collect()
    }

    async fn take_as<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
        announce: bool,
    ) -> Result<Option<T>, StoreError> {
        self.take(table, key, announce)
            .await?
            .map(|v| decode(table, key, v))
            .transpose()
    }

    /// Compare-and-swap on decoded records: the stored JSON may come from
    /// an older encoder (a field added since decodes to its default), so
    /// it is compared as the record it decodes to, not as text.
    async fn swap_as<T: Serialize + DeserializeOwned + PartialEq + Sync>(
        &self,
        table: Table,
        key: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<Swap<T>, StoreError> {
        let matches = |current: Option<&Value>| match (current, expected) {
            (None, None) => true,
            (Some(v), Some(e)) => T::deserialize(v).is_ok_and(|c| &c == e),
            _ => false,
        };
        let row = new.map(|n| json(n).map(|d| Row::new(key, d))).transpose()?;
        match self.swap(table, key, &matches, row.as_ref()).await? {
            Ok(()) => Ok(Ok(())),
            Err(current) => Ok(Err(current.map(|v| decode(table, key, v)).transpose()?)),
        }
    }

    /// Inserts a new entry; `AlreadyExists` when the ID is taken,
    /// `DuplicateEntry` when an entry with the same identity exists.
    pub async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.write(Table::Entries, &entry_row(entry)?, Write::New)
            .await
    }

    /// Replaces an existing entry; `NotFound` when absent, `DuplicateEntry`
    /// when the change would make it the same as another entry.
    pub async fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.write(Table::Entries, &entry_row(entry)?, Write::Replace)
            .await
    }

    /// Reads one entry.
    pub async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        self.get_as(Table::Entries, id.as_str()).await
    }

    /// Removes an entry, returning it.
    pub async fn delete_entry(
        &self,
        id: &EntryId,
    ) -> Result<Option<RegistrationEntry>, StoreError> {
        self.take_as(Table::Entries, id.as_str(), true).await
    }

    /// Every entry, ordered by ID.
    pub async fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError> {
        self.list_as(Table::Entries).await
    }

    /// Replaces the agent record `id` with `new` (`None` removes it) only if
    /// it currently equals `expected` (`None`: absent). Every change to an
    /// agent goes through here, so a renewal can never write back a record
    /// that a concurrent ban or eviction changed, on this server or another.
    /// On a mismatch nothing is written and the current record is returned.
    pub async fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<Swap<AgentRecord>, StoreError> {
        self.swap_as(Table::Agents, id.as_str(), expected, new)
            .await
    }

    /// Reads one agent.
    pub async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        self.get_as(Table::Agents, id.as_str()).await
    }

    /// Every agent, ordered by ID.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.list_as(Table::Agents).await
    }

    /// Stores a new join token (keyed by the token's hash).
    pub async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let row = Row::new(&token.token_hash, json(token)?);
        self.write(Table::JoinTokens, &row, Write::New).await
    }

    /// Atomically removes and returns the token with this hash: a token can
    /// be taken once, across every server.
    pub async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.take_as(Table::JoinTokens, token_hash, false).await
    }

    /// Inserts or replaces a CA key.
    pub async fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError> {
        let row = Row {
            owner: Some(key.owner.clone()),
            ..Row::new(&key.id, json(key)?)
        };
        self.write(Table::CaKeys, &row, Write::Upsert).await
    }

    /// Every CA key (of every server), ordered by ID.
    pub async fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        self.list_as(Table::CaKeys).await
    }

    /// Removes a CA key.
    pub async fn delete_ca_key(&self, id: &str) -> Result<(), StoreError> {
        self.take(Table::CaKeys, id, true).await.map(|_| ())
    }

    /// Inserts or replaces a JWT signing key.
    pub async fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        let row = Row {
            owner: Some(key.owner.clone()),
            ..Row::new(&key.kid, json(key)?)
        };
        self.write(Table::JwtKeys, &row, Write::Upsert).await
    }

    /// Every JWT signing key (of every server), ordered by key ID.
    pub async fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        self.list_as(Table::JwtKeys).await
    }

    /// Removes a JWT signing key.
    pub async fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError> {
        self.take(Table::JwtKeys, kid, true).await.map(|_| ())
    }

    /// Replaces task `id` with `new` only if it currently equals `expected`
    /// (`None`: absent); as for agents, concurrent state changes (end,
    /// revoke, a parent's cascade) cannot overwrite each other.
    pub async fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<Swap<TaskRecord>, StoreError> {
        self.swap_as(Table::Tasks, id.as_str(), expected, Some(new))
            .await
    }

    /// Reads one task.
    pub async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.get_as(Table::Tasks, id.as_str()).await
    }

    /// Every task, ordered by ID.
    pub async fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.list_as(Table::Tasks).await
    }

    /// Removes a task, returning it. Not announced: only ended tasks are
    /// removed (pruned), and followers already know they ended.
    pub async fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.take_as(Table::Tasks, id.as_str(), false).await
    }

    /// Stores a new policy version; `AlreadyExists` when the version is taken.
    pub async fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        let row = Row::new(policy.version.to_string(), json(policy)?);
        self.write(Table::Policies, &row, Write::New).await
    }

    /// Every policy version, oldest first.
    pub async fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.list_as(Table::Policies).await
    }

    /// Stores a new delegation token (keyed by its hash).
    pub async fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        let row = Row::new(&d.token_hash, json(d)?);
        self.write(Table::Delegations, &row, Write::New).await
    }

    /// Atomically removes and returns the delegation with this hash.
    pub async fn take_delegation(
        &self,
        token_hash: &str,
    ) -> Result<Option<DelegationRecord>, StoreError> {
        self.take_as(Table::Delegations, token_hash, false).await
    }

    /// Every stored delegation token (hashes only), ordered by hash.
    pub async fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        self.list_as(Table::Delegations).await
    }

    /// Inserts or replaces a small document of `kind` (revocations,
    /// quarantines, CRLs: records read whole and listed whole).
    pub async fn put_doc(&self, kind: DocKind, key: &str, doc: &Value) -> Result<(), StoreError> {
        let row = Row::new(key, doc.clone());
        self.write(Table::Docs(kind), &row, Write::Upsert).await
    }

    /// Reads one document.
    pub async fn get_doc(&self, kind: DocKind, key: &str) -> Result<Option<Value>, StoreError> {
        self.get(Table::Docs(kind), key).await
    }

    /// Compare-and-swap on one document: `new` (`None` removes it) is
    /// written only if `matches` holds for the current one.
    pub async fn swap_doc(
        &self,
        kind: DocKind,
        key: &str,
        matches: &(dyn for<'v> Fn(Option<&'v Value>) -> bool + Send + Sync),
        new: Option<&Value>,
    ) -> Result<Swap<Value>, StoreError> {
        let row = new.map(|v| Row::new(key, v.clone()));
        self.swap(Table::Docs(kind), key, matches, row.as_ref())
            .await
    }

    /// Every document of `kind`, ordered by key.
    pub async fn list_docs(&self, kind: DocKind) -> Result<Vec<(String, Value)>, StoreError> {
        self.list(Table::Docs(kind)).await
    }

    /// Removes a document; true when it was there.
    pub async fn delete_doc(&self, kind: DocKind, key: &str) -> Result<bool, StoreError> {
        Ok(self.take(Table::Docs(kind), key, true).await?.is_some())
    }
}

fn entry_row(entry: &RegistrationEntry) -> Result<Row, StoreError> {
    Ok(Row {
        identity: Some(super::entry_identity(entry)),
        ..Row::new(entry.id.as_str(), json(entry)?)
    })
}
