//! One `[[upstream]]`: a tool server behind the gateway, how its calls map
//! to Lanyard tools, and the credential the gateway puts on its requests.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use lanyard_core::config::ConfigError;
use lanyard_core::duration::parse_duration;
use serde::Deserialize;

/// What the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// MCP over the Streamable HTTP transport.
    Mcp,
    /// Plain HTTP, tools by route.
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    name: String,
    kind: Kind,
    path: String,
    url: String,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    plain_http: bool,
    timeout: Option<String>,
    #[serde(default)]
    allow_unmapped: bool,
    #[serde(default)]
    tools: BTreeMap<String, String>,
    #[serde(default)]
    methods: BTreeMap<String, String>,
    credential: Option<CredentialFile>,
    #[serde(default)]
    route: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    provider: Option<String>,
    file: Option<PathBuf>,
    #[serde(default)]
    scopes: Vec<String>,
    header: Option<String>,
    prefix: Option<String>,
    query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    method: String,
    path: String,
    host: Option<String>,
    tool: String,
    resource: Option<String>,
}

/// A checked upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its name (in metrics, audit records and credential requests).
    pub name: String,
    /// MCP or plain HTTP.
    pub kind: Kind,
    /// The path on the gateway that reaches it (a prefix for HTTP).
    pub path: String,
    /// Where it is.
    pub url: http::Uri,
    /// The host the task's destinations must name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// PEM CA for its TLS (otherwise the system's roots).
    pub ca_file: Option<PathBuf>,
    /// How long a call may take.
    pub timeout: Duration,
    /// Calls of tools no mapping names pass to the decision point under the
    /// tool name itself (otherwise they are denied).
    pub allow_unmapped: bool,
    /// MCP tool name -> Lanyard tool.
    pub tools: BTreeMap<String, String>,
    /// Other MCP methods -> Lanyard tool.
    pub methods: BTreeMap<String, String>,
    /// The credential put on its requests.
    pub credential: Option<Credential>,
    /// Plain HTTP routes.
    pub routes: Vec<Route>,
}

impl Upstream {
    /// The Lanyard tool of MCP tool `name`: its mapping, else (with
    /// `allow_unmapped`) the name itself when it is a valid tool name.
    pub fn lanyard_tool(&self, name: &str) -> Option<String> {
        match self.tools.get(name) {
            Some(t) => Some(t.clone()),
            None if self.allow_unmapped && lanyard_core::task::check_tool(name).is_ok() => {
                Some(name.to_owned())
            }
            None => None,
        }
    }
}

/// Where an upstream credential comes from and where it goes.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The source.
    pub source: CredentialSource,
    /// Scopes asked of a provider.
    pub scopes: Vec<String>,
    /// Where it is put.
    pub inject: Inject,
}

/// The source of an upstream credential.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A credential provider, asked for the caller's task.
    Provider(String),
    /// A static credential read from a file (trailing newline dropped).
    File(PathBuf),
}

/// Where the credential goes on the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// A header, its value `prefix` + credential.
    Header {
        /// Header name (lowercase).
        name: http::HeaderName,
        /// Put before the credential (`Bearer `).
        prefix: String,
    },
    /// A query parameter.
    Query(String),
}

/// One piece of a route's path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Exactly this.
    Literal(String),
    /// Any one segment, captured (`{id}`).
    Param(String),
    /// The rest of the path, one segment or more (`*`, last only).
    Rest,
}

/// A plain HTTP route.
#[derive(Debug, Clone)]
pub struct Route {
    /// `GET`, `POST`, ... or `*`.
    pub method: String,
    /// The pattern, on the path after the upstream's prefix.
    pub pattern: Vec<Segment>,
    /// The Host the request must carry (without port), when set.
    pub host: Option<String>,
    /// The Lanyard tool.
    pub tool: String,
    /// The resource template (`contact/{id}`).
    pub resource: Option<String>,
}

fn bad(field: &'static str, name: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(field, format!("upstream {name:?}: {why}"))
}

pub(super) fn check_all(
    files: Vec<UpstreamFile>,
    default_timeout: Duration,
) -> Result<Vec<Upstream>, ConfigError> {
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    let mut out = Vec::new();
    for f in files {
        let u = check(f, default_timeout)?;
        if !names.insert(u.name.clone()) {
            return Err(bad("upstream.name", &u.name, "named twice"));
        }
        if !paths.insert(u.path.clone()) {
            return Err(bad(
                "upstream.path",
                &u.name,
                "path used by another upstream",
            ));
        }
        out.push(u);
    }
    Ok(out)
}

fn check(f: UpstreamFile, default_timeout: Duration) -> Result<Upstream, ConfigError> {
    let name = f.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("upstream.name", &name, "1 to 64 of [A-Za-z0-9_-]"));
    }
    if !f.path.starts_with('/') || f.path.contains("..") || f.path.contains('?') {
        return Err(bad(
            "upstream.path",
            &name,
            "must start with / (e.g. /mcp/crm)",
        ));
    }
    let url: http::Uri = f
        .url
        .parse()
        .map_err(|e| bad("upstream.url", &name, format!("{:?}: {e}", f.url)))?;
    let host = url
        .host()
        .ok_or_else(|| bad("upstream.url", &name, "needs a host"))?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let port = match (url.scheme_str(), url.port_u16()) {
        (Some("https"), p) => p.unwrap_or(443),
        (Some("http"), p) => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if !loopback && !f.plain_http {
                return Err(bad(
                    "upstream.url",
                    &name,
                    "plain http:// only to a loopback address, unless plain_http = true",
                ));
            }
            p.unwrap_or(80)
        }
        _ => {
            return Err(bad(
                "upstream.url",
                &name,
                "must be an http:// or https:// URL",
            ));
        }
    };
    if let Some(ca) = &f.ca_file
        && !ca.is_file()
    {
        return Err(bad(
            "upstream.ca_file",
            &name,
            format!("{} is not a file", ca.display()),
        ));
    }
    let timeout = match &f.timeout {
        None => default_timeout,
        Some(t) => parse_duration(t).map_err(|e| bad("upstream.timeout", &name, e))?,
    };
    for (from, tool) in f.tools.iter().chain(f.methods.iter()) {
        lanyard_core::task::check_tool(tool).map_err(|e| {
            bad(
                "upstream.tools",
                &name,
                format!("{from:?} -> {tool:?}: {e}"),
            )
        })?;
    }
    for m in f.methods.keys() {
        if matches!(m.as_str(), "tools/call" | "tools/list") || !m.contains('/') {
            return Err(bad(
                "upstream.methods",
                &name,
                format!(
                    "{m:?}: map MCP methods other than tools/call and tools/list (e.g. resources/read)"
                ),
            ));
        }
    }
    let routes = f
        .route
        .into_iter()
        .map(|r| route(&name, r))
        .collect::<Result<Vec<_>, _>>()?;
    match f.kind {
        Kind::Mcp if !routes.is_empty() => {
            return Err(bad(
                "upstream.route",
                &name,
                "routes are for kind = \"http\"",
            ));
        }
        Kind::Http if !f.tools.is_empty() || !f.methods.is_empty() => {
            return Err(bad(
                "upstream.tools",
                &name,
                "tools and methods are for kind = \"mcp\"",
            ));
        }
        Kind::Http if routes.is_empty() => {
            return Err(bad(
                "upstream.route",
                &name,
                "an http upstream needs at least one [[upstream.route]]",
            ));
        }
        _ => {}
    }
    let credential = f.credential.map(|c| credential(&name, c)).transpose()?;
    Ok(Upstream {
        name,
        kind: f.kind,
        path: f.path,
        url,
        host,
        port,
        ca_file: f.ca_file,
        timeout,
        allow_unmapped: f.allow_unmapped,
        tools: f.tools,
        methods: f.methods,
        credential,
        routes,
    })
}

fn credential(name: &str, c: CredentialFile) -> Result<Credential, ConfigError> {
    let source = match (c.provider, c.file) {
        (Some(p), None) => {
            lanyard_core::task::check_credential_name(&p)
                .map_err(|e| bad("upstream.credential.provider", name, e))?;
            CredentialSource::Provider(p)
        }
        (None, Some(f)) => {
            if !f.is_file() {
                return Err(bad(
                    "upstream.credential.file",
                    name,
                    format!("{} is not a file", f.display()),
                ));
            }
            CredentialSource::File(f)
        }
        _ => {
            return Err(bad(
                "upstream.credential",
                name,
                "set exactly one of provider (a credential provider) and file (a static credential)",
            ));
        }
    };
    if matches!(source, CredentialSource::File(_)) && !c.scopes.is_empty() {
        return Err(bad(
            "upstream.credential.scopes",
            name,
            "scopes are for a provider",
        ));
    }
    let inject = match (c.header, c.query) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "upstream.credential",
                name,
                "set header or query, not both",
            ));
        }
        (None, Some(q)) => {
            if c.prefix.is_some() {
                return Err(bad(
                    "upstream.credential.prefix",
                    name,
                    "a prefix is for a header",
                ));
            }
            if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
                return Err(bad(
                    "upstream.credential.query",
                    name,
                    format!("{q:?} is not a parameter name"),
                ));
            }
            Inject::Query(q)
        }
        (h, None) => {
            let header = h.unwrap_or_else(|| "authorization".into());
            let hn = http::HeaderName::from_bytes(header.as_bytes()).map_err(|e| {
                bad(
                    "upstream.credential.header",
                    name,
                    format!("{header:?}: {e}"),
                )
            })?;
            if matches!(
                hn.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                return Err(bad(
                    "upstream.credential.header",
                    name,
                    format!("{hn} cannot carry a credential"),
                ));
            }
            let default_prefix = if hn == http::header::AUTHORIZATION {
                "Bearer "
            } else {
                ""
            };
            Inject::Header {
                name: hn,
                prefix: c.prefix.unwrap_or_else(|| default_prefix.into()),
            }
        }
    };
    Ok(Credential {
        source,
        scopes: c.scopes,
        inject,
    })
}

fn route(name: &str, r: RouteFile) -> Result<Route, ConfigError> {
    let method = r.method.to_ascii_uppercase();
    if method != "*" && http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(bad(
            "upstream.route.method",
            name,
            format!("{:?}", r.method),
        ));
    }
    lanyard_core::task::check_tool(&r.tool)
        .map_err(|e| bad("upstream.route.tool", name, format!("{:?}: {e}", r.tool)))?;
    let pattern = parse_pattern(&r.path).map_err(|e| bad("upstream.route.path", name, e))?;
    if let Some(res) = &r.resource {
        for p in placeholders(res) {
            if !pattern.contains(&Segment::Param(p.to_owned())) {
                return Err(bad(
                    "upstream.route.resource",
                    name,
                    format!("{{{p}}} is not in the path {:?}", r.path),
                ));
            }
        }
    }
    Ok(Route {
        method,
        pattern,
        host: r.host.map(|h| h.to_ascii_lowercase()),
        tool: r.tool,
        resource: r.resource,
    })
}

fn parse_pattern(p: &str) -> Result<Vec<Segment>, String> {
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("{p:?} must start with /"))?;
    let parts: Vec<&str> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('/').collect()
    };
    let mut out = Vec::new();
    for (i, s) in parts.iter().enumerate() {
        let seg = if *s == "*" {
            if i + 1 != parts.len() {
                return Err(format!("{p:?}: * only as the last segment"));
            }
            Segment::Rest
        } else if let Some(n) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{p:?}: {{{n}}} is not a parameter name"));
            }
            Segment::Param(n.to_owned())
        } else {
            if s.contains(['{', '}', '*']) {
                return Err(format!("{p:?}: {s:?} mixes a pattern into a segment"));
            }
            Segment::Literal((*s).to_owned())
        };
        out.push(seg);
    }
    Ok(out)
}

/// The `{name}` placeholders of a template.
pub(crate) fn placeholders(t: &str) -> impl Iterator<Item = &str> {
    t.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(n, _)| n))
}
