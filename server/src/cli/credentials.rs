//! `credential add|list|show|rotate|delete`: the providers tasks may be
//! handed credentials from. A secret is read from a file (never a flag:
//! flags are visible in the process list) and never printed back.

use clap::Subcommand;
use lanyard_proto::admin::{
    AddCredentialRequest, CredentialProvider, CredentialProviderRequest, ListCredentialsRequest,
    RotateCredentialRequest,
};

use super::*;

/// `credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Declare a provider.
    Add {
        /// Its name (a-z, 0-9, '.', '_', '-').
        name: String,
        /// oauth-exchange (a token from an OAuth authorization server, for
        /// the task's JWT-SVID), secret (a value the server holds) or
        /// txn-token (a transaction token the server signs).
        #[arg(long)]
        kind: String,
        /// oauth-exchange: the token endpoint (https://).
        #[arg(long)]
        token_url: Option<String>,
        /// oauth-exchange: the audience of the JWT-SVID sent; txn-token:
        /// the token's audience.
        #[arg(long)]
        audience: Option<String>,
        /// oauth-exchange: how the server authenticates, jwt-spiffe (a
        /// JWT-SVID as client assertion) or none [default: jwt-spiffe].
        #[arg(long)]
        client_auth: Option<String>,
        /// oauth-exchange: token-exchange (RFC 8693, the task's JWT-SVID as
        /// subject token) or client-credentials (the JWT-SVID as client
        /// assertion only) [default: token-exchange].
        #[arg(long)]
        grant: Option<String>,
        /// oauth-exchange: a scope tasks may ask for (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// oauth-exchange: the RFC 7009 revocation endpoint, called when a
        /// task's token ends with the task.
        #[arg(long)]
        revocation_url: Option<String>,
        /// secret: the file holding the value (read whole; a trailing
        /// newline is kept).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// secret: workloads may be handed the value itself (otherwise only
        /// an enforcement point acting for a task). The workload then holds
        /// a long-lived secret.
        #[arg(long)]
        reveal: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the providers (a secret by its digest, never its value).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Credentials handed to tasks: task, provider, scopes, expiry (never
    /// the credential).
    Leases {
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// Ended ones too (kept about ten minutes after their end).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one provider.
    Show {
        /// Its name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a secret provider's value.
    Rotate {
        /// Its name.
        name: String,
        /// The file holding the new value.
        #[arg(long)]
        from_file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a provider.
    Delete {
        /// Its name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 64 * 1024;

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let len = std::fs::metadata(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .len();
    if len > MAX_SECRET_FILE {
        return Err(err(format!(
            "{}: a secret is at most {MAX_SECRET_FILE} bytes",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    if bytes.is_empty() {
        return Err(err(format!("{}: the file is empty", path.display())));
    }
    Ok(bytes)
}

fn provider_json(p: &CredentialProvider) -> serde_json::Value {
    json!({
        "name": p.name,
        "kind": p.kind,
        "token_url": p.token_url,
        "audience": p.audience,
        "client_auth": p.client_auth,
        "grant": p.grant,
        "scopes": p.scopes,
        "revocation_url": p.revocation_url,
        "digest": p.digest,
        "reveal": p.reveal,
        "version": p.version,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    })
}

fn provider_text(p: &CredentialProvider) -> String {
    let time = |s: i64| {
        lanyard_core::clock::format_rfc3339(lanyard_core::clock::from_unix_secs(
            u64::try_from(s).unwrap_or(0),
        ))
    };
    let mut out = format!("Name          : {}\nKind          : {}\n", p.name, p.kind);
    let mut line = |label: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(&format!("{label:<14}: {v}\n"));
        }
    };
    line("Token URL", &p.token_url);
    line("Audience", &p.audience);
    line("Grant", &p.grant);
    line("Client auth", &p.client_auth);
    line("Scopes", &p.scopes.join(" "));
    line("Revocation URL", &p.revocation_url);
    line("Digest", &p.digest);
    if p.kind == "secret" {
        line(
            "Reveal",
            if p.reveal {
                "yes: workloads may hold the value"
            } else {
                "no: enforcement points only"
            },
        );
    }
    line("Version", &p.version.to_string());
    line("Created", &time(p.created_at));
    line("Updated", &time(p.updated_at));
    out
}

fn lease_json(l: &lanyard_proto::admin::Lease) -> serde_json::Value {
    json!({
        "lease_id": l.lease_id,
        "task_id": l.task_id,
        "spiffe_id": l.spiffe_id,
        "agent": l.agent,
        "provider": l.provider,
        "type": l.r#type,
        "scopes": l.scopes,
        "audience": l.audience,
        "issued_at": l.issued_at,
        "expires_at": l.expires_at,
        "ended_at": (l.ended_at > 0).then_some(l.ended_at),
        "end_reason": l.end_reason,
        "enforcement_point": l.enforcement_point,
        "revocation_pending": l.revocation_pending,
    })
}

fn lease_text(l: &lanyard_proto::admin::Lease) -> String {
    let time = |s: i64| {
        lanyard_core::clock::format_rfc3339(lanyard_core::clock::from_unix_secs(
            u64::try_from(s).unwrap_or(0),
        ))
    };
    let mut out = format!(
        "Lease         : {}\nTask          : {}\nWorkload      : {}\nProvider      : {} ({})\n",
        l.lease_id, l.task_id, l.spiffe_id, l.provider, l.r#type
    );
    let mut line = |label: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(&format!("{label:<14}: {v}\n"));
        }
    };
    line("Scopes", &l.scopes.join(" "));
    line("Audience", &l.audience);
    line("Released to", &l.enforcement_point);
    line("Issued", &time(l.issued_at));
    line("Expires", &time(l.expires_at));
    if l.ended_at > 0 {
        line("Ended", &format!("{} ({})", time(l.ended_at), l.end_reason));
    }
    if l.revocation_pending {
        line("Revocation", "pending at the authorization server");
    }
    out
}

fn print_provider(output: Output, p: &CredentialProvider) {
    match output {
        Output::Json => outln!("{}", provider_json(p)),
        Output::Text => out!("{}", provider_text(p)),
    }
}

pub(super) async fn run_credential(cmd: CredentialCmd) -> Result<(), CliError> {
    match cmd {
        CredentialCmd::Add {
            name,
            kind,
            token_url,
            audience,
            client_auth,
            grant,
            scopes,
            revocation_url,
            from_file,
            reveal,
            admin,
        } => {
            let secret = match (&from_file, kind.as_str()) {
                (Some(f), _) => read_secret(f)?,
                (None, "secret") => {
                    return Err(err("a secret provider needs --from-file FILE"));
                }
                (None, _) => Vec::new(),
            };
            if reveal && kind == "secret" {
                eprintln!(
                    "warning: --reveal hands the value to workloads: they then hold a long-lived secret"
                );
            }
            let p = client(&admin)
                .await?
                .add_credential(AddCredentialRequest {
                    name,
                    kind,
                    token_url: token_url.unwrap_or_default(),
                    audience: audience.unwrap_or_default(),
                    client_auth: client_auth.unwrap_or_default(),
                    grant: grant.unwrap_or_default(),
                    scopes,
                    revocation_url: revocation_url.unwrap_or_default(),
                    secret,
                    reveal,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_provider(admin.output, &p);
        }
        CredentialCmd::List { admin } => {
            let r = client(&admin)
                .await?
                .list_credentials(ListCredentialsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            super::out::print_list(
                admin.output,
                "providers",
                &r.providers,
                "no credential providers",
                provider_json,
                provider_text,
            );
        }
        CredentialCmd::Leases { task, all, admin } => {
            let r = client(&admin)
                .await?
                .list_leases(lanyard_proto::admin::ListLeasesRequest {
                    task_id: task.unwrap_or_default(),
                    all,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            super::out::print_list(
                admin.output,
                "leases",
                &r.leases,
                if all { "no leases" } else { "no open leases" },
                lease_json,
                lease_text,
            );
        }
        CredentialCmd::Show { name, admin } => {
            let p = client(&admin)
                .await?
                .get_credential_provider(CredentialProviderRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            print_provider(admin.output, &p);
        }
        CredentialCmd::Rotate {
            name,
            from_file,
            admin,
        } => {
            let secret = read_secret(&from_file)?;
            let p = client(&admin)
                .await?
                .rotate_credential(RotateCredentialRequest { name, secret })
                .await
                .map_err(status_err)?
                .into_inner();
            print_provider(admin.output, &p);
        }
        CredentialCmd::Delete { name, admin } => {
            let p = client(&admin)
                .await?
                .delete_credential(CredentialProviderRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!("{}", provider_json(&p)),
                Output::Text => outln!("deleted credential provider {}", p.name),
            }
        }
    }
    Ok(())
}
