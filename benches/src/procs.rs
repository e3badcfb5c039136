//! The real `lanyard-server` and `lanyard-agent` binaries as child
//! processes, and what /proc says about them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateJoinTokenRequest, GetBundleRequest};
use lanyard_uds::unix_channel;
use tonic::transport::Channel;

/// Trust domain of the bench deployment.
pub const TD: &str = "bench.example.org";
/// Agent ID of the bench node.
pub const NODE: &str = "spiffe://bench.example.org/node/bench";

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running server and agent.
pub struct Deployment {
    /// The agent's Workload API socket.
    pub socket: PathBuf,
    /// The server's admin socket.
    pub admin_socket: PathBuf,
    /// The agent process.
    pub agent: Proc,
    /// The server process.
    pub server: Proc,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_for_socket(path: &Path, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening");
        }
        if Instant::now() > deadline {
            bail!("{what} did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The directory holding the `lanyard-server` and `lanyard-agent` binaries:
/// `--bin-dir`, else the directory of this executable.
pub fn bin_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match flag {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .to_owned(),
    };
    for b in ["lanyard-server", "lanyard-agent"] {
        if !dir.join(b).exists() {
            bail!(
                "{} not found in {}; build the binaries first: cargo build --release --bins",
                b,
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// An admin client.
pub fn admin(socket: &Path) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(unix_channel(socket)?))
}

/// Starts a server (X.509 TTL `ttl`) and an agent attested to it.
pub async fn start(bins: &Path, ttl: Duration) -> anyhow::Result<Deployment> {
    start_configured(bins, ttl, "").await
}

/// [`start`] with `server_toml` as the server's configuration file (what
/// flags cannot say, such as `[[approver]]` tables).
pub async fn start_configured(
    bins: &Path,
    ttl: Duration,
    server_toml: &str,
) -> anyhow::Result<Deployment> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("server.toml");
    std::fs::write(&config, server_toml)?;
    let port = free_port()?;
    let admin_socket = dir.path().join("admin.sock");
    let ttl_s = format!("{}s", ttl.as_secs().max(2));
    let ca_ttl = format!("{}s", (ttl.as_secs() * 6).max(24 * 3600));
    let mut server = Command::new(bins.join("lanyard-server"))
        .args(["run", "--trust-domain", TD, "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("server"))
        .arg("--admin-socket")
        .arg(&admin_socket)
        .args(["--default-x509-svid-ttl", &ttl_s, "--ca-ttl", &ca_ttl])
        .env("LANYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting lanyard-server")?;
    wait_for_socket(&admin_socket, &mut server, "lanyard-server")?;
    let server = Proc(server);
    let mut a = admin(&admin_socket)?;
    let token = a
        .create_join_token(CreateJoinTokenRequest {
            agent_id: NODE.into(),
            ttl_seconds: 600,
        })
        .await?
        .into_inner()
        .token;
    let bundle = a.get_bundle(GetBundleRequest {}).await?.into_inner();
    let pem = lanyard_core::x509::der_to_pem("CERTIFICATE", &bundle.x509_authorities);
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, pem)?;
    let socket = dir.path().join("agent.sock");
    // The WIT-SVID profile on (the `decide --credential wit` scenario).
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(&agent_config, "[workload_api]\nwit = true\n")?;
    let mut agent = Command::new(bins.join("lanyard-agent"))
        .args(["run", "--config"])
        .arg(&agent_config)
        .args(["--trust-domain", TD, "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--join-token", &token, "--trust-bundle"])
        .arg(&bundle_path)
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        // Every workload of the load tool is this one process: raise the
        // per-caller connection limit above --concurrency (at most 1,000).
        .args(["--max-connections-per-caller", "2048"])
        // LANYARD_BENCH_AGENT_WORKERS sets the agent's runtime worker
        // threads (default: one per CPU), to compare the two.
        .args(
            std::env::var("LANYARD_BENCH_AGENT_WORKERS")
                .map(|n| vec!["--worker-threads".to_owned(), n])
                .unwrap_or_default(),
        )
        // LANYARD_BENCH_AGENT_LOG overrides the agent's log filter (to see
        // what it does during a scenario); warn by default, so that log
        // lines cost nothing in the figures.
        .env(
            "LANYARD_LOG",
            std::env::var("LANYARD_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting lanyard-agent")?;
    wait_for_socket(&socket, &mut agent, "lanyard-agent")?;
    Ok(Deployment {
        socket,
        admin_socket,
        agent: Proc(agent),
        server,
        _dir: dir,
    })
}

/// Resident set size of a process, bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("bad stat")? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, usually 100).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(super::rss_bytes(me).unwrap() > 0);
        super::cpu_ticks(me).unwrap();
    }
}
