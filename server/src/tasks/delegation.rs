//! Delegation tokens: 256 random bits, base64url, stored by SHA-256 so the
//! store never holds a usable token; single use, at most 60 seconds.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::TaskServiceError;

/// Longest life of a delegation token.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(60);

/// A new token and its hash.
pub(crate) fn new_token() -> Result<(String, String), TaskServiceError> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| TaskServiceError::Signing("random source failed".into()))?;
    let token = URL_SAFE_NO_PAD.encode(b);
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The stored form of a token.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), ha);
        assert_ne!(ha, a);
    }
}
