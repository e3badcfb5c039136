//! Credential providers as the operator declares them: what each one hands
//! a task (an exchanged OAuth token, a held secret, a transaction token),
//! checked once here so that everything after takes a valid provider.

use serde::{Deserialize, Serialize};

use super::seal::Sealed;

/// Most scopes one provider may name.
pub const MAX_SCOPES: usize = 32;
/// Longest scope.
pub const MAX_SCOPE_LEN: usize = 128;
/// Longest URL or audience.
pub const MAX_URL_LEN: usize = 2048;

/// How the server authenticates to an authorization server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// A JWT-SVID of the task as the client assertion
    /// (`urn:ietf:params:oauth:client-assertion-type:jwt-spiffe`).
    JwtSpiffe,
    /// None beyond the subject token (a token exchange the authorization
    /// server accepts from any client holding a valid subject token).
    None,
}

impl ClientAuth {
    /// Parses the `--client-auth` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "jwt-spiffe" => Ok(Self::JwtSpiffe),
            "none" => Ok(Self::None),
            other => Err(format!(
                "client auth {other:?} is not one of jwt-spiffe, none"
            )),
        }
    }
}

/// Which OAuth grant an `oauth-exchange` provider uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grant {
    /// RFC 8693 token exchange: a JWT-SVID of the task as `subject_token`
    /// (of the root task, with the delegated task's as `actor_token`).
    #[default]
    TokenExchange,
    /// `client_credentials`, the task's JWT-SVID as the client assertion
    /// (draft-ietf-oauth-spiffe-client-auth).
    ClientCredentials,
}

impl Grant {
    /// Parses the `--grant` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "token-exchange" => Ok(Self::TokenExchange),
            "client-credentials" => Ok(Self::ClientCredentials),
            other => Err(format!(
                "grant {other:?} is not one of token-exchange, client-credentials"
            )),
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::TokenExchange => "token-exchange",
            Self::ClientCredentials => "client-credentials",
        }
    }
}

impl ClientAuth {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::JwtSpiffe => "jwt-spiffe",
            Self::None => "none",
        }
    }
}

/// What a provider hands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProviderKind {
    /// An OAuth token from an authorization server, for a JWT-SVID of the
    /// task (RFC 8693 token exchange).
    OauthExchange {
        /// The token endpoint.
        token_url: String,
        /// The audience of the JWT-SVID sent (the authorization server).
        audience: String,
        /// How the server authenticates.
        client_auth: ClientAuth,
        /// The most a task may ask for.
        scopes: Vec<String>,
        /// RFC 7009 revocation endpoint: ends a token when its task ends.
        revocation_url: Option<String>,
        /// The grant.
        #[serde(default)]
        grant: Grant,
    },
    /// A secret the server holds, sealed.
    Secret {
        /// The sealed value.
        sealed: Sealed,
        /// Names the value without revealing it (for listings and audit).
        digest: String,
        /// Whether it may be handed to the workload itself (otherwise
        /// only to an enforcement point acting for the task).
        reveal: bool,
    },
    /// A transaction token (draft-ietf-oauth-transaction-tokens) signed by
    /// the server for internal services.
    TxnToken {
        /// Its `aud`.
        audience: String,
    },
}

impl ProviderKind {
    /// Its name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::OauthExchange { .. } => "oauth-exchange",
            Self::Secret { .. } => "secret",
            Self::TxnToken { .. } => "txn-token",
        }
    }
}

/// A declared provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialProvider {
    /// Its name (`[a-z0-9][a-z0-9._-]*`, at most 63 characters).
    pub name: String,
    /// What it hands out.
    #[serde(flatten)]
    pub kind: ProviderKind,
    /// Bumped by every change (a rotated secret, new settings).
    pub version: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

/// Checks a provider name (the rule entries' `--allow-credential` follows).
pub fn check_name(name: &str) -> Result<(), String> {
    lanyard_core::task::check_credential_name(name).map_err(|e| e.to_string())
}

/// Checks an endpoint URL: `https://`, or `http://` on a loopback host
/// only (an authorization server on the same machine).
pub fn check_endpoint(what: &str, url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} {url:?} is not a URL"));
    }
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        (None, None) => return Err(format!("{what} {url:?} must start with https://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{what} {url:?} must name a host (and no user)"));
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let loopback = matches!(host, "localhost" | "[::1]")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !https && !loopback {
        return Err(format!(
            "{what} {url:?} must use https:// (plain http only on a loopback address)"
        ));
    }
    Ok(())
}

/// Checks requested or declared scopes: each a non-empty token without
/// spaces (RFC 6749 `scope-token`), bounded in number and length, no
/// repeats.
pub fn check_scopes(scopes: &[String]) -> Result<(), String> {
    if scopes.len() > MAX_SCOPES {
        return Err(format!("at most {MAX_SCOPES} scopes"));
    }
    let mut seen = std::collections::HashSet::new();
    for s in scopes {
        let token = !s.is_empty()
            && s.len() <= MAX_SCOPE_LEN
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !token {
            return Err(format!(
                "scope {s:?} must be 1 to {MAX_SCOPE_LEN} printable characters without spaces, quotes or backslashes"
            ));
        }
        if !seen.insert(s.as_str()) {
            return Err(format!("scope {s:?} is named twice"));
        }
    }
    Ok(())
}

/// The scopes a task gets: those it asked for, each of which the provider
/// must allow (an empty request asks for all the provider's scopes).
pub fn granted_scopes(provider: &[String], requested: &[String]) -> Result<Vec<String>, String> {
    check_scopes(requested)?;
    if requested.is_empty() {
        return Ok(provider.to_vec());
    }
    if let Some(outside) = requested.iter().find(|s| !provider.contains(s)) {
        return Err(format!(
            "scope {outside:?} is outside the provider's scopes ({})",
            provider.join(" ")
        ));
    }
    Ok(requested.to_vec())
}

impl CredentialProvider {
    /// Checks every field.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        match &self.kind {
            ProviderKind::OauthExchange {
                token_url,
                audience,
                scopes,
                revocation_url,
                grant,
                client_auth,
            } => {
                if *grant == Grant::ClientCredentials && *client_auth == ClientAuth::None {
                    return Err(
                        "a client-credentials grant authenticates with the JWT-SVID: --client-auth jwt-spiffe"
                            .into(),
                    );
                }
                check_endpoint("token URL", token_url)?;
                if let Some(u) = revocation_url {
                    check_endpoint("revocation URL", u)?;
                }
                check_audience(audience)?;
                check_scopes(scopes)
            }
            ProviderKind::Secret { sealed, .. } => {
                if sealed.ciphertext.is_empty() {
                    return Err("a secret provider needs a value".into());
                }
                Ok(())
            }
            ProviderKind::TxnToken { audience } => check_audience(audience),
        }
    }
}

fn check_audience(audience: &str) -> Result<(), String> {
    if audience.is_empty()
        || audience.len() > MAX_URL_LEN
        || audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "audience {audience:?} must be 1 to {MAX_URL_LEN} characters without spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(token_url: &str, scopes: &[&str]) -> CredentialProvider {
        CredentialProvider {
            name: "github".into(),
            kind: ProviderKind::OauthExchange {
                token_url: token_url.into(),
                audience: "https://auth.example.com".into(),
                client_auth: ClientAuth::JwtSpiffe,
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                revocation_url: None,
                grant: Grant::TokenExchange,
            },
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn names_endpoints_and_scopes_are_checked_with_reasons() {
        for ok in ["github", "crm-api-key", "a", "v1.internal_tokens"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "GitHub", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(
            oauth("https://auth.example.com/token", &["repo:read"])
                .check()
                .is_ok()
        );
        assert!(oauth("http://127.0.0.1:8080/token", &[]).check().is_ok());
        assert!(oauth("http://localhost/token", &[]).check().is_ok());
        for bad in [
            "http://auth.example.com/token",
            "ftp://x/token",
            "https://",
            "https://user@host/token",
            "https://host/a b",
            "http://127.0.0.1.evil.com/token",
        ] {
            let e = oauth(bad, &[]).check().unwrap_err();
            assert!(e.contains("token URL"), "{bad}: {e}");
        }
        for bad in [&["a b"][..], &["x", "x"], &[""], &["quo\"te"]] {
            assert!(
                oauth("https://a.example/t", bad).check().is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_task_gets_only_scopes_the_provider_allows() {
        let provider = vec!["repo:read".to_owned(), "issues:write".to_owned()];
        assert_eq!(granted_scopes(&provider, &[]).unwrap(), provider);
        assert_eq!(
            granted_scopes(&provider, &["repo:read".into()]).unwrap(),
            vec!["repo:read".to_owned()]
        );
        let e = granted_scopes(&provider, &["admin:org".into()]).unwrap_err();
        assert!(e.contains("admin:org") && e.contains("outside"), "{e}");
    }

    #[test]
    fn a_provider_round_trips_through_its_stored_form() {
        let p = oauth("https://auth.example.com/token", &["repo:read"]);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["kind"], "oauth-exchange");
        assert_eq!(json["client_auth"], "jwt-spiffe");
        let back: CredentialProvider = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }
}
