//! `entry` subcommands and how entries are printed.

use super::*;

impl EntryFields {
    /// Applies the given fields onto `e`.
    fn apply(&self, e: &mut types::Entry) -> Result<(), CliError> {
        if let Some(s) = &self.spiffe_id {
            e.spiffe_id = check_id("spiffe-id", s)?;
        }
        if let Some(s) = &self.parent_id {
            e.parent_id = check_id("parent-id", s)?;
        }
        if !self.selectors.is_empty() {
            for s in &self.selectors {
                s.parse::<Selector>()
                    .map_err(|x| err(format!("--selector {s:?}: {x}")))?;
            }
            e.selectors = self.selectors.clone();
        }
        if let Some(t) = ttl_secs("x509-ttl", &self.x509_ttl)? {
            e.x509_ttl_seconds = t;
        }
        if let Some(t) = ttl_secs("jwt-ttl", &self.jwt_ttl)? {
            e.jwt_ttl_seconds = t;
        }
        if !self.dns_names.is_empty() {
            e.dns_names = self.dns_names.clone();
        }
        if let Some(h) = &self.hint {
            e.hint = h.clone();
        }
        if let Some(on) = self.require_task {
            e.require_task = on;
        }
        if let Some(on) = self.enforcement_point {
            e.enforcement_point = on;
        }
        let limits = e.task_limits.get_or_insert_with(Default::default);
        if !self.allow_tools.is_empty() {
            limits.allowed_tools = self.allow_tools.clone();
        }
        if !self.allow_task_types.is_empty() {
            limits.allowed_task_types = self.allow_task_types.clone();
        }
        if !self.allow_credentials.is_empty() {
            limits.allowed_credentials = self.allow_credentials.clone();
        }
        if let Some(t) = ttl_secs("max-task-ttl", &self.max_task_ttl)? {
            limits.max_task_ttl_seconds = t;
        }
        if let Some(l) = &self.max_sensitivity {
            limits.max_sensitivity = l.clone();
        }
        Ok(())
    }
}

pub(super) fn entry_json(e: &types::Entry) -> serde_json::Value {
    let limits = e.task_limits.clone().unwrap_or_default();
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "x509_ttl_seconds": e.x509_ttl_seconds,
        "jwt_ttl_seconds": e.jwt_ttl_seconds,
        "dns_names": e.dns_names,
        "hint": e.hint,
        "require_task": e.require_task,
        "enforcement_point": e.enforcement_point,
        "allowed_tools": limits.allowed_tools,
        "allowed_task_types": limits.allowed_task_types,
        "allowed_credentials": limits.allowed_credentials,
        "max_task_ttl_seconds": limits.max_task_ttl_seconds,
        "max_sensitivity": limits.max_sensitivity,
        "revision": e.revision,
        "created_at": e.created_at,
    })
}

pub(super) fn ttl_text(secs: i64) -> String {
    if secs == 0 {
        "server default".into()
    } else {
        format_duration(std::time::Duration::from_secs(secs.unsigned_abs()))
    }
}

pub(super) fn entry_text(e: &types::Entry) -> String {
    let mut s = format!(
        "Entry ID      : {}\nSPIFFE ID     : {}\nParent ID     : {}\nRevision      : {}\nX509-SVID TTL : {}\nJWT-SVID TTL  : {}\n",
        e.id,
        e.spiffe_id,
        e.parent_id,
        e.revision,
        ttl_text(e.x509_ttl_seconds),
        ttl_text(e.jwt_ttl_seconds)
    );
    for sel in &e.selectors {
        s.push_str(&format!("Selector      : {sel}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name      : {d}\n"));
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint          : {}\n", e.hint));
    }
    if e.require_task {
        s.push_str("Require task  : true\n");
    }
    if e.enforcement_point {
        s.push_str("Enforcement pt: true\n");
    }
    if let Some(l) = &e.task_limits {
        for t in &l.allowed_task_types {
            s.push_str(&format!("Task type     : {t}\n"));
        }
        for t in &l.allowed_tools {
            s.push_str(&format!("Allowed tool  : {t}\n"));
        }
        for c in &l.allowed_credentials {
            s.push_str(&format!("Credential    : {c}\n"));
        }
        if l.max_task_ttl_seconds > 0 {
            s.push_str(&format!(
                "Max task TTL  : {}\n",
                ttl_text(l.max_task_ttl_seconds)
            ));
        }
        if !l.max_sensitivity.is_empty() {
            s.push_str(&format!("Max sensitivity: {}\n", l.max_sensitivity));
        }
    }
    s
}

pub(super) fn print_entries(out: Output, entries: &[types::Entry]) {
    match out {
        Output::Json => outln!(
            "{}",
            json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() })
        ),
        Output::Text => {
            if entries.is_empty() {
                outln!("No entries");
            }
            let blocks: Vec<String> = entries.iter().map(entry_text).collect();
            out!("{}", blocks.join("\n"));
        }
    }
}

pub(super) fn print_entry(out: Output, e: &types::Entry) {
    match out {
        Output::Json => outln!("{}", entry_json(e)),
        Output::Text => out!("{}", entry_text(e)),
    }
}

pub(super) async fn run_entry(cmd: EntryCmd) -> Result<(), CliError> {
    match cmd {
        EntryCmd::Create { fields, admin } => {
            let mut e = types::Entry::default();
            fields.apply(&mut e)?;
            if e.spiffe_id.is_empty() {
                return Err(err("--spiffe-id is required"));
            }
            if e.parent_id.is_empty() {
                return Err(err("--parent-id is required"));
            }
            if e.selectors.is_empty() {
                return Err(err(
                    "at least one --selector is required (e.g. unix:uid:1000)",
                ));
            }
            let e = client(&admin)
                .await?
                .create_entry(CreateEntryRequest { entry: Some(e) })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entry(admin.output, &e);
        }
        EntryCmd::List {
            spiffe_id,
            parent_id,
            admin,
        } => {
            let spiffe_id = optional_id("spiffe-id", spiffe_id.as_deref())?;
            let parent_id = optional_id("parent-id", parent_id.as_deref())?;
            let r = client(&admin)
                .await?
                .list_entries(ListEntriesRequest {
                    spiffe_id,
                    parent_id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entries(admin.output, &r.entries);
        }
        EntryCmd::Show { id, admin } => {
            let e = client(&admin)
                .await?
                .get_entry(GetEntryRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entry(admin.output, &e);
        }
        EntryCmd::Update { id, fields, admin } => {
            let mut c = client(&admin).await?;
            let mut e = c
                .get_entry(GetEntryRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            fields.apply(&mut e)?;
            let e = c
                .update_entry(UpdateEntryRequest { entry: Some(e) })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entry(admin.output, &e);
        }
        EntryCmd::Delete { id, admin } => {
            let r = client(&admin)
                .await?
                .delete_entry(DeleteEntryRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            let e = r.entry.unwrap_or_default();
            match admin.output {
                Output::Json => outln!("{}", json!({"deleted": entry_json(&e)})),
                Output::Text => outln!("Deleted entry {}", e.id),
            }
        }
    }
    Ok(())
}
