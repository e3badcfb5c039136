//! Approvals: how long after a person's answer a held call goes through.
//! A caller holds `AuthorizeToolCall` open (`wait_ms`) on a call an
//! `@approval` policy holds; the bench approves it on the admin socket and
//! times answer sent → held call allowed (server, agent and caller on this
//! machine). Target: p99 < 100 ms.

use std::time::{Duration, Instant};

use lanyard_proto::admin::{AnswerApprovalRequest, ListApprovalsRequest, SetPolicyRequest};
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallRequest, X509Chain};
use lanyard_uds::unix_channel;

use crate::procs::{self, Deployment};
use crate::stats::Report;
use crate::tasks::req;

/// The approver the bench answers as.
const APPROVER: &str = "user:bench@example.org";

/// The server configuration the scenario needs.
pub const SERVER_TOML: &str = "[[approver]]\nname = \"user:bench@example.org\"\n";

const POLICY: &str = r#"
@id("all") permit (principal, action, resource);
@id("held") @approval("any-operator")
permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"tool1")
when { context.at_call };
"#;

/// `samples` calls, one at a time: held, approved, released.
pub async fn run(d: &Deployment, samples: usize) -> anyhow::Result<Report> {
    let mut admin = procs::admin(&d.admin_socket)?;
    admin
        .set_policy(SetPolicyRequest {
            text: POLICY.into(),
            shadow: false,
            source_name: "approval.cedar".into(),
        })
        .await?;
    let (_, chain, _) = crate::enforce::task(d).await?;
    let call = |n: usize, wait_ms: u32| {
        let socket = d.socket.clone();
        let chain = chain.clone();
        async move {
            TaskIdentityClient::new(unix_channel(&socket)?)
                .authorize_tool_call(req(AuthorizeToolCallRequest {
                    credential: Some(Credential::X509Chain(X509Chain { certs: chain })),
                    tool: "tool1".into(),
                    context_json: format!(r#"{{"n": {n}}}"#),
                    wait_ms,
                    ..Default::default()
                }))
                .await
                .map(tonic::Response::into_inner)
                .map_err(anyhow::Error::from)
        }
    };
    // The agent has the policy once a call is held.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !call(usize::MAX, 0).await?.pending {
        anyhow::ensure!(Instant::now() < deadline, "the agent never held a call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(samples);
    let mut errors = 0;
    for n in 0..samples {
        let held = tokio::spawn(call(n, 30_000));
        let id = loop {
            let pending = admin
                .list_approvals(ListApprovalsRequest { all: false })
                .await?
                .into_inner()
                .approvals;
            if let Some(a) = pending
                .iter()
                .find(|a| a.arguments_json == format!(r#"{{"n": {n}}}"#))
            {
                break a.id.clone();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let t = Instant::now();
        admin
            .answer_approval(AnswerApprovalRequest {
                id,
                approve: true,
                approver: APPROVER.into(),
                reason: String::new(),
            })
            .await?;
        let r = held.await??;
        if r.allow {
            lat.push(t.elapsed());
        } else {
            errors += 1;
            if errors == 1 {
                eprintln!("  [approval] first refusal: {}", r.reason);
            }
        }
    }
    Ok(Report::from_samples(
        "approval answered -> held call allowed",
        lat,
        errors,
        start.elapsed(),
        false,
    ))
}
