//! An example tool server (or MCP gateway) enforcing Lanyard at the tool:
//!
//! - mTLS with the Lanyard peer verifier: the client must present an
//!   X.509-SVID of the trust domain that is not revoked (the bundle and
//!   CRLs come from this server's own node agent and are swapped live);
//! - one `AuthorizeToolCall` per request to its node agent, with the
//!   certificate chain the client presented: the agent decides by the task
//!   claims, quarantines and Cedar;
//! - a watch on the revocation set: a connection whose peer is revoked is
//!   dropped at once.
//!
//! Tools: `crm.read`, `email.send`, `payments.transfer` (they answer made-up
//! data). Protocol, one line each way per call:
//! `TOOL RESOURCE JSON-CONTEXT` -> `allow DECISION-ID RESULT` or
//! `deny DECISION-ID REASON` (or `error MESSAGE`).
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \
//!   tool-server --listen 127.0.0.1:8443 --trust-domain example.org
//! ```
//! The server's own entry must be marked `--enforcement-point`.

use lanyard_gate::identity as mtls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use lanyard_core::peer::{Requirements, server_config};
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallRequest, X509Chain};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const TOOLS: [&str; 3] = ["crm.read", "email.send", "payments.transfer"];

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

async fn run() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = flag(&args, "--listen", "127.0.0.1:8443")
        .parse()
        .context("--listen HOST:PORT")?;
    let td = flag(&args, "--trust-domain", "example.org");
    let socket = mtls::agent_socket()?;
    let me = mtls::follow(&socket, &td).await?;
    let tls = server_config(me.trust.clone(), me.key.clone(), Requirements::default());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let agent = TaskIdentityClient::new(lanyard_uds::unix_channel(&socket)?);
    let listener = TcpListener::bind(listen).await?;
    let serial = {
        let c = me.chain.read().unwrap_or_else(|p| p.into_inner());
        lanyard_core::x509::CertInfo::parse(&c[0])?.serial
    };
    println!(
        "tool server {} (serial {serial}) listening on {listen}",
        me.spiffe_id
    );
    loop {
        let (tcp, from) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let agent = agent.clone();
        let trust = me.trust.clone();
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => serve(tls, agent, trust).await,
                Err(e) => println!("handshake from {from} refused: {e}"),
            }
        });
    }
}

async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    agent: TaskIdentityClient<Channel>,
    trust: Arc<lanyard_core::peer::LiveTrust>,
) {
    let chain = mtls::peer_chain(tls.get_ref().1);
    let Ok(peer) = trust.current().validate(
        &chain,
        lanyard_core::x509::PeerUsage::Client,
        &Requirements::default(),
        std::time::SystemTime::now(),
    ) else {
        return;
    };
    println!(
        "connection from {} (serial {})",
        peer.spiffe_id, peer.serial
    );
    let (rd, mut wr) = tokio::io::split(tls);
    let mut lines = BufReader::new(rd).lines();
    loop {
        tokio::select! {
            // The peer is revoked (a new CRL lists it): drop the connection.
            e = trust.revoked(&peer) => {
                println!("dropping {}: {e}", peer.spiffe_id);
                let _ = wr.shutdown().await;
                return;
            }
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { return };
                let reply = call(&agent, &chain, &line).await;
                if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn call(agent: &TaskIdentityClient<Channel>, chain: &[Vec<u8>], line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    let tool = parts.next().unwrap_or_default().to_owned();
    let resource = parts.next().unwrap_or_default().to_owned();
    let context_json = parts.next().unwrap_or("{}").to_owned();
    if !TOOLS.contains(&tool.as_str()) {
        return format!("error unknown tool {tool:?}");
    }
    let req = mtls::header(AuthorizeToolCallRequest {
        credential: Some(Credential::X509Chain(X509Chain {
            certs: chain.to_vec(),
        })),
        tool: tool.clone(),
        resource: resource.clone(),
        context_json,
        audience: String::new(),
        ..Default::default()
    });
    match agent.clone().authorize_tool_call(req).await {
        Ok(d) => {
            let d = d.into_inner();
            println!(
                "{} {tool} {resource} for task {} of {}: {}",
                if d.allow { "allow" } else { "deny" },
                d.task_id,
                d.principal,
                d.reason
            );
            if d.allow {
                format!("allow {} {}", d.decision_id, result(&tool, &resource))
            } else {
                format!("deny {} {}", d.decision_id, d.reason)
            }
        }
        Err(s) => {
            println!("refused {tool}: {:?}: {}", s.code(), s.message());
            format!("error {:?}: {}", s.code(), s.message())
        }
    }
}

fn result(tool: &str, resource: &str) -> String {
    match tool {
        "crm.read" => format!("{resource}: {{\"name\": \"ACME Corp\", \"stage\": \"renewal\"}}"),
        "email.send" => "queued".into(),
        _ => "transferred".into(),
    }
}
