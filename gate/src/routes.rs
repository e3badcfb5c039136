//! Plain HTTP tools: a route (method, path pattern, optionally a host)
//! names the Lanyard tool a request calls and the resource it acts on; the
//! query and a JSON object body become the Cedar `call` context. A request
//! no route matches is denied.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::body::Body;
use crate::config::{Route, Segment};
use crate::service::{Call, json_answer};

/// A route that matched, with its captures.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// `{name}` -> segment.
    pub params: HashMap<String, String>,
}

impl Matched<'_> {
    /// The resource, its template filled in.
    pub fn resource(&self) -> String {
        let Some(t) = &self.route.resource else {
            return String::new();
        };
        let mut out = t.clone();
        for (k, v) in &self.params {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }
}

/// The first route of `routes` matching.
pub fn find<'a>(
    routes: &'a [Route],
    method: &str,
    host: Option<&str>,
    path: &str,
) -> Option<Matched<'a>> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segs: Vec<&str> = if path.trim_start_matches('/').is_empty() {
        vec![]
    } else {
        segs
    };
    routes.iter().find_map(|r| {
        if r.method != "*" && r.method != method {
            return None;
        }
        if let Some(h) = &r.host
            && host.map(|x| x.split(':').next().unwrap_or_default().to_ascii_lowercase())
                != Some(h.clone())
        {
            return None;
        }
        let mut params = HashMap::new();
        let mut i = 0;
        for p in &r.pattern {
            match p {
                Segment::Rest => {
                    if i >= segs.len() {
                        return None;
                    }
                    i = segs.len();
                    break;
                }
                Segment::Literal(l) => {
                    if segs.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Segment::Param(n) => {
                    let s = segs.get(i).filter(|s| !s.is_empty())?;
                    params.insert(n.clone(), percent_decode(s));
                }
            }
            i += 1;
        }
        (i == segs.len()).then_some(Matched { route: r, params })
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The call context: query parameters, then a JSON object body's members.
pub fn context(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, String> {
    let mut m = Map::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            m.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let is_json = content_type.is_some_and(|c| {
        let c = c.split(';').next().unwrap_or_default().trim();
        c == "application/json" || c.ends_with("+json")
    });
    if is_json && !body.is_empty() {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => m.extend(o),
            Ok(_) => {}
            Err(e) => return Err(format!("the JSON body does not parse: {e}")),
        }
    }
    Ok(Value::Object(m))
}

/// Serves one plain HTTP request.
pub async fn handle(call: Call) -> http::Response<Body> {
    let path = call.parts.uri.path();
    let rest = path
        .strip_prefix(call.upstream.path.trim_end_matches('/'))
        .unwrap_or(path);
    let rest = if rest.is_empty() { "/" } else { rest }.to_owned();
    let host = call
        .parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| call.parts.uri.host())
        .map(str::to_owned);
    let method = call.parts.method.as_str().to_owned();
    let Some(m) = find(&call.upstream.routes, &method, host.as_deref(), &rest) else {
        call.gate.metrics.call(&call.upstream.name, "", "deny");
        return json_answer(
            http::StatusCode::FORBIDDEN,
            &json!({"error": "denied", "reason": format!("no route of upstream {} maps {method} {rest} to a tool", call.upstream.name)}),
        );
    };
    let ct = call
        .parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ctx = match context(call.parts.uri.query(), ct, &call.body) {
        Ok(c) => c,
        Err(e) => {
            return json_answer(
                http::StatusCode::BAD_REQUEST,
                &json!({"error": "bad request", "reason": e}),
            );
        }
    };
    let tool = m.route.tool.clone();
    let resource = m.resource();
    let d = call.decide(&tool, &resource, &ctx).await;
    let label = format!("{method} {rest}");
    if d.pending {
        call.record_unsent(&d, &label, "");
        return crate::service::pending_answer(&d);
    }
    if !d.allow {
        call.record_unsent(&d, &label, "");
        return json_answer(
            http::StatusCode::FORBIDDEN,
            &json!({"error": "denied", "reason": d.reason, "policy_ids": d.policy_ids, "decision_id": d.decision_id}),
        );
    }
    call.forward(&rest, Some(&d), &label).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        method: &str,
        path: &str,
        host: Option<&str>,
        tool: &str,
        resource: Option<&str>,
    ) -> Route {
        let text = format!(
            "[[upstream]]\nname = \"x\"\nkind = \"http\"\npath = \"/x\"\nurl = \"http://127.0.0.1:1\"\n[[upstream.route]]\nmethod = \"{method}\"\npath = \"{path}\"\ntool = \"{tool}\"\n{}{}",
            host.map(|h| format!("host = \"{h}\"\n"))
                .unwrap_or_default(),
            resource
                .map(|r| format!("resource = \"{r}\"\n"))
                .unwrap_or_default(),
        );
        let c = crate::config::Config::parse(&text, &Default::default()).unwrap();
        c.upstreams[0].routes[0].clone()
    }

    #[test]
    fn routes_match_method_path_and_host_and_fill_the_resource() {
        let routes = vec![
            route(
                "GET",
                "/contacts/{id}",
                None,
                "crm.read",
                Some("contact/{id}"),
            ),
            route("POST", "/contacts", Some("crm.internal"), "crm.write", None),
            route("*", "/files/*", None, "files.read", None),
        ];
        let m = find(&routes, "GET", None, "/contacts/42").unwrap();
        assert_eq!(m.route.tool, "crm.read");
        assert_eq!(m.resource(), "contact/42");
        assert!(find(&routes, "DELETE", None, "/contacts/42").is_none());
        assert!(find(&routes, "GET", None, "/contacts/42/notes").is_none());
        assert!(find(&routes, "GET", None, "/contacts/").is_none());
        assert!(find(&routes, "POST", Some("crm.internal:8443"), "/contacts").is_some());
        assert!(find(&routes, "POST", Some("evil.example"), "/contacts").is_none());
        assert!(find(&routes, "POST", None, "/contacts").is_none());
        assert_eq!(
            find(&routes, "PUT", None, "/files/a/b").unwrap().route.tool,
            "files.read"
        );
        assert!(find(&routes, "PUT", None, "/files").is_none());
        let m = find(&routes, "GET", None, "/contacts/a%2Fb").unwrap();
        assert_eq!(m.resource(), "contact/a/b");
    }

    #[test]
    fn the_context_is_the_query_and_a_json_object_body() {
        let c = context(
            Some("limit=5&q=acme"),
            Some("application/json; charset=utf-8"),
            br#"{"amount": 10}"#,
        )
        .unwrap();
        assert_eq!(c, json!({"limit": "5", "q": "acme", "amount": 10}));
        assert_eq!(
            context(None, Some("text/plain"), b"{oops").unwrap(),
            json!({})
        );
        assert!(context(None, Some("application/json"), b"{oops").is_err());
    }
}
