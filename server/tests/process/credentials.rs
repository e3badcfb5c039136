//! `credential add|list|show|rotate|delete` through the real binary: a
//! secret goes in from a file and never comes back out, in any output or
//! on disk.

use std::path::Path;

use crate::cli::{admin, fails, ok, start};

const SECRET: &str = "sk-live-cli-0123456789";
const ROTATED: &str = "sk-live-cli-rotated-987";

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    admin(dir, args)
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

/// Every file under `dir` (the server's data directory).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_secret_goes_in_from_a_file_and_never_comes_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start(d);
    let file = d.join("crm.key");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let f = file.to_str().unwrap();

    let added = ok(&run(
        d,
        &[
            "credential",
            "add",
            "crm-api-key",
            "--kind",
            "secret",
            "--from-file",
            f,
        ],
    ));
    assert!(
        added.contains("Digest") && added.contains("enforcement points only"),
        "{added}"
    );
    assert!(!added.contains("sk-live"), "{added}");
    ok(&run(
        d,
        &[
            "credential",
            "add",
            "github",
            "--kind",
            "oauth-exchange",
            "--token-url",
            "https://auth.example.com/oauth/token",
            "--audience",
            "https://auth.example.com",
            "--scope",
            "repo:read",
            "--scope",
            "issues:write",
        ],
    ));
    let revealed = run(
        d,
        &[
            "credential",
            "add",
            "shared",
            "--kind",
            "secret",
            "--from-file",
            f,
            "--reveal",
        ],
    );
    ok(&revealed);
    assert!(String::from_utf8_lossy(&revealed.stderr).contains("long-lived secret"));

    let list = json(&ok(&run(d, &["credential", "list", "--output", "json"])));
    let providers = list["providers"].as_array().unwrap();
    let names: Vec<&str> = providers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["crm-api-key", "github", "shared"]);
    assert!(!list.to_string().contains("sk-live"));
    let before = providers[0]["digest"].as_str().unwrap().to_owned();
    assert!(before.starts_with("hmac-sha256:"));
    // No task has been handed anything yet.
    assert_eq!(
        ok(&run(d, &["credential", "leases"])).trim(),
        "no open leases"
    );
    let leases = json(&ok(&run(
        d,
        &["credential", "leases", "--all", "--output", "json"],
    )));
    assert_eq!(leases["leases"], serde_json::json!([]));
    let github = ok(&run(d, &["credential", "show", "github"]));
    assert!(
        github.contains("repo:read issues:write") && github.contains("jwt-spiffe"),
        "{github}"
    );

    std::fs::write(&file, ROTATED).unwrap();
    let rotated = json(&ok(&run(
        d,
        &[
            "credential",
            "rotate",
            "crm-api-key",
            "--from-file",
            f,
            "--output",
            "json",
        ],
    )));
    assert_eq!(rotated["version"], 2);
    assert_ne!(rotated["digest"], before.as_str());
    assert!(
        fails(&run(
            d,
            &["credential", "rotate", "github", "--from-file", f]
        ))
        .contains("only a secret provider")
    );

    // Bad input: one line each, and nothing written.
    for (args, says) in [
        (
            &["credential", "add", "x", "--kind", "secret"][..],
            "--from-file",
        ),
        (
            &[
                "credential",
                "add",
                "x",
                "--kind",
                "vault",
                "--from-file",
                f,
            ],
            "kind",
        ),
        (
            &[
                "credential",
                "add",
                "crm-api-key",
                "--kind",
                "secret",
                "--from-file",
                f,
            ],
            "exists",
        ),
        (
            &[
                "credential",
                "add",
                "x",
                "--kind",
                "oauth-exchange",
                "--token-url",
                "http://auth.example.com/t",
                "--audience",
                "a",
            ],
            "https://",
        ),
        (
            &[
                "credential",
                "add",
                "Bad Name",
                "--kind",
                "txn-token",
                "--audience",
                "a",
            ],
            "name",
        ),
        (
            &[
                "credential",
                "add",
                "x",
                "--kind",
                "txn-token",
                "--audience",
                "a",
                "--scope",
                "s",
            ],
            "does not apply",
        ),
        (&["credential", "show", "nope"], "no credential provider"),
        (
            &[
                "credential",
                "add",
                "x",
                "--kind",
                "secret",
                "--from-file",
                "/nonexistent/f",
            ],
            "/nonexistent/f",
        ),
    ] {
        let e = fails(&run(d, args));
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert_eq!(
        json(&ok(&run(d, &["credential", "list", "--output", "json"])))["providers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(
        ok(&run(d, &["credential", "delete", "shared"]))
            .contains("deleted credential provider shared")
    );

    // On disk: the key file is private, and the database holds the
    // providers (their names are there) but neither value.
    server.stop();
    let key = d.join("data/credential.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let db: Vec<Vec<u8>> = files(&d.join("data/db"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        db.iter().any(|b| holds(b, b"crm-api-key")),
        "the providers are not in the database"
    );
    for b in &db {
        assert!(
            !holds(b, SECRET.as_bytes()) && !holds(b, ROTATED.as_bytes()),
            "a secret in the database"
        );
    }
}
