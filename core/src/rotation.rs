//! When to renew a credential: pure functions of its validity window, the
//! current time and a jitter sample, so schedulers stay trivial and testable.

use std::time::{Duration, SystemTime};

/// Fraction of the lifetime after which a credential is renewed.
pub const RENEW_FRACTION: f64 = 0.5;
/// Maximum jitter around the renewal point, as a fraction of the lifetime.
pub const JITTER_FRACTION: f64 = 0.1;

/// The moment to renew a credential valid from `not_before` to `not_after`:
/// at half its lifetime, moved by `jitter` (a sample in `[-1, 1]`) times 10 %
/// of the lifetime, so that many credentials issued together do not all renew
/// in the same second. Out-of-range jitter samples are clamped.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let jitter = if jitter.is_finite() {
        jitter.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let offset = lifetime * (RENEW_FRACTION + JITTER_FRACTION * jitter);
    not_before + Duration::from_secs_f64(offset.max(0.0))
}

/// True when a credential should be renewed now (its renewal point has
/// passed, without jitter).
pub fn should_renew(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    now >= renew_at(not_before, not_after, 0.0)
}

/// The lifetime to give a new credential: the requested TTL, but never past
/// the signing key's own expiry.
pub fn capped_not_after(
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> SystemTime {
    (now + ttl).min(signer_not_after)
}

/// Fraction of a CA key's life after which the next key is prepared
/// (published in the bundle, not yet signing).
pub const CA_PREPARE_FRACTION: f64 = 0.5;
/// Fraction of a CA key's life after which the prepared key is activated.
pub const CA_ACTIVATE_FRACTION: f64 = 5.0 / 6.0;

fn at_fraction(not_before: SystemTime, not_after: SystemTime, f: f64) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    not_before + Duration::from_secs_f64(life * f)
}

/// When the successor of a CA key valid over `[not_before, not_after]` is
/// prepared: at half its life.
pub fn ca_prepare_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    at_fraction(not_before, not_after, CA_PREPARE_FRACTION)
}

/// When the prepared successor replaces the key: at five sixths of its
/// life, so the last sixth covers SVIDs it already signed (the CA TTL is at
/// least six times the largest SVID TTL).
pub fn ca_activate_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    at_fraction(not_before, not_after, CA_ACTIVATE_FRACTION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock, from_unix_secs};

    #[test]
    fn renews_at_half_life_with_bounded_jitter() {
        let nb = from_unix_secs(1000);
        let na = from_unix_secs(1100);
        assert_eq!(renew_at(nb, na, 0.0), from_unix_secs(1050));
        assert_eq!(renew_at(nb, na, 1.0), from_unix_secs(1060));
        assert_eq!(renew_at(nb, na, -1.0), from_unix_secs(1040));
        assert_eq!(renew_at(nb, na, 7.0), from_unix_secs(1060));
        assert_eq!(renew_at(nb, na, f64::NAN), from_unix_secs(1050));
        // A window that is already inverted renews immediately.
        assert_eq!(renew_at(na, nb, 0.0), na);
    }

    #[test]
    fn should_renew_follows_fake_clock() {
        let clock = FakeClock::at(1000);
        let nb = from_unix_secs(1000);
        let na = from_unix_secs(1030);
        assert!(!should_renew(nb, na, clock.now()));
        clock.advance(Duration::from_secs(14));
        assert!(!should_renew(nb, na, clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(should_renew(nb, na, clock.now()));
    }

    #[test]
    fn caps_lifetime_at_signer_expiry() {
        let now = from_unix_secs(1000);
        assert_eq!(
            capped_not_after(now, Duration::from_secs(60), from_unix_secs(2000)),
            from_unix_secs(1060)
        );
        assert_eq!(
            capped_not_after(now, Duration::from_secs(60), from_unix_secs(1030)),
            from_unix_secs(1030)
        );
    }

    #[test]
    fn ca_slots_prepare_at_half_and_activate_at_five_sixths() {
        let clock = FakeClock::at(0);
        let nb = from_unix_secs(0);
        let na = from_unix_secs(600);
        assert_eq!(ca_prepare_at(nb, na), from_unix_secs(300));
        assert_eq!(ca_activate_at(nb, na), from_unix_secs(500));
        clock.advance(Duration::from_secs(299));
        assert!(clock.now() < ca_prepare_at(nb, na));
        clock.advance(Duration::from_secs(1));
        assert!(clock.now() >= ca_prepare_at(nb, na));
        assert!(clock.now() < ca_activate_at(nb, na));
        // An activated key never outlives what it signed: SVIDs signed just
        // before activation with a TTL of a sixth of the CA life end by the
        // CA's NotAfter.
        let last_signing = ca_activate_at(nb, na);
        assert!(last_signing + Duration::from_secs(100) <= na);
    }
}
