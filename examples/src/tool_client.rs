//! An example AI agent calling the example tool server from inside a task:
//! run it under `lanyard-agent task run ... --` and its default SVID (the
//! one it presents over mTLS) is the task SVID with the task's claims.
//!
//! ```text
//! lanyard-agent task run --type report.generate --tool crm.read -- \
//!   tool-client --connect 127.0.0.1:8443 --server-id spiffe://example.org/tool/crm \
//!   crm.read account/42 '{}' email.send bob '{"to": "bob@example.com"}'
//! ```
//! Each `TOOL RESOURCE CONTEXT` triple is one call; the reply is printed.
//! With `--every MS` the calls repeat until the server drops the client
//! (it then tries one new connection and prints the outcome).

use lanyard_gate::identity as mtls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lanyard_core::SpiffeId;
use lanyard_core::peer::{Requirements, client_config};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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

type Conn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
) -> anyhow::Result<BufReader<Conn>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("tool-server")?;
    let tls = connector.connect(name, tcp).await?;
    Ok(BufReader::new(tls))
}

async fn one_call(conn: &mut BufReader<Conn>, call: &[String]) -> anyhow::Result<String> {
    conn.get_mut()
        .write_all(format!("{} {} {}\n", call[0], call[1], call[2]).as_bytes())
        .await?;
    let mut reply = String::new();
    if conn.read_line(&mut reply).await? == 0 {
        anyhow::bail!("the tool server closed the connection");
    }
    Ok(reply.trim_end().to_owned())
}

async fn run() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        let v = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        v
    };
    let addr = take("--connect").unwrap_or_else(|| "127.0.0.1:8443".into());
    let server_id = take("--server-id").context("--server-id SPIFFE_ID of the tool server")?;
    let td = take("--trust-domain").unwrap_or_else(|| "example.org".into());
    let every = take("--every")
        .map(|ms| ms.parse::<u64>().map(Duration::from_millis))
        .transpose()
        .context("--every MILLISECONDS")?;
    if args.is_empty() || !args.len().is_multiple_of(3) {
        anyhow::bail!("give calls as TOOL RESOURCE CONTEXT-JSON triples");
    }
    let calls: Vec<Vec<String>> = args.chunks(3).map(<[String]>::to_vec).collect();
    let me = mtls::follow(&mtls::agent_socket()?, &td).await?;
    println!("client {} (serial of its SVID {})", me.spiffe_id, {
        let c = me.chain.read().unwrap_or_else(|p| p.into_inner());
        lanyard_core::x509::CertInfo::parse(&c[0])?.serial
    });
    let tls = client_config(
        me.trust.clone(),
        Some(SpiffeId::new(&server_id)?),
        me.key.clone(),
        Requirements::default(),
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let mut conn = connect(&connector, &addr).await?;
    loop {
        for call in &calls {
            match one_call(&mut conn, call).await {
                Ok(reply) => println!("{} {} -> {reply}", call[0], call[1]),
                Err(e) => {
                    println!("{} {} -> {e}", call[0], call[1]);
                    // With TLS 1.3 the server checks the client certificate
                    // after the client's last flight: the refusal arrives
                    // as an alert on the first read.
                    let again = async {
                        let mut c = connect(&connector, &addr).await?;
                        one_call(&mut c, call).await
                    };
                    match again.await {
                        Ok(reply) => println!("reconnected: {reply}"),
                        Err(e) => println!("new connection refused: {e}"),
                    }
                    return Ok(());
                }
            }
        }
        let Some(every) = every else { return Ok(()) };
        tokio::time::sleep(every).await;
    }
}
