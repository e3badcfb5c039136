use super::*;
use crate::{Approval, Approvers};

const POLICIES: &str = r#"
@id("planner-reports")
permit (
  principal == Lanyard::Workload::"spiffe://td/agent/planner",
  action == Lanyard::Action::"BeginTask",
  resource == Lanyard::TaskType::"report.generate"
);

@id("crm-read")
permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read")
when { context.sensitivity_rank <= 2 };

@id("email-on-behalf")
permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
when { context.on_behalf_of like "user:*" };

@id("no-restricted")
@reason("restricted data needs a human in the loop")
forbid (principal, action, resource)
when { context.sensitivity == "restricted" };

@id("node-wide")
permit (principal in Lanyard::Node::"spiffe://td/node/n2", action == Lanyard::Action::"UseTool", resource);

@id("shell-quarantine")
@reason("shell access is never granted")
@quarantine
forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"shell.exec");
"#;

fn principal(node: &str) -> Principal {
    Principal {
        spiffe_id: "spiffe://td/agent/planner".into(),
        node: node.into(),
        selectors: vec!["unix:uid:1000".into()],
        ..Default::default()
    }
}

fn ctx(level: &str, rank: i64, obo: &str) -> TaskContext {
    TaskContext {
        task_type: "report.generate".into(),
        sensitivity: level.into(),
        sensitivity_rank: rank,
        on_behalf_of: obo.into(),
        ..Default::default()
    }
}

#[test]
fn permits_forbids_and_default_deny() {
    let book = PolicyBook::compile(POLICIES, "p.cedar").unwrap();
    assert_eq!(book.len(), 6);
    let p = principal("spiffe://td/node/n1");
    let c = ctx("confidential", 2, "user:alice@example.com");
    let d = book.decide(&Request {
        principal: &p,
        action: Action::BeginTask,
        resource: "report.generate",
        context: &c,
    });
    assert!(d.allowed);
    assert_eq!(d.policy_ids, vec!["planner-reports"]);

    let tools = ["crm.read", "email.send", "db.write", "shell.exec"].map(String::from);
    let ds = book.decide_many(&p, &c, Action::UseTool, &tools);
    assert!(ds[0].allowed && ds[1].allowed);
    assert!(
        !ds[2].allowed && ds[2].policy_ids.is_empty(),
        "default deny"
    );
    assert!(!ds[3].allowed);
    assert_eq!(ds[3].policy_ids, vec!["shell-quarantine"]);
    assert_eq!(ds[3].reasons, vec!["shell access is never granted"]);
    assert!(ds[3].quarantine);

    let restricted = ctx("restricted", 3, "user:alice@example.com");
    let d = book.decide(&Request {
        principal: &p,
        action: Action::BeginTask,
        resource: "report.generate",
        context: &restricted,
    });
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["no-restricted"]);
    assert_eq!(d.reasons, vec!["restricted data needs a human in the loop"]);
    assert!(!d.quarantine);

    // The principal's node is its parent: `principal in Node` applies.
    let n2 = principal("spiffe://td/node/n2");
    let d = book.decide(&Request {
        principal: &n2,
        action: Action::UseTool,
        resource: "db.write",
        context: &c,
    });
    assert!(d.allowed);
    assert_eq!(d.policy_ids, vec!["node-wide"]);
}

#[test]
fn slices_hold_exactly_the_applicable_policies() {
    // 1,000 tool policies: each decision sees its own and the wildcards.
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "permit (principal, action == Lanyard::Action::\"UseTool\", resource == Lanyard::Tool::\"tool{i}\");\n"
        ));
    }
    text.push_str("forbid (principal, action, resource) when { context.hour > 22 };\n");
    let book = PolicyBook::compile(&text, "many.cedar").unwrap();
    let slices = &book.slices[&Action::UseTool];
    assert_eq!(slices.by_resource.len(), 1000);
    assert_eq!(slices.by_resource["tool7"].policies().count(), 2);
    assert_eq!(
        book.slices[&Action::BeginTask]
            .any_resource
            .policies()
            .count(),
        1
    );
    let p = principal("spiffe://td/node/n1");
    let mut c = ctx("public", 0, "");
    let allow = |c: &TaskContext, tool: &str| {
        book.decide(&Request {
            principal: &p,
            action: Action::UseTool,
            resource: tool,
            context: c,
        })
        .allowed
    };
    assert!(allow(&c, "tool999"));
    assert!(!allow(&c, "tool1000"));
    c.hour = 23;
    assert!(!allow(&c, "tool999"));
}

#[test]
fn bad_sets_are_refused_with_locations() {
    let err = PolicyBook::compile(
        "permit (principal, action, resource)\nwhen { context.nope == 1 };",
        "bad.cedar",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("bad.cedar:2:"), "{err}");
    let err = PolicyBook::compile(
        "permit (principal, action, resource);\nforbid (",
        "syntax.cedar",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("syntax.cedar:2:"), "{err}");
    let err = PolicyBook::compile(
        "@id(\"a\") permit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);",
        "dup.cedar",
    )
    .unwrap_err();
    assert!(err.to_string().contains("used twice"), "{err}");
    // Unknown entity types fail validation.
    assert!(
        PolicyBook::compile(
            "permit (principal == User::\"x\", action, resource);",
            "t.cedar"
        )
        .is_err()
    );
    assert!(PolicyBook::compile("", "empty.cedar").unwrap().is_empty());
}

#[test]
fn call_context_decides_the_same_built_typed_or_from_json() {
    let text = r#"
        @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("no-evil") @reason("no mail to evil") @quarantine("entry")
        forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
        when { context.at_call && context.call.contains("to=evil") && context.resource == "inbox"
               && context.tools.contains("email.send") && context.recent_denials < 5 };
    "#;
    let book = PolicyBook::compile(text, "p.cedar").unwrap();
    let p = principal("spiffe://td/node/n1");
    let mut c = ctx("internal", 1, "");
    c.tools = vec!["email.send".into()];
    c.at_call = true;
    c.resource = "inbox".into();
    c.call = vec!["to=evil".into()];
    let req = |c: &TaskContext| {
        book.decide(&Request {
            principal: &p,
            action: Action::UseTool,
            resource: "email.send",
            context: c,
        })
    };
    let typed = req(&c);
    assert!(!typed.allowed);
    assert!(typed.quarantine && typed.quarantine_entry);
    assert_eq!(typed.policy_ids, vec!["no-evil"]);
    // An extra member sends the context through JSON: same decision.
    let mut via_json = c.clone();
    via_json.extra.insert("note".into(), "x".into());
    assert_eq!(req(&via_json), typed);
    // Not at call time (BeginTask's UseTool decisions): the forbid is out.
    c.at_call = false;
    assert!(req(&c).allowed);
}

#[test]
fn a_policy_reading_an_unknown_attribute_fails_closed() {
    let text = r#"
        @id("all") permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("bad-build") @reason("a known bad build")
        forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read")
        when { principal.exe_sha256 == "bad" };
    "#;
    let book = PolicyBook::compile(text, "p.cedar").unwrap();
    let c = ctx("internal", 1, "");
    let decide = |p: &Principal, tool: &str| {
        book.decide(&Request {
            principal: p,
            action: Action::UseTool,
            resource: tool,
            context: &c,
        })
    };
    // Known, and not the bad build: permitted; the bad build: forbidden.
    let mut p = principal("spiffe://td/node/n1");
    p.exe_sha256 = "good".into();
    assert!(decide(&p, "crm.read").allowed);
    p.exe_sha256 = "bad".into();
    assert_eq!(decide(&p, "crm.read").policy_ids, vec!["bad-build"]);
    // Unknown: a blank would slip past the forbid; the decision denies and
    // names the policy and the attribute.
    p.exe_sha256 = String::new();
    p.unknown.exe_sha256 = true;
    let d = decide(&p, "crm.read");
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["bad-build"]);
    assert!(d.reasons[0].contains("principal.exe_sha256"), "{d:?}");
    // A tool no policy reading it applies to is decided as before.
    assert!(decide(&p, "email.send").allowed);
    // An unknown attribute nothing reads changes nothing.
    p.unknown = crate::Unknown {
        selectors: true,
        exe_path: true,
        ..crate::Unknown::none()
    };
    p.exe_sha256 = "good".into();
    assert!(decide(&p, "crm.read").allowed);
}

/// Each principal's entities are built once and kept: a principal that
/// differs in any attribute (here only its program) gets its own, so one
/// caller's attributes never decide for another.
#[test]
fn kept_principals_never_answer_for_another() {
    let book = PolicyBook::compile(
        r#"
@id("tools")
permit (principal, action == Lanyard::Action::"UseTool", resource);

@id("no-curl")
forbid (principal, action == Lanyard::Action::"UseTool", resource)
when { principal.exe_path == "/usr/bin/curl" };
"#,
        "p.cedar",
    )
    .unwrap();
    let c = ctx("internal", 1, "");
    let decide = |p: &Principal| {
        book.decide(&Request {
            principal: p,
            action: Action::UseTool,
            resource: "crm.read",
            context: &c,
        })
    };
    let good = Principal {
        exe_path: "/opt/agent/bin/agent".into(),
        ..principal("spiffe://td/node/n1")
    };
    let bad = Principal {
        exe_path: "/usr/bin/curl".into(),
        ..good.clone()
    };
    for _ in 0..2 {
        assert!(decide(&good).allowed);
        let d = decide(&bad);
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, vec!["no-curl"]);
    }
    // Past the bound, they are built again and still right.
    for i in 0..MAX_WHO + 1 {
        let p = Principal {
            spiffe_id: format!("spiffe://td/agent/a{i}"),
            ..good.clone()
        };
        assert!(decide(&p).allowed);
    }
    assert!(book.who.lock().unwrap().len() <= MAX_WHO);
    assert!(!decide(&bad).allowed);
}

#[test]
fn an_approval_permit_makes_the_answer_pending_even_beside_a_blanket_permit() {
    let text = r#"
        @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("big-payments") @approval("group:payments-approvers") @approval_ttl("10m")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"pay")
        when { context.at_call && context.call.contains("size=big") };
        @id("mail-out") @approval("requester")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"pay")
        when { context.at_call && context.call.contains("to=outside") };
        @id("no-evil")
        forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"pay")
        when { context.at_call && context.call.contains("to=evil") };
    "#;
    let book = PolicyBook::compile(text, "p.cedar").unwrap();
    let p = principal("spiffe://td/node/n1");
    let mut c = ctx("internal", 1, "user:alice@example.com");
    c.at_call = true;
    let decide = |call: &[&str]| {
        let mut c = c.clone();
        c.call = call.iter().map(|s| (*s).to_owned()).collect();
        book.decide(&Request {
            principal: &p,
            action: Action::UseTool,
            resource: "pay",
            context: &c,
        })
    };
    let plain = decide(&["size=small"]);
    assert!(plain.allowed && !plain.needs_approval());

    let big = decide(&["size=big"]);
    assert!(big.allowed && big.needs_approval());
    assert_eq!(big.policy_ids, vec!["big-payments", "tools"]);
    assert_eq!(
        big.approvals,
        vec![Approval {
            policy_id: "big-payments".into(),
            approvers: Approvers::Group("payments-approvers".into()),
            ttl: Some(std::time::Duration::from_secs(600)),
        }]
    );

    // Both annotated permits: both requirements are listed.
    let both = decide(&["size=big", "to=outside"]);
    let who: Vec<String> = both
        .approvals
        .iter()
        .map(|a| a.approvers.to_string())
        .collect();
    assert_eq!(who, vec!["group:payments-approvers", "requester"]);

    // A forbid wins over a permit that wants approval: plain deny.
    let evil = decide(&["size=big", "to=evil"]);
    assert!(!evil.allowed && !evil.needs_approval() && evil.approvals.is_empty());

    // Not at call time (the tool grant at BeginTask): no approval asked.
    c.at_call = false;
    let d = book.decide(&Request {
        principal: &p,
        action: Action::UseTool,
        resource: "pay",
        context: &c,
    });
    assert!(d.allowed && !d.needs_approval());
}

#[test]
fn approval_annotations_that_could_be_misread_are_refused() {
    let refused = [
        (
            r#"@approval("requester") forbid (principal, action == Lanyard::Action::"UseTool", resource);"#,
            "belongs on a permit",
        ),
        (
            r#"@approval("requester") permit (principal, action, resource);"#,
            "UseTool and BeginTask only",
        ),
        (
            r#"@approval("requester") permit (principal, action == Lanyard::Action::"GetCredential", resource);"#,
            "UseTool and BeginTask only",
        ),
        (
            r#"@approval("alice") permit (principal, action == Lanyard::Action::"UseTool", resource);"#,
            "expected \"requester\"",
        ),
        (
            r#"@approval_ttl("5m") permit (principal, action == Lanyard::Action::"UseTool", resource);"#,
            "without @approval",
        ),
        (
            r#"@approval("any-operator") @approval_ttl("2d") permit (principal, action == Lanyard::Action::"UseTool", resource);"#,
            "between 1s and 24h",
        ),
    ];
    for (text, want) in refused {
        let e = PolicyBook::compile(text, "a.cedar")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("a.cedar"), "{text}: {e}");
    }
    let ok = r#"@approval("any-operator") permit (principal, action in [Lanyard::Action::"UseTool", Lanyard::Action::"BeginTask"], resource);"#;
    PolicyBook::compile(ok, "a.cedar").unwrap();
}
