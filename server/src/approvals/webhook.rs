//! Webhooks: a new request is announced to the webhooks of the approvers
//! who may answer it (and of the groups its policies name), so that a chat
//! tool or a pager can show it; the answer comes back through the admin
//! socket. Each delivery is a JSON POST signed with HMAC-SHA256 over
//! `TIMESTAMP.BODY` (headers `Lanyard-Timestamp`, `Lanyard-Signature:
//! v1=HEX`), retried with backoff while the request is still pending.

use std::time::Duration;

use lanyard_core::backoff::Backoff;
use lanyard_core::clock::unix_secs;

use super::{ApprovalRecord, Approvals, State};
use crate::config::approvers::Webhook;

/// Most delivery attempts per webhook and request.
const ATTEMPTS: u32 = 10;
/// The first retry's delay (doubling, up to [`MAX_DELAY`]).
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// The HTTPS client of approval webhooks, when any is configured; or why
/// none can be made.
pub fn webhook_client(
    s: &crate::config::approvers::ApprovalSettings,
) -> Result<Option<lanyard_fetch::Client>, String> {
    let any = s.approvers.iter().any(|a| a.webhook.is_some()) || !s.group_webhooks.is_empty();
    if !any {
        return Ok(None);
    }
    let timeout = Duration::from_secs(10);
    let max = 64 * 1024;
    let client = match &s.webhook_ca_file {
        Some(path) => lanyard_fetch::Client::with_ca_file(path, timeout, max),
        None => lanyard_fetch::Client::new(lanyard_fetch::Trust::System, timeout, max),
    };
    client
        .map(Some)
        .map_err(|e| format!("approval webhooks: {e} (set webhook_ca_file)"))
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

/// The body announcing `r`.
fn body(r: &ApprovalRecord) -> Vec<u8> {
    serde_json::json!({
        "event": "approval.requested",
        "approval": r,
        "answer": {
            "approve": format!("lanyard-server approval approve {} --as NAME [--reason TEXT]", r.id),
            "deny": format!("lanyard-server approval deny {} --as NAME [--reason TEXT]", r.id),
        },
    })
    .to_string()
    .into_bytes()
}

impl Approvals {
    /// Announces a new request to its webhooks (in the background).
    pub(super) fn announce(&self, r: &ApprovalRecord) {
        let groups: Vec<String> = r
            .approvers
            .iter()
            .filter_map(|a| a.strip_prefix("group:").map(str::to_owned))
            .collect();
        let hooks = self.inner.settings.webhooks_for(&r.eligible, &groups);
        if hooks.is_empty() {
            return;
        }
        let Some(client) = self.inner.webhook_client.clone() else {
            tracing::error!(id = %r.id, "approval webhooks are configured but no HTTPS client could be made");
            return;
        };
        let body = body(r);
        for hook in hooks {
            let me = self.clone();
            let client = client.clone();
            let body = body.clone();
            let id = r.id.clone();
            tokio::spawn(async move { me.deliver(&client, &hook, &id, &body).await });
        }
    }

    async fn deliver(&self, client: &lanyard_fetch::Client, hook: &Webhook, id: &str, body: &[u8]) {
        let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY);
        for attempt in 1..=ATTEMPTS {
            if self.get(id).is_none_or(|r| r.state != State::Pending) {
                return;
            }
            let ts = unix_secs(self.inner.clock.now());
            let headers = vec![
                ("lanyard-event", "approval.requested".to_owned()),
                ("lanyard-delivery", id.to_owned()),
                ("lanyard-timestamp", ts.to_string()),
                ("lanyard-signature", signature(&hook.secret, ts, body)),
            ];
            match client.post_json(&hook.url, body.to_vec(), headers).await {
                Ok(a) if (200..300).contains(&a.status) => {
                    tracing::info!(id, url = %hook.url, attempt, "approval webhook delivered");
                    return;
                }
                Ok(a) => {
                    tracing::warn!(id, url = %hook.url, attempt, status = a.status, "approval webhook refused; retrying");
                }
                Err(e) => {
                    tracing::warn!(id, url = %hook.url, attempt, err = %e, "approval webhook failed; retrying");
                }
            }
            tokio::time::sleep(backoff.failed()).await;
        }
        tracing::error!(id, url = %hook.url, "approval webhook not delivered after {ATTEMPTS} attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let s = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert_ne!(s, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(s, signature(b"0123456789abcdef", 1_700_000_000, b"{ }"));
        assert_ne!(s, signature(b"0123456789abcdeF", 1_700_000_000, b"{}"));
        // RFC 4231 test case 2, through the same construction.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"Jefe");
        let tag = aws_lc_rs::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
