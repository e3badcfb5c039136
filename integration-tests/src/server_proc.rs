//! Server processes for end-to-end tests that kill one (SIGKILL) or run
//! several on one database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lanyard_proto::admin::ListAuthoritiesRequest;
use lanyard_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::{TD, eventually};

/// A `lanyard-server run` child process.
pub struct ServerProc {
    /// The process.
    pub child: Child,
    /// Its server API port.
    pub port: u16,
    /// Its admin socket.
    pub admin: PathBuf,
    /// Its directory.
    pub dir: PathBuf,
}

impl ServerProc {
    /// Starts server `n` (its own dir under `dir`) of binary `bin` on
    /// `datastore` (`sled` or a URL).
    pub fn start(bin: &str, dir: &Path, n: usize, datastore: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(bin, dir, n, datastore, port)
    }

    /// [`ServerProc::start`] on a given port (a restart where agents
    /// expect it).
    /// Every server under `dir` shares `dir/credential.key` (as servers of
    /// one database must), and `dir/server.toml` as its configuration file
    /// when there is one.
    pub fn start_on(bin: &str, dir: &Path, n: usize, datastore: &str, port: u16) -> Self {
        let key_file = dir.join("credential.key");
        let config = dir.join("server.toml");
        let config: Vec<std::ffi::OsString> = if config.exists() {
            vec!["--config".into(), config.into_os_string()]
        } else {
            vec![]
        };
        let dir = dir.join(format!("server{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let admin = dir.join("admin.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(bin)
            .arg("run")
            .args(config)
            .args(["--trust-domain", TD, "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--admin-socket")
            .arg(&admin)
            .args(["--datastore", datastore])
            .arg("--credential-key-file")
            .arg(key_file)
            .args(["--default-x509-svid-ttl", "6s", "--agent-svid-ttl", "30s"])
            .env("LANYARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            admin,
            dir,
        }
    }

    /// The server API address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An admin client.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(lanyard_uds::unix_channel(&self.admin).unwrap())
    }

    /// Waits until the admin API answers.
    pub async fn ready(&self) {
        eventually("a server to answer", Duration::from_secs(30), || async {
            self.admin()
                .list_authorities(ListAuthoritiesRequest {})
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
