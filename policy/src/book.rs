//! A compiled policy set: parsed, validated against the schema, given its
//! policy IDs (`@id("...")` or `policyN`), and sliced by action and by the
//! resource a policy's scope names.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, Authorizer, Decision as CedarDecision, Effect, PolicyId, PolicySet,
    ResourceConstraint, Schema, ValidationMode, Validator,
};

use crate::approval::{Approval, annotation};
use crate::error::{PolicyError, located};
use crate::request::{Action, Prepared, Principal, Request, TaskContext, Who, uid};

/// Principals whose entities are kept (all are dropped when more arrive:
/// a node decides for a few hundred workloads at most, each a few KB).
const MAX_WHO: usize = 1024;

/// Most policies one set may hold.
pub const MAX_POLICIES: usize = 100_000;
/// Largest policy text accepted, bytes.
pub const MAX_TEXT: usize = 16 * 1024 * 1024;

/// A decision with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Permitted.
    pub allowed: bool,
    /// The policies that decided: the permits that allowed, or the forbids
    /// that denied (empty when nothing permitted: default deny).
    pub policy_ids: Vec<String>,
    /// Their `@reason` annotations, where present.
    pub reasons: Vec<String>,
    /// Whether a deciding `forbid` carries `@quarantine`.
    pub quarantine: bool,
    /// Whether it says `@quarantine("entry")`: every instance of the
    /// workload's entry, on every node (otherwise the one instance).
    pub quarantine_entry: bool,
    /// Policies that failed to evaluate (they are skipped, as Cedar does).
    pub errors: Vec<String>,
    /// When allowed: the satisfied permits that carry `@approval` (any one
    /// makes the answer "allowed once a person approves", even when an
    /// unannotated permit matches too). Empty when denied.
    pub approvals: Vec<Approval>,
}

impl Decision {
    /// Allowed, but only once a person approves.
    pub fn needs_approval(&self) -> bool {
        self.allowed && !self.approvals.is_empty()
    }
}

/// What a policy's annotations say, beside its rule.
struct Notes {
    reason: Option<String>,
    /// A forbid's `@quarantine` value.
    quarantine: Option<String>,
    approval: Option<Approval>,
}

/// The policies that can apply to one (action, resource).
#[derive(Default)]
struct Slices {
    /// By resource name: the policies naming it plus those naming none.
    by_resource: HashMap<String, PolicySet>,
    /// Policies whose scope names no particular resource.
    any_resource: PolicySet,
    /// Per slice (keyed by resource name; "" for `any_resource`): for each
    /// principal attribute that may be unknown, the first policy of the
    /// slice that reads it.
    reads: HashMap<String, Vec<(&'static str, String)>>,
}

/// For each attribute `set`'s policies read, the first policy reading it.
fn slice_reads(
    set: &PolicySet,
    reads: &HashMap<String, BTreeSet<&'static str>>,
) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for p in set.policies() {
        let id = p.id().to_string();
        for attr in reads.get(&id).into_iter().flatten() {
            if !out.iter().any(|(a, _)| a == attr) {
                out.push((attr, id.clone()));
            }
        }
    }
    out
}

/// A validated, sliced policy set.
pub struct PolicyBook {
    slices: HashMap<Action, Slices>,
    /// `@reason`, `@quarantine` and `@approval` per policy ID.
    notes: HashMap<String, Notes>,
    count: usize,
    authorizer: Authorizer,
    /// Each principal's entities, built once (a decision otherwise spends
    /// about a third of its Cedar time building them again).
    who: Mutex<HashMap<Principal, Arc<Who>>>,
}

impl std::fmt::Debug for PolicyBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBook")
            .field("policies", &self.count)
            .finish()
    }
}

fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(crate::SCHEMA)
        .map(|(s, _)| s)
        .map_err(|e| PolicyError::Schema(e.to_string()))
}

impl PolicyBook {
    /// Parses and validates `text` (named `source` in errors).
    pub fn compile(text: &str, source: &str) -> Result<Arc<Self>, PolicyError> {
        if text.len() > MAX_TEXT {
            return Err(PolicyError::TooLarge(format!("more than {MAX_TEXT} bytes")));
        }
        let parsed: PolicySet = text.parse().map_err(|e: cedar_policy::ParseErrors| {
            PolicyError::Invalid(e.iter().map(|d| located(source, text, d)).collect())
        })?;
        let schema = schema()?;
        let result = Validator::new(schema).validate(&parsed, ValidationMode::Strict);
        let errors: Vec<String> = result
            .validation_errors()
            .map(|d| located(source, text, d))
            .collect();
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Invalid(vec![format!(
                "{source}: policy templates are not supported"
            )]));
        }
        let mut renamed = Vec::new();
        let mut seen = HashMap::new();
        for p in parsed.policies() {
            let id = p
                .annotation("id")
                .map_or_else(|| p.id().to_string(), str::to_owned);
            if seen.insert(id.clone(), ()).is_some() {
                return Err(PolicyError::Invalid(vec![format!(
                    "{source}: policy ID {id:?} is used twice"
                )]));
            }
            renamed.push(p.new_id(PolicyId::new(&id)));
        }
        if renamed.len() > MAX_POLICIES {
            return Err(PolicyError::TooLarge(format!(
                "more than {MAX_POLICIES} policies"
            )));
        }
        let mut book = PolicyBook {
            slices: HashMap::new(),
            notes: HashMap::new(),
            count: renamed.len(),
            authorizer: Authorizer::new(),
            who: Mutex::default(),
        };
        let mut reads: HashMap<String, BTreeSet<&'static str>> = HashMap::new();
        for p in &renamed {
            let r = crate::reads::principal_reads(p);
            if !r.is_empty() {
                reads.insert(p.id().to_string(), r);
            }
        }
        let mut refused = Vec::new();
        for p in &renamed {
            let approval = annotation(p, source).unwrap_or_else(|e| {
                refused.push(e);
                None
            });
            book.notes.insert(
                p.id().to_string(),
                Notes {
                    reason: p.annotation("reason").map(str::to_owned),
                    quarantine: p
                        .annotation("quarantine")
                        .filter(|_| p.effect() == Effect::Forbid)
                        .map(str::to_owned),
                    approval,
                },
            );
        }
        if !refused.is_empty() {
            return Err(PolicyError::Invalid(refused));
        }
        let add = |set: &mut PolicySet, p: &cedar_policy::Policy| {
            set.add(p.clone())
                .map_err(|e| PolicyError::Invalid(vec![format!("{source}: {e}")]))
        };
        for action in Action::ALL {
            let action_uid = action.uid().map_err(PolicyError::Schema)?;
            let mut slices = Slices::default();
            let mut named: Vec<(String, &cedar_policy::Policy)> = Vec::new();
            for p in &renamed {
                let applies = match p.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == action_uid,
                    ActionConstraint::In(list) => list.contains(&action_uid),
                };
                if !applies {
                    continue;
                }
                match p.resource_constraint() {
                    ResourceConstraint::Eq(r) | ResourceConstraint::In(r)
                        if r.type_name().to_string() == action.resource_type() =>
                    {
                        // Tools and task types have no parents, so `in` is `==`.
                        named.push((r.id().unescaped().to_owned(), p));
                    }
                    ResourceConstraint::Eq(_) | ResourceConstraint::In(_) => {}
                    _ => add(&mut slices.any_resource, p)?,
                }
            }
            for (resource, p) in named {
                if !slices.by_resource.contains_key(&resource) {
                    let mut set = PolicySet::new();
                    for q in slices.any_resource.policies() {
                        add(&mut set, q)?;
                    }
                    slices.by_resource.insert(resource.clone(), set);
                }
                if let Some(set) = slices.by_resource.get_mut(&resource) {
                    add(set, p)?;
                }
            }
            if !reads.is_empty() {
                slices
                    .reads
                    .insert(String::new(), slice_reads(&slices.any_resource, &reads));
                for (resource, set) in &slices.by_resource {
                    slices
                        .reads
                        .insert(resource.clone(), slice_reads(set, &reads));
                }
            }
            book.slices.insert(action, slices);
        }
        Ok(Arc::new(book))
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a set without policies (which denies everything).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The principal's entities, built on first use.
    fn who(&self, principal: &Principal) -> Result<Arc<Who>, String> {
        let lock = || self.who.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = lock().get(principal) {
            return Ok(w.clone());
        }
        let w = Arc::new(Who::new(principal)?);
        let mut m = lock();
        if m.len() >= MAX_WHO {
            m.clear();
        }
        m.insert(principal.clone(), w.clone());
        Ok(w)
    }

    fn prepare(&self, principal: &Principal, context: &TaskContext) -> Result<Prepared, String> {
        Prepared::new(self.who(principal)?, principal.unknown, context)
    }

    /// Decides one request.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        match self.prepare(req.principal, req.context) {
            Ok(prepared) => self.decide_prepared(&prepared, req.action, req.resource),
            Err(e) => deny_error(e),
        }
    }

    /// Decides several resources for the same principal and task, building
    /// the entities and context once.
    pub fn decide_many(
        &self,
        principal: &Principal,
        context: &TaskContext,
        action: Action,
        resources: &[String],
    ) -> Vec<Decision> {
        match self.prepare(principal, context) {
            Ok(p) => resources
                .iter()
                .map(|r| self.decide_prepared(&p, action, r))
                .collect(),
            Err(e) => resources.iter().map(|_| deny_error(e.clone())).collect(),
        }
    }

    fn decide_prepared(&self, p: &Prepared, action: Action, resource: &str) -> Decision {
        let Some(slices) = self.slices.get(&action) else {
            return deny_error("unknown action".into());
        };
        let (set, key) = match slices.by_resource.get(resource) {
            Some(set) => (set, resource),
            None => (&slices.any_resource, ""),
        };
        if !p.unknown.is_empty()
            && let Some((attr, id)) = slices
                .reads
                .get(key)
                .into_iter()
                .flatten()
                .find(|(attr, _)| p.unknown.contains(attr))
        {
            // Deciding with a blank for the attribute could let a forbid
            // miss: fail closed, and say which policy needs what.
            return Decision {
                allowed: false,
                policy_ids: vec![id.clone()],
                reasons: vec![format!(
                    "policy {id} reads principal.{attr}, which is not known here for this caller (a task JWT-SVID carries node and exe_sha256; selectors and exe_path are known only at BeginTask)"
                )],
                quarantine: false,
                quarantine_entry: false,
                errors: vec![],
                approvals: vec![],
            };
        }
        let built = action.uid().and_then(|a| {
            let r = uid(action.resource_type(), resource)?;
            cedar_policy::Request::new(p.who.principal.clone(), a, r, p.context.clone(), None)
                .map_err(|e| e.to_string())
        });
        let request = match built {
            Ok(r) => r,
            Err(e) => return deny_error(e),
        };
        let response = self
            .authorizer
            .is_authorized(&request, set, &p.who.entities);
        let diag = response.diagnostics();
        let mut policy_ids: Vec<String> = diag.reason().map(ToString::to_string).collect();
        policy_ids.sort();
        let mut reasons = Vec::new();
        let mut quarantine = false;
        let mut quarantine_entry = false;
        let mut approvals = Vec::new();
        for id in &policy_ids {
            if let Some(n) = self.notes.get(id) {
                reasons.extend(n.reason.clone());
                quarantine |= n.quarantine.is_some();
                quarantine_entry |= n.quarantine.as_deref() == Some("entry");
                approvals.extend(n.approval.clone());
            }
        }
        let allowed = response.decision() == CedarDecision::Allow;
        if !allowed {
            approvals.clear();
        }
        Decision {
            allowed,
            quarantine: quarantine && !allowed,
            quarantine_entry: quarantine_entry && !allowed,
            policy_ids,
            reasons,
            errors: diag.errors().map(ToString::to_string).collect(),
            approvals,
        }
    }
}

fn deny_error(e: String) -> Decision {
    Decision {
        allowed: false,
        policy_ids: vec![],
        reasons: vec![],
        quarantine: false,
        quarantine_entry: false,
        errors: vec![e],
        approvals: vec![],
    }
}

#[cfg(test)]
mod tests;
