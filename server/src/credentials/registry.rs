//! The declared providers, in the store (every server of one database sees
//! the same ones; a secret's value only ever sealed there).

use std::sync::Arc;

use lanyard_core::clock::{Clock, unix_secs};
use serde_json::Value;

use super::provider::{CredentialProvider, ProviderKind, check_name};
use super::seal::{SealError, SealingKeys, Secret};
use crate::store::{DocKind, Store, StoreError};

/// How many times a contended rotation is retried.
const SWAP_ATTEMPTS: usize = 8;
/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Why a provider operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No provider of that name.
    #[error("no credential provider named {0:?}")]
    NotFound(String),
    /// A provider of that name exists.
    #[error("a credential provider named {0:?} exists (rotate or delete it)")]
    Exists(String),
    /// The operation does not apply to this kind.
    #[error("credential provider {name:?} is of kind {kind}: {what}")]
    WrongKind {
        /// The provider.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// What was refused.
        what: &'static str,
    },
    /// The secret could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other writers kept changing the provider.
    #[error("credential provider {0:?} kept changing; try again")]
    Contended(String),
}

/// A provider as the operator declares it.
#[derive(Debug)]
pub enum ProviderSpec {
    /// An oauth-exchange or txn-token provider: its settings, as stored.
    Settings(ProviderKind),
    /// A secret provider: its value (wiped when dropped, sealed before it
    /// is stored), and whether workloads may be handed it.
    Secret {
        /// The value.
        value: Secret,
        /// Whether workloads may be handed it.
        reveal: bool,
    },
}

/// The providers.
#[derive(Clone)]
pub struct Credentials {
    store: Arc<dyn Store>,
    keys: Arc<SealingKeys>,
    clock: Arc<dyn Clock>,
}

fn decode(name: &str, v: Value) -> Result<CredentialProvider, CredentialError> {
    serde_json::from_value(v).map_err(|e| {
        CredentialError::Store(StoreError::Corrupt {
            key: format!("docs/credential/{name}"),
            reason: e.to_string(),
        })
    })
}

fn encode(p: &CredentialProvider) -> Result<Value, CredentialError> {
    serde_json::to_value(p).map_err(|e| CredentialError::Invalid(e.to_string()))
}

impl Credentials {
    /// Providers in `store`, secrets sealed with `keys`.
    pub fn new(store: Arc<dyn Store>, keys: Arc<SealingKeys>, clock: Arc<dyn Clock>) -> Self {
        Self { store, keys, clock }
    }

    fn kind(&self, name: &str, spec: ProviderSpec) -> Result<ProviderKind, CredentialError> {
        match spec {
            ProviderSpec::Settings(ProviderKind::Secret { .. }) => Err(CredentialError::Invalid(
                "a secret provider is declared with its value".into(),
            )),
            ProviderSpec::Settings(kind) => Ok(kind),
            ProviderSpec::Secret { value, reveal } => {
                let bytes = value.expose();
                if bytes.is_empty() || bytes.len() > MAX_SECRET_BYTES {
                    return Err(CredentialError::Invalid(format!(
                        "a secret must be 1 to {MAX_SECRET_BYTES} bytes"
                    )));
                }
                Ok(ProviderKind::Secret {
                    sealed: self.keys.seal(bytes, name)?,
                    digest: self.keys.digest(bytes),
                    reveal,
                })
            }
        }
    }

    /// Declares a provider; a name already taken is refused.
    pub async fn add(
        &self,
        name: &str,
        spec: ProviderSpec,
    ) -> Result<CredentialProvider, CredentialError> {
        check_name(name).map_err(CredentialError::Invalid)?;
        let now = unix_secs(self.clock.now());
        let provider = CredentialProvider {
            name: name.to_owned(),
            kind: self.kind(name, spec)?,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        provider.check().map_err(CredentialError::Invalid)?;
        let data = encode(&provider)?;
        match self
            .store
            .swap_doc(DocKind::Credential, name, &|cur| cur.is_none(), Some(&data))
            .await?
        {
            Ok(()) => Ok(provider),
            Err(_) => Err(CredentialError::Exists(name.to_owned())),
        }
    }

    /// Every provider, by name.
    pub async fn list(&self) -> Result<Vec<CredentialProvider>, CredentialError> {
        let mut out = self
            .store
            .list_docs(DocKind::Credential)
            .await?
            .into_iter()
            .map(|(k, v)| decode(&k, v))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One provider.
    pub async fn get(&self, name: &str) -> Result<CredentialProvider, CredentialError> {
        match self.store.get_doc(DocKind::Credential, name).await? {
            Some(v) => decode(name, v),
            None => Err(CredentialError::NotFound(name.to_owned())),
        }
    }

    /// Replaces a secret provider's value (sealed with the current key).
    pub async fn rotate(
        &self,
        name: &str,
        value: Secret,
    ) -> Result<CredentialProvider, CredentialError> {
        for _ in 0..SWAP_ATTEMPTS {
            let cur = self.get(name).await?;
            let ProviderKind::Secret { reveal, .. } = cur.kind else {
                return Err(CredentialError::WrongKind {
                    name: name.to_owned(),
                    kind: cur.kind.name(),
                    what: "only a secret provider's value is rotated (delete and add the others)",
                });
            };
            let spec = ProviderSpec::Secret {
                value: Secret::new(value.expose().to_vec()),
                reveal,
            };
            let next = CredentialProvider {
                kind: self.kind(name, spec)?,
                version: cur.version + 1,
                updated_at: unix_secs(self.clock.now()),
                ..cur.clone()
            };
            if self.replace(&cur, &next).await? {
                return Ok(next);
            }
        }
        Err(CredentialError::Contended(name.to_owned()))
    }

    /// Removes a provider; returns what it was.
    pub async fn delete(&self, name: &str) -> Result<CredentialProvider, CredentialError> {
        let cur = self.get(name).await?;
        self.store.delete_doc(DocKind::Credential, name).await?;
        Ok(cur)
    }

    /// A secret provider's value, opened (for the release path: it never
    /// reaches a log, a listing or an audit record).
    pub fn open(&self, provider: &CredentialProvider) -> Result<Secret, CredentialError> {
        match &provider.kind {
            ProviderKind::Secret { sealed, .. } => Ok(self.keys.open(sealed, &provider.name)?),
            other => Err(CredentialError::WrongKind {
                name: provider.name.clone(),
                kind: other.name(),
                what: "only a secret provider holds a value",
            }),
        }
    }

    /// Seals a token a lease keeps for its revocation (bound to the lease).
    pub fn seal_for_lease(
        &self,
        token: &[u8],
        lease_id: &str,
    ) -> Result<super::seal::Sealed, CredentialError> {
        Ok(self.keys.seal(token, &format!("lease:{lease_id}"))?)
    }

    /// Opens a token [`Credentials::seal_for_lease`] sealed.
    pub fn open_for_lease(
        &self,
        sealed: &super::seal::Sealed,
        lease_id: &str,
    ) -> Result<Secret, CredentialError> {
        Ok(self.keys.open(sealed, &format!("lease:{lease_id}"))?)
    }

    /// Seals again, with the key file's first key, every secret sealed by
    /// another (after a key rotation); returns how many.
    pub async fn reseal(&self) -> Result<usize, CredentialError> {
        let mut n = 0;
        for p in self.list().await? {
            let ProviderKind::Secret { sealed, reveal, .. } = &p.kind else {
                continue;
            };
            if !self.keys.stale(sealed) {
                continue;
            }
            let value = self.keys.open(sealed, &p.name)?;
            let next = CredentialProvider {
                kind: ProviderKind::Secret {
                    sealed: self.keys.seal(value.expose(), &p.name)?,
                    digest: self.keys.digest(value.expose()),
                    reveal: *reveal,
                },
                ..p.clone()
            };
            if self.replace(&p, &next).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes `next` where `cur` still stands; false when another writer
    /// changed it first.
    async fn replace(
        &self,
        cur: &CredentialProvider,
        next: &CredentialProvider,
    ) -> Result<bool, CredentialError> {
        let expected = encode(cur)?;
        let data = encode(next)?;
        Ok(self
            .store
            .swap_doc(
                DocKind::Credential,
                &cur.name,
                &|v| v == Some(&expected),
                Some(&data),
            )
            .await?
            .is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ClientAuth;
    use crate::store::MemoryStore;
    use lanyard_core::clock::FakeClock;

    fn secret(s: &str) -> ProviderSpec {
        ProviderSpec::Secret {
            value: Secret::new(s.as_bytes().to_vec()),
            reveal: false,
        }
    }

    fn setup(dir: &std::path::Path) -> (Credentials, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let keys = Arc::new(SealingKeys::load_or_create(&dir.join("credential.key")).unwrap());
        let c = Credentials::new(store.clone(), keys, Arc::new(FakeClock::at(1_800_000_000)));
        (c, store)
    }

    #[tokio::test]
    async fn providers_are_added_listed_rotated_and_deleted_and_rows_hold_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (c, store) = setup(dir.path());
        let p = c.add("crm-api-key", secret("sk-live-first")).await.unwrap();
        assert_eq!(p.version, 1);
        c.add(
            "github",
            ProviderSpec::Settings(ProviderKind::OauthExchange {
                token_url: "https://auth.example.com/oauth/token".into(),
                audience: "https://auth.example.com".into(),
                client_auth: ClientAuth::JwtSpiffe,
                scopes: vec!["repo:read".into()],
                revocation_url: None,
                grant: crate::credentials::Grant::TokenExchange,
            }),
        )
        .await
        .unwrap();
        assert!(matches!(
            c.add("crm-api-key", secret("other")).await,
            Err(CredentialError::Exists(_))
        ));
        let names: Vec<String> = c
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["crm-api-key", "github"]);
        assert_eq!(
            c.open(&c.get("crm-api-key").await.unwrap())
                .unwrap()
                .expose(),
            b"sk-live-first"
        );

        let rotated = c
            .rotate("crm-api-key", Secret::new(b"sk-live-second".to_vec()))
            .await
            .unwrap();
        assert_eq!(rotated.version, 2);
        assert_eq!(c.open(&rotated).unwrap().expose(), b"sk-live-second");
        assert!(matches!(
            c.rotate("github", Secret::new(b"x".to_vec())).await,
            Err(CredentialError::WrongKind { .. })
        ));
        let rows =
            serde_json::to_string(&store.list_docs(DocKind::Credential).await.unwrap()).unwrap();
        assert!(!rows.contains("sk-live"), "{rows}");

        assert_eq!(c.delete("github").await.unwrap().name, "github");
        assert!(matches!(
            c.get("github").await,
            Err(CredentialError::NotFound(_))
        ));
        assert!(matches!(
            c.delete("github").await,
            Err(CredentialError::NotFound(_))
        ));
        assert!(matches!(
            c.add("Bad Name", secret("x")).await,
            Err(CredentialError::Invalid(_))
        ));
        assert!(matches!(
            c.add("empty", secret("")).await,
            Err(CredentialError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn after_a_key_rotation_every_secret_is_sealed_again_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.key");
        let (c, store) = setup(dir.path());
        c.add("a", secret("alpha")).await.unwrap();
        c.add("b", secret("beta")).await.unwrap();
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{}\n{old}", "cd".repeat(32))).unwrap();
        let keys = Arc::new(SealingKeys::load(&path).unwrap());
        let c = Credentials::new(
            store.clone(),
            keys.clone(),
            Arc::new(FakeClock::at(1_800_000_000)),
        );
        assert_eq!(c.reseal().await.unwrap(), 2);
        assert_eq!(c.reseal().await.unwrap(), 0);
        // Only the new key is needed now.
        std::fs::write(&path, format!("{}\n", "cd".repeat(32))).unwrap();
        let only_new = Arc::new(SealingKeys::load(&path).unwrap());
        let c = Credentials::new(store, only_new, Arc::new(FakeClock::at(1_800_000_000)));
        assert_eq!(
            c.open(&c.get("a").await.unwrap()).unwrap().expose(),
            b"alpha"
        );
        assert_eq!(
            c.open(&c.get("b").await.unwrap()).unwrap().expose(),
            b"beta"
        );
    }
}
