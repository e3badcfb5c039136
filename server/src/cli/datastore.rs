//! `lanyard-server datastore backup|restore|migrate`: offline commands on
//! a stopped server's data dir (sled allows one process at a time).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::outln;
use crate::store::transfer::{self, TransferError};
use crate::store::{PgOptions, PgStore, SledStore};

/// `datastore` subcommands.
#[derive(Debug, Subcommand)]
pub enum DatastoreCmd {
    /// Write every record of a stopped server's sled store to FILE (JSON
    /// Lines, 0600: it holds the CA private keys).
    Backup {
        /// The backup file to write.
        file: PathBuf,
        /// The server's data dir [default: .lanyard/server].
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Restore a backup into a new, empty sled store in the data dir.
    Restore {
        /// The backup file to read.
        file: PathBuf,
        /// The data dir to restore into [default: .lanyard/server].
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Copy a stopped server's sled store into an empty PostgreSQL
    /// database; then start the server with `--datastore` set to it.
    Migrate {
        /// The target database, postgres://user:password@host:port/database.
        #[arg(long)]
        to: String,
        /// PEM CA certificates that sign the database's certificate.
        #[arg(long, env = "LANYARD_DATASTORE_CA")]
        datastore_ca: Option<PathBuf>,
        /// The server's data dir [default: .lanyard/server].
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Why a datastore command failed.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// Moving records failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Opening a store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The data dir is unusable.
    #[error("{0}")]
    DataDir(String),
}

fn data_dir(d: Option<PathBuf>) -> PathBuf {
    d.unwrap_or_else(|| PathBuf::from(".lanyard/server"))
}

fn open_existing(dir: &Path) -> Result<SledStore, DatastoreError> {
    let db = dir.join("db");
    if !db.exists() {
        return Err(DatastoreError::DataDir(format!(
            "{} holds no database (is --data-dir right?)",
            dir.display()
        )));
    }
    SledStore::open(&db).map_err(|e| {
        DatastoreError::DataDir(format!(
            "{e} (stop the server first: the database is open by one process at a time)"
        ))
    })
}

/// Runs a datastore command, printing what moved.
pub async fn run(cmd: DatastoreCmd) -> Result<(), DatastoreError> {
    match cmd {
        DatastoreCmd::Backup { file, data_dir: d } => {
            let dir = data_dir(d);
            let store = open_existing(&dir)?;
            let owner =
                crate::app::server_id(&dir).map_err(|e| DatastoreError::DataDir(e.to_string()))?;
            let n = transfer::backup(&store, &file, &owner).await?;
            outln!("backed up {n} to {}", file.display());
        }
        DatastoreCmd::Restore { file, data_dir: d } => {
            let dir = data_dir(d);
            if dir.join("db").exists() {
                return Err(DatastoreError::DataDir(format!(
                    "{} already holds a database; restore into a new data dir",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| DatastoreError::DataDir(format!("{}: {e}", dir.display())))?;
            let store = SledStore::open(&dir.join("db"))?;
            match transfer::restore(&store, &file).await {
                Ok((n, server_id)) => {
                    // The restored server is the one backed up: it owns
                    // the keys.
                    if !server_id.is_empty() {
                        crate::app::write_server_id(&dir, &server_id)
                            .map_err(|e| DatastoreError::DataDir(e.to_string()))?;
                    }
                    outln!("restored {n} into {}", dir.display());
                }
                Err(e) => {
                    drop(store);
                    // Nothing half-restored is left to start a server on.
                    let _ = std::fs::remove_dir_all(dir.join("db"));
                    let _ =
                        std::fs::remove_file(dir.join("db").with_file_name("lanyard-initialized"));
                    return Err(e.into());
                }
            }
        }
        DatastoreCmd::Migrate {
            to,
            datastore_ca,
            data_dir: d,
        } => {
            if !PgOptions::is_postgres_url(&to) {
                return Err(DatastoreError::DataDir(
                    "--to must be a postgres://user:password@host:port/database URL".into(),
                ));
            }
            let dir = data_dir(d);
            let from = open_existing(&dir)?;
            let owner =
                crate::app::server_id(&dir).map_err(|e| DatastoreError::DataDir(e.to_string()))?;
            let target = PgStore::connect(&PgOptions {
                url: to.clone(),
                ca_file: datastore_ca,
            })
            .await?;
            let n = transfer::copy(&from, &target, &owner).await?;
            outln!(
                "migrated {n} to {}; start this server with --datastore pointing there (its keys belong to server {owner})",
                crate::store::pg::redact_password(&to)
            );
        }
    }
    Ok(())
}
