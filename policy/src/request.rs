//! What a decision is asked about, in Lanyard's terms.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression,
};
use serde_json::{Map, Value};

/// The actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Begin a task of a type (resource: `TaskType`).
    BeginTask,
    /// Use one tool inside a task (resource: `Tool`).
    UseTool,
    /// Hand a sub-task to another workload (resource: `TaskType`).
    Delegate,
    /// Obtain a credential from a provider inside a task (resource:
    /// `Credential`).
    GetCredential,
}

impl Action {
    /// All actions.
    pub const ALL: [Action; 4] = [
        Action::BeginTask,
        Action::UseTool,
        Action::Delegate,
        Action::GetCredential,
    ];

    /// The action's name in the schema.
    pub fn name(self) -> &'static str {
        match self {
            Self::BeginTask => "BeginTask",
            Self::UseTool => "UseTool",
            Self::Delegate => "Delegate",
            Self::GetCredential => "GetCredential",
        }
    }

    /// The entity type of the action's resources.
    pub(crate) fn resource_type(self) -> &'static str {
        match self {
            Self::UseTool => "Lanyard::Tool",
            Self::BeginTask | Self::Delegate => "Lanyard::TaskType",
            Self::GetCredential => "Lanyard::Credential",
        }
    }

    pub(crate) fn uid(self) -> Result<EntityUid, String> {
        uid("Lanyard::Action", self.name())
    }
}

/// The workload asking, as attested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The entry's SPIFFE ID.
    pub spiffe_id: String,
    /// The agent's SPIFFE ID.
    pub node: String,
    /// Attested selectors.
    pub selectors: Vec<String>,
    /// Executable path, or empty.
    pub exe_path: String,
    /// Executable SHA-256 (hex), or empty.
    pub exe_sha256: String,
    /// Attributes the deciding side does not know for this principal (the
    /// node agent at a tool call knows neither the caller's selectors nor
    /// its program, and an X.509 caller attested on another node brings
    /// neither its node nor its executable digest). A policy that could
    /// apply and reads one of them makes the decision a denial: deciding
    /// with a blank in its place could let a `forbid` miss.
    pub unknown: Unknown,
}

/// Which principal attributes are unknown (see [`Principal::unknown`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Unknown {
    /// `principal.node` and `principal in Lanyard::Node::...`.
    pub node: bool,
    /// `principal.selectors`.
    pub selectors: bool,
    /// `principal.exe_path`.
    pub exe_path: bool,
    /// `principal.exe_sha256`.
    pub exe_sha256: bool,
}

impl Unknown {
    /// Nothing is unknown.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether the attribute `name` is unknown.
    pub(crate) fn contains(self, name: &str) -> bool {
        match name {
            "node" => self.node,
            "selectors" => self.selectors,
            "exe_path" => self.exe_path,
            "exe_sha256" => self.exe_sha256,
            _ => false,
        }
    }

    /// True when every attribute is known.
    pub fn is_empty(self) -> bool {
        self == Self::default()
    }
}

/// The task request as policy context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskContext {
    /// Task type.
    pub task_type: String,
    /// All requested tools.
    pub tools: Vec<String>,
    /// Declared destinations.
    pub destinations: Vec<String>,
    /// Sensitivity level name.
    pub sensitivity: String,
    /// Its rank (0 = lowest).
    pub sensitivity_rank: i64,
    /// Requested lifetime.
    pub ttl_seconds: i64,
    /// On-behalf-of principal, or empty.
    pub on_behalf_of: String,
    /// Intent text.
    pub intent: String,
    /// UTC hour, 0-23.
    pub hour: i64,
    /// Parent task ID, or empty.
    pub parent_task_id: String,
    /// Delegation target, or empty.
    pub delegate_to: String,
    /// Recent denials of this workload.
    pub recent_denials: i64,
    /// Deciding a live tool call (AuthorizeToolCall).
    pub at_call: bool,
    /// The resource a tool is called on, or empty.
    pub resource: String,
    /// The call's context as `key=value` strings.
    pub call: Vec<String>,
    /// GetCredential: the scopes asked for.
    pub scopes: Vec<String>,
    /// GetCredential: where the credential will be used, or empty.
    pub target: String,
    /// Extra members (from `policy test --context`), merged over the above.
    pub extra: Map<String, Value>,
}

impl TaskContext {
    /// The context as typed Cedar values (the same members as
    /// [`TaskContext::to_json`] without `extra`).
    pub(crate) fn to_pairs(&self) -> Vec<(String, RestrictedExpression)> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let set = |items: &[String]| {
            RestrictedExpression::new_set(
                items
                    .iter()
                    .map(|i| RestrictedExpression::new_string(i.clone())),
            )
        };
        let n = RestrictedExpression::new_long;
        vec![
            ("task_type".into(), s(&self.task_type)),
            ("tools".into(), set(&self.tools)),
            ("destinations".into(), set(&self.destinations)),
            ("sensitivity".into(), s(&self.sensitivity)),
            ("sensitivity_rank".into(), n(self.sensitivity_rank)),
            ("ttl_seconds".into(), n(self.ttl_seconds)),
            ("on_behalf_of".into(), s(&self.on_behalf_of)),
            ("intent".into(), s(&self.intent)),
            ("hour".into(), n(self.hour)),
            ("parent_task_id".into(), s(&self.parent_task_id)),
            ("delegate_to".into(), s(&self.delegate_to)),
            ("recent_denials".into(), n(self.recent_denials)),
            (
                "at_call".into(),
                RestrictedExpression::new_bool(self.at_call),
            ),
            ("resource".into(), s(&self.resource)),
            ("call".into(), set(&self.call)),
            ("scopes".into(), set(&self.scopes)),
            ("target".into(), s(&self.target)),
        ]
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("task_type".into(), self.task_type.clone().into());
        m.insert("tools".into(), self.tools.clone().into());
        m.insert("destinations".into(), self.destinations.clone().into());
        m.insert("sensitivity".into(), self.sensitivity.clone().into());
        m.insert("sensitivity_rank".into(), self.sensitivity_rank.into());
        m.insert("ttl_seconds".into(), self.ttl_seconds.into());
        m.insert("on_behalf_of".into(), self.on_behalf_of.clone().into());
        m.insert("intent".into(), self.intent.clone().into());
        m.insert("hour".into(), self.hour.into());
        m.insert("parent_task_id".into(), self.parent_task_id.clone().into());
        m.insert("delegate_to".into(), self.delegate_to.clone().into());
        m.insert("recent_denials".into(), self.recent_denials.into());
        m.insert("at_call".into(), self.at_call.into());
        m.insert("resource".into(), self.resource.clone().into());
        m.insert("call".into(), self.call.clone().into());
        m.insert("scopes".into(), self.scopes.clone().into());
        m.insert("target".into(), self.target.clone().into());
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// One question: may `principal` do `action` on `resource` in `context`?
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who.
    pub principal: &'a Principal,
    /// What.
    pub action: Action,
    /// On what: a task type, a tool or a credential provider's name.
    pub resource: &'a str,
    /// With which task.
    pub context: &'a TaskContext,
}

/// The entity `type_name::"id"` (the type names are the schema's own
/// constants; `EntityId` accepts any string).
pub(crate) fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let ty = type_name
        .parse::<EntityTypeName>()
        .map_err(|e| format!("entity type {type_name}: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// A principal as Cedar sees it: its entity and the entities (itself and
/// its node) a decision reads. It depends only on the principal, so it is
/// built once per principal and shared ([`crate::PolicyBook`] keeps them).
pub(crate) struct Who {
    pub(crate) principal: EntityUid,
    pub(crate) entities: Entities,
}

impl Who {
    pub(crate) fn new(principal: &Principal) -> Result<Self, String> {
        let node = uid("Lanyard::Node", &principal.node)?;
        let p_uid = uid("Lanyard::Workload", &principal.spiffe_id)?;
        let set = |items: &[String]| {
            RestrictedExpression::new_set(
                items
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            )
        };
        let attrs = HashMap::from([
            (
                "spiffe_id".to_owned(),
                RestrictedExpression::new_string(principal.spiffe_id.clone()),
            ),
            (
                "node".to_owned(),
                RestrictedExpression::new_string(principal.node.clone()),
            ),
            ("selectors".to_owned(), set(&principal.selectors)),
            (
                "exe_path".to_owned(),
                RestrictedExpression::new_string(principal.exe_path.clone()),
            ),
            (
                "exe_sha256".to_owned(),
                RestrictedExpression::new_string(principal.exe_sha256.clone()),
            ),
        ]);
        let workload = Entity::new(p_uid.clone(), attrs, HashSet::from([node.clone()]))
            .map_err(|e| e.to_string())?;
        let entities =
            Entities::from_entities([workload, Entity::new_no_attrs(node, HashSet::new())], None)
                .map_err(|e| e.to_string())?;
        Ok(Self {
            principal: p_uid,
            entities,
        })
    }
}

/// The entities and context of a request, built once and shared by every
/// decision about the same task.
pub(crate) struct Prepared {
    pub(crate) who: Arc<Who>,
    pub(crate) unknown: Unknown,
    pub(crate) context: Context,
}

impl Prepared {
    pub(crate) fn new(
        who: Arc<Who>,
        unknown: Unknown,
        context: &TaskContext,
    ) -> Result<Self, String> {
        // Built from typed values: parsing the same context from JSON costs
        // most of a decision (Cedar's JSON reader tries several shapes per
        // value). Extra members (`policy test --context`) still go through
        // JSON, which accepts any shape.
        let context = if context.extra.is_empty() {
            Context::from_pairs(context.to_pairs()).map_err(|e| e.to_string())?
        } else {
            Context::from_json_value(context.to_json(), None).map_err(|e| e.to_string())?
        };
        Ok(Self {
            who,
            unknown,
            context,
        })
    }
}
