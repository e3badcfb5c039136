//! Projected service account tokens (PSAT): the JWTs the kubelet mounts
//! into a pod for an audience, signed by the cluster's service-account
//! issuer. Checked here against the issuer's public keys only: signature,
//! `iss`, `aud`, `exp`/`nbf`, and the `kubernetes.io` claims naming the
//! namespace, service account, pod and node.

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::clock::unix_secs;
use crate::jwt::{JwtAuthority, JwtError, verify_jws};

/// How far a token's `nbf`/`iat` may lie in the future (clock skew
/// between the cluster and this server).
pub const CLOCK_SKEW_SECS: u64 = 30;

/// What a token must say to be accepted.
#[derive(Debug, Clone, Copy)]
pub struct PsatExpectations<'a> {
    /// The cluster's service-account issuer (`iss`).
    pub issuer: &'a str,
    /// The audience the token was requested for.
    pub audience: &'a str,
}

/// The claims of a token that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsatClaims {
    /// Namespace of the pod (and of its service account).
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Node name.
    pub node_name: String,
    /// Node UID.
    pub node_uid: String,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused. Each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsatError {
    /// The JWS itself: format, algorithm, unknown key, signature.
    #[error(transparent)]
    Token(#[from] JwtError),
    /// `iss` is not the cluster's issuer.
    #[error("token issuer {got:?} is not the cluster's issuer {expected:?}")]
    Issuer {
        /// The configured issuer.
        expected: String,
        /// What the token says.
        got: String,
    },
    /// The audience is not in `aud`.
    #[error("token audience does not include {0:?}")]
    Audience(String),
    /// `exp` has passed.
    #[error("token expired at {0}")]
    Expired(u64),
    /// `nbf` (or `iat`) is in the future.
    #[error("token is not valid before {0}")]
    NotYetValid(u64),
    /// A claim is missing or not of the right type.
    #[error("token claim {0} is missing or invalid")]
    Claim(&'static str),
}

fn string_at<'a>(
    claims: &'a Map<String, Value>,
    path: &[&str],
    name: &'static str,
) -> Result<&'a str, PsatError> {
    let mut v = claims.get(path[0]);
    for p in &path[1..] {
        v = v.and_then(|x| x.get(*p));
    }
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 253 && !s.chars().any(char::is_control))
        .ok_or(PsatError::Claim(name))
}

fn secs(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, PsatError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(PsatError::Claim(name)),
    }
}

/// Validates a projected service account token against the issuer's keys
/// at `now`. The node claims (`kubernetes.io.node`) are required: they
/// are in every token of Kubernetes 1.30 and later.
pub fn validate_psat(
    token: &str,
    keys: &[JwtAuthority],
    expect: PsatExpectations<'_>,
    now: SystemTime,
) -> Result<PsatClaims, PsatError> {
    let claims = verify_jws(token, keys)?;
    let iss = string_at(&claims, &["iss"], "iss")?;
    if iss != expect.issuer {
        return Err(PsatError::Issuer {
            expected: expect.issuer.to_owned(),
            got: iss.to_owned(),
        });
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == expect.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(expect.audience)),
        _ => return Err(PsatError::Claim("aud")),
    };
    if !aud_ok {
        return Err(PsatError::Audience(expect.audience.to_owned()));
    }
    let now = unix_secs(now);
    let exp = secs(&claims, "exp")?.ok_or(PsatError::Claim("exp"))?;
    if now >= exp {
        return Err(PsatError::Expired(exp));
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = secs(&claims, name)?
            && t > now.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(PsatError::NotYetValid(t));
        }
    }
    let k = |path: &[&str], name: &'static str| -> Result<String, PsatError> {
        let mut full = vec!["kubernetes.io"];
        full.extend_from_slice(path);
        string_at(&claims, &full, name).map(str::to_owned)
    };
    let out = PsatClaims {
        namespace: k(&["namespace"], "kubernetes.io.namespace")?,
        service_account: k(
            &["serviceaccount", "name"],
            "kubernetes.io.serviceaccount.name",
        )?,
        pod_name: k(&["pod", "name"], "kubernetes.io.pod.name")?,
        pod_uid: k(&["pod", "uid"], "kubernetes.io.pod.uid")?,
        node_name: k(
            &["node", "name"],
            "kubernetes.io.node.name (Kubernetes 1.30 or later)",
        )?,
        node_uid: k(
            &["node", "uid"],
            "kubernetes.io.node.uid (Kubernetes 1.30 or later)",
        )?,
        expires_at: exp,
    };
    // The subject must agree with the claims it summarises.
    let sub = string_at(&claims, &["sub"], "sub")?;
    if sub
        != format!(
            "system:serviceaccount:{}:{}",
            out.namespace, out.service_account
        )
    {
        return Err(PsatError::Claim("sub"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::test_issuer::{PsatSpec, TestIssuer};
    use std::time::{Duration, UNIX_EPOCH};

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn expect() -> PsatExpectations<'static> {
        PsatExpectations {
            issuer: ISS,
            audience: "lanyard-server",
        }
    }

    #[test]
    fn a_real_format_token_passes_and_every_check_refuses() {
        for issuer in [TestIssuer::rsa("rsa-1"), TestIssuer::ec("ec-1")] {
            let keys = issuer.authorities();
            let spec = PsatSpec::new(ISS, "lanyard-server", 1_000_000);
            let token = issuer.mint(&spec);
            let c = validate_psat(&token, &keys, expect(), at(1_000_010)).unwrap();
            assert_eq!(c.namespace, "lanyard");
            assert_eq!(c.service_account, "lanyard-agent");
            assert_eq!(c.node_name, "node-1");
            assert_eq!(c.node_uid, spec.node_uid);
            assert_eq!(c.pod_uid, spec.pod_uid);

            let refuse = |token: &str, now: u64| validate_psat(token, &keys, expect(), at(now));
            assert_eq!(
                refuse(&token, 1_003_600),
                Err(PsatError::Expired(1_003_600))
            );
            assert!(matches!(
                refuse(&token, 999_000),
                Err(PsatError::NotYetValid(_))
            ));
            let other_aud = issuer.mint(&PsatSpec::new(ISS, "vault", 1_000_000));
            assert_eq!(
                refuse(&other_aud, 1_000_010),
                Err(PsatError::Audience("lanyard-server".into()))
            );
            let other_iss =
                issuer.mint(&PsatSpec::new("https://evil", "lanyard-server", 1_000_000));
            assert!(matches!(
                refuse(&other_iss, 1_000_010),
                Err(PsatError::Issuer { .. })
            ));
            let stranger = issuer.impostor().mint(&spec);
            assert_eq!(
                refuse(&stranger, 1_000_010),
                Err(PsatError::Token(JwtError::BadSignature))
            );
            let unknown = TestIssuer::ec("other").mint(&spec);
            assert!(matches!(
                refuse(&unknown, 1_000_010),
                Err(PsatError::Token(JwtError::UnknownKid(_)))
            ));
            let mut no_node = spec.clone();
            no_node.with_node = false;
            assert!(matches!(
                refuse(&issuer.mint(&no_node), 1_000_010),
                Err(PsatError::Claim(_))
            ));
            let mut lying = spec.clone();
            lying.sub = Some("system:serviceaccount:kube-system:default".into());
            assert_eq!(
                refuse(&issuer.mint(&lying), 1_000_010),
                Err(PsatError::Claim("sub"))
            );
            // A flipped payload byte breaks the signature.
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            parts[1].insert(5, 'A');
            assert!(matches!(
                refuse(&parts.join("."), 1_000_010),
                Err(PsatError::Token(_))
            ));
            assert!(matches!(
                refuse("garbage", 1_000_010),
                Err(PsatError::Token(_))
            ));
        }
    }
}
