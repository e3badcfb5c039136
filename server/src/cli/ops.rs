//! `agent` and `ca` subcommands.

use super::*;

pub(super) fn agent_json(a: &lanyard_proto::admin::Agent) -> serde_json::Value {
    json!({
        "spiffe_id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "serial": a.serial,
        "expires_at": a.expires_at,
        "banned": a.banned,
        "attested_at": a.attested_at,
        "selectors": a.selectors,
    })
}

pub(super) async fn run_agent(cmd: AgentCmd) -> Result<(), CliError> {
    match cmd {
        AgentCmd::List { admin } => {
            let r = client(&admin)
                .await?
                .list_agents(ListAgentsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({"agents": r.agents.iter().map(agent_json).collect::<Vec<_>>()})
                ),
                Output::Text => {
                    if r.agents.is_empty() {
                        outln!("No agents");
                    }
                    for a in &r.agents {
                        outln!(
                            "{}  attestation={} serial={} expires_at={}{}{}",
                            a.spiffe_id,
                            a.attestation_type,
                            a.serial,
                            a.expires_at,
                            if a.selectors.is_empty() {
                                String::new()
                            } else {
                                format!(" selectors={}", a.selectors.join(","))
                            },
                            if a.banned { " BANNED" } else { "" }
                        );
                    }
                }
            }
        }
        AgentCmd::Evict { id, admin } => {
            let id = check_id("id", &id)?;
            let a = client(&admin)
                .await?
                .evict_agent(AgentRequest { spiffe_id: id })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!("{}", json!({"evicted": agent_json(&a)})),
                Output::Text => outln!("Evicted agent {}", a.spiffe_id),
            }
        }
        AgentCmd::Ban { id, admin } => {
            let id = check_id("id", &id)?;
            let a = client(&admin)
                .await?
                .ban_agent(AgentRequest { spiffe_id: id })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!("{}", json!({"banned": agent_json(&a)})),
                Output::Text => outln!("Banned agent {}", a.spiffe_id),
            }
        }
    }
    Ok(())
}

pub(super) fn print_authorities(out: Output, r: &ListAuthoritiesResponse) {
    use lanyard_core::clock::{format_rfc3339, from_unix_secs};
    let t = |s: i64| format_rfc3339(from_unix_secs(u64::try_from(s).unwrap_or(0)));
    match out {
        Output::Json => outln!(
            "{}",
            json!({"authorities": r.authorities.iter().map(|a| json!({
                "id": a.id, "kind": a.kind, "state": a.state, "tainted": a.tainted,
                "not_before": a.not_before, "not_after": a.not_after,
                "server_id": a.server_id,
            })).collect::<Vec<_>>()})
        ),
        Output::Text => {
            for a in &r.authorities {
                outln!(
                    "{:<5} {:<9} {}{}  valid {} .. {}  server {}",
                    a.kind,
                    a.state,
                    a.id,
                    if a.tainted { " (tainted)" } else { "" },
                    t(a.not_before),
                    t(a.not_after),
                    a.server_id
                );
            }
        }
    }
}

pub(super) async fn run_ca(cmd: CaCmd) -> Result<(), CliError> {
    let (admin, r) = match cmd {
        CaCmd::Show { admin } => {
            let r = client(&admin)
                .await?
                .list_authorities(ListAuthoritiesRequest {})
                .await;
            (admin, r)
        }
        CaCmd::Prepare { admin } => {
            let r = client(&admin)
                .await?
                .prepare_authorities(ListAuthoritiesRequest {})
                .await;
            (admin, r)
        }
        CaCmd::Activate { admin } => {
            let r = client(&admin)
                .await?
                .activate_authorities(ListAuthoritiesRequest {})
                .await;
            (admin, r)
        }
        CaCmd::Taint { id, admin } => {
            let r = client(&admin)
                .await?
                .taint_authority(AuthorityRequest { id })
                .await;
            (admin, r)
        }
        CaCmd::Revoke { id, admin } => {
            let r = client(&admin)
                .await?
                .revoke_authority(AuthorityRequest { id })
                .await;
            (admin, r)
        }
    };
    print_authorities(admin.output, &r.map_err(status_err)?.into_inner());
    Ok(())
}
