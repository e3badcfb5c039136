//! The real `lanyard-server` binary's audit commands: `audit tail`,
//! `audit export` (whole, and a time window), `audit key`, and `audit
//! verify` online and offline, which names the first broken record of an
//! edited, deleted, reordered or inserted export and refuses a checkpoint
//! signed by another server's key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-server");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> Server {
    let child = Command::new(BIN)
        .args([
            "run",
            "--trust-domain",
            "example.org",
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("admin.sock").exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .output()
        .expect("run command")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `audit verify --file` on `lines`: the error line, or `None` when it
/// verifies.
fn verify_offline(dir: &Path, lines: &[String], key: &Path) -> Option<String> {
    let f = dir.join("check.jsonl");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    let o = run(
        dir,
        &[
            "audit",
            "verify",
            "--file",
            f.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    if o.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    Some(err)
}

fn record_index(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| !l.starts_with("{\"checkpoint\"") && l.contains(&format!("\"seq\":{seq},")))
        .unwrap()
}

#[test]
fn exports_verify_offline_and_tampering_is_named_by_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start(d);
    for i in 0..12 {
        ok(&run(
            d,
            &[
                "token",
                "generate",
                "--agent-id",
                &format!("spiffe://example.org/node/n{i}"),
            ],
        ));
    }
    // tail: the latest records, filtered.
    let tail = ok(&run(
        d,
        &["audit", "tail", "-n", "3", "--kind", "token.created"],
    ));
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(
        tail.lines()
            .all(|l| l.contains("token.created") && l.contains("actor=\"uid:")),
        "{tail}"
    );
    assert!(tail.starts_with("10 "), "{tail}");
    let json = ok(&run(
        d,
        &[
            "audit",
            "tail",
            "--spiffe-id",
            "spiffe://example.org/node/n4",
            "--output",
            "json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["seq"], 5);
    let bad = run(d, &["audit", "tail", "--kind", "nope"]);
    assert!(!bad.status.success());

    let key = d.join("audit.pem");
    std::fs::write(&key, ok(&run(d, &["audit", "key"]))).unwrap();
    // The key read from the data dir is the same.
    let from_dir = ok(&run(
        d,
        &[
            "audit",
            "key",
            "--data-dir",
            d.join("data").to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), from_dir);
    let online = ok(&run(d, &["audit", "verify"]));
    assert!(online.starts_with("verified 12 records"), "{online}");

    let export = ok(&run(d, &["audit", "export", "--format", "jsonl"]));
    let lines: Vec<String> = export.lines().map(str::to_owned).collect();
    assert!(lines.last().unwrap().starts_with("{\"checkpoint\""));
    assert_eq!(verify_offline(d, &lines, &key), None);
    let o = run(
        d,
        &[
            "audit",
            "verify",
            "--file",
            "/nonexistent",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());

    // Edited: a record's subject changed.
    let mut edited = lines.clone();
    let i = record_index(&lines, 6);
    edited[i] = edited[i].replace("node/n5", "node/evil");
    let e = verify_offline(d, &edited, &key).expect("edit detected");
    assert!(e.contains("record 6:") && e.contains("edited"), "{e}");
    // Deleted.
    let mut deleted = lines.clone();
    deleted.remove(record_index(&lines, 4));
    let e = verify_offline(d, &deleted, &key).expect("deletion detected");
    assert!(e.contains("record 4:") && e.contains("missing"), "{e}");
    // Reordered.
    let mut reordered = lines.clone();
    reordered.swap(record_index(&lines, 8), record_index(&lines, 9));
    let e = verify_offline(d, &reordered, &key).expect("reorder detected");
    assert!(e.contains("record 8:"), "{e}");
    // Inserted: a copy of record 2 after record 3.
    let mut inserted = lines.clone();
    inserted.insert(
        record_index(&lines, 3) + 1,
        lines[record_index(&lines, 2)].clone(),
    );
    let e = verify_offline(d, &inserted, &key).expect("insertion detected");
    assert!(e.contains("record 2:") && e.contains("inserted"), "{e}");
    // Another server's key does not verify this chain.
    let other = tempfile::tempdir().unwrap();
    let other_server = start(other.path());
    let other_key = other.path().join("audit.pem");
    std::fs::write(&other_key, ok(&run(other.path(), &["audit", "key"]))).unwrap();
    let e = verify_offline(d, &lines, &other_key).expect("foreign key refused");
    assert!(e.contains("not a trusted audit key"), "{e}");
    // Both servers' exports together, with both keys in one file.
    ok(&run(other.path(), &["token", "generate"]));
    let mut both = lines.clone();
    both.extend(
        ok(&run(other.path(), &["audit", "export"]))
            .lines()
            .map(str::to_owned),
    );
    let keys = d.join("keys.pem");
    std::fs::write(
        &keys,
        std::fs::read_to_string(&key).unwrap() + &std::fs::read_to_string(&other_key).unwrap(),
    )
    .unwrap();
    assert_eq!(verify_offline(d, &both, &keys), None);
    drop(other_server);

    // A window: only what happened after a point in time, anchored by a
    // checkpoint signed for the record before it.
    std::thread::sleep(Duration::from_millis(1100));
    let since = lanyard_core::clock::format_rfc3339(std::time::SystemTime::now());
    std::thread::sleep(Duration::from_millis(1100));
    ok(&run(d, &["token", "generate"]));
    let window = ok(&run(d, &["audit", "export", "--since", &since]));
    let wl: Vec<String> = window.lines().map(str::to_owned).collect();
    assert_eq!(wl.len(), 3, "{window}");
    assert!(
        wl[0].contains("\"seq\":12") && wl[0].starts_with("{\"checkpoint\""),
        "{window}"
    );
    assert!(wl[1].contains("\"seq\":13"), "{window}");
    assert_eq!(verify_offline(d, &wl, &key), None);
    let bad = run(d, &["audit", "export", "--since", "yesterday-ish"]);
    assert!(!bad.status.success());
    drop(server);
}

/// `lanyard-server audit tail | head`: the reader goes away; the command
/// ends quietly instead of panicking on the closed pipe (exit 101).
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let _server = start(dir.path());
    for args in [
        &["audit", "tail"][..],
        &["audit", "export", "--format", "jsonl"][..],
        &["entry", "list"][..],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--admin-socket")
            .arg(dir.path().join("admin.sock"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// A log edited on disk is never vouched for: `audit export` verifies the
/// chain before it signs a checkpoint over it, and refuses.
#[test]
fn export_refuses_to_sign_an_edited_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start(d);
    for i in 0..3 {
        ok(&run(
            d,
            &[
                "entry",
                "create",
                "--spiffe-id",
                &format!("spiffe://example.org/w{i}"),
                "--parent-id",
                "spiffe://example.org/node/n1",
                "--selector",
                "unix:uid:1000",
            ],
        ));
    }
    let export = ok(&run(d, &["audit", "export", "--format", "jsonl"]));
    assert!(export.contains("\"checkpoint\""));
    drop(server);

    // Edit the first record's time in the segment file.
    let seg = std::fs::read_dir(d.join("data").join("audit"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    assert!(first.contains("\"time\":\"20"), "{first}");
    let edited = first.replacen("\"time\":\"20", "\"time\":\"19", 1);
    std::fs::write(&seg, format!("{edited}\n{rest}")).unwrap();

    let _server = start(d);
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = run(d, &["audit", "export", "--format", "jsonl"]);
        let err = String::from_utf8_lossy(&o.stderr);
        if !err.contains("cannot reach") {
            break o;
        }
        assert!(Instant::now() < deadline, "the server did not start again");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not verify"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("\"checkpoint\""),
        "nothing is signed over the edited log: {out}"
    );
}
