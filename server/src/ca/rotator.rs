//! The rotation scheduler: one task that sleeps until the next step of the
//! authorities' life cycle is due and performs it.

use std::time::Duration;

use tokio::sync::watch;

use super::Ca;
use crate::store::CaKeyState;

/// Longest sleep between checks (also bounds clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// This server's authorities by ID, with their state.
async fn own_states(ca: &Ca) -> Vec<(String, &'static str, CaKeyState)> {
    ca.list()
        .await
        .into_iter()
        .filter(|a| a.owner == ca.server_id())
        .map(|a| (a.id, a.kind, a.state))
        .collect()
}

/// Records the steps a rotation took (an authority newly prepared, or
/// newly active).
async fn record_steps(
    audit: &crate::audit::Audit,
    ca: &Ca,
    before: &[(String, &'static str, CaKeyState)],
) {
    use lanyard_core::audit::Kind;
    for (id, kind, state) in own_states(ca).await {
        let was = before.iter().find(|(b, ..)| *b == id).map(|(_, _, s)| *s);
        let step = match (was, state) {
            (None, CaKeyState::Prepared) => Kind::AuthorityPrepared,
            (Some(CaKeyState::Prepared), CaKeyState::Active) => Kind::AuthorityActivated,
            _ => continue,
        };
        let e = audit
            .event(step)
            .actor("server")
            .details(serde_json::json!({
                "authority_id": id,
                "kind": kind,
                "server_id": ca.server_id(),
                "scheduled": true,
            }));
        audit.note(e).await;
    }
}

/// Runs rotation until `shutdown` turns true; each step is recorded in
/// `audit` when given.
pub async fn run(ca: Ca, audit: Option<crate::audit::Audit>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = ca.subscribe();
    loop {
        let now = ca.clock().now();
        let wait = ca
            .next_event()
            .await
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // A manual prepare/activate/taint moves the schedule.
            r = changes.changed() => if r.is_err() { return } else { continue },
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
        let before = match &audit {
            Some(_) => own_states(&ca).await,
            None => vec![],
        };
        let stepped = ca.tick().await;
        if let (Ok(true), Some(a)) = (&stepped, &audit) {
            record_steps(a, &ca, &before).await;
        }
        if let Err(err) = stepped {
            tracing::error!(%err, "authority rotation failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use lanyard_core::TrustDomain;
    use lanyard_core::clock::Clock;

    use super::*;
    use crate::store::{CaKeyState, MemoryStore};

    /// Wall-clock time that follows tokio's (paused) clock.
    struct TokioClock {
        base: SystemTime,
        start: tokio::time::Instant,
    }

    impl Clock for TokioClock {
        fn now(&self) -> SystemTime {
            self.base + self.start.elapsed()
        }
    }

    async fn states(ca: &Ca, kind: &str) -> Vec<CaKeyState> {
        ca.list()
            .await
            .into_iter()
            .filter(|a| a.kind == kind)
            .map(|a| a.state)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn prepares_at_half_activates_at_five_sixths_and_retires_at_expiry() {
        let clock = Arc::new(TokioClock {
            base: SystemTime::now(),
            start: tokio::time::Instant::now(),
        });
        let ca = Ca::load_or_create(
            &TrustDomain::new("td").unwrap(),
            "s1",
            None,
            Arc::new(MemoryStore::default()),
            clock.clone(),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
        let first = ca.snapshot();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(ca.clone(), None, rx));

        // The X.509 CA was backdated 10 s: its half-life is at 290 s.
        tokio::time::sleep(Duration::from_secs(280)).await;
        assert_eq!(states(&ca, "x509").await, vec![CaKeyState::Active]);
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert_eq!(
            states(&ca, "x509").await,
            vec![CaKeyState::Active, CaKeyState::Prepared]
        );
        assert_eq!(
            states(&ca, "jwt").await,
            vec![CaKeyState::Active, CaKeyState::Prepared]
        );
        let prepared = ca.snapshot();
        assert_eq!(prepared.authorities.len(), 2, "prepared key is published");
        assert_eq!(
            prepared.active.cert_der(),
            first.active.cert_der(),
            "but not signing"
        );
        assert!(prepared.sequence > first.sequence);

        tokio::time::sleep(Duration::from_secs(200)).await; // past 5/6 of 600 s
        assert_eq!(
            states(&ca, "x509").await,
            vec![CaKeyState::Active, CaKeyState::Old]
        );
        assert_eq!(
            states(&ca, "jwt").await,
            vec![CaKeyState::Active, CaKeyState::Old]
        );
        assert_ne!(ca.snapshot().active.cert_der(), first.active.cert_der());
        assert_ne!(ca.snapshot().jwt_active.key_id(), first.jwt_active.key_id());

        tokio::time::sleep(Duration::from_secs(120)).await; // the first keys expire
        assert_eq!(states(&ca, "x509").await.first(), Some(&CaKeyState::Active));
        assert!(
            !ca.snapshot()
                .authorities
                .iter()
                .any(|c| c == first.active.cert_der())
        );
        assert!(
            !ca.snapshot()
                .jwt_authorities
                .iter()
                .any(|a| a.key_id == first.jwt_active.key_id())
        );
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn manual_prepare_activate_taint_revoke() {
        let ca = Ca::load_or_create(
            &TrustDomain::new("td").unwrap(),
            "s1",
            None,
            Arc::new(MemoryStore::default()),
            Arc::new(lanyard_core::clock::SystemClock),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let old = ca.snapshot().active.info().subject_key_id.clone();
        assert!(matches!(
            ca.activate().await,
            Err(crate::ca::CaError::NothingPrepared)
        ));
        assert!(matches!(
            ca.taint(&old).await,
            Err(crate::ca::CaError::ActiveKey(_))
        ));
        assert!(ca.prepare().await.unwrap());
        assert!(!ca.prepare().await.unwrap(), "second prepare is a no-op");
        ca.activate().await.unwrap();
        assert!(matches!(
            ca.revoke(&old).await,
            Err(crate::ca::CaError::NotTainted(_))
        ));
        ca.taint(&old).await.unwrap();
        assert_eq!(*ca.snapshot().tainted, vec![old.clone()]);
        ca.revoke(&old).await.unwrap();
        assert_eq!(ca.snapshot().authorities.len(), 1);
        assert!(matches!(
            ca.taint("nope").await,
            Err(crate::ca::CaError::UnknownKey(_))
        ));
    }
}
