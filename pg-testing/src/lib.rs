//! A throwaway PostgreSQL cluster for tests: `initdb` in a temp dir, the
//! real `postgres` server on a free loopback port (TLS on, with a test CA),
//! run as the unprivileged `postgres` user when the tests run as root
//! (PostgreSQL refuses to run as root), stopped and removed on drop, or
//! by a watchdog once the test process has exited without dropping it.
//!
//! It needs PostgreSQL's server binaries (Debian: `postgresql`); the
//! README's test command (`scripts/test.sh`) installs them when missing.
//! Without them a test fails with that instruction: nothing is skipped.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    child: Child,
    /// Stops the server and removes its directory if this process goes
    /// away without dropping the cluster (see [`watchdog`]).
    watchdog: Child,
    port: u16,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    next_db: AtomicUsize,
}

/// The directory holding `initdb` and `postgres`.
fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).context(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: run the README's test command `scripts/test.sh`, which installs them, or `apt-get install postgresql`",
    )
}

/// uid and gid of `postgres` (or `nobody`) when running as root.
fn unprivileged() -> Result<Option<(u32, u32)>> {
    // SAFETY-free: read the effective uid from /proc.
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for name in ["postgres", "nobody"] {
        if let Some(line) = passwd.lines().find(|l| l.starts_with(&format!("{name}:"))) {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(u), Some(g)) = (f.get(2), f.get(3)) {
                return Ok(Some((u.parse()?, g.parse()?)));
            }
        }
    }
    bail!("running as root and neither a postgres nor a nobody user exists to run PostgreSQL as")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn chown_tree(path: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = ids {
        std::os::unix::fs::chown(path, Some(u), Some(g))?;
        if path.is_dir() {
            for e in std::fs::read_dir(path)? {
                chown_tree(&e?.path(), ids)?;
            }
        }
    }
    Ok(())
}

impl PgCluster {
    /// Initialises and starts a cluster; waits until it accepts
    /// connections.
    pub async fn start() -> Result<Self> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged()?;
        let dir = tempfile::Builder::new().prefix("lanyard-pg-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let data = dir.path().join("data");
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls)?;
        write_tls(&tls)?;
        chown_tree(dir.path(), run_as)?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "lanyard",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((u, g)) = run_as {
            initdb.uid(u).gid(g);
        }
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let port = free_port()?;
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                tls.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!("ssl_key_file={}", tls.join("server.key").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("postgres.log"))?);
        if let Some((u, g)) = run_as {
            postgres.uid(u).gid(g);
        }
        let mut child = postgres.spawn().context("starting postgres")?;
        let watchdog = match watchdog(child.id(), dir.path()) {
            Ok(w) => w,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let cluster = Self {
            dir,
            child,
            watchdog,
            port,
            bin,
            run_as,
            next_db: AtomicUsize::new(0),
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    drop(client);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(self.dir.path().join("postgres.log"))
                        .unwrap_or_default();
                    bail!("postgres did not start: {e}\n{log}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The URL of database `db` (plain TCP on loopback).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://lanyard@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The URL of database `db` with `sslmode=require`.
    pub fn tls_url(&self, db: &str) -> String {
        format!(
            "postgres://lanyard@localhost:{}/{db}?sslmode=require",
            self.port
        )
    }

    /// The CA that signed the server's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls").join("ca.crt")
    }

    /// A plain client of database `db`, its connection driven in the
    /// background (for tests that look at the tables themselves).
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Creates a new, empty database and returns its name.
    pub async fn create_db(&self) -> Result<String> {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{n}");
        self.client("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(name)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Where the binaries are (for `psql` in tests).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server's process ID.
    pub fn server_pid(&self) -> u32 {
        self.child.id()
    }

    /// The cluster's directory (data, sockets, TLS files, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The uid/gid the server runs as, when not the caller's.
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }
}

/// A shell that waits on a pipe from this process and, once the pipe
/// closes (this process exited, however it ended), stops the server fast
/// if it still runs and removes `dir`. Without it a cluster held
/// in a `static` (never dropped), or one of a test process that was
/// killed, would outlive the tests: a running postgres and its files left
/// behind on every run.
fn watchdog(pid: u32, dir: &Path) -> Result<Child> {
    Command::new("sh")
        .args([
            "-c",
            r#"read _ || true
if kill -0 "$1" 2>/dev/null; then
  kill -INT "$1"
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
fi
rm -rf -- "$2""#,
            "lanyard-pg-watchdog",
            &pid.to_string(),
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the PostgreSQL watchdog (sh)")
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Stopped here, in order: the watchdog first, so that it never
        // signals a PID that has been reaped and reused.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        // SIGTERM: "smart" shutdown would wait for clients; a test's are
        // gone or do not matter, so ask for a fast one (SIGINT).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for `localhost`, 127.0.0.1.
fn write_tls(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "lanyard test database CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("server.crt"), cert.pem())?;
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
