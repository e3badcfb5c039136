//! What a new user meets first: warnings that mean something, defaults that
//! fit, errors said once with what to do, the log naming what an operator
//! needs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The development overlay that skips the kubelet's certificate check
/// warns at every start: its own agent.toml (paths moved into a temporary
/// directory), started twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insecure_kubelet_overlay_warns_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let overlay = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kubernetes/overlays/dev-insecure-kubelet/agent.toml"),
    )
    .unwrap();
    assert!(overlay.contains("kubelet_insecure_skip_verify = true"));
    let td = lanyard_core::TrustDomain::new("example.org").unwrap();
    let ca = lanyard_core::x509::X509Authority::generate_root(
        &td,
        std::time::SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(
        d.join("bundle.pem"),
        lanyard_core::x509::der_to_pem("CERTIFICATE", &[ca.cert_der().to_vec()]),
    )
    .unwrap();
    std::fs::write(d.join("psat"), "token\n").unwrap();
    std::fs::write(d.join("sa"), "token\n").unwrap();
    let config = overlay
        .replace(
            "/etc/lanyard/bundle/bundle.pem",
            &d.join("bundle.pem").display().to_string(),
        )
        .replace(
            "/var/run/secrets/tokens/lanyard-agent",
            &d.join("psat").display().to_string(),
        )
        .replace(
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            &d.join("sa").display().to_string(),
        )
        .replace(
            "/run/lanyard/agent/api.sock",
            &d.join("api.sock").display().to_string(),
        )
        .replace(
            "/var/lib/lanyard/agent",
            &d.join("data").display().to_string(),
        )
        .replace("0.0.0.0:9091", "127.0.0.1:0")
        .replace("/host/sys/fs/cgroup", "/sys/fs/cgroup")
        .replace(
            "lanyard-server.lanyard.svc.cluster.local:8081",
            "127.0.0.1:1",
        );
    std::fs::write(d.join("agent.toml"), config).unwrap();
    for _ in 0..2 {
        let mut c = Command::new(BIN);
        c.args(["run", "--config"])
            .arg(d.join("agent.toml"))
            .env("LANYARD_K8S_NODE_NAME", "node-1");
        let log = start_log(c, "kubelet_insecure_skip_verify").await;
        assert!(
            log.lines()
                .any(|l| l.contains("kubelet_insecure_skip_verify") && l.contains("WARN")),
            "no warning at start: {log}"
        );
    }
}

/// What the agent started by `cmd` logs until a line containing `until`
/// (or 10 s); then it is stopped.
async fn start_log(mut cmd: Command, until: &'static str) -> String {
    let mut child = Agent(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = String::new();
        while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            log.push_str(&l);
            log.push('\n');
            if l.contains(until) {
                break;
            }
        }
        drop(child);
        log
    })
    .await
    .unwrap()
}

/// With the default connection limits on a machine whose descriptor
/// limit is too low for them, the agent fits them to it and says so at
/// info, without a warning; a configured limit that does not fit is warned
/// about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limits_fit_the_machine_and_only_a_configured_misfit_warns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |extra: &str| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "ulimit -n 4096 && exec \"$0\" run --trust-domain example.org --server 127.0.0.1:1 --join-token t --insecure-bootstrap --socket {} --data-dir {} {extra}",
                d.join("a.sock").display(),
                d.join("data").display()
            ))
            .arg(BIN);
        c
    };
    let log = start_log(run(""), "configuration").await;
    assert!(!log.contains("WARN"), "{log}");
    assert!(log.contains("max_connections lowered"), "{log}");
    assert!(log.contains("max_connections: 1024"), "{log}");
    std::fs::write(d.join("agent.toml"), "max_connections = 8192\n").unwrap();
    let log = start_log(
        run(&format!("--config {}", d.join("agent.toml").display())),
        "configuration",
    )
    .await;
    assert!(
        log.contains("WARN") && log.contains("descriptor limit is below"),
        "{log}"
    );
}

/// What the agent's log tells an operator: a caller that matches no
/// entry, with the selectors it was attested with (once per caller), and
/// an evicted agent, once, with what to do (not "serving cached SVIDs" at
/// every retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_an_unmatched_callers_selectors_and_an_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = cluster(d).await;
    let mut admin = c.admin.clone();
    let socket = d.join("agent.sock");
    let mut agent = Agent(
        c.agent(d, "bundle.pem")
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = agent.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let rx = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if l.contains("\"connected to server\"") {
                return (l, rx);
            }
        }
        panic!("the agent never connected");
    })
    .await
    .unwrap();
    let (connected, rx) = rx;
    // No entry for this caller: refused, and its selectors are logged once.
    for _ in 0..2 {
        let o = Command::new(BIN)
            .args(["api", "fetch", "x509", "--timeout", "5s"])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", socket.display()),
            )
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("no identity issued"));
    }
    let (hints, rx) = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(2);
        let mut v = vec![];
        while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            v.push(l);
        }
        (v, rx)
    })
    .await
    .unwrap();
    let hinted: Vec<&String> = hints
        .iter()
        .filter(|l| l.contains("no entry matches this caller"))
        .collect();
    assert_eq!(hinted.len(), 1, "{hints:#?}");
    assert!(
        hinted[0].contains(&format!("unix:uid:{}", uid())),
        "{}",
        hinted[0]
    );
    let v: serde_json::Value = serde_json::from_str(&connected).unwrap();
    let agent_id = v["fields"]["agent_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{connected}"))
        .to_owned();
    admin
        .evict_agent(lanyard_proto::admin::AgentRequest {
            spiffe_id: agent_id,
        })
        .await
        .unwrap();
    let (line, rx) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if l.contains("evicted:") {
                return (l, rx);
            }
        }
        panic!("no eviction line");
    })
    .await
    .unwrap();
    assert!(line.contains("\"ERROR\""), "{line}");
    assert!(line.contains("restart it with a new join token"), "{line}");
    // Said once: later retries do not repeat it.
    let later: Vec<String> = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(3);
        let mut v = vec![];
        while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            v.push(l);
        }
        v
    })
    .await
    .unwrap();
    assert!(
        !later
            .iter()
            .any(|l| l.contains("evicted:") || l.contains("serving cached SVIDs")),
        "{later:#?}"
    );
    drop(agent);
    c.server.shutdown().await;
}

/// Precedence as docs/configuration.md states it: a flag over an exported variable
/// over the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "trust_domain = \"example.org\"\nserver = \"127.0.0.1:1\"\ninsecure_bootstrap = true\njoin_token = \"t\"\nsocket = \"{}\"\ndata_dir = \"{}\"\n",
            d.join("file.sock").display(),
            d.join("file-data").display()
        ),
    )
    .unwrap();
    let run = |flag: bool| {
        let mut c = Command::new(BIN);
        c.args(["run", "--config"])
            .arg(d.join("agent.toml"))
            .env("LANYARD_SOCKET", d.join("env.sock"))
            .env("LANYARD_DATA_DIR", d.join("env-data"));
        if flag {
            c.arg("--socket").arg(d.join("flag.sock"));
        }
        c
    };
    let log = start_log(run(false), "configuration").await;
    assert!(
        log.contains("env.sock") && !log.contains("file.sock"),
        "{log}"
    );
    assert!(log.contains("env-data"), "{log}");
    let log = start_log(run(true), "configuration").await;
    assert!(
        log.contains("flag.sock") && !log.contains("env.sock"),
        "{log}"
    );
}

/// A trust bundle that does not sign the server's certificate: one line
/// saying so and what to do, without the TLS stack's error chain repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_trust_bundle_is_explained_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = cluster(d).await;
    let td = lanyard_core::TrustDomain::new("example.org").unwrap();
    let other = lanyard_core::x509::X509Authority::generate_root(
        &td,
        std::time::SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(
        d.join("other.pem"),
        lanyard_core::x509::der_to_pem("CERTIFICATE", &[other.cert_der().to_vec()]),
    )
    .unwrap();
    let mut run = c.agent(d, "other.pem");
    run.env("NO_COLOR", "1");
    let o = tokio::task::spawn_blocking(move || run.output().unwrap())
        .await
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = errors[0];
    assert!(
        line.contains("does not sign the server's certificate")
            && line.contains("lanyard-server bundle show"),
        "{line}"
    );
    assert!(!line.contains("UnknownIssuer"), "{line}");
    assert_eq!(line.matches("is not trusted").count(), 1, "{line}");
    c.server.shutdown().await;
}
