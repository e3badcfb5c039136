//! The server's side of an OAuth authorization server: RFC 8693 token
//! exchange, the `client_credentials` grant with a JWT-SVID as client
//! assertion (draft-ietf-oauth-spiffe-client-auth-02), and RFC 7009
//! revocation. Requests are form POSTs over the fetch client (TLS against
//! the configured CA or the system's roots, a timeout, a bounded answer);
//! an answer is parsed into what the broker needs and nothing else. No
//! token reaches a log line or an error message.

use serde::Deserialize;

use lanyard_fetch::{Answer, Client};

use super::provider::Grant;

/// RFC 8693 `grant_type`.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of a JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type of an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `client_assertion_type` of a JWT-SVID (draft-ietf-oauth-spiffe-client-auth).
pub const JWT_SPIFFE_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// Largest answer read from an authorization server.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Why an authorization server gave no token.
#[derive(Debug, thiserror::Error)]
pub enum OauthError {
    /// It could not be reached (or did not answer in time).
    #[error("the authorization server at {url} cannot be reached: {why}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport's reason.
        why: String,
    },
    /// It refused (an OAuth error answer).
    #[error("the authorization server refused: HTTP {status}{}", describe(.error, .description))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// RFC 6749 `error`.
        error: String,
        /// `error_description`.
        description: String,
    },
    /// It answered something that is not a usable token answer.
    #[error("the authorization server's answer is unusable: {0}")]
    BadAnswer(String),
}

fn describe(error: &str, description: &str) -> String {
    match (error.is_empty(), description.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(" ({error})"),
        (false, false) => format!(" ({error}: {description})"),
    }
}

/// One token request.
#[derive(Clone, Copy)]
pub struct TokenRequest<'a> {
    /// The token endpoint.
    pub token_url: &'a str,
    /// Which grant.
    pub grant: Grant,
    /// Scopes asked for (none: the authorization server's default).
    pub scopes: &'a [String],
    /// RFC 8693 `audience` (where the token will be used), if any.
    pub audience: Option<&'a str>,
    /// Token exchange: the JWT-SVID of the task the work is done for.
    pub subject_token: &'a str,
    /// Token exchange of a delegated task: its own JWT-SVID (the actor).
    pub actor_token: Option<&'a str>,
    /// A JWT-SVID authenticating the client, and the client's ID (its
    /// SPIFFE ID), when the provider authenticates.
    pub client_assertion: Option<(&'a str, &'a str)>,
}

impl std::fmt::Debug for TokenRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("token_url", &self.token_url)
            .field("grant", &self.grant)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A token the authorization server issued.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: String,
    /// Its lifetime in seconds, when the answer says.
    pub expires_in: Option<u64>,
    /// The scopes granted, when the answer says (RFC 6749 5.1: absent
    /// means those asked for).
    pub scope: Option<Vec<String>>,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

fn unreachable(url: &str, e: &lanyard_fetch::FetchError) -> OauthError {
    OauthError::Unreachable {
        url: url.to_owned(),
        why: e.to_string(),
    }
}

fn refused(a: &Answer) -> OauthError {
    let e: ErrorAnswer = serde_json::from_slice(&a.body).unwrap_or_default();
    let clip = |s: String| s.chars().take(200).collect::<String>();
    OauthError::Refused {
        status: a.status,
        error: clip(e.error),
        description: clip(e.error_description),
    }
}

/// Asks the token endpoint for a token.
pub async fn request_token(
    client: &Client,
    r: &TokenRequest<'_>,
) -> Result<IssuedToken, OauthError> {
    let scope = r.scopes.join(" ");
    let mut form: Vec<(&str, &str)> = Vec::with_capacity(10);
    match r.grant {
        Grant::TokenExchange => {
            form.push(("grant_type", TOKEN_EXCHANGE));
            form.push(("subject_token", r.subject_token));
            form.push(("subject_token_type", JWT_TOKEN_TYPE));
            if let Some(actor) = r.actor_token {
                form.push(("actor_token", actor));
                form.push(("actor_token_type", JWT_TOKEN_TYPE));
            }
            form.push(("requested_token_type", ACCESS_TOKEN_TYPE));
        }
        Grant::ClientCredentials => form.push(("grant_type", "client_credentials")),
    }
    if let Some(aud) = r.audience {
        form.push(("audience", aud));
    }
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    if let Some((assertion, client_id)) = r.client_assertion {
        form.push(("client_id", client_id));
        form.push(("client_assertion_type", JWT_SPIFFE_ASSERTION));
        form.push(("client_assertion", assertion));
    }
    let a = client
        .post_form(r.token_url, &form)
        .await
        .map_err(|e| unreachable(r.token_url, &e))?;
    if a.status != 200 {
        return Err(refused(&a));
    }
    let t: TokenAnswer = serde_json::from_slice(&a.body)
        .map_err(|e| OauthError::BadAnswer(format!("not a token answer: {e}")))?;
    let access_token = t
        .access_token
        .filter(|t| !t.is_empty() && t.len() <= MAX_ANSWER)
        .ok_or_else(|| OauthError::BadAnswer("no access_token".into()))?;
    if let Some(tt) = &t.token_type
        && !tt.eq_ignore_ascii_case("bearer")
        && !tt.eq_ignore_ascii_case("N_A")
    {
        return Err(OauthError::BadAnswer(format!(
            "token_type {tt:?} is not Bearer"
        )));
    }
    // RFC 6749 says a number; some servers send a string.
    let expires_in = match t.expires_in {
        None => None,
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    Ok(IssuedToken {
        access_token,
        expires_in,
        scope: t
            .scope
            .map(|s| s.split_whitespace().map(str::to_owned).collect()),
    })
}

/// Revokes `token` at an RFC 7009 endpoint.
pub async fn revoke_token(
    client: &Client,
    url: &str,
    token: &str,
    client_assertion: Option<(&str, &str)>,
) -> Result<(), OauthError> {
    let mut form: Vec<(&str, &str)> = vec![("token", token), ("token_type_hint", "access_token")];
    if let Some((assertion, client_id)) = client_assertion {
        form.push(("client_id", client_id));
        form.push(("client_assertion_type", JWT_SPIFFE_ASSERTION));
        form.push(("client_assertion", assertion));
    }
    let a = client
        .post_form(url, &form)
        .await
        .map_err(|e| unreachable(url, &e))?;
    // RFC 7009 2.2: 200 also for a token that was already invalid.
    if a.status == 200 {
        Ok(())
    } else {
        Err(refused(&a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_oauth_error_and_never_the_body() {
        let a = Answer {
            status: 400,
            body: bytes::Bytes::from_static(
                br#"{"error":"invalid_scope","error_description":"admin is not yours","access_token":"x"}"#,
            ),
        };
        let e = refused(&a).to_string();
        assert_eq!(
            e,
            "the authorization server refused: HTTP 400 (invalid_scope: admin is not yours)"
        );
        let a = Answer {
            status: 502,
            body: bytes::Bytes::from_static(b"<html>bad gateway</html>"),
        };
        assert_eq!(
            refused(&a).to_string(),
            "the authorization server refused: HTTP 502"
        );
    }

    #[test]
    fn an_issued_token_is_never_printed() {
        let t = IssuedToken {
            access_token: "very-secret".into(),
            expires_in: Some(60),
            scope: None,
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
