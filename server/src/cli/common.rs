//! Errors, the admin client and flag parsing shared by the subcommands.

use super::*;

/// A one-line error for the user, and the exit status it ends with (1,
/// or 2 for the commands whose 1 means "denied").
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong; empty for a denial already printed.
    pub message: String,
    /// The exit status.
    pub exit: u8,
}

impl CliError {
    /// A decision command's answer "denied" (printed already): exit 1.
    pub fn denied() -> Self {
        Self {
            message: String::new(),
            exit: 1,
        }
    }

    /// The same error, ending with exit status `exit`.
    pub fn with_exit(mut self, exit: u8) -> Self {
        self.exit = exit;
        self
    }
}

pub(super) fn err(msg: impl ToString) -> CliError {
    CliError {
        message: msg.to_string(),
        exit: 1,
    }
}

pub(super) fn status_err(s: tonic::Status) -> CliError {
    if s.code() == tonic::Code::Unimplemented {
        return err(
            "the server does not offer this command (it runs an older version?); upgrade it, or use the CLI of its version",
        );
    }
    if s.code() == tonic::Code::Unavailable {
        return err(format!(
            "cannot reach the server's admin socket ({}); is lanyard-server running?",
            s.message()
        ));
    }
    err(s.message())
}

pub(super) async fn client(admin: &AdminArgs) -> Result<AdminClient<Channel>, CliError> {
    if !admin.admin_socket.exists() {
        return Err(err(format!(
            "admin socket {} does not exist; is lanyard-server running? (use --admin-socket)",
            admin.admin_socket.display()
        )));
    }
    let ch = unix_channel(&admin.admin_socket).map_err(err)?;
    Ok(AdminClient::new(ch))
}

pub(super) fn check_id(field: &str, s: &str) -> Result<String, CliError> {
    SpiffeId::new(s)
        .map(|id| id.to_string())
        .map_err(|e| err(format!("--{field} {s:?}: {e}")))
}

/// An optional SPIFFE ID flag, checked; empty when absent (the admin API's
/// "no filter").
pub(super) fn optional_id(field: &str, v: Option<&str>) -> Result<String, CliError> {
    v.map(|s| check_id(field, s))
        .transpose()
        .map(Option::unwrap_or_default)
}

pub(super) fn ttl_secs(field: &str, v: &Option<String>) -> Result<Option<i64>, CliError> {
    v.as_deref()
        .map(|s| {
            parse_duration(s)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .map_err(|e| err(format!("--{field}: {e}")))
        })
        .transpose()
}
