//! AuthorizeToolCall with a task WIT-SVID and a fresh proof per call: the
//! WIT validated once and cached, the proof checked and taken every call.

use std::time::{Duration, SystemTime};

use lanyard_core::jwt::wit::{WorkloadKey, WptRequest, sign_wpt};
use lanyard_proto::task::WitProof;
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::workload::WitsvidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_uds::unix_channel;

use crate::enforce::{call, decide_loop, task};
use crate::procs::Deployment;
use crate::stats::Report;
use crate::tasks::{TASK_ID, req};

/// The request target every proof names.
const TARGET: &str = "https://tool.bench/call";

/// [`crate::enforce::authorize`] with the task's WIT-SVID: the proof is
/// signed before each call's timing starts.
pub async fn authorize_wit(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Report, f64)> {
    let (task_id, _, _) = task(d).await?;
    let mut stream = SpiffeWorkloadApiClient::new(unix_channel(&d.socket)?)
        .fetch_witsvid(req(WitsvidRequest {
            spiffe_id: TASK_ID.into(),
        }))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the WIT stream ended"))?;
    // The newest task's WIT comes first.
    let wit = first
        .svids
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no WIT-SVID for task {task_id}"))?;
    let key = std::sync::Arc::new(WorkloadKey::from_private_jwk(&wit.wit_svid_key)?);
    let token = wit.wit_svid;
    let make = move |w: usize| {
        let target = WptRequest {
            target_uri: TARGET,
            ..Default::default()
        };
        let wpt = sign_wpt(
            &key,
            &token,
            &target,
            Duration::from_secs(30),
            SystemTime::now(),
        )?;
        let mut r = call(
            w,
            Credential::Wit(WitProof {
                wit_svid: token.clone(),
                wpt,
                ..Default::default()
            }),
        );
        r.target_uri = TARGET.into();
        Ok(r)
    };
    decide_loop(d, concurrency, duration, "authorize-wit", make).await
}
