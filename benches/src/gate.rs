//! Calls through lanyard-gate against the same calls straight to the
//! upstream, side by side in one run, at 1 and 10 concurrent callers: what
//! the gateway adds (mutual TLS with the task SVID, the node agent's
//! decision, the upstream credential, the call record) to an MCP
//! `tools/call`. The upstream is a loopback HTTP server answering at once,
//! so the difference is the gateway's own cost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lanyard_core::peer::{Requirements, SvidResolver};

use crate::procs::{Deployment, Proc, TD};
use crate::stats::Report;

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;
const ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}"#;

/// A loopback upstream answering every request with [`ANSWER`].
async fn upstream() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let mut r =
                            hyper::Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                        r.headers_mut().insert(
                            "content-type",
                            "application/json"
                                .parse()
                                .unwrap_or_else(|_| unreachable!()),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

/// Starts `lanyard-gate` from `bins` in front of the upstream on `port`,
/// its entry an enforcement point; returns it and its address.
async fn start_gate(d: &Deployment, bins: &Path, port: u16) -> anyhow::Result<(Proc, String)> {
    let exe = std::fs::canonicalize(bins.join("lanyard-gate"))?;
    crate::enforce::enforcement_point(d, "gate", &exe).await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nagent_socket = \"unix://{}\"\ntrust_domain = \"{TD}\"\nrequire_destinations = false\n\n[[upstream]]\nname = \"bench\"\nkind = \"mcp\"\npath = \"/mcp/bench\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n[upstream.tools]\necho = \"tool1\"\n",
            d.socket.display()
        ),
    )?;
    let mut child = std::process::Command::new(&exe)
        .args(["run", "--config"])
        .arg(&config)
        .env("LANYARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let proc = Proc(child);
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(out).read_line(&mut l).map(|_| l)
    })
    .await??;
    let addr = line
        .trim()
        .strip_prefix("lanyard-gate listening on ")
        .ok_or_else(|| anyhow::anyhow!("lanyard-gate did not start: {line:?}"))?
        .to_owned();
    // The config file is read at start and on reload only.
    std::mem::forget(dir);
    Ok((proc, addr))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn plain(port: u16) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn tls(addr: &str, cfg: Arc<rustls::ClientConfig>) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("gate")?;
    let stream = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn one(tx: &mut Sender, uri: &str, host: &str) -> anyhow::Result<()> {
    let req = hyper::Request::post(uri)
        .header("host", host)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))?;
    let resp = tx.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "HTTP {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        !body.windows(12).any(|w| w == b"\"isError\":tr"),
        "denied: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

enum Target {
    Direct(u16),
    Gate(String, Arc<rustls::ClientConfig>),
}

async fn drive(
    name: &str,
    target: &Target,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..callers {
        let mut tx = match target {
            Target::Direct(p) => plain(*p).await?,
            Target::Gate(a, cfg) => tls(a, cfg.clone()).await?,
        };
        let (uri, host) = match target {
            Target::Direct(p) => ("/mcp".to_owned(), format!("127.0.0.1:{p}")),
            Target::Gate(a, _) => ("/mcp/bench".to_owned(), a.clone()),
        };
        handles.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while start.elapsed() < duration {
                let t = Instant::now();
                match one(&mut tx, &uri, &host).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("  [gate] {e:#}");
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for h in handles {
        let (l, e) = h.await?;
        all.extend(l);
        errors += e;
    }
    Ok(Report::from_samples(
        name,
        all,
        errors,
        start.elapsed(),
        true,
    ))
}

/// The side-by-side run: reports for direct and through the gateway at 1
/// and 10 callers, interleaved.
pub async fn run(d: &Deployment, bins: &Path, duration: Duration) -> anyhow::Result<Vec<Report>> {
    let port = upstream().await?;
    let (_gate, addr) = start_gate(d, bins, port).await?;
    let (_, chain, key) = crate::enforce::task_with_key(&d.socket).await?;
    let trust = crate::enforce::follow_bundles(d).await?;
    let cfg = Arc::new(lanyard_core::peer::client_config(
        trust,
        None,
        SvidResolver::new(lanyard_core::tls::certified_key(&chain, &key)?),
        Requirements::default(),
    ));
    let gate = Target::Gate(addr, cfg);
    let direct = Target::Direct(port);
    // Warm both paths (connections, the agent's verification cache).
    drive("warm-up", &gate, 1, Duration::from_millis(500)).await?;
    let mut out = Vec::new();
    for callers in [1, 10] {
        out.push(
            drive(
                &format!("tools/call direct, {callers} caller(s)"),
                &direct,
                callers,
                duration,
            )
            .await?,
        );
        out.push(
            drive(
                &format!("tools/call via lanyard-gate, {callers} caller(s)"),
                &gate,
                callers,
                duration,
            )
            .await?,
        );
    }
    Ok(out)
}
