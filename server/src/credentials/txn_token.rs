//! Transaction tokens (draft-ietf-oauth-transaction-tokens-10) for a
//! task: a JWT the server signs with its JWT key (so it verifies with the
//! same keys as JWT-SVIDs, through the JWT bundle or OIDC discovery), typed
//! `txntoken+jwt`, whose `txn` is the task ID, `sub` whom the task acts
//! for (else the workload), `scope` what was granted, `tctx` the task's
//! grant (the claims its SVIDs carry) and `rctx.req_wl` the requesting
//! workload. It never outlives the task, and its `jti` can be revoked.

use std::time::{Duration, SystemTime};

use lanyard_core::SpiffeId;
use lanyard_core::clock::unix_secs;
use lanyard_core::jwt::JwtSigner;
use lanyard_core::task::TaskGrant;
use serde_json::{Map, Value, json};

use super::registry::CredentialError;

/// The JOSE `typ` of a transaction token.
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";

/// What a transaction token is minted for.
#[derive(Debug)]
pub struct TxnTokenParams<'a> {
    /// `iss`: the server's JWT issuer URL.
    pub issuer: &'a str,
    /// `aud`: the trust domain (or service) it is used in.
    pub audience: &'a str,
    /// The task it belongs to.
    pub grant: &'a TaskGrant,
    /// The workload that asked for it.
    pub requester: &'a SpiffeId,
    /// Granted scopes.
    pub scopes: &'a [String],
    /// Longest life asked for (capped at the task's end and the key's).
    pub ttl: Duration,
    /// Now.
    pub now: SystemTime,
}

/// A minted transaction token.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedTxnToken {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for MintedTxnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedTxnToken")
            .field("token", &"<redacted>")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Mints a transaction token for an active task.
pub fn mint_txn_token(
    signer: &JwtSigner,
    p: &TxnTokenParams<'_>,
) -> Result<MintedTxnToken, CredentialError> {
    let now = unix_secs(p.now);
    if p.grant.not_after <= now {
        return Err(CredentialError::Invalid(format!(
            "task {} has ended: no transaction token outlives its task",
            p.grant.task_id
        )));
    }
    let expires_at = (now + p.ttl.as_secs().max(1))
        .min(p.grant.not_after)
        .min(unix_secs(signer.not_after()));
    if expires_at <= now {
        return Err(CredentialError::Invalid(
            "the JWT signing key expires now; try again after the rotation".into(),
        ));
    }
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| CredentialError::Invalid("no randomness for a token ID".into()))?;
    let jti = hex::encode(id);
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(p.issuer));
    claims.insert("aud".into(), json!(p.audience));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(expires_at));
    claims.insert("jti".into(), json!(jti));
    claims.insert("txn".into(), json!(p.grant.task_id.as_str()));
    let sub = p
        .grant
        .on_behalf_of
        .clone()
        .unwrap_or_else(|| p.grant.spiffe_id.to_string());
    claims.insert("sub".into(), json!(sub));
    if !p.scopes.is_empty() {
        claims.insert("scope".into(), json!(p.scopes.join(" ")));
    }
    claims.insert("tctx".into(), p.grant.to_json());
    claims.insert("rctx".into(), json!({ "req_wl": p.requester.as_str() }));
    let header = json!({ "alg": "ES256", "kid": signer.key_id(), "typ": TXN_TOKEN_TYP });
    let token = signer
        .sign_with_header(&header, &Value::Object(claims))
        .map_err(|e| CredentialError::Invalid(format!("signing the transaction token: {e}")))?;
    Ok(MintedTxnToken {
        token,
        jti,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::TaskId;
    use lanyard_core::clock::from_unix_secs;
    use lanyard_core::jwt::{verify_jws, verify_jws_typed};

    const T0: u64 = 1_800_000_000;

    fn grant(not_after: u64, on_behalf_of: Option<&str>) -> TaskGrant {
        TaskGrant {
            task_id: TaskId::new(&"ab".repeat(16)).unwrap(),
            spiffe_id: SpiffeId::new("spiffe://example.org/agent/planner").unwrap(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            destinations: vec![],
            data_sensitivity: "internal".into(),
            on_behalf_of: on_behalf_of.map(str::to_owned),
            intent_sha256: "00".repeat(32),
            not_after,
            chain: vec![],
        }
    }

    #[test]
    fn a_txn_token_carries_the_task_verifies_with_the_jwt_keys_and_dies_with_the_task() {
        let signer = JwtSigner::generate(from_unix_secs(T0), from_unix_secs(T0 + 86_400)).unwrap();
        let g = grant(T0 + 120, Some("user:alice@example.com"));
        let requester = SpiffeId::new("spiffe://example.org/agent/worker").unwrap();
        let scopes = ["crm:read".to_owned(), "reports:write".to_owned()];
        let m = mint_txn_token(
            &signer,
            &TxnTokenParams {
                issuer: "https://oidc.example.org",
                audience: "spiffe://example.org",
                grant: &g,
                requester: &requester,
                scopes: &scopes,
                ttl: Duration::from_secs(3600),
                now: from_unix_secs(T0),
            },
        )
        .unwrap();
        // Capped at the task's end, not the hour asked for.
        assert_eq!(m.expires_at, T0 + 120);
        let claims = verify_jws_typed(&m.token, &[signer.authority()], TXN_TOKEN_TYP).unwrap();
        assert_eq!(claims["txn"], g.task_id.as_str());
        assert_eq!(claims["sub"], "user:alice@example.com");
        assert_eq!(claims["scope"], "crm:read reports:write");
        assert_eq!(claims["aud"], "spiffe://example.org");
        assert_eq!(claims["iss"], "https://oidc.example.org");
        assert_eq!(claims["jti"], m.jti.as_str());
        assert_eq!(
            claims["rctx"]["req_wl"],
            "spiffe://example.org/agent/worker"
        );
        assert_eq!(claims["tctx"], g.to_json());
        // Not a JWT-SVID: a verifier expecting one refuses its type, and
        // another key does not verify it.
        assert!(verify_jws(&m.token, &[signer.authority()]).is_err());
        let other = JwtSigner::generate(from_unix_secs(T0), from_unix_secs(T0 + 60)).unwrap();
        assert!(verify_jws_typed(&m.token, &[other.authority()], TXN_TOKEN_TYP).is_err());
        // Without on_behalf_of, the subject is the workload.
        let own = mint_txn_token(
            &signer,
            &TxnTokenParams {
                issuer: "https://oidc.example.org",
                audience: "spiffe://example.org",
                grant: &grant(T0 + 120, None),
                requester: &requester,
                scopes: &[],
                ttl: Duration::from_secs(60),
                now: from_unix_secs(T0),
            },
        )
        .unwrap();
        let c = verify_jws_typed(&own.token, &[signer.authority()], TXN_TOKEN_TYP).unwrap();
        assert_eq!(c["sub"], "spiffe://example.org/agent/planner");
        assert!(c.get("scope").is_none());
        assert_eq!(own.expires_at, T0 + 60);
    }

    #[test]
    fn an_ended_task_gets_no_txn_token() {
        let signer = JwtSigner::generate(from_unix_secs(T0), from_unix_secs(T0 + 86_400)).unwrap();
        let requester = SpiffeId::new("spiffe://example.org/agent/worker").unwrap();
        let e = mint_txn_token(
            &signer,
            &TxnTokenParams {
                issuer: "https://oidc.example.org",
                audience: "spiffe://example.org",
                grant: &grant(T0, None),
                requester: &requester,
                scopes: &[],
                ttl: Duration::from_secs(60),
                now: from_unix_secs(T0),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("has ended"), "{e}");
    }
}
