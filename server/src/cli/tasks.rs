//! `policy` and `task` subcommands.

use std::path::{Path, PathBuf};

use lanyard_proto::admin::{
    CheckPolicyRequest, ClearPolicyRequest, GetPolicyRequest, ListTasksRequest, SetPolicyRequest,
    TaskRequest, TestPolicyRequest,
};

use super::*;

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a Cedar file and put it in force (or, with --shadow, load it
    /// as a candidate whose decisions are only logged).
    Set {
        /// The Cedar policy file.
        file: PathBuf,
        /// Load as the shadow (candidate) set instead of enforcing it.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the policy set in force (or a stored version).
    Show {
        /// A stored version [default: the current one].
        #[arg(long)]
        version: Option<u64>,
        /// Show the shadow set.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Unload the enforced set (or, with --shadow, the shadow set): from
    /// then on only the entries' ceilings decide. (`policy set` with an
    /// empty file loads a set that permits nothing.)
    Clear {
        /// Unload the shadow set instead.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Validate a Cedar file against the schema without loading it.
    Check {
        /// The Cedar policy file.
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A dry-run decision with reasons; creates nothing.
    Test {
        /// The workload (an entry's SPIFFE ID).
        #[arg(long)]
        spiffe_id: String,
        /// Task type.
        #[arg(long)]
        task_type: String,
        /// Tool (repeatable).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// Data sensitivity level [default: the lowest].
        #[arg(long)]
        sensitivity: Option<String>,
        /// Principal the task acts for.
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// Task lifetime [default: 5m].
        #[arg(long)]
        ttl: Option<String>,
        /// Extra context as a JSON object, merged over the computed one.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `task` subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// List active tasks.
    List {
        /// Only tasks of this workload.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only tasks held by this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Include ended, revoked and expired tasks.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one task.
    Show {
        /// Task ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a task and every task delegated from it; agents withdraw the
    /// credentials within a second.
    Revoke {
        /// Task ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn read_policy(file: &Path) -> Result<(String, String), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| err(format!("cannot read {}: {e}", file.display())))?;
    Ok((text, file.display().to_string()))
}

fn policy_json(p: &types::PolicyInfo) -> serde_json::Value {
    json!({
        "version": p.version,
        "shadow": p.shadow,
        "sha256": p.sha256,
        "created_at": p.created_at,
        "policy_count": p.policy_count,
        "text": p.text,
    })
}

fn task_json(t: &types::TaskInfo) -> serde_json::Value {
    json!({
        "task_id": t.task_id,
        "state": t.state,
        "spiffe_id": t.spiffe_id,
        "entry_id": t.entry_id,
        "agent_id": t.agent_id,
        "task_type": t.task_type,
        "tools": t.tools,
        "denied": t.denied.iter().map(|d| json!({"tool": d.tool, "reason": d.reason})).collect::<Vec<_>>(),
        "destinations": t.destinations,
        "data_sensitivity": t.data_sensitivity,
        "on_behalf_of": t.on_behalf_of,
        "intent_sha256": t.intent_sha256,
        "not_after": t.not_after,
        "created_at": t.created_at,
        "chain": t.chain.iter().map(|a| json!({"spiffe_id": a.spiffe_id, "task_id": a.task_id})).collect::<Vec<_>>(),
        "end_reason": t.end_reason,
        "grant_sha256": t.grant_sha256,
    })
}

fn task_text(t: &types::TaskInfo) -> String {
    let mut s = format!(
        "Task ID       : {}\nState         : {}\nSPIFFE ID     : {}\nEntry ID      : {}\nAgent ID      : {}\nTask type     : {}\nSensitivity   : {}\nExpires at    : {}\n",
        t.task_id,
        t.state,
        t.spiffe_id,
        t.entry_id,
        t.agent_id,
        t.task_type,
        t.data_sensitivity,
        lanyard_core::clock::format_rfc3339(lanyard_core::clock::from_unix_secs(
            u64::try_from(t.not_after).unwrap_or(0)
        ))
    );
    for tool in &t.tools {
        s.push_str(&format!("Tool          : {tool}\n"));
    }
    for d in &t.denied {
        s.push_str(&format!("Denied tool   : {} ({})\n", d.tool, d.reason));
    }
    if !t.on_behalf_of.is_empty() {
        s.push_str(&format!("On behalf of  : {}\n", t.on_behalf_of));
    }
    for a in &t.chain {
        s.push_str(&format!(
            "Delegated by  : {} (task {})\n",
            a.spiffe_id, a.task_id
        ));
    }
    if !t.end_reason.is_empty() {
        s.push_str(&format!("End reason    : {}\n", t.end_reason));
    }
    s
}

fn print_task(out: Output, t: &types::TaskInfo) {
    match out {
        Output::Json => outln!("{}", task_json(t)),
        Output::Text => out!("{}", task_text(t)),
    }
}

/// Runs a `policy` subcommand.
pub(super) async fn run_policy(cmd: PolicyCmd) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Set {
            file,
            shadow,
            admin,
        } => {
            let (text, source_name) = read_policy(&file)?;
            let p = client(&admin)
                .await?
                .set_policy(SetPolicyRequest {
                    text,
                    shadow,
                    source_name,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!("{}", policy_json(&p)),
                Output::Text => outln!(
                    "{} policy set version {} in force ({} policies)",
                    if p.shadow { "Shadow" } else { "Enforced" },
                    p.version,
                    p.policy_count
                ),
            }
        }
        PolicyCmd::Show {
            version,
            shadow,
            admin,
        } => {
            let p = client(&admin)
                .await?
                .get_policy(GetPolicyRequest {
                    version: version.unwrap_or(0),
                    shadow,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!("{}", policy_json(&p)),
                Output::Text => {
                    outln!(
                        "// version {}{}, {} policies, sha256 {}",
                        p.version,
                        if p.shadow { " (shadow)" } else { "" },
                        p.policy_count,
                        p.sha256
                    );
                    out!("{}", p.text);
                }
            }
        }
        PolicyCmd::Clear { shadow, admin } => {
            let r = client(&admin)
                .await?
                .clear_policy(ClearPolicyRequest { shadow })
                .await
                .map_err(status_err)?
                .into_inner();
            let kind = if shadow { "shadow" } else { "enforced" };
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({"version": r.version, "shadow": shadow, "cleared": true})
                ),
                Output::Text => outln!("No {kind} policy set from version {}", r.version),
            }
        }
        PolicyCmd::Check { file, admin } => {
            let (text, source_name) = read_policy(&file)?;
            let r = client(&admin)
                .await?
                .check_policy(CheckPolicyRequest { text, source_name })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => {
                    outln!("{}", json!({"valid": true, "policy_count": r.policy_count}))
                }
                Output::Text => outln!("{}: valid ({} policies)", file.display(), r.policy_count),
            }
        }
        PolicyCmd::Test {
            spiffe_id,
            task_type,
            tools,
            sensitivity,
            on_behalf_of,
            ttl,
            context,
            admin,
        } => {
            // Exit 0: the task and every tool allowed; 1: something
            // denied; 2: the question could not be answered.
            let two = |e: CliError| e.with_exit(2);
            let spiffe_id = check_id("spiffe-id", &spiffe_id).map_err(two)?;
            let ttl_seconds = ttl_secs("ttl", &ttl).map_err(two)?.unwrap_or(0);
            let r = client(&admin)
                .await
                .map_err(two)?
                .test_policy(TestPolicyRequest {
                    spiffe_id,
                    task_type,
                    tools,
                    data_sensitivity: sensitivity.unwrap_or_default(),
                    on_behalf_of: on_behalf_of.unwrap_or_default(),
                    context_json: context.unwrap_or_default(),
                    ttl_seconds,
                    destinations: vec![],
                    intent: String::new(),
                })
                .await
                .map_err(|s| status_err(s).with_exit(2))?
                .into_inner();
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({
                        "task_allowed": r.task_allowed,
                        "task_approval": r.task_approval,
                        "policy_ids": r.policy_ids,
                        "reasons": r.reasons,
                        "entry_id": r.entry_id,
                        "policy_version": r.policy_version,
                        "tools": r.tools.iter().map(|t| json!({
                            "tool": t.tool, "allowed": t.allowed,
                            "policy_ids": t.policy_ids, "reasons": t.reasons,
                            "approval": t.approval,
                        })).collect::<Vec<_>>(),
                    })
                ),
                Output::Text => {
                    let verdict = |ok: bool| if ok { "ALLOW" } else { "DENY " };
                    outln!(
                        "task  {}{} {}{}",
                        verdict(r.task_allowed),
                        if r.task_approval.is_empty() || !r.task_allowed {
                            String::new()
                        } else {
                            format!(" (once approved by {})", r.task_approval.join(" and "))
                        },
                        r.reasons.join("; "),
                        if r.policy_ids.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", r.policy_ids.join(", "))
                        }
                    );
                    for t in &r.tools {
                        let approval = if t.approval.is_empty() || !t.allowed {
                            String::new()
                        } else {
                            format!(" (each call once approved by {})", t.approval.join(" and "))
                        };
                        outln!(
                            "tool  {} {}{} {}",
                            verdict(t.allowed),
                            t.tool,
                            approval,
                            t.reasons.join("; ")
                        );
                    }
                    outln!(
                        "(entry {}, policy version {})",
                        r.entry_id,
                        if r.policy_version == 0 {
                            "none: entry ceilings only".to_owned()
                        } else {
                            r.policy_version.to_string()
                        }
                    );
                }
            }
            if !r.task_allowed || r.tools.iter().any(|t| !t.allowed) {
                return Err(CliError::denied());
            }
        }
    }
    Ok(())
}

/// Runs a `task` subcommand.
pub(super) async fn run_task(cmd: TaskCmd) -> Result<(), CliError> {
    match cmd {
        TaskCmd::List {
            spiffe_id,
            agent,
            all,
            admin,
        } => {
            let spiffe_id = optional_id("spiffe-id", spiffe_id.as_deref())?;
            let agent_id = optional_id("agent", agent.as_deref())?;
            let r = client(&admin)
                .await?
                .list_tasks(ListTasksRequest {
                    spiffe_id,
                    agent_id,
                    all,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({"tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>()})
                ),
                Output::Text => {
                    if r.tasks.is_empty() {
                        outln!("No tasks");
                    }
                    let blocks: Vec<String> = r.tasks.iter().map(task_text).collect();
                    out!("{}", blocks.join("\n"));
                }
            }
        }
        TaskCmd::Show { id, admin } => {
            let t = client(&admin)
                .await?
                .get_task(TaskRequest { task_id: id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_task(admin.output, &t);
        }
        TaskCmd::Revoke { id, admin } => {
            let t = client(&admin)
                .await?
                .revoke_task(TaskRequest { task_id: id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_task(admin.output, &t);
        }
    }
    Ok(())
}
