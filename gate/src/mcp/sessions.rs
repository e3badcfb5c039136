//! MCP sessions bound to the task that opened them: the `Mcp-Session-Id`
//! an upstream hands out in its answer to `initialize` belongs to that
//! caller's task, and a request carrying it from any other task (or
//! workload) is refused. A binding ends with its task; the table is
//! bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Most sessions remembered.
const MAX_SESSIONS: usize = 100_000;

#[derive(Debug, Clone)]
struct Binding {
    upstream: String,
    task_id: String,
    spiffe_id: String,
    until: SystemTime,
}

/// Session ID -> the task that opened it.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Binding>>);

/// A session's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// Bound to this caller's task.
    Ours,
    /// Unknown here (ended, expired, or opened before a restart).
    Unknown,
    /// Bound to another task or workload.
    Foreign,
}

impl Sessions {
    /// Binds `id` (from `upstream`) to a task until `until`.
    pub fn bind(
        &self,
        id: &str,
        upstream: &str,
        task_id: &str,
        spiffe_id: &str,
        until: SystemTime,
    ) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_SESSIONS {
            let now = SystemTime::now();
            all.retain(|_, b| b.until > now);
            if all.len() >= MAX_SESSIONS
                && let Some(k) = all
                    .iter()
                    .min_by_key(|(_, b)| b.until)
                    .map(|(k, _)| k.clone())
            {
                all.remove(&k);
            }
        }
        all.insert(
            id.to_owned(),
            Binding {
                upstream: upstream.to_owned(),
                task_id: task_id.to_owned(),
                spiffe_id: spiffe_id.to_owned(),
                until,
            },
        );
    }

    /// Whether the session `id` on `upstream` is this caller's.
    pub fn check(
        &self,
        id: &str,
        upstream: &str,
        task_id: &str,
        spiffe_id: &str,
        now: SystemTime,
    ) -> SessionCheck {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(id) {
            None => SessionCheck::Unknown,
            Some(b) if b.until <= now => {
                all.remove(id);
                SessionCheck::Unknown
            }
            Some(b)
                if b.upstream == upstream && b.task_id == task_id && b.spiffe_id == spiffe_id =>
            {
                SessionCheck::Ours
            }
            Some(_) => SessionCheck::Foreign,
        }
    }

    /// Forgets `id` (the client ended it).
    pub fn end(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Whether none is bound.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_session_belongs_to_the_task_that_opened_it() {
        let s = Sessions::default();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        s.bind("abc", "crm", "t1", "spiffe://example.org/a", later);
        assert_eq!(
            s.check("abc", "crm", "t1", "spiffe://example.org/a", now),
            SessionCheck::Ours
        );
        assert_eq!(
            s.check("abc", "crm", "t2", "spiffe://example.org/a", now),
            SessionCheck::Foreign
        );
        assert_eq!(
            s.check("abc", "crm", "t1", "spiffe://example.org/b", now),
            SessionCheck::Foreign
        );
        assert_eq!(
            s.check("abc", "mail", "t1", "spiffe://example.org/a", now),
            SessionCheck::Foreign
        );
        assert_eq!(
            s.check("zzz", "crm", "t1", "spiffe://example.org/a", now),
            SessionCheck::Unknown
        );
        // It ends with its task.
        assert_eq!(
            s.check("abc", "crm", "t1", "spiffe://example.org/a", later),
            SessionCheck::Unknown
        );
        assert!(s.is_empty());
    }
}
