//! `audit tail | export | key | verify`.

use std::io::{BufRead, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use lanyard_core::audit::{Kind, Verifier, parse_bound_public_keys, parse_public_keys};
use lanyard_core::clock::parse_rfc3339;
use lanyard_proto::admin::{GetAuditKeyRequest, ReadAuditRequest};
use serde_json::Value;

use super::*;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object a line: records and signed checkpoints.
    Jsonl,
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Print the latest records; with --follow, then every new one.
    Tail {
        /// Keep printing new records as they are written.
        #[arg(long)]
        follow: bool,
        /// How many of the latest records to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Only records of this kind (e.g. tool.decision, svid.issued).
        #[arg(long)]
        kind: Option<String>,
        /// Only records of this task (or of its descendants).
        #[arg(long)]
        task: Option<String>,
        /// Only records whose subject or actor is this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Export the log for a SIEM or for offline verification: records and
    /// the signed checkpoints that cover them, one JSON object a line.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// From this time (RFC 3339, or a duration ago such as 1h).
        #[arg(long)]
        since: Option<String>,
        /// Up to this time (RFC 3339, or a duration ago).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the public audit key (PEM), for `audit verify --key`.
    Key {
        /// Read it from a (stopped or running) server's data dir instead
        /// of asking the server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Verify the chain: the running server's whole log, or (with --file
    /// and --key) an export, offline. Exits non-zero naming the first
    /// broken record.
    Verify {
        /// An export (`-` for standard input).
        #[arg(long, requires = "key")]
        file: Option<PathBuf>,
        /// A public audit key file (PEM; repeatable, or several keys in
        /// one file, one per server).
        #[arg(long, requires = "file")]
        key: Vec<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Unix milliseconds of a `--since`/`--until` value.
fn time_ms(flag: &str, v: Option<&str>) -> Result<i64, CliError> {
    let Some(v) = v else { return Ok(0) };
    let t = match parse_rfc3339(v) {
        Some(t) => t,
        None => {
            let ago = parse_duration(v).map_err(|_| {
                err(format!(
                    "--{flag} {v:?}: use RFC 3339 (2026-12-03T10:00:00Z) or a duration ago (1h)"
                ))
            })?;
            SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| err(format!("--{flag}: {v} ago is before 1970")))?
        }
    };
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Ok(i64::try_from(ms).unwrap_or(i64::MAX).max(1))
}

struct Filter {
    kind: Option<String>,
    task: Option<String>,
    spiffe_id: Option<String>,
}

impl Filter {
    fn keeps(&self, v: &Value) -> bool {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
        self.kind.as_deref().is_none_or(|k| s("/kind") == k)
            && self.task.as_deref().is_none_or(|t| {
                s("/task/id") == t
                    || v.pointer("/task/chain")
                        .and_then(Value::as_array)
                        .is_some_and(|c| c.iter().any(|x| x.as_str() == Some(t)))
            })
            && self
                .spiffe_id
                .as_deref()
                .is_none_or(|id| s("/subject/spiffe_id") == id || s("/actor") == id)
    }
}

/// One record as a line of text.
fn text_line(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
    let mut out = format!(
        "{} {} {}",
        v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s("/time"),
        s("/kind")
    );
    for (name, p) in [
        ("actor", "/actor"),
        ("subject", "/subject/spiffe_id"),
        ("node", "/subject/node"),
        ("task", "/task/id"),
        ("tool", "/tool"),
        ("resource", "/resource"),
        ("decision", "/decision"),
        ("serial", "/correlation/serial"),
        ("jti", "/correlation/jti"),
        ("decision_id", "/correlation/decision_id"),
        ("reason", "/reason"),
    ] {
        let x = s(p);
        if !x.is_empty() {
            out.push_str(&format!(" {name}={x:?}"));
        }
    }
    out
}

/// The server's public audit key, chain and head.
async fn audit_key(admin: &AdminArgs) -> Result<lanyard_proto::admin::AuditKeyResponse, CliError> {
    Ok(client(admin)
        .await?
        .get_audit_key(GetAuditKeyRequest {})
        .await
        .map_err(status_err)?
        .into_inner())
}

async fn stream(
    admin: &AdminArgs,
    req: ReadAuditRequest,
    mut each: impl FnMut(String) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut s = client(admin)
        .await?
        .read_audit(req)
        .await
        .map_err(status_err)?
        .into_inner();
    while let Some(line) = s.message().await.map_err(status_err)? {
        each(line.line)?;
    }
    Ok(())
}

fn verify_lines(
    keys: Vec<(Option<String>, lanyard_core::audit::AuditPublicKey)>,
    lines: impl Iterator<Item = Result<String, CliError>>,
    output: Output,
) -> Result<(), CliError> {
    let mut v = Verifier::with_bound_keys(keys);
    for line in lines {
        v.feed(&line?)
            .map_err(|e| err(format!("audit verify failed: {e}")))?;
    }
    report(v, output)
}

/// The end of verification: the summary, or the first thing wrong.
fn report(v: Verifier, output: Output) -> Result<(), CliError> {
    let chains = v
        .finish()
        .map_err(|e| err(format!("audit verify failed: {e}")))?;
    let total: u64 = chains.iter().map(|c| c.records).sum();
    match output {
        Output::Json => outln!(
            "{}",
            json!({
                "verified": total,
                "chains": chains.iter().map(|c| json!({
                    "chain": c.chain, "key": c.key, "first_seq": c.first_seq,
                    "last_seq": c.last_seq, "records": c.records,
                    "checkpoints": c.checkpoints, "pruned_through": c.pruned_through,
                    "gaps": c.gaps,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Text => {
            outln!("verified {total} records in {} chain(s)", chains.len());
            for c in &chains {
                let pruned = c
                    .pruned_through
                    .map(|p| format!(", pruned through {p}"))
                    .unwrap_or_default();
                outln!(
                    "  chain {}: records {}..{} ({} records, {} checkpoints, key {}{pruned})",
                    c.chain,
                    c.first_seq,
                    c.last_seq,
                    c.records,
                    c.checkpoints,
                    c.key
                );
                if c.gaps > 0 {
                    outln!(
                        "  anomaly: {} gap(s) in agents' shipped records (audit tail --kind audit.gap)",
                        c.gaps
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs an `audit` subcommand.
pub(super) async fn run_audit(cmd: AuditCmd) -> Result<(), CliError> {
    match cmd {
        AuditCmd::Tail {
            follow,
            lines,
            kind,
            task,
            spiffe_id,
            admin,
        } => {
            if let Some(k) = &kind {
                k.parse::<Kind>().map_err(err)?;
            }
            let filter = Filter {
                kind,
                task,
                spiffe_id,
            };
            // The last N are picked here, after filtering.
            let mut latest = std::collections::VecDeque::new();
            let print = |v: &Value| match admin.output {
                Output::Json => outln!("{v}"),
                Output::Text => outln!("{}", text_line(v)),
            };
            // Records up to the head at the start are history (the last N
            // are printed); later ones are printed as they come.
            let head = audit_key(&admin).await?.head;
            let mut flushed = head == 0;
            stream(
                &admin,
                ReadAuditRequest {
                    follow,
                    ..Default::default()
                },
                |line| {
                    let v: Value = serde_json::from_str(&line).map_err(err)?;
                    let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                    let keep = filter.keeps(&v);
                    if !flushed && seq <= head {
                        if keep {
                            latest.push_back(v);
                            if latest.len() as u64 > lines {
                                latest.pop_front();
                            }
                        }
                        if seq == head {
                            latest.drain(..).for_each(|v| print(&v));
                            flushed = true;
                        }
                        return Ok(());
                    }
                    if !flushed {
                        latest.drain(..).for_each(|v| print(&v));
                        flushed = true;
                    }
                    if keep {
                        print(&v);
                    }
                    let _ = std::io::stdout().flush();
                    Ok(())
                },
            )
            .await?;
            latest.drain(..).for_each(|v| print(&v));
            Ok(())
        }
        AuditCmd::Export {
            format: ExportFormat::Jsonl,
            since,
            until,
            admin,
        } => {
            let req = ReadAuditRequest {
                export: true,
                since_ms: time_ms("since", since.as_deref())?,
                until_ms: time_ms("until", until.as_deref())?,
                ..Default::default()
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            stream(&admin, req, |line| {
                writeln!(out, "{line}").map_err(|e| err(format!("writing the export: {e}")))
            })
            .await?;
            out.flush()
                .map_err(|e| err(format!("writing the export: {e}")))
        }
        AuditCmd::Key { data_dir, admin } => {
            let (pem, id, chain) = match data_dir {
                Some(dir) => {
                    let k = crate::audit::public_key(&dir).map_err(err)?;
                    // The chain is the server's ID, kept beside the data.
                    let chain = std::fs::read_to_string(dir.join("server-id"))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default();
                    (k.to_pem(), k.id(), chain)
                }
                None => {
                    let r = audit_key(&admin).await?;
                    (r.public_key_pem, r.key_id, r.chain)
                }
            };
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({"key_id": id, "chain": chain, "public_key_pem": pem})
                ),
                // The line before the key binds it to its chain: `audit
                // verify` then refuses that chain signed by any other key.
                Output::Text if chain.is_empty() => out!("{pem}"),
                Output::Text => out!("{}{chain}\n{pem}", lanyard_core::audit::CHAIN_LINE),
            }
            Ok(())
        }
        AuditCmd::Verify {
            file: Some(file),
            key,
            admin,
        } => {
            let mut keys = vec![];
            for k in &key {
                let text = std::fs::read_to_string(k)
                    .map_err(|e| err(format!("--key {}: {e}", k.display())))?;
                keys.extend(
                    parse_bound_public_keys(&text)
                        .map_err(|e| err(format!("--key {}: {e}", k.display())))?,
                );
            }
            let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .map_err(|e| err(format!("--file {}: {e}", file.display())))?,
                ))
            };
            let lines = reader
                .lines()
                .map(|l| l.map_err(|e| err(format!("reading {}: {e}", file.display()))));
            verify_lines(keys, lines, admin.output)
        }
        AuditCmd::Verify {
            file: None, admin, ..
        } => {
            let r = audit_key(&admin).await?;
            let keys = parse_public_keys(&r.public_key_pem).map_err(err)?;
            let mut v = Verifier::new(keys);
            v.bind(&r.chain, &r.key_id);
            stream(
                &admin,
                ReadAuditRequest {
                    export: true,
                    ..Default::default()
                },
                |l| {
                    v.feed(&l)
                        .map_err(|e| err(format!("audit verify failed: {e}")))
                },
            )
            .await?;
            report(v, admin.output)
        }
    }
}
