//! `lanyard-server run` refusing to start: bad configuration, and a data
//! directory of another trust domain.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{BIN, admin, start};

#[test]
fn run_refuses_bad_configuration_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["run", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("trust_domain: is required"));
    let o = Command::new(BIN)
        .args([
            "run",
            "--trust-domain",
            "example.org",
            "--ca-ttl",
            "10m",
            "--default-x509-svid-ttl",
            "5m",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("6x the largest SVID TTL"));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "trust_domain = \"example.org\"\nunknown_key = 1\n").unwrap();
    let o = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field"));
}

/// A data directory holds one trust domain's CA: starting on it with
/// another trust domain is refused with the reason, and the data is kept.
#[test]
fn run_refuses_a_data_dir_of_another_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start(d);
    drop(server);
    let o = Command::new(BIN)
        .args([
            "run",
            "--trust-domain",
            "other.org",
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(d.join("data"))
        .arg("--admin-socket")
        .arg(d.join("admin2.sock"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("example.org") && err.contains("other.org"),
        "{err}"
    );
    // The first trust domain still starts on it (the killed server's
    // socket file is still there: wait for the new server to answer).
    let _again = start(d);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = admin(d, &["bundle", "show", "--format", "jwks"]);
        if o.status.success() {
            assert!(!o.stdout.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "the server did not start again");
        std::thread::sleep(Duration::from_millis(50));
    }
}
