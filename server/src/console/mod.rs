//! The operator console: a small web UI served by the server (off unless
//! `console_bind` is set) where people answer approval requests, see live
//! tasks and a task's timeline from the audit log, and release
//! quarantines.
//!
//! Sign-in reuses the admin socket: `lanyard-server console login [--as
//! NAME]` prints a one-time link; following it starts a short session.
//! Every state-changing request is a POST carrying the session's CSRF
//! token; the cookie is HttpOnly and SameSite=Strict; every page is sent
//! under a Content-Security-Policy that allows no script and no inline
//! style, and everything an agent wrote is escaped.

mod auth;
mod pages;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use lanyard_core::audit::Kind;
use tokio::sync::watch;

pub use auth::{LINK_TTL, Operator};
use auth::{Session, Sessions, same};

use crate::approvals::{AnswerError, Approvals};
use crate::config::console::ConsoleSettings;

/// Most connections at once.
const MAX_CONNECTIONS: usize = 256;
/// A connection gets this long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Largest form accepted.
const MAX_FORM: usize = 16 * 1024;
/// Most timeline records shown (the newest).
const MAX_TIMELINE: usize = 500;
/// What every page may load: its own stylesheet, nothing else.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

type Answer = hyper::Response<Full<Bytes>>;

/// Why the console could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The address could not be bound.
    #[error("console on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The certificate or key is unusable.
    #[error("console certificate: {0}")]
    Certificate(String),
}

/// The console and its sessions.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ConsoleSettings,
    sessions: Sessions,
    approvals: Approvals,
    tasks: crate::tasks::Tasks,
    enforce: crate::enforce::Enforcement,
    audit: crate::audit::Audit,
    /// The base URL of login links, once bound.
    url: OnceLock<String>,
}

impl Console {
    /// A console for these parts (not listening yet).
    pub fn new(
        settings: ConsoleSettings,
        approvals: Approvals,
        tasks: crate::tasks::Tasks,
        enforce: crate::enforce::Enforcement,
        audit: crate::audit::Audit,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                sessions: Sessions::default(),
                approvals,
                tasks,
                enforce,
                audit,
                url: OnceLock::new(),
            }),
        }
    }

    fn tls(&self) -> bool {
        self.inner.settings.tls.is_some()
    }

    /// A one-time sign-in link; `approver`, when given, must be a declared
    /// approver.
    pub fn login_link(&self, approver: Option<String>, via: String) -> Result<String, String> {
        if let Some(a) = &approver
            && self.inner.approvals.settings().approver(a).is_none()
        {
            return Err(format!(
                "{a:?} is not a declared approver (see [[approver]] in the server's configuration)"
            ));
        }
        let base = self
            .inner
            .url
            .get()
            .cloned()
            .ok_or_else(|| "the console is not listening yet".to_owned())?;
        let t = self.inner.sessions.link(Operator { approver, via });
        Ok(format!("{base}/login?token={t}"))
    }

    /// Listens on the configured address until `shutdown`; the bound
    /// address.
    pub async fn serve(&self, shutdown: watch::Receiver<bool>) -> Result<SocketAddr, ConsoleError> {
        let s = &self.inner.settings;
        let acceptor = match &s.tls {
            Some((cert, key)) => Some(
                crate::api::oidc::file_acceptor(cert, key, &[b"http/1.1"])
                    .map_err(|e| ConsoleError::Certificate(e.to_string()))?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(s.bind)
            .await
            .map_err(|e| ConsoleError::Bind(s.bind, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ConsoleError::Bind(s.bind, e))?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let base = s
            .url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let _ = self.inner.url.set(base.clone());
        tracing::info!(%addr, url = %base, "serving the operator console");
        let me = self.clone();
        crate::api::http1::serve(
            listener,
            acceptor,
            MAX_CONNECTIONS,
            CONNECTION_DEADLINE,
            shutdown,
            move |req| {
                let me = me.clone();
                async move { me.handle(req).await }
            },
        );
        Ok(addr)
    }

    fn cookie_name(&self) -> &'static str {
        if self.tls() {
            "__Host-lanyard_session"
        } else {
            "lanyard_session"
        }
    }

    fn session_of<B>(&self, req: &hyper::Request<B>) -> Option<(String, Session)> {
        let name = self.cookie_name();
        req.headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(k, _)| *k == name)
            .find_map(|(_, v)| self.inner.sessions.get(v).map(|s| (v.to_owned(), s)))
    }

    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> Answer {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        if method == http::Method::GET && path == "/console.css" {
            let mut r = plain(http::StatusCode::OK, pages::CSS);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/css; charset=utf-8"),
            );
            return r;
        }
        if method == http::Method::GET && path == "/login" {
            return self.login(req.uri().query().unwrap_or(""));
        }
        let Some((sid, session)) = self.session_of(&req) else {
            return page(
                http::StatusCode::UNAUTHORIZED,
                &pages::layout(
                    "Sign in",
                    None,
                    false,
                    "<p id=\"signin\">Sign in with a link from <code>lanyard-server console login</code> on the server's admin socket.</p>",
                ),
            );
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (http::Method::GET, [""]) => {
                let list = self.inner.approvals.list(false);
                page(
                    http::StatusCode::OK,
                    &pages::layout(
                        "Pending approvals",
                        Some(&session),
                        true,
                        &pages::approvals(&list, &session),
                    ),
                )
            }
            (http::Method::GET, ["tasks"]) => {
                match self.inner.tasks.list(None, None, false).await {
                    Ok(list) => page(
                        http::StatusCode::OK,
                        &pages::layout("Live tasks", Some(&session), false, &pages::tasks(&list)),
                    ),
                    Err(e) => error(
                        &session,
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        &e.to_string(),
                    ),
                }
            }
            (http::Method::GET, ["tasks", id]) => self.timeline(&session, id).await,
            (http::Method::GET, ["quarantines"]) => {
                let list = self.inner.enforce.quarantines.active();
                page(
                    http::StatusCode::OK,
                    &pages::layout(
                        "Quarantines",
                        Some(&session),
                        false,
                        &pages::quarantines(&list, &session),
                    ),
                )
            }
            (http::Method::POST, rest) => {
                let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
                let form = match read_form(req).await {
                    Ok(f) => f,
                    Err(e) => return error(&session, http::StatusCode::BAD_REQUEST, &e),
                };
                let csrf = form
                    .iter()
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v.as_str());
                if !csrf.is_some_and(|c| same(c, &session.csrf)) {
                    return error(
                        &session,
                        http::StatusCode::FORBIDDEN,
                        "this form is not from this session (CSRF token missing or wrong); reload the page",
                    );
                }
                let reason = form
                    .iter()
                    .find(|(k, _)| k == "reason")
                    .map_or("", |(_, v)| v.as_str());
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                match rest.as_slice() {
                    ["approvals", id, verb @ ("approve" | "deny")] => {
                        self.answer(&session, id, *verb == "approve", reason).await
                    }
                    ["quarantines", id, "release"] => self.release(&session, id).await,
                    ["logout"] => {
                        self.inner.sessions.end(&sid);
                        redirect("/")
                    }
                    _ => error(&session, http::StatusCode::NOT_FOUND, "no such action"),
                }
            }
            _ => error(&session, http::StatusCode::NOT_FOUND, "no such page"),
        }
    }

    fn login(&self, query: &str) -> Answer {
        let token = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let Some((id, _)) = self
            .inner
            .sessions
            .follow(&token, self.inner.settings.session_ttl)
        else {
            return page(
                http::StatusCode::FORBIDDEN,
                &pages::layout(
                    "Sign-in link refused",
                    None,
                    false,
                    "<p id=\"refused\">This sign-in link was already used, has expired or is unknown. Ask for a new one with <code>lanyard-server console login</code>.</p>",
                ),
            );
        };
        let mut r = redirect("/");
        let cookie = format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie_name(),
            self.inner.settings.session_ttl.as_secs(),
            if self.tls() { "; Secure" } else { "" }
        );
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        r
    }

    async fn answer(&self, s: &Session, id: &str, approve: bool, reason: &str) -> Answer {
        let Some(approver) = &s.operator.approver else {
            return error(
                s,
                http::StatusCode::FORBIDDEN,
                "this session answers no approvals: sign in with `console login --as NAME`",
            );
        };
        let via = format!("console ({})", s.operator.via);
        match self
            .inner
            .approvals
            .answer(id, approve, approver, reason, &via)
            .await
        {
            Ok(_) => redirect("/"),
            Err(e) => {
                let status = match &e {
                    AnswerError::NotFound(_) => http::StatusCode::NOT_FOUND,
                    AnswerError::NotAllowed(_) => http::StatusCode::FORBIDDEN,
                    AnswerError::NotPending(..) => http::StatusCode::CONFLICT,
                    AnswerError::Invalid(_) => http::StatusCode::BAD_REQUEST,
                    AnswerError::Store(_) => http::StatusCode::SERVICE_UNAVAILABLE,
                };
                error(s, status, &e.to_string())
            }
        }
    }

    async fn release(&self, s: &Session, id: &str) -> Answer {
        let by = s.operator.name();
        match self.inner.enforce.quarantines.release(id, &by).await {
            Ok(Some(q)) => {
                self.inner
                    .audit
                    .note(
                        self.inner
                            .audit
                            .event(Kind::QuarantineReleased)
                            .actor(by)
                            .subject(q.spiffe_id.clone())
                            .node(q.node.clone().unwrap_or_default())
                            .task(q.task_id.clone().unwrap_or_default())
                            .details(serde_json::json!({"quarantine_id": q.id})),
                    )
                    .await;
                redirect("/quarantines")
            }
            Ok(None) => error(s, http::StatusCode::NOT_FOUND, "no such quarantine"),
            Err(e) => error(s, http::StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    async fn timeline(&self, s: &Session, id: &str) -> Answer {
        let task = self.inner.tasks.get(id).await.ok();
        let audit = self.inner.audit.clone();
        let want = id.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let mut out: std::collections::VecDeque<serde_json::Value> = Default::default();
            let r = audit.read(|line| {
                if line.contains(&want)
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && v.pointer("/task/id").and_then(|t| t.as_str()) == Some(want.as_str())
                {
                    if out.len() == MAX_TIMELINE {
                        out.pop_front();
                    }
                    out.push_back(v);
                }
                true
            });
            r.map(|()| out.into_iter().collect::<Vec<_>>())
        })
        .await;
        match read {
            Ok(Ok(records)) => page(
                http::StatusCode::OK,
                &pages::layout(
                    &format!("Task {id}"),
                    Some(s),
                    false,
                    &pages::timeline(task.as_ref(), &records),
                ),
            ),
            Ok(Err(e)) => error(s, http::StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            Err(_) => error(
                s,
                http::StatusCode::SERVICE_UNAVAILABLE,
                "the audit log could not be read",
            ),
        }
    }
}

async fn read_form(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Vec<(String, String)>, String> {
    let ct = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err("a form (application/x-www-form-urlencoded) is expected".into());
    }
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|e| format!("the form could not be read: {e}"))?
        .to_bytes();
    Ok(form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// The headers every answer carries.
fn guarded(mut r: Answer) -> Answer {
    let h = r.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
    ] {
        h.insert(k, http::HeaderValue::from_static(v));
    }
    r
}

fn plain(status: http::StatusCode, body: &'static str) -> Answer {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    guarded(r)
}

fn page(status: http::StatusCode, html: &str) -> Answer {
    let mut r = hyper::Response::new(Full::new(Bytes::from(html.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    guarded(r)
}

fn error(s: &Session, status: http::StatusCode, message: &str) -> Answer {
    page(
        status,
        &pages::layout(
            "Refused",
            Some(s),
            false,
            &format!("<p id=\"error\">{}</p>", pages::escape(message)),
        ),
    )
}

fn redirect(to: &'static str) -> Answer {
    let mut r = hyper::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = http::StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(http::header::LOCATION, http::HeaderValue::from_static(to));
    guarded(r)
}
