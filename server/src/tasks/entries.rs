//! The entries a BeginTask may be decided under: the one the agent
//! matched, or every candidate it sent, each authorized for that agent.

use lanyard_core::{RegistrationEntry, SpiffeId};

use super::error::TaskServiceError;
use super::service::{BeginInput, Tasks};

impl Tasks {
    pub(super) fn owned_entry(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
    ) -> Result<RegistrationEntry, TaskServiceError> {
        self.inner
            .registry
            .get(entry_id)
            .filter(|e| self.inner.registry.owns(agent, e))
            .ok_or_else(|| {
                TaskServiceError::Denied(format!(
                    "entry {entry_id:?} is not authorized for agent {agent}"
                ))
            })
    }

    /// The entries a BeginTask is decided under, in the agent's serving
    /// order: `entry_id`, or the candidates when the caller named no SPIFFE
    /// ID. Each must be authorized for `agent`.
    pub(super) fn candidate_entries(
        &self,
        agent: &SpiffeId,
        input: &BeginInput,
    ) -> Result<Vec<RegistrationEntry>, TaskServiceError> {
        /// More than any caller plausibly matches; bounds the work a
        /// request can ask for.
        const MAX_CANDIDATES: usize = 64;
        if input.candidates.len() > MAX_CANDIDATES {
            return Err(TaskServiceError::Invalid(format!(
                "at most {MAX_CANDIDATES} candidate entries"
            )));
        }
        let mut ids: Vec<&str> = vec![input.entry_id.as_str()];
        for c in &input.candidates {
            if !ids.contains(&c.as_str()) {
                ids.push(c);
            }
        }
        ids.into_iter()
            .filter(|id| !id.is_empty() || input.candidates.is_empty())
            .map(|id| self.owned_entry(agent, id))
            .collect()
    }
}
