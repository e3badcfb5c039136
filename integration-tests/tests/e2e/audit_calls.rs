//! The audit flow's step for enforcement points in the path: a call
//! decided with `outcome_follows` and its outcome recorded once.

use crate::enforce_support::*;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;

/// An enforcement point in the path reports what became of a call it had
/// decided with `outcome_follows`: one `tool.call` record; a second report
/// of the same decision, or of one never made, is not recorded.
pub async fn a_call_and_its_outcome_recorded_once(s: &Setup, holder: &Holder) {
    use lanyard_proto::task::{AuthorizeToolCallRequest, RecordToolCallsRequest, ToolCallOutcome};
    let mut tasks = TaskIdentityClient::new(lanyard_uds::unix_channel(&s.socket).unwrap());
    let d = tasks
        .authorize_tool_call(header(AuthorizeToolCallRequest {
            credential: Some(x509(&holder.chain)),
            tool: "crm.read".into(),
            outcome_follows: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow, "{d:?}");
    let report = |id: &str| RecordToolCallsRequest {
        outcomes: vec![ToolCallOutcome {
            decision_id: id.into(),
            upstream: "crm".into(),
            method: "tools/call read_contact".into(),
            status: 200,
            bytes_in: 80,
            bytes_out: 120,
            latency_us: 900,
            error: String::new(),
        }],
    };
    let first = tasks
        .record_tool_calls(header(report(&d.decision_id)))
        .await
        .unwrap()
        .into_inner();
    assert!(first.unknown.is_empty(), "{first:?}");
    for id in [d.decision_id.as_str(), "no-such-decision"] {
        let again = tasks
            .record_tool_calls(header(report(id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.unknown, vec![id.to_owned()]);
    }
}
