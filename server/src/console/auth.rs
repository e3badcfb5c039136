//! Signing in to the console without a new identity system: the admin
//! socket's `console login` makes a one-time link; following it starts a
//! short session (an HttpOnly, SameSite=Strict cookie) with a CSRF token
//! that every state-changing request must carry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login link may wait to be followed.
pub const LINK_TTL: Duration = Duration::from_secs(300);
/// Most sessions and unused links held at once (oldest dropped first).
const MAX_HELD: usize = 1024;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The declared approver it acts as (`None`: an operator who may look
    /// and release quarantines, not approve).
    pub approver: Option<String>,
    /// The admin caller that made the link (`uid:N`).
    pub via: String,
}

impl Operator {
    /// How audit records and pages name it.
    pub fn name(&self) -> String {
        match &self.approver {
            Some(a) => format!("{a} via console ({})", self.via),
            None => format!("console ({})", self.via),
        }
    }
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub operator: Operator,
    /// The token state-changing forms carry.
    pub csrf: String,
    /// When it ends.
    pub until: Instant,
}

/// Links and sessions, in this server's memory (a link is followed on the
/// server that printed it).
#[derive(Default)]
pub struct Sessions {
    links: Mutex<HashMap<String, (Operator, Instant)>>,
    live: Mutex<HashMap<String, Session>>,
}

/// A random token: 32 bytes, hex.
pub fn token() -> String {
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn prune<T>(map: &mut HashMap<String, T>, alive: impl Fn(&T) -> bool) {
    map.retain(|_, v| alive(v));
    if map.len() >= MAX_HELD {
        map.clear();
    }
}

impl Sessions {
    /// A one-time link token for `operator`.
    pub fn link(&self, operator: Operator) -> String {
        let t = token();
        let now = Instant::now();
        let mut links = lock(&self.links);
        prune(&mut links, |(_, until)| *until > now);
        links.insert(t.clone(), (operator, now + LINK_TTL));
        t
    }

    /// Follows a link: a new session (its cookie value and the session)
    /// once; `None` for a link unknown, used or expired.
    pub fn follow(&self, link: &str, ttl: Duration) -> Option<(String, Session)> {
        let (operator, until) = lock(&self.links).remove(link)?;
        let now = Instant::now();
        if now >= until {
            return None;
        }
        let session = Session {
            operator,
            csrf: token(),
            until: now + ttl,
        };
        let id = token();
        let mut live = lock(&self.live);
        prune(&mut live, |s| s.until > now);
        live.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session with this cookie value.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut live = lock(&self.live);
        match live.get(id) {
            Some(s) if s.until > Instant::now() => Some(s.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        lock(&self.live).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Operator {
        Operator {
            approver: Some("user:a".into()),
            via: "uid:0".into(),
        }
    }

    #[test]
    fn a_link_starts_one_session_and_sessions_end() {
        let s = Sessions::default();
        let link = s.link(op());
        let (id, session) = s.follow(&link, Duration::from_secs(60)).unwrap();
        assert!(
            s.follow(&link, Duration::from_secs(60)).is_none(),
            "used twice"
        );
        assert!(s.follow("nope", Duration::from_secs(60)).is_none());
        assert_eq!(s.get(&id).unwrap().csrf, session.csrf);
        assert_eq!(session.csrf.len(), 64);
        s.end(&id);
        assert!(s.get(&id).is_none());
        let short = s.link(op());
        let (id, _) = s.follow(&short, Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get(&id).is_none(), "expired");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
