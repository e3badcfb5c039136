//! Records in PostgreSQL: one table per [`Table`] (documents share
//! `lanyard_docs`, by kind), the key in `id` (a policy's in `version`), the
//! record in `data` (`jsonb`), an entry's identity and a key's owner in
//! their own columns. Every statement is built from the constants below
//! and parameterised: nothing from a request reaches the SQL text.

use serde_json::Value;
use tokio_postgres::types::Json;

use super::{PgStore, col, db, record, unique_violation};
use crate::store::{EntryId, Row, StoreError, Swap, Table, Write};

/// How one table's records are addressed.
struct Sql {
    /// The table.
    table: &'static str,
    /// The key column.
    key: &'static str,
    /// The key as text, for listing.
    key_text: &'static str,
    /// `$1` (the key, always sent as text) as the key column's type.
    param: &'static str,
    /// The document kind the rows are limited to.
    kind: Option<&'static str>,
    /// The column kept beside the record: `identity` or `owner`.
    extra: Option<&'static str>,
}

fn sql(t: Table) -> Sql {
    let plain = |table| Sql {
        table,
        key: "id",
        key_text: "id",
        param: "$1",
        kind: None,
        extra: None,
    };
    match t {
        Table::Entries => Sql {
            extra: Some("identity"),
            ..plain("lanyard_entries")
        },
        Table::Agents => plain("lanyard_agents"),
        Table::JoinTokens => plain("lanyard_join_tokens"),
        Table::CaKeys => Sql {
            extra: Some("owner"),
            ..plain("lanyard_ca_keys")
        },
        Table::JwtKeys => Sql {
            extra: Some("owner"),
            ..plain("lanyard_jwt_keys")
        },
        Table::Tasks => plain("lanyard_tasks"),
        Table::Policies => Sql {
            key: "version",
            key_text: "version::text",
            param: "CAST($1::text AS bigint)",
            ..plain("lanyard_policies")
        },
        Table::Delegations => plain("lanyard_delegations"),
        Table::Docs(kind) => Sql {
            kind: Some(kind.as_str()),
            ..plain("lanyard_docs")
        },
    }
}

impl Sql {
    /// The condition that picks the record `$1`.
    fn one(&self) -> String {
        let mut w = format!("{} = {}", self.key, self.param);
        if let Some(kind) = self.kind {
            w.push_str(&format!(" AND kind = '{kind}'"));
        }
        w
    }

    fn select(&self, lock: bool) -> String {
        let lock = if lock { " FOR UPDATE" } else { "" };
        format!("SELECT data FROM {} WHERE {}{lock}", self.table, self.one())
    }

    fn list(&self) -> String {
        let scope = self
            .kind
            .map(|k| format!(" WHERE kind = '{k}'"))
            .unwrap_or_default();
        // Qualified: a bare `version` would name the text column listed.
        let order = if self.key == "id" {
            "id COLLATE \"C\"".to_owned()
        } else {
            format!("{}.{}", self.table, self.key)
        };
        format!(
            "SELECT {}, data FROM {}{scope} ORDER BY {order}",
            self.key_text, self.table
        )
    }

    /// `INSERT` of `$1` (key), `$2` (data) and `$3` (the extra column);
    /// `upsert` replaces what is there.
    fn insert(&self, upsert: bool) -> String {
        let mut cols = vec![self.key, "data"];
        let mut vals = vec![self.param.to_owned(), "$2".to_owned()];
        if let Some(kind) = self.kind {
            cols.push("kind");
            vals.push(format!("'{kind}'"));
        }
        if let Some(extra) = self.extra {
            cols.push(extra);
            vals.push("$3".to_owned());
        }
        let mut q = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table,
            cols.join(", "),
            vals.join(", ")
        );
        let conflict = if self.kind.is_some() {
            "kind, id".to_owned()
        } else {
            self.key.to_owned()
        };
        if upsert {
            q.push_str(&format!(
                " ON CONFLICT ({conflict}) DO UPDATE SET data = EXCLUDED.data"
            ));
            if let Some(extra) = self.extra {
                q.push_str(&format!(", {extra} = EXCLUDED.{extra}"));
            }
        } else {
            q.push_str(&format!(" ON CONFLICT ({conflict}) DO NOTHING"));
        }
        q
    }

    fn update(&self) -> String {
        let extra = self
            .extra
            .map(|e| format!(", {e} = $3"))
            .unwrap_or_default();
        format!(
            "UPDATE {} SET data = $2{extra} WHERE {}",
            self.table,
            self.one()
        )
    }

    fn delete(&self, returning: bool) -> String {
        let r = if returning { " RETURNING data" } else { "" };
        format!("DELETE FROM {} WHERE {}{r}", self.table, self.one())
    }
}

fn data(t: Table, key: &str, row: &tokio_postgres::Row, i: usize) -> Result<Value, StoreError> {
    row.try_get::<_, Json<Value>>(i)
        .map(|j| j.0)
        .map_err(|e| StoreError::Corrupt {
            key: format!("{}/{key}", t.name()),
            reason: e.to_string(),
        })
}

fn what(t: Table, key: &str) -> String {
    format!("{} {key}", t.what())
}

impl PgStore {
    pub(super) async fn get_record(
        &self,
        t: Table,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql(t).select(false)).await.map_err(db)?;
        c.query_opt(&stmt, &[&key])
            .await
            .map_err(db)?
            .map(|r| data(t, key, &r, 0))
            .transpose()
    }

    pub(super) async fn list_records(&self, t: Table) -> Result<Vec<(String, Value)>, StoreError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql(t).list()).await.map_err(db)?;
        c.query(&stmt, &[])
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                let key: String = col(r, 0)?;
                let value = data(t, &key, r, 1)?;
                Ok((key, value))
            })
            .collect()
    }

    pub(super) async fn write_record(
        &self,
        t: Table,
        row: &Row,
        how: Write,
    ) -> Result<(), StoreError> {
        let s = sql(t);
        let extra = if s.extra == Some("identity") {
            row.identity.clone()
        } else {
            row.owner.clone()
        };
        let (key, value) = (row.key.as_str(), Json(&row.data));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let r = match (how, s.extra) {
            (Write::Replace, Some(_)) => tx.execute(&s.update(), &[&key, &value, &extra]).await,
            (Write::Replace, None) => tx.execute(&s.update(), &[&key, &value]).await,
            (_, Some(_)) => {
                let q = s.insert(how == Write::Upsert);
                tx.execute(&q, &[&key, &value, &extra]).await
            }
            (_, None) => {
                tx.execute(&s.insert(how == Write::Upsert), &[&key, &value])
                    .await
            }
        };
        match r {
            Ok(0) if how == Write::New => return Err(StoreError::AlreadyExists(what(t, key))),
            Ok(0) if how == Write::Replace => return Err(StoreError::NotFound(what(t, key))),
            Ok(_) => {}
            Err(e) if unique_violation(&e).is_some() && row.identity.is_some() => {
                drop(tx);
                let identity = row.identity.as_deref().unwrap_or_default();
                return Err(StoreError::DuplicateEntry(
                    self.with_identity(identity).await?,
                ));
            }
            Err(e) => return Err(db(e)),
        }
        if let Some(kind) = t.change() {
            record(&tx, kind, key).await?;
        }
        tx.commit().await.map_err(db)
    }

    /// Compare-and-swap under a row lock.
    pub(super) async fn swap_record(
        &self,
        t: Table,
        key: &str,
        matches: &(dyn for<'v> Fn(Option<&'v Value>) -> bool + Send + Sync),
        new: Option<&Row>,
    ) -> Result<Swap<Value>, StoreError> {
        let s = sql(t);
        if s.extra.is_some() {
            return Err(StoreError::backend(format!(
                "compare-and-swap is not for {}: it keeps a column beside the record",
                t.name()
            )));
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let current = tx
            .query_opt(&s.select(true), &[&key])
            .await
            .map_err(db)?
            .map(|r| data(t, key, &r, 0))
            .transpose()?;
        if !matches(current.as_ref()) {
            return Ok(Err(current));
        }
        let written = match (&current, new) {
            (None, Some(n)) => tx.execute(&s.insert(false), &[&key, &Json(&n.data)]).await,
            (Some(_), Some(n)) => tx.execute(&s.update(), &[&key, &Json(&n.data)]).await,
            (_, None) => tx.execute(&s.delete(false), &[&key]).await,
        }
        .map_err(db)?;
        if written == 0 && current.is_none() && new.is_none() {
            return Ok(Ok(()));
        }
        if written == 0 {
            // A concurrent insert of a record that was absent: report it.
            drop(tx);
            return Ok(Err(self.get_record(t, key).await?));
        }
        if let Some(kind) = t.change() {
            record(&tx, kind, key).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Ok(()))
    }

    /// Deletes and returns a record in one statement.
    pub(super) async fn take_record(
        &self,
        t: Table,
        key: &str,
        announce: bool,
    ) -> Result<Option<Value>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let old = tx
            .query_opt(&sql(t).delete(true), &[&key])
            .await
            .map_err(db)?
            .map(|r| data(t, key, &r, 0))
            .transpose()?;
        if let (true, Some(kind), Some(_)) = (announce, t.change(), &old) {
            record(&tx, kind, key).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(old)
    }

    /// The entry that holds an identity.
    async fn with_identity(&self, identity: &str) -> Result<EntryId, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT id FROM lanyard_entries WHERE identity = $1",
                &[&identity],
            )
            .await
            .map_err(db)?;
        let row = row.ok_or_else(|| StoreError::backend("a duplicate entry vanished"))?;
        let id: String = col(&row, 0)?;
        EntryId::new(&id).map_err(|e| StoreError::Corrupt {
            key: format!("entries/{id}"),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DocKind;

    #[test]
    fn statements_address_each_table() {
        let p = sql(Table::Policies);
        assert_eq!(
            p.select(false),
            "SELECT data FROM lanyard_policies WHERE version = CAST($1::text AS bigint)"
        );
        assert_eq!(
            p.list(),
            "SELECT version::text, data FROM lanyard_policies ORDER BY lanyard_policies.version"
        );
        let d = sql(Table::Docs(DocKind::Crl));
        assert_eq!(
            d.insert(true),
            "INSERT INTO lanyard_docs (id, data, kind) VALUES ($1, $2, 'crl') ON CONFLICT (kind, id) DO UPDATE SET data = EXCLUDED.data"
        );
        assert_eq!(
            d.delete(true),
            "DELETE FROM lanyard_docs WHERE id = $1 AND kind = 'crl' RETURNING data"
        );
        let k = sql(Table::CaKeys);
        assert_eq!(
            k.insert(true),
            "INSERT INTO lanyard_ca_keys (id, data, owner) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, owner = EXCLUDED.owner"
        );
        assert_eq!(
            sql(Table::Entries).update(),
            "UPDATE lanyard_entries SET data = $2, identity = $3 WHERE id = $1"
        );
    }
}
