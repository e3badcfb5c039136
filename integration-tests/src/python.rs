//! A throwaway Python virtual environment with `grpcio` from PyPI, for the
//! tests that talk to the agent with a client that is not Rust.
//!
//! Created on first use under the cargo target directory (pinned versions
//! from `examples/python/requirements.txt`) and reused by later runs; a
//! file lock keeps parallel tests from building it twice. A machine without
//! `python3` or without access to PyPI fails these tests with the reason:
//! they never skip quietly.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// The Python interpreter of a venv under `target_tmp` with the example
/// requirements installed.
pub fn python(target_tmp: &Path) -> PathBuf {
    let venv = target_tmp.join("lanyard-pyenv");
    let py = venv.join("bin/python3");
    let reqs = repo_root().join("examples/python/requirements.txt");
    let stamp = venv.join("requirements.installed");
    std::fs::create_dir_all(target_tmp).expect("target tmp dir");
    let lock = File::create(target_tmp.join("lanyard-pyenv.lock")).expect("lock file");
    lock.lock().expect("lock the venv");
    let wanted = std::fs::read_to_string(&reqs).expect("read requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && py.exists() {
        return py;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (is python3 with venv installed?)",
    );
    run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&reqs),
        "pip install -r examples/python/requirements.txt (needs PyPI)",
    );
    std::fs::write(&stamp, wanted).expect("write stamp");
    py
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
