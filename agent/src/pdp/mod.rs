//! The decision point on the node agent: AuthorizeToolCall decided locally,
//! with no server round trip: the credential (validated against the
//! current bundle and revocation set), the task claims (tool granted,
//! inside the window, task and parent live), quarantines, then the Cedar
//! `UseTool` policy synced from the server with the call's context. Every
//! decision is one [`DecisionRecord`]; denials count towards quarantine,
//! here at once and on the server across every enforcement point.

mod approval;
mod outcome;
mod record;
mod verdict;
mod verify;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_core::clock::Clock;
use lanyard_policy::{Action, CallFacts, PolicyBook, Principal, TaskContext};

pub use approval::MAX_APPROVAL_WAIT;
pub use outcome::OUTCOME_WAIT;
pub use record::{DecisionRecord, DecisionSink, Outcome, QueueSink, TracingSink, audit_event};
pub use verify::{CredentialError, Verified, VerifyCache, WIT_TASK_CLAIM, WitCall, jwt_revocation};

use crate::cache::Snapshot;
use crate::identity::IdentityHandle;
use verdict::Verdict;

/// The reason of every decision while the audit queue cannot take its
/// record.
pub const AUDIT_UNAVAILABLE: &str = "audit unavailable";

/// Largest call context accepted, bytes of JSON.
pub const MAX_CONTEXT: usize = lanyard_policy::context::MAX_CALL_CONTEXT;
/// Longest tool or resource name.
const MAX_NAME: usize = 256;

/// When this node's own decisions quarantine a task's holder.
#[derive(Debug, Clone, Copy)]
pub struct LocalTrigger {
    /// More than this many denials for one task...
    pub max_denials: u32,
    /// ...within this window.
    pub window: Duration,
}

impl Default for LocalTrigger {
    fn default() -> Self {
        Self {
            max_denials: 3,
            window: Duration::from_secs(60),
        }
    }
}

/// A synced policy set compiled here: none loaded, the book, or why it
/// does not compile.
type Compiled = Result<Option<Arc<PolicyBook>>, String>;

/// The decision point.
pub struct Pdp {
    owner: IdentityHandle,
    clock: Arc<dyn Clock>,
    verified: VerifyCache,
    /// The compiled policy set and its version (`Err`: it failed to
    /// compile here, and every call is denied rather than decided without
    /// it).
    policy: Mutex<(u64, Compiled)>,
    denials: Mutex<HashMap<String, VecDeque<SystemTime>>>,
    trigger: LocalTrigger,
    sink: Arc<dyn DecisionSink>,
    /// Allowed calls whose enforcement point will report the outcome.
    waiting: outcome::Waiting,
}

/// What denials are counted under: the caller's SPIFFE ID and, when its
/// credential says, its node (a task JWT's `rctx.node`).
fn workload_key(v: &Verified) -> String {
    format!("{} on {}", v.peer.spiffe_id, v.node)
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// The call's context as Cedar sees it (`key=value` per top-level member),
/// or InvalidArgument.
fn call_strings(json: &str) -> Result<Vec<String>, PdpError> {
    lanyard_policy::call_strings(json).map_err(|e| PdpError::Invalid(e.to_string()))
}

/// What the caller of a tool presents.
#[derive(Debug, Clone)]
pub enum CallCredential {
    /// Its X.509-SVID chain (DER, leaf first), as the tool saw it in TLS.
    X509Chain(Vec<Vec<u8>>),
    /// A task JWT-SVID it sent as a bearer token.
    Jwt(String),
    /// A WIT-SVID with its proof of possession for this request.
    Wit(WitCall),
}

/// One tool call to decide.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// The tool called.
    pub tool: String,
    /// What it acts on (may be empty).
    pub resource: String,
    /// The call's arguments and facts, a JSON object (may be empty).
    pub context_json: String,
    /// The caller's credential.
    pub credential: Option<CallCredential>,
    /// The audience a JWT-SVID must carry (empty: the enforcement point's
    /// SPIFFE ID).
    pub audience: String,
    /// Decide only: no record, no denial counted, no decision ID.
    pub probe: bool,
    /// The enforcement point will report the outcome (RecordToolCalls).
    pub outcome_follows: bool,
    /// The approval asked for earlier, when the caller names it.
    pub approval_id: String,
    /// How long to hold a call waiting for approval.
    pub wait: Duration,
    /// The HTTP target URI of the request (a WIT's proof names it).
    pub target_uri: String,
}

/// A recorded decision, as the enforcement point gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or denied.
    pub allow: bool,
    /// Why.
    pub reason: String,
    /// The policies that decided.
    pub policy_ids: Vec<String>,
    /// Its record's ID.
    pub decision_id: String,
    /// The caller's task (empty when it has none).
    pub task_id: String,
    /// The caller's SPIFFE ID.
    pub principal: String,
    /// Waiting for a person's approval (`allow` is false).
    pub pending: bool,
    /// The approval request, when the call needed one.
    pub approval_id: String,
    /// When a pending request lapses, Unix seconds.
    pub approval_expires_at: i64,
}

/// Why a call got no decision.
#[derive(Debug, thiserror::Error)]
pub enum PdpError {
    /// The call is malformed (the message says which part).
    #[error("{0}")]
    Invalid(String),
    /// The credential was refused (recorded as a denial).
    #[error("{0}")]
    Refused(String),
    /// No such decision waits for its outcome.
    #[error("{0}")]
    NotFound(String),
    /// The audit queue could not take the record.
    #[error("{0}")]
    Unavailable(String),
}

impl Pdp {
    /// A decision point reading `owner`'s snapshots.
    pub fn new(
        owner: IdentityHandle,
        clock: Arc<dyn Clock>,
        trigger: LocalTrigger,
        sink: Arc<dyn DecisionSink>,
    ) -> Self {
        Self {
            owner,
            clock,
            verified: VerifyCache::default(),
            policy: Mutex::new((0, Ok(None))),
            denials: Mutex::default(),
            trigger,
            sink,
            waiting: outcome::Waiting::default(),
        }
    }

    /// Compiles each policy set as it arrives, off the request path (a
    /// large set takes a while to validate), until the agent stops.
    pub fn precompile(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        let mut state = self.owner.state();
        tokio::spawn(async move {
            loop {
                let snap = state.borrow_and_update().clone();
                let compiled = me.policy.lock().unwrap_or_else(|p| p.into_inner()).0;
                if compiled != snap.policy_version {
                    let pdp = me.clone();
                    // Validation is CPU work: on the blocking pool.
                    let _ = tokio::task::spawn_blocking(move || pdp.book(&snap)).await;
                }
                tokio::select! {
                    r = state.changed() => if r.is_err() { return },
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            }
        });
    }

    fn book(&self, snap: &Snapshot) -> Compiled {
        let mut g = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != snap.policy_version {
            // Version 0: no set is loaded (never, or `policy clear`), and
            // the grant decides alone. An empty text is a loaded set that
            // permits nothing, as on the server.
            let compiled = if snap.policy_version == 0 {
                Ok(None)
            } else {
                PolicyBook::compile(&snap.policy_text, "policy")
                    .map(Some)
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = &compiled {
                tracing::error!(version = snap.policy_version, err = %e, "synced policy set does not compile on this agent; denying tool calls");
            }
            *g = (snap.policy_version, compiled);
        }
        g.1.clone()
    }

    /// Counts a denial of the workload `key` (its SPIFFE ID and node),
    /// across its tasks: ending a task and beginning another does not
    /// reset the count.
    fn count_denial(&self, key: &str, now: SystemTime) -> (usize, bool) {
        let mut all = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        let q = all.entry(key.to_owned()).or_default();
        q.push_back(now);
        let w = self.trigger.window;
        while q
            .front()
            .is_some_and(|f| now.duration_since(*f).unwrap_or_default() > w)
        {
            q.pop_front();
        }
        let n = q.len();
        if all.len() > 100_000 {
            all.retain(|_, q| {
                q.back()
                    .is_some_and(|b| now.duration_since(*b).unwrap_or_default() <= w)
            });
        }
        (n, n > self.trigger.max_denials as usize)
    }

    fn recent_denials(&self, key: &str, now: SystemTime) -> i64 {
        let all = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        all.get(key).map_or(0, |q| {
            let n = q
                .iter()
                .filter(|t| now.duration_since(**t).unwrap_or_default() <= self.trigger.window)
                .count();
            i64::try_from(n).unwrap_or(i64::MAX)
        })
    }

    /// Decides one call for the enforcement point `ep`.
    pub async fn authorize(&self, ep: &str, mut req: ToolCall) -> Result<Decision, PdpError> {
        if req.tool.is_empty() || req.tool.len() > MAX_NAME {
            return Err(PdpError::Invalid(format!(
                "tool must be 1 to {MAX_NAME} bytes"
            )));
        }
        if req.resource.len() > MAX_NAME {
            return Err(PdpError::Invalid(format!(
                "resource: at most {MAX_NAME} bytes"
            )));
        }
        let call = call_strings(&req.context_json)?;
        let snap = self.owner.snapshot();
        let now = self.clock.now();
        let (kind, checked) = match req.credential.take() {
            Some(CallCredential::X509Chain(certs)) => {
                ("x509", self.verified.x509(&snap, &certs, now))
            }
            Some(CallCredential::Jwt(t)) => {
                let aud = if req.audience.is_empty() {
                    ep
                } else {
                    req.audience.as_str()
                };
                ("jwt", self.verified.jwt(&snap, &t, aud, now))
            }
            Some(CallCredential::Wit(w)) => {
                ("wit", self.verified.wit(&snap, &w, &req.target_uri, now))
            }
            None => {
                return Err(PdpError::Invalid(
                    "credential (x509_chain, jwt_svid or wit) is required".into(),
                ));
            }
        };
        let mut record = DecisionRecord {
            decision_id: random_id(),
            time: now,
            allow: false,
            reason: String::new(),
            policy_ids: vec![],
            task_id: String::new(),
            principal: String::new(),
            tool: req.tool.clone(),
            resource: req.resource.clone(),
            enforcement_point: ep.to_owned(),
            credential: kind,
            pending: false,
            approval_id: String::new(),
        };
        let v = match checked {
            Ok(v) => v,
            Err(CredentialError::Malformed(m)) => return Err(PdpError::Invalid(m)),
            Err(e @ CredentialError::Refused(_)) => {
                record.reason = e.to_string();
                if req.probe {
                    return Err(PdpError::Refused(e.to_string()));
                }
                if let Err(why) = self.sink.record(&record) {
                    tracing::error!(%why, decision_id = %record.decision_id, "decision record not kept");
                }
                return Err(PdpError::Refused(e.to_string()));
            }
        };
        record.principal = v.peer.spiffe_id.to_string();
        record.task_id = v
            .peer
            .claims
            .as_ref()
            .map(|c| c.task_id.to_string())
            .unwrap_or_default();
        let mut verdict = self.decide(&snap, &v, &req.tool, &req.resource, call, now);
        // A probe (what a caller is shown) lists a tool that needs approval
        // as callable; calling it asks.
        if verdict.allow && !verdict.approvals.is_empty() && !req.probe {
            verdict = self.approve(verdict, &record, &req).await;
        }
        record.allow = verdict.allow;
        record.reason = verdict.reason.clone();
        record.policy_ids = verdict.policy_ids.clone();
        record.pending = verdict.pending;
        record.approval_id = verdict.approval_id.clone();
        if req.probe {
            return Ok(Decision {
                allow: record.allow,
                reason: record.reason,
                policy_ids: record.policy_ids,
                decision_id: String::new(),
                task_id: record.task_id,
                principal: record.principal,
                pending: false,
                approval_id: String::new(),
                approval_expires_at: 0,
            });
        }
        if let Err(why) = self.sink.record(&record) {
            // No decision without its record: fail closed.
            tracing::error!(%why, decision_id = %record.decision_id, "decision record not kept; denying");
            return Ok(Decision {
                allow: false,
                reason: AUDIT_UNAVAILABLE.to_owned(),
                policy_ids: vec![],
                decision_id: record.decision_id,
                task_id: record.task_id,
                principal: record.principal,
                pending: false,
                approval_id: String::new(),
                approval_expires_at: 0,
            });
        }
        if !verdict.allow && verdict.counts && !record.task_id.is_empty() {
            self.after_denial(&record, &verdict, &req.context_json, &workload_key(&v), now)
                .await;
        }
        if req.outcome_follows {
            self.waiting.keep(&record, now);
        }
        Ok(Decision {
            allow: record.allow,
            reason: record.reason,
            policy_ids: record.policy_ids,
            decision_id: record.decision_id,
            task_id: record.task_id,
            principal: record.principal,
            pending: verdict.pending,
            approval_id: verdict.approval_id,
            approval_expires_at: verdict.approval_expires_at,
        })
    }

    /// Records the outcome of a call `ep` decided with `outcome_follows`:
    /// one `tool.call` record, once.
    pub fn record_outcome(&self, ep: &str, decision_id: &str, o: &Outcome) -> Result<(), PdpError> {
        o.check().map_err(PdpError::Invalid)?;
        let now = self.clock.now();
        let d = self.waiting.take(decision_id, ep, now).ok_or_else(|| {
            PdpError::NotFound(format!(
                "decision {decision_id:?}: unknown to this enforcement point, already recorded, or older than {}s",
                OUTCOME_WAIT.as_secs()
            ))
        })?;
        self.sink
            .record_call(&d, o, now)
            .map_err(|why| PdpError::Unavailable(format!("the call record was not kept: {why}")))
    }

    fn decide(
        &self,
        snap: &Snapshot,
        v: &Verified,
        tool: &str,
        resource: &str,
        call: Vec<String>,
        now: SystemTime,
    ) -> Verdict {
        let Some(claims) = &v.peer.claims else {
            return Verdict::deny("the credential carries no task: tool calls need a task SVID");
        };
        let task = claims.task_id.to_string();
        if claims.not_after.is_some_and(|t| now >= t) {
            return Verdict::deny(format!("task {task} has ended (its window passed)"));
        }
        if let Some(q) = snap.quarantines.iter().find(|q| {
            q.task_id.as_deref() == Some(task.as_str())
                || (q.scope_entry && q.spiffe_id == v.peer.spiffe_id.as_str())
        }) {
            return Verdict {
                counts: false,
                ..Verdict::deny(format!("quarantined: {}", q.reason))
            };
        }
        if !claims.tools.iter().any(|t| t == tool) {
            return Verdict::deny(format!("tool {tool} was not granted to task {task}"));
        }
        let book = match self.book(snap) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Verdict {
                    allow: true,
                    reason: format!("tool {tool} granted to task {task}"),
                    ..Verdict::deny("")
                };
            }
            Err(e) => {
                return Verdict::deny(format!("the policy set does not compile on this node: {e}"));
            }
        };
        let principal = Principal {
            spiffe_id: v.peer.spiffe_id.to_string(),
            node: v.node.clone(),
            selectors: vec![],
            exe_path: String::new(),
            exe_sha256: v.exe_sha256.clone(),
            // At the tool the caller's selectors and program are not known,
            // and its node and executable digest only from a task JWT: a
            // policy that reads them fails closed.
            unknown: lanyard_policy::Unknown {
                node: v.node.is_empty(),
                selectors: true,
                exe_path: true,
                exe_sha256: v.exe_sha256.is_empty(),
            },
        };
        let context = TaskContext::for_call(
            CallFacts {
                task_type: &claims.task_type,
                tools: &claims.tools,
                sensitivity: &claims.data_sensitivity,
                on_behalf_of: claims.on_behalf_of.as_deref(),
                parent_task_id: claims.parent_task_id.as_ref().map(ToString::to_string),
                not_after: claims.not_after,
                recent_denials: self.recent_denials(&workload_key(v), now),
                resource,
                call,
            },
            &snap.levels,
            now,
        );
        let d = book.decide(&lanyard_policy::Request {
            principal: &principal,
            action: Action::UseTool,
            resource: tool,
            context: &context,
        });
        let reason = if !d.reasons.is_empty() {
            d.reasons.join("; ")
        } else if d.allowed {
            format!("permitted by {}", d.policy_ids.join(", "))
        } else if d.policy_ids.is_empty() {
            format!("no policy permits UseTool {tool}")
        } else {
            format!("forbidden by {}", d.policy_ids.join(", "))
        };
        Verdict {
            allow: d.allowed,
            reason,
            policy_ids: d.policy_ids,
            quarantine: d.quarantine.then_some(d.quarantine_entry),
            approvals: d.approvals,
            ..Verdict::deny("")
        }
    }

    /// A denial counts towards quarantine: here at once (so this node
    /// refuses the task even with the server unreachable) and on the server,
    /// which adds up every enforcement point's reports.
    async fn after_denial(
        &self,
        r: &DecisionRecord,
        v: &Verdict,
        context_json: &str,
        workload: &str,
        now: SystemTime,
    ) {
        let (_, over) = self.count_denial(workload, now);
        self.owner.report_denial(lanyard_proto::server::Denial {
            task_id: r.task_id.clone(),
            spiffe_id: r.principal.clone(),
            tool: r.tool.clone(),
            reason: r.reason.clone(),
            quarantine: v.quarantine.is_some(),
            decision_id: r.decision_id.clone(),
            enforcement_point: r.enforcement_point.clone(),
            quarantine_entry: v.quarantine == Some(true),
            resource: r.resource.clone(),
            context_json: context_json.to_owned(),
        });
        let why = if v.quarantine.is_some() {
            Some(format!("forbidden tool {}: {}", r.tool, r.reason))
        } else if over {
            Some(format!(
                "more than {} denied tool calls in {}s (last: {} - {})",
                self.trigger.max_denials,
                self.trigger.window.as_secs(),
                r.tool,
                r.reason
            ))
        } else {
            None
        };
        if let Some(reason) = why {
            self.owner
                .local_quarantine(r.principal.clone(), r.task_id.clone(), reason)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_context_is_an_object_of_bounded_size() {
        assert_eq!(
            call_strings(r#"{"amount": 5, "to": "acme", "urgent": true}"#).unwrap(),
            vec!["amount=5", "to=acme", "urgent=true"]
        );
        assert!(call_strings("").unwrap().is_empty());
        assert!(matches!(call_strings("[1]"), Err(PdpError::Invalid(_))));
        assert!(matches!(
            call_strings("{not json"),
            Err(PdpError::Invalid(_))
        ));
        let big = format!(r#"{{"x": "{}"}}"#, "a".repeat(MAX_CONTEXT));
        assert!(matches!(call_strings(&big), Err(PdpError::Invalid(_))));
    }
}
