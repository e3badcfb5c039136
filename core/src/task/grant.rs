//! A task request (as the agent forwards it) and the grant the server
//! decides: the grant's RFC 8785 form is what the claims' digest covers.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::canonical::canonical_json;
use super::claims::TaskClaims;
use super::names::{
    MAX_DESTINATIONS, MAX_INTENT_LEN, MAX_TOOLS, TaskError, TaskId, check_destination,
    check_on_behalf_of, check_task_type, check_tool,
};
use super::sensitivity::SensitivityLevels;
use crate::clock::from_unix_secs;
use crate::spiffe_id::SpiffeId;

/// What a workload asks for when it begins a task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskRequest {
    /// Task type, e.g. `report.generate`.
    pub task_type: String,
    /// Free text saying what the task is for (only its digest goes into
    /// credentials).
    pub intent: String,
    /// Tools asked for; sorted and de-duplicated by [`TaskRequest::check`].
    pub tools: Vec<String>,
    /// Destinations the task will reach (hosts, URLs, services).
    pub destinations: Vec<String>,
    /// Data sensitivity level asked for; empty means the lowest level.
    pub data_sensitivity: String,
    /// Requested lifetime.
    pub ttl: Duration,
    /// The principal the task acts for.
    pub on_behalf_of: Option<String>,
    /// Begin with the permitted tools when some are denied.
    pub allow_partial: bool,
    /// For a delegated sub-task: the parent task.
    pub parent_task_id: Option<TaskId>,
    /// For a delegated sub-task: the token from `DelegateTask`.
    pub delegation_token: Option<String>,
}

impl TaskRequest {
    /// Validates every field, normalises the lists and fills in the
    /// lowest sensitivity level when none was named.
    pub fn check(self, levels: &SensitivityLevels) -> Result<Self, TaskError> {
        let mut r = self.check_shape()?;
        if r.data_sensitivity.is_empty() {
            r.data_sensitivity = levels.lowest().to_owned();
        }
        levels.rank(&r.data_sensitivity)?;
        Ok(r)
    }

    /// Every check that needs no configuration (all but the sensitivity
    /// level, which the server's levels decide), normalising the lists: what
    /// a node agent can refuse before forwarding.
    pub fn check_shape(mut self) -> Result<Self, TaskError> {
        check_task_type(&self.task_type)?;
        if self.intent.len() > MAX_INTENT_LEN || self.intent.chars().any(char::is_control) {
            return Err(TaskError::BadIntent);
        }
        if self.tools.len() > MAX_TOOLS {
            return Err(TaskError::TooManyTools);
        }
        self.tools.iter().try_for_each(|t| check_tool(t))?;
        self.tools.sort();
        self.tools.dedup();
        if self.destinations.len() > MAX_DESTINATIONS {
            return Err(TaskError::TooManyDestinations);
        }
        self.destinations
            .iter()
            .try_for_each(|d| check_destination(d))?;
        self.destinations.sort();
        self.destinations.dedup();
        if let Some(obo) = &self.on_behalf_of {
            check_on_behalf_of(obo)?;
        }
        if self.ttl.is_zero() {
            return Err(TaskError::BadTtl { max: 0 });
        }
        if self.parent_task_id.is_some() != self.delegation_token.is_some() {
            return Err(TaskError::Malformed(
                "parent_task_id and delegation_token go together".into(),
            ));
        }
        Ok(self)
    }

    /// Lowercase hex SHA-256 of the intent text.
    pub fn intent_sha256(&self) -> String {
        sha256_hex(self.intent.as_bytes())
    }
}

/// One link of a delegation chain: the parent task and its workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Actor {
    /// The delegating workload's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its task.
    pub task_id: TaskId,
}

/// The grant a task holds: exactly what its credentials carry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskGrant {
    /// The task.
    pub task_id: TaskId,
    /// The workload identity (the entry's SPIFFE ID).
    pub spiffe_id: SpiffeId,
    /// Task type.
    pub task_type: String,
    /// Granted tools, sorted.
    pub tools: Vec<String>,
    /// Declared destinations, sorted.
    pub destinations: Vec<String>,
    /// Granted data sensitivity level.
    pub data_sensitivity: String,
    /// The principal the task acts for.
    pub on_behalf_of: Option<String>,
    /// Lowercase hex SHA-256 of the intent text.
    pub intent_sha256: String,
    /// Task expiry, Unix seconds.
    pub not_after: u64,
    /// Delegation chain, nearest parent first; empty for a root task.
    pub chain: Vec<Actor>,
}

impl TaskGrant {
    /// The grant as JSON (the input of the canonical digest).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("v".into(), json!(1));
        m.insert("task_id".into(), json!(self.task_id.as_str()));
        m.insert("spiffe_id".into(), json!(self.spiffe_id.as_str()));
        m.insert("task_type".into(), json!(self.task_type));
        m.insert("tools".into(), json!(self.tools));
        m.insert("destinations".into(), json!(self.destinations));
        m.insert("data_sensitivity".into(), json!(self.data_sensitivity));
        m.insert("intent_sha256".into(), json!(self.intent_sha256));
        m.insert("not_after".into(), json!(self.not_after));
        if let Some(obo) = &self.on_behalf_of {
            m.insert("on_behalf_of".into(), json!(obo));
        }
        if !self.chain.is_empty() {
            let chain: Vec<Value> = self
                .chain
                .iter()
                .map(|a| json!({"sub": a.spiffe_id.as_str(), "txn": a.task_id.as_str()}))
                .collect();
            m.insert("chain".into(), Value::Array(chain));
        }
        Value::Object(m)
    }

    /// The RFC 8785 text of the grant.
    pub fn canonical(&self) -> String {
        // Every number in a grant is a Unix time or the version: always
        // a safe integer, so canonicalisation cannot fail.
        canonical_json(&self.to_json()).unwrap_or_default()
    }

    /// SHA-256 of [`TaskGrant::canonical`].
    pub fn digest(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.canonical().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The parent task, for a delegated task.
    pub fn parent_task_id(&self) -> Option<&TaskId> {
        self.chain.first().map(|a| &a.task_id)
    }

    /// The claims carried by the task's SVIDs.
    pub fn claims(&self) -> TaskClaims {
        TaskClaims {
            task_id: self.task_id.clone(),
            task_type: self.task_type.clone(),
            tools: self.tools.clone(),
            data_sensitivity: self.data_sensitivity.clone(),
            grant_digest: self.digest(),
            on_behalf_of: self.on_behalf_of.clone(),
            not_after: Some(from_unix_secs(self.not_after)),
            parent_task_id: self.parent_task_id().cloned(),
            destinations: self.destinations.clone(),
        }
    }

    /// The claims a task JWT-SVID carries besides the standard ones:
    /// `txn`, `scope`, `tctx`, `rctx` and, for a delegated task, `act`
    /// (RFC 8693: the nearest actor outermost, earlier ones nested).
    pub fn jwt_claims(&self, node: &SpiffeId, exe_sha256: Option<&str>) -> Map<String, Value> {
        let mut tctx = self.claims().tctx_base();
        tctx.insert("intent_sha256".into(), json!(self.intent_sha256));
        let mut rctx = Map::new();
        rctx.insert("node".into(), json!(node.as_str()));
        if let Some(h) = exe_sha256 {
            rctx.insert("exe_sha256".into(), json!(h));
        }
        let mut m = Map::new();
        m.insert("txn".into(), json!(self.task_id.as_str()));
        m.insert("scope".into(), json!(self.task_type));
        m.insert("tctx".into(), Value::Object(tctx));
        m.insert("rctx".into(), Value::Object(rctx));
        let act = self.chain.iter().rev().fold(None, |inner, a| {
            let mut o = Map::new();
            o.insert("sub".into(), json!(a.spiffe_id.as_str()));
            o.insert("txn".into(), json!(a.task_id.as_str()));
            if let Some(i) = inner {
                o.insert("act".into(), i);
            }
            Some(Value::Object(o))
        });
        if let Some(act) = act {
            m.insert("act".into(), act);
        }
        m
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn grant() -> TaskGrant {
        TaskGrant {
            task_id: TaskId::new("00112233445566778899aabbccddeeff").unwrap(),
            spiffe_id: SpiffeId::new("spiffe://td/agent/planner").unwrap(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into(), "email.send".into()],
            destinations: vec!["crm.example.com".into()],
            data_sensitivity: "confidential".into(),
            on_behalf_of: Some("user:alice@example.com".into()),
            intent_sha256: sha256_hex(b"quarterly report"),
            not_after: 1_800_000_000,
            chain: vec![],
        }
    }

    #[test]
    fn canonical_vector() {
        let g = grant();
        assert_eq!(
            g.canonical(),
            concat!(
                r#"{"data_sensitivity":"confidential","destinations":["crm.example.com"],"#,
                r#""intent_sha256":"07da4984cc545b940a1ed292475591bc0dea3044a438bb021db0a0f575c74418","#,
                r#""not_after":1800000000,"on_behalf_of":"user:alice@example.com","#,
                r#""spiffe_id":"spiffe://td/agent/planner","task_id":"00112233445566778899aabbccddeeff","#,
                r#""task_type":"report.generate","tools":["crm.read","email.send"],"v":1}"#
            )
        );
        assert_eq!(
            hex::encode(g.digest()),
            sha256_hex(g.canonical().as_bytes())
        );
    }

    #[test]
    fn claims_round_trip_through_x509_der_and_jwt() {
        let mut g = grant();
        g.chain = vec![
            Actor {
                spiffe_id: SpiffeId::new("spiffe://td/agent/orchestrator").unwrap(),
                task_id: TaskId::new("ffeeddccbbaa99887766554433221100").unwrap(),
            },
            Actor {
                spiffe_id: SpiffeId::new("spiffe://td/agent/root").unwrap(),
                task_id: TaskId::new("0123456789abcdef0123456789abcdef").unwrap(),
            },
        ];
        let claims = g.claims();
        assert_eq!(TaskClaims::from_der(&claims.to_der()).unwrap(), claims);
        let node = SpiffeId::new("spiffe://td/node/n1").unwrap();
        let jwt = g.jwt_claims(&node, Some("ab"));
        assert_eq!(TaskClaims::from_jwt_claims(&jwt).unwrap(), Some(claims));
        assert_eq!(jwt["act"]["sub"], "spiffe://td/agent/orchestrator");
        assert_eq!(jwt["act"]["act"]["txn"], "0123456789abcdef0123456789abcdef");
        assert_eq!(jwt["rctx"]["exe_sha256"], "ab");
        assert_eq!(TaskClaims::from_jwt_claims(&Map::new()).unwrap(), None);
    }

    #[test]
    fn request_checks() {
        let levels = SensitivityLevels::default();
        let ok = TaskRequest {
            task_type: "t".into(),
            tools: vec!["b".into(), "a".into(), "b".into()],
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let checked = ok.clone().check(&levels).unwrap();
        assert_eq!(checked.tools, vec!["a", "b"]);
        assert_eq!(checked.data_sensitivity, "public");
        let mut r = ok.clone();
        r.tools = (0..10_000).map(|i| format!("t{i}")).collect();
        assert_eq!(r.check(&levels), Err(TaskError::TooManyTools));
        let mut r = ok.clone();
        r.ttl = Duration::ZERO;
        assert!(matches!(r.check(&levels), Err(TaskError::BadTtl { .. })));
        let mut r = ok.clone();
        r.data_sensitivity = "secret".into();
        assert!(matches!(
            r.check(&levels),
            Err(TaskError::UnknownSensitivity { .. })
        ));
        let mut r = ok;
        r.task_type = "../etc".into();
        assert!(matches!(r.check(&levels), Err(TaskError::BadTaskType(_))));
    }
}
