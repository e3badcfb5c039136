//! Call outcomes on their way to the node agent: queued as calls end and
//! sent in batches (one `RecordToolCalls` for up to 500 outcomes, or what
//! 20 ms gathered), so recording costs the agent one call per batch, not
//! one per tool call. The queue is bounded; when it is full an outcome is
//! dropped and said (its decision record was written at decision time).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::agent::{Agent, Outcome};

/// Outcomes waiting at most.
const QUEUE: usize = 16_384;
/// Outcomes per RecordToolCalls.
const BATCH: usize = 500;
/// How long a batch gathers.
const GATHER: Duration = Duration::from_millis(20);

/// The sending end (cheap to clone).
#[derive(Clone)]
pub struct Recorder(mpsc::Sender<Outcome>);

impl Recorder {
    /// Starts the sender for `agent`.
    pub fn start(agent: Agent) -> Self {
        let (tx, mut rx) = mpsc::channel::<Outcome>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + GATHER;
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(o)) => batch.push(o),
                        Ok(None) | Err(_) => break,
                    }
                }
                let n = batch.len();
                match agent.record(batch).await {
                    Ok(unknown) if unknown.is_empty() => {}
                    Ok(unknown) => tracing::warn!(
                        ?unknown,
                        "the agent knew no decision for these call records"
                    ),
                    Err(e) => tracing::error!(calls = n, err = %e, "call records not kept"),
                }
            }
        });
        Self(tx)
    }

    /// Queues one outcome (those without a decision are not recorded).
    pub fn send(&self, o: Outcome) {
        if o.decision_id.is_empty() {
            return;
        }
        if let Err(e) = self.0.try_send(o) {
            tracing::error!(err = %e, "call record queue full; an outcome is dropped");
        }
    }
}
