//! The console's pages: server-rendered HTML, no JavaScript (pending
//! approvals refresh themselves with a meta refresh), everything an agent
//! wrote escaped.

use lanyard_core::task::TaskRecord;
use serde_json::Value;

use super::auth::Session;
use crate::approvals::ApprovalRecord;
use crate::enforce::QuarantineRecord;

/// The stylesheet (served at `/console.css`; the CSP allows no inline
/// style).
pub const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4}\
header{background:#23313f;color:#fff;padding:.6em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}\
header a{color:#fff}main{padding:1em;max-width:60em}\
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.8em 0}\
pre{white-space:pre-wrap;word-break:break-all;background:#f0f0ee;padding:.5em;margin:.3em 0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em .8em}dt{font-weight:600}dd{margin:0;word-break:break-all}\
form{display:inline-flex;gap:.4em;flex-wrap:wrap;margin:.3em .6em .3em 0}\
input[type=text]{min-width:12em}button{padding:.4em 1em}\
.approve{background:#1e6b34;color:#fff;border:0}.deny{background:#8a1f1f;color:#fff;border:0}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3em;text-align:left;vertical-align:top}\
.muted{color:#666}";

/// HTML text: `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(secs: u64) -> String {
    escape(&lanyard_core::clock::format_rfc3339(
        lanyard_core::clock::from_unix_secs(secs),
    ))
}

/// A whole page.
pub fn layout(title: &str, session: Option<&Session>, refresh: bool, body: &str) -> String {
    let who = session.map_or_else(String::new, |s| {
        format!(
            "<span class=\"muted\" id=\"who\">{}</span>\
<form method=\"post\" action=\"/logout\">{}<button type=\"submit\" id=\"logout\">Sign out</button></form>",
            escape(&s.operator.name()),
            hidden_csrf(s)
        )
    });
    let nav = if session.is_some() {
        "<a href=\"/\">Approvals</a><a href=\"/tasks\">Tasks</a><a href=\"/quarantines\">Quarantines</a>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{}\
<title>{} - Lanyard</title><link rel=\"stylesheet\" href=\"/console.css\"></head>\
<body><header><strong>Lanyard</strong>{nav}{who}</header><main><h1>{}</h1>{body}</main></body></html>",
        if refresh {
            "<meta http-equiv=\"refresh\" content=\"3\">"
        } else {
            ""
        },
        escape(title),
        escape(title),
    )
}

fn hidden_csrf(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&s.csrf)
    )
}

/// The pending approvals, each with its answer forms.
pub fn approvals(list: &[ApprovalRecord], s: &Session) -> String {
    if list.is_empty() {
        return "<p id=\"none\">No calls are waiting for approval.</p>".into();
    }
    let mut out = String::new();
    for a in list {
        let eligible = s
            .operator
            .approver
            .as_ref()
            .is_some_and(|me| a.eligible.contains(me));
        let what = if a.action == "BeginTask" {
            format!("task {}", escape(&a.tool))
        } else if a.resource.is_empty() {
            escape(&a.tool)
        } else {
            format!("{} on {}", escape(&a.tool), escape(&a.resource))
        };
        out.push_str(&format!(
            "<section class=\"card approval\" id=\"approval-{id}\"><h2>{what}</h2><dl>\
<dt>Arguments</dt><dd><pre class=\"arguments\">{args}</pre></dd>\
<dt>Intent</dt><dd class=\"intent\">{intent}</dd>\
<dt>Requester</dt><dd>{principal}</dd>\
<dt>On behalf of</dt><dd>{obo}</dd>\
<dt>Task</dt><dd>{task}</dd>\
<dt>Policies</dt><dd>{policies}</dd>\
<dt>Approvers</dt><dd>{approvers} (eligible: {elig})</dd>\
<dt>Expires</dt><dd>{expires}</dd></dl>",
            id = escape(&a.id),
            args = escape(if a.arguments_json.is_empty() {
                "{}"
            } else {
                &a.arguments_json
            }),
            intent = escape(&a.intent),
            principal = escape(&a.principal),
            obo = escape(a.on_behalf_of.as_deref().unwrap_or("-")),
            task = if a.task_id.is_empty() {
                "(not begun yet)".to_owned()
            } else {
                format!(
                    "<a href=\"/tasks/{t}\">{t}</a> ({ty})",
                    t = escape(&a.task_id),
                    ty = escape(&a.task_type)
                )
            },
            policies = escape(&a.policy_ids.join(", ")),
            approvers = escape(&a.approvers.join(" and ")),
            elig = escape(&a.eligible.join(", ")),
            expires = time(a.expires_at),
        ));
        if eligible {
            for (verb, class, label) in
                [("approve", "approve", "Approve"), ("deny", "deny", "Deny")]
            {
                out.push_str(&format!(
                    "<form method=\"post\" action=\"/approvals/{id}/{verb}\">{csrf}\
<input type=\"text\" name=\"reason\" placeholder=\"reason\" maxlength=\"1024\">\
<button class=\"{class}\" type=\"submit\">{label}</button></form>",
                    id = escape(&a.id),
                    csrf = hidden_csrf(s),
                ));
            }
        } else {
            out.push_str("<p class=\"muted\">You are not among the approvers of this request.</p>");
        }
        out.push_str("</section>");
    }
    out
}

/// The live tasks.
pub fn tasks(list: &[TaskRecord]) -> String {
    if list.is_empty() {
        return "<p>No live tasks.</p>".into();
    }
    let mut out = String::from(
        "<table><tr><th>Task</th><th>Workload</th><th>Type</th><th>Tools</th><th>On behalf of</th><th>Until</th></tr>",
    );
    for t in list {
        let g = &t.grant;
        out.push_str(&format!(
            "<tr><td><a href=\"/tasks/{id}\">{id}</a></td><td>{who}</td><td>{ty}</td><td>{tools}</td><td>{obo}</td><td>{until}</td></tr>",
            id = escape(g.task_id.as_str()),
            who = escape(g.spiffe_id.as_str()),
            ty = escape(&g.task_type),
            tools = escape(&g.tools.join(", ")),
            obo = escape(g.on_behalf_of.as_deref().unwrap_or("-")),
            until = time(g.not_after),
        ));
    }
    out.push_str("</table>");
    out
}

/// The quarantines in force or pending, each with a release form.
pub fn quarantines(list: &[QuarantineRecord], s: &Session) -> String {
    if list.is_empty() {
        return "<p>No quarantines.</p>".into();
    }
    let mut out = String::new();
    for q in list {
        out.push_str(&format!(
            "<section class=\"card\" id=\"quarantine-{id}\"><h2>{who}</h2><dl>\
<dt>Scope</dt><dd>{scope}{pending}</dd><dt>Reason</dt><dd>{reason}</dd>\
<dt>Task</dt><dd>{task}</dd><dt>Since</dt><dd>{since}</dd></dl>\
<form method=\"post\" action=\"/quarantines/{id}/release\">{csrf}<button type=\"submit\">Release</button></form></section>",
            id = escape(&q.id),
            who = escape(&q.spiffe_id),
            scope = q.scope.as_str(),
            pending = if q.pending { " (pending)" } else { "" },
            reason = escape(&q.reason),
            task = escape(q.task_id.as_deref().unwrap_or("-")),
            since = time(q.created_at),
            csrf = hidden_csrf(s),
        ));
    }
    out
}

/// A task's timeline: its audit records, oldest first.
pub fn timeline(task: Option<&TaskRecord>, records: &[Value]) -> String {
    let mut out = String::new();
    if let Some(t) = task {
        let g = &t.grant;
        out.push_str(&format!(
            "<dl class=\"card\"><dt>Workload</dt><dd>{}</dd><dt>Type</dt><dd>{}</dd><dt>Intent</dt><dd>{}</dd><dt>State</dt><dd>{}</dd></dl>",
            escape(g.spiffe_id.as_str()),
            escape(&g.task_type),
            escape(&t.intent),
            t.state.as_str()
        ));
    }
    if records.is_empty() {
        out.push_str("<p>No records of this task in the audit log.</p>");
        return out;
    }
    out.push_str("<table id=\"timeline\"><tr><th>Time</th><th>What</th><th>Tool</th><th>Decision</th><th>Who</th><th>Why</th></tr>");
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    for r in records {
        out.push_str(&format!(
            "<tr class=\"event\"><td>{}</td><td class=\"kind\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s(r, "time")),
            escape(&s(r, "kind")),
            escape(&s(r, "tool")),
            escape(&s(r, "decision")),
            escape(&s(r, "actor")),
            escape(&s(r, "reason")),
        ));
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }
}
