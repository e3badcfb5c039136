//! `lanyard.broker.v1.CredentialBroker` on the agent's socket: a
//! credential from a provider for the caller's task. The caller is
//! attested like every caller; the task must be held by its process (or a
//! process it descends from, so a script's helpers work inside its task),
//! and the caller must match the task's entry in full, as for the task's
//! SVIDs. The server decides and issues; the agent keeps each answer per
//! (task, provider, scopes, audience, asking process) until shortly before
//! it expires and forgets it when the task ends: a helper the holder
//! starts gets a lease of its own, never the holder's copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lanyard_core::clock::unix_secs;
use lanyard_proto::broker::credential_broker_server::CredentialBroker;
use lanyard_proto::broker::get_credential_request::TaskCredential;
use lanyard_proto::broker::{CredentialType, GetCredentialRequest, GetCredentialResponse};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::caller::Callers;
use super::task::{attest_task_caller, command_status, matches_in_full, selector_value};
use crate::identity::IdentityHandle;

/// A cached credential is fetched again when it has less than this left.
pub const REFRESH_BEFORE_SECS: u64 = 10;
/// Most cached credentials (beyond it, answers are not kept).
pub const MAX_CACHED: usize = 4096;
/// How many generations a caller may be below its task's holder.
pub const MAX_DESCENT: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The caller's task, or (for an enforcement point) a digest of the
    /// enforcement point's entry and the credential it was shown.
    task_id: String,
    name: String,
    scopes: Vec<String>,
    audience: String,
    /// The asking process instance (PID, start time): an answer is never
    /// served to another process.
    holder: (i32, u64),
}

/// A digest naming what an enforcement point was shown.
fn shown_digest(ep_entry: &str, c: &TaskCredential) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut part = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    part(ep_entry.as_bytes());
    match c {
        TaskCredential::X509Chain(chain) => {
            part(b"x509");
            for cert in &chain.certs {
                part(cert);
            }
        }
        TaskCredential::JwtSvid(t) => {
            part(b"jwt");
            part(t.as_bytes());
        }
    }
    format!("shown:{}", hex::encode(ctx.finish().as_ref()))
}

struct Cached {
    answer: GetCredentialResponse,
    expires_at: u64,
    /// When it was kept (Unix seconds).
    kept_at: u64,
    /// The workload it was issued for (empty for an enforcement point's).
    spiffe_id: String,
}

/// The CredentialBroker service.
#[derive(Clone)]
pub struct BrokerApi {
    owner: IdentityHandle,
    callers: Arc<Callers>,
    cache: Arc<Mutex<HashMap<Key, Cached>>>,
    /// The second of the last purge.
    last_purge: Arc<Mutex<u64>>,
    /// Where a credential served again from the cache is recorded (the
    /// server records each issuance itself).
    audit: Option<crate::audit_queue::AuditQueue>,
}

fn credential_type(t: &str) -> CredentialType {
    match t {
        "bearer" => CredentialType::Bearer,
        "txn_token" => CredentialType::TxnToken,
        "secret" => CredentialType::Secret,
        _ => CredentialType::Unspecified,
    }
}

/// The server's answer as the workload gets it.
fn answer_of(s: lanyard_proto::server::GetCredentialResponse) -> GetCredentialResponse {
    GetCredentialResponse {
        credential: s.credential,
        r#type: credential_type(&s.r#type).into(),
        expires_at: s.expires_at,
        lease_id: s.lease_id,
        scopes: s.scopes,
        task_id: s.task_id,
    }
}

/// Whether the agent knows `task_id` revoked (an enforcement point's
/// cached credential goes with it).
fn task_revoked(snap: &crate::cache::Snapshot, task_id: &str) -> bool {
    snap.revocations
        .get(lanyard_core::revocation::RevokedKind::Task, task_id)
        .is_some()
}

/// Whether every SVID of `spiffe_id` issued up to `since` is revoked (its
/// credentials' leases end with them).
fn workload_revoked(snap: &crate::cache::Snapshot, spiffe_id: &str, since: u64) -> bool {
    !spiffe_id.is_empty()
        && snap
            .revocations
            .get(lanyard_core::revocation::RevokedKind::SpiffeId, spiffe_id)
            .is_some_and(|r| r.revoked_at >= since)
}

fn check_request(r: &GetCredentialRequest) -> Result<(), Status> {
    if r.name.is_empty() {
        return Err(Status::invalid_argument(
            "name (the credential provider) is required",
        ));
    }
    if r.name.len() > 63 {
        return Err(Status::invalid_argument(
            "name is longer than 63 characters",
        ));
    }
    if r.scopes.len() > 32 || r.scopes.iter().any(|s| s.len() > 128) {
        return Err(Status::invalid_argument(
            "at most 32 scopes of at most 128 characters",
        ));
    }
    if r.audience.len() > 2048 {
        return Err(Status::invalid_argument(
            "audience is longer than 2048 characters",
        ));
    }
    if r.task_id.len() > 64 {
        return Err(Status::invalid_argument(
            "task_id is longer than 64 characters",
        ));
    }
    Ok(())
}

impl BrokerApi {
    /// The service over the identity owner.
    pub fn new(
        owner: IdentityHandle,
        callers: Arc<Callers>,
        audit: Option<crate::audit_queue::AuditQueue>,
    ) -> Self {
        Self {
            owner,
            callers,
            cache: Arc::default(),
            last_purge: Arc::default(),
            audit,
        }
    }

    /// Records that a cached credential was served again; a record that
    /// cannot be kept refuses the answer (as a decision would be).
    fn served(
        &self,
        answer: &GetCredentialResponse,
        key: &Key,
        holder: &str,
    ) -> Result<(), Status> {
        let Some(q) = &self.audit else {
            return Ok(());
        };
        let mut e = lanyard_core::audit::Event::new(
            lanyard_core::audit::Kind::CredentialServed,
            lanyard_core::clock::format_rfc3339_millis(std::time::SystemTime::now()),
        )
        .actor(holder)
        .task(answer.task_id.clone());
        e.subject.spiffe_id = self.cached_spiffe_id(key).unwrap_or_default();
        e = e.details(serde_json::json!({
            "provider": key.name,
            "scopes": key.scopes,
            "audience": key.audience,
            "lease_id": answer.lease_id,
            "expires_at": answer.expires_at,
            "pid": key.holder.0,
        }));
        q.append(e).map(|_| ()).map_err(|e| {
            Status::unavailable(format!("the audit queue cannot take the record: {e}"))
        })
    }

    fn cached_spiffe_id(&self, key: &Key) -> Option<String> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|c| c.spiffe_id.clone())
    }

    /// Drops what no held task owns any more (an enforcement point's:
    /// whose task is revoked), and what has expired; at most once a second
    /// (a hit is checked on its own in [`BrokerApi::cached_answer`]).
    fn purge(&self, snap: &crate::cache::Snapshot, now: u64) {
        {
            let mut last = self.last_purge.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return;
            }
            *last = now;
        }
        let held: std::collections::HashSet<&str> = snap.tasks.iter().map(|t| t.id()).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|k, v| {
            v.expires_at > now
                && !workload_revoked(snap, &v.spiffe_id, v.kept_at)
                && if k.task_id.starts_with("shown:") {
                    !task_revoked(snap, &v.answer.task_id)
                } else {
                    held.contains(k.task_id.as_str())
                }
        });
    }

    /// A cached answer still good for `key`: not about to expire, its
    /// workload's SVIDs not revoked since, its task not revoked (the
    /// caller's own task is known to be held).
    fn cached_answer(
        &self,
        snap: &crate::cache::Snapshot,
        key: &Key,
        now: u64,
    ) -> Option<GetCredentialResponse> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|c| {
                c.expires_at > now + REFRESH_BEFORE_SECS
                    && !workload_revoked(snap, &c.spiffe_id, c.kept_at)
                    && !task_revoked(snap, &c.answer.task_id)
            })
            .map(|c| c.answer.clone())
    }

    fn keep(&self, key: Key, answer: &GetCredentialResponse, spiffe_id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() < MAX_CACHED {
            cache.insert(
                key,
                Cached {
                    answer: answer.clone(),
                    expires_at: u64::try_from(answer.expires_at).unwrap_or(0),
                    kept_at: unix_secs(std::time::SystemTime::now()),
                    spiffe_id: spiffe_id.to_owned(),
                },
            );
        }
    }

    /// An enforcement point asking for the task its caller showed.
    async fn for_enforcement_point(
        &self,
        caller: &super::caller::Caller,
        holder: (i32, u64),
        r: GetCredentialRequest,
        shown: TaskCredential,
    ) -> Result<GetCredentialResponse, Status> {
        let snap = self.owner.snapshot();
        let Some((ep, ep_id)) = snap
            .entries_for(&caller.selectors)
            .into_iter()
            .find(|e| e.enforcement_point)
            .map(|e| (e.id.to_string(), e.spiffe_id.to_string()))
        else {
            return Err(Status::permission_denied(
                "only an enforcement point may present a task credential (its entry needs --enforcement-point)",
            ));
        };
        let mut scopes = r.scopes.clone();
        scopes.sort();
        let key = Key {
            task_id: shown_digest(&ep, &shown),
            name: r.name.clone(),
            scopes,
            audience: r.audience.clone(),
            holder,
        };
        let now = unix_secs(std::time::SystemTime::now());
        self.purge(&snap, now);
        if let Some(answer) = self.cached_answer(&snap, &key, now) {
            self.served(&answer, &key, &ep_id)?;
            return Ok(answer);
        }
        let (x509_chain, jwt_svid) = match shown {
            TaskCredential::X509Chain(c) => (c.certs, String::new()),
            TaskCredential::JwtSvid(t) => (vec![], t),
        };
        let s = self
            .owner
            .get_credential(lanyard_proto::server::GetCredentialRequest {
                name: r.name,
                scopes: r.scopes,
                audience: r.audience,
                selectors: caller.selectors.iter().map(ToString::to_string).collect(),
                exe_path: selector_value(caller, "path:").to_owned(),
                exe_sha256: selector_value(caller, "sha256:").to_owned(),
                enforcement_point_entry_id: ep,
                x509_chain,
                jwt_svid,
                ..Default::default()
            })
            .await
            .map_err(command_status)?;
        let answer = answer_of(s);
        self.keep(key, &answer, "");
        Ok(answer)
    }

    /// How many credentials are cached (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[tonic::async_trait]
impl CredentialBroker for BrokerApi {
    #[instrument(skip_all)]
    async fn get_credential(
        &self,
        req: Request<GetCredentialRequest>,
    ) -> Result<Response<GetCredentialResponse>, Status> {
        let (caller, owner) = attest_task_caller(&self.owner, &self.callers, &req).await?;
        let mut r = req.into_inner();
        check_request(&r)?;
        if let Some(shown) = r.task_credential.take() {
            let holder = (owner.pid, owner.start_time);
            let answer = self
                .for_enforcement_point(&caller, holder, r, shown)
                .await?;
            caller.recheck()?;
            return Ok(Response::new(answer));
        }
        let snap = self.owner.snapshot();
        let named: Vec<_> = snap
            .tasks
            .iter()
            .filter(|t| r.task_id.is_empty() || t.id() == r.task_id)
            .collect();
        let mut mine: Vec<_> = named
            .iter()
            .filter(|t| t.owner.same_process(&owner))
            .map(|t| Arc::clone(t))
            .collect();
        if mine.is_empty() && !named.is_empty() {
            // A process the holder started: its line of descent, read once.
            let line = crate::attestor::ancestors(owner.pid, MAX_DESCENT);
            mine = named
                .iter()
                .filter(|t| line.contains(&(t.owner.pid, t.owner.start_time)))
                .map(|t| Arc::clone(t))
                .collect();
        }
        let task = match (mine.as_slice(), r.task_id.is_empty()) {
            ([], true) => {
                return Err(Status::failed_precondition(
                    "the caller holds no task: credentials are handed out only inside a task (BeginTask, or lanyard-agent task run)",
                ));
            }
            ([], false) => {
                return Err(Status::not_found(format!(
                    "task {:?} not found among the caller's tasks",
                    r.task_id
                )));
            }
            ([t], _) => t.clone(),
            (many, _) => {
                return Err(Status::failed_precondition(format!(
                    "the caller holds {} tasks: name one with task_id",
                    many.len()
                )));
            }
        };
        if !matches_in_full(&snap, &task, &caller) {
            return Err(Status::permission_denied(
                "the caller does not match its task's entry in full (its program differs): only the entry's program gets the task's credentials",
            ));
        }
        let mut scopes = r.scopes.clone();
        scopes.sort();
        let key = Key {
            task_id: task.id().to_owned(),
            name: r.name.clone(),
            scopes,
            audience: r.audience.clone(),
            holder: (owner.pid, owner.start_time),
        };
        let now = unix_secs(std::time::SystemTime::now());
        self.purge(&snap, now);
        if let Some(answer) = self.cached_answer(&snap, &key, now) {
            caller.recheck()?;
            self.served(&answer, &key, task.record.grant.spiffe_id.as_str())?;
            return Ok(Response::new(answer));
        }
        let s = self
            .owner
            .get_credential(lanyard_proto::server::GetCredentialRequest {
                task_id: task.id().to_owned(),
                name: r.name,
                scopes: r.scopes,
                audience: r.audience,
                selectors: caller.selectors.iter().map(ToString::to_string).collect(),
                exe_path: selector_value(&caller, "path:").to_owned(),
                exe_sha256: selector_value(&caller, "sha256:").to_owned(),
                ..Default::default()
            })
            .await
            .map_err(command_status)?;
        let answer = answer_of(s);
        // The task may have ended while the server answered.
        if !self
            .owner
            .snapshot()
            .tasks
            .iter()
            .any(|t| t.id() == task.id())
        {
            return Err(Status::failed_precondition(format!(
                "task {} ended",
                task.id()
            )));
        }
        self.keep(key, &answer, task.record.grant.spiffe_id.as_str());
        caller.recheck()?;
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::broker::X509Chain;

    #[test]
    fn what_an_enforcement_point_was_shown_is_named_by_entry_and_credential() {
        let jwt = |t: &str| TaskCredential::JwtSvid(t.into());
        let x509 = |c: &[&[u8]]| {
            TaskCredential::X509Chain(X509Chain {
                certs: c.iter().map(|b| b.to_vec()).collect(),
            })
        };
        let a = shown_digest("ep1", &jwt("a.b.c"));
        assert_eq!(a, shown_digest("ep1", &jwt("a.b.c")));
        assert!(a.starts_with("shown:"));
        // Another enforcement point, another token, another kind, another
        // split of the same bytes: another key.
        assert_ne!(a, shown_digest("ep2", &jwt("a.b.c")));
        assert_ne!(a, shown_digest("ep1", &jwt("a.b.d")));
        assert_ne!(a, shown_digest("ep1", &x509(&[b"a.b.c"])));
        assert_ne!(
            shown_digest("ep1", &x509(&[b"ab", b"c"])),
            shown_digest("ep1", &x509(&[b"a", b"bc"]))
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_the_field() {
        let ok = GetCredentialRequest {
            name: "github".into(),
            ..Default::default()
        };
        assert!(check_request(&ok).is_ok());
        for (bad, says) in [
            (
                GetCredentialRequest {
                    name: String::new(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                GetCredentialRequest {
                    name: "x".repeat(64),
                    ..ok.clone()
                },
                "name",
            ),
            (
                GetCredentialRequest {
                    scopes: vec!["s".into(); 33],
                    ..ok.clone()
                },
                "scopes",
            ),
            (
                GetCredentialRequest {
                    audience: "a".repeat(2049),
                    ..ok.clone()
                },
                "audience",
            ),
        ] {
            let e = check_request(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(says), "{e:?}");
        }
    }

    #[test]
    fn the_servers_type_names_map_to_the_enum() {
        assert_eq!(credential_type("bearer"), CredentialType::Bearer);
        assert_eq!(credential_type("txn_token"), CredentialType::TxnToken);
        assert_eq!(credential_type("secret"), CredentialType::Secret);
        assert_eq!(credential_type("other"), CredentialType::Unspecified);
    }
}
