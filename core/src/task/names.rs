//! Validated task IDs and the checks for task types, tool names,
//! destinations and principals named in a task request.

use std::fmt;
use std::str::FromStr;

/// Most tools one task may request.
pub const MAX_TOOLS: usize = 64;
/// Most destinations one task may declare.
pub const MAX_DESTINATIONS: usize = 64;
/// Longest intent text, in bytes.
pub const MAX_INTENT_LEN: usize = 1024;
/// Longest task type, tool name or principal, in bytes.
const MAX_NAME_LEN: usize = 128;
/// Longest destination, in bytes.
const MAX_DESTINATION_LEN: usize = 512;

/// Why a task request, grant or claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// A task ID that is not 32 lowercase hex characters.
    #[error("task ID must be 32 lowercase hex characters")]
    BadTaskId,
    /// A task type outside the accepted syntax.
    #[error(
        "invalid task type {0:?}: 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadTaskType(String),
    /// A tool name outside the accepted syntax.
    #[error(
        "invalid tool name {0:?}: 1-128 characters of letters, digits, '.', '_', '-', ':' or '/', starting with a letter or digit"
    )]
    BadTool(String),
    /// A credential provider name outside the accepted syntax.
    #[error(
        "invalid credential provider name {0:?}: 1-63 characters of lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadCredentialName(String),
    /// More tools than [`MAX_TOOLS`].
    #[error("a task can request at most {MAX_TOOLS} tools")]
    TooManyTools,
    /// More destinations than [`MAX_DESTINATIONS`].
    #[error("a task can declare at most {MAX_DESTINATIONS} destinations")]
    TooManyDestinations,
    /// A destination that is empty, too long or holds whitespace or control characters.
    #[error("invalid destination {0:?}: 1-512 printable characters without spaces")]
    BadDestination(String),
    /// The on-behalf-of principal is empty, too long or not printable.
    #[error("invalid on_behalf_of {0:?}: 1-128 printable characters without spaces")]
    BadOnBehalfOf(String),
    /// The intent is too long or holds control characters.
    #[error("intent must be at most {MAX_INTENT_LEN} bytes of printable text")]
    BadIntent,
    /// A sensitivity level not among the configured ones.
    #[error("unknown data sensitivity {level:?} (known: {known})")]
    UnknownSensitivity {
        /// The level asked for.
        level: String,
        /// The configured levels, lowest first.
        known: String,
    },
    /// The sensitivity level list is empty, repeats a name or has a bad name.
    #[error("sensitivity levels must be 1-16 distinct names of letters, digits, '_' or '-'")]
    BadLevels,
    /// A TTL of zero or above the allowed maximum.
    #[error("task TTL must be between 1s and {max}s")]
    BadTtl {
        /// The largest TTL allowed, seconds.
        max: u64,
    },
    /// A task claims extension or JWT claim set that does not decode.
    #[error("malformed task claims: {0}")]
    Malformed(String),
}

/// A task's ID: 128 random bits as 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Validates a task ID.
    pub fn new(s: &str) -> Result<Self, TaskError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TaskError::BadTaskId)
        }
    }

    /// Makes an ID from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TaskId {
    type Err = TaskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TaskId::new(&s).map_err(serde::de::Error::custom)
    }
}

fn is_name(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

/// Checks a task type such as `report.generate`.
pub fn check_task_type(s: &str) -> Result<(), TaskError> {
    if is_name(s, b"") {
        Ok(())
    } else {
        Err(TaskError::BadTaskType(truncate(s)))
    }
}

/// Checks a tool name such as `crm.read` or `mcp:github/issues.list`.
pub fn check_tool(s: &str) -> Result<(), TaskError> {
    if is_name(s, b":/") {
        Ok(())
    } else {
        Err(TaskError::BadTool(truncate(s)))
    }
}

/// Checks a credential provider name such as `github` or `crm-api-key`.
pub fn check_credential_name(s: &str) -> Result<(), TaskError> {
    if s.len() <= 63 && is_name(s, b"") && !s.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(TaskError::BadCredentialName(truncate(s)))
    }
}

/// Checks a destination (a host, URL or service name).
pub fn check_destination(s: &str) -> Result<(), TaskError> {
    if !s.is_empty()
        && s.len() <= MAX_DESTINATION_LEN
        && s.chars().all(|c| !c.is_control() && !c.is_whitespace())
    {
        Ok(())
    } else {
        Err(TaskError::BadDestination(truncate(s)))
    }
}

/// Checks an on-behalf-of principal such as `user:alice@example.com`.
pub fn check_on_behalf_of(s: &str) -> Result<(), TaskError> {
    if !s.is_empty()
        && s.len() <= MAX_NAME_LEN * 2
        && s.chars().all(|c| !c.is_control() && !c.is_whitespace())
    {
        Ok(())
    } else {
        Err(TaskError::BadOnBehalfOf(truncate(s)))
    }
}

/// At most 64 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        let id = TaskId::from_random([0xab; 16]);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(TaskId::new(id.as_str()), Ok(id));
        assert!(TaskId::new("ABABABABABABABABABABABABABABABAB").is_err());
        assert!(TaskId::new("abc").is_err());
    }

    #[test]
    fn names() {
        assert!(check_task_type("report.generate").is_ok());
        assert!(check_task_type("").is_err());
        assert!(check_task_type(".hidden").is_err());
        assert!(check_task_type("a b").is_err());
        assert!(check_task_type(&"a".repeat(129)).is_err());
        assert!(check_tool("mcp:github/issues.list").is_ok());
        assert!(check_tool("crm read").is_err());
        assert!(check_destination("https://api.example.com/v1").is_ok());
        assert!(check_destination("a\nb").is_err());
        assert!(check_on_behalf_of("user:alice@example.com").is_ok());
        assert!(check_on_behalf_of("").is_err());
    }
}
