//! One backoff for every retry loop: exponential from a base, capped, and
//! (where a credential is at stake) never later than half the time left
//! before a deadline, so a still-valid credential is retried before it
//! expires.

use std::time::{Duration, SystemTime};

/// The delay before retry `attempt` (0 for the first retry): `base *
/// 2^attempt`, capped at `max`, and at most half of what is left before
/// `deadline` (but at least 100 ms).
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    now: SystemTime,
    deadline: SystemTime,
) -> Duration {
    let mut d = exponential(attempt, base, max);
    if let Ok(left) = deadline.duration_since(now) {
        // Leave room for at least one more try before expiry.
        d = d.min(left / 2).max(Duration::from_millis(100));
    }
    d
}

fn exponential(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(max)
}

/// The state of one retry loop: how many failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A loop that waits `base` after its first failure, doubling up to
    /// `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let d = exponential(self.failures, self.base, self.max);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// The wait after one more failure, at most half the time left before
    /// `deadline` (see [`retry_delay`]).
    pub fn failed_before(&mut self, now: SystemTime, deadline: SystemTime) -> Duration {
        let d = retry_delay(self.failures, self.base, self.max, now, deadline);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// It worked: the next failure waits `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix_secs;

    #[test]
    fn doubles_caps_resets_and_respects_deadlines() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let waits: Vec<Duration> = (0..6).map(|_| b.failed()).collect();
        assert_eq!(
            waits,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.failures(), 6);
        b.succeeded();
        assert_eq!(b.failed(), ms(100));
        for _ in 0..100 {
            b.failed();
        }
        assert_eq!(b.failed(), ms(1000));
        // Ten seconds to go with a 60 s cap: at most five.
        let mut c = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(
            c.failed_before(from_unix_secs(0), from_unix_secs(10)),
            Duration::from_secs(5)
        );
        // Past the deadline: the cap.
        assert_eq!(
            c.failed_before(from_unix_secs(20), from_unix_secs(10)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_grows_and_respects_deadline() {
        let now = from_unix_secs(0);
        let far = from_unix_secs(10_000);
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        assert_eq!(retry_delay(0, base, max, now, far), base);
        assert_eq!(retry_delay(3, base, max, now, far), Duration::from_secs(4));
        assert_eq!(retry_delay(40, base, max, now, far), max);
        assert_eq!(
            retry_delay(10, base, max, now, from_unix_secs(10)),
            Duration::from_secs(5)
        );
    }
}
