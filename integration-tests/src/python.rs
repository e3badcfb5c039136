//! A throwaway Python virtual environment with `grpcio` from PyPI, for the
//! tests that talk to the agent with a client that is not Rust.
//!
//! Created on first use under the cargo target directory (pinned versions
//! from `examples/python/requirements.txt`, and Lanyard's own Python
//! package from `sdk/python`, reinstalled when its sources change) and
//! reused by later runs; a file lock keeps parallel tests from building it
//! twice. A machine without
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
        install_sdk(&venv, &py);
        return py;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (is python3 with venv installed?)",
    );
    run(
        pip_install(&py).arg("-r").arg(&reqs),
        "pip install -r examples/python/requirements.txt (needs PyPI)",
    );
    std::fs::write(&stamp, wanted).expect("write stamp");
    install_sdk(&venv, &py);
    py
}

/// `PY -m pip install --quiet`, without the version nag.
fn pip_install(py: &Path) -> Command {
    let mut c = Command::new(py);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    c
}

/// Installs `sdk/python` into the venv unless the same sources already are.
fn install_sdk(venv: &Path, py: &Path) {
    let sdk = repo_root().join("sdk/python");
    let stamp = venv.join("sdk.installed");
    let wanted = format!(
        "{:016x}",
        digest_tree(
            &sdk.join("src"),
            fnv(
                FNV_START,
                &std::fs::read(sdk.join("pyproject.toml")).expect("sdk/python/pyproject.toml")
            )
        )
    );
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return;
    }
    // An isolated copy: setuptools builds in the source tree otherwise.
    let build = venv.join("sdk-src");
    let _ = std::fs::remove_dir_all(&build);
    run(
        Command::new("cp").arg("-r").arg(&sdk).arg(&build),
        "copy sdk/python",
    );
    let _ = std::fs::remove_dir_all(build.join("build"));
    run(
        pip_install(py)
            .args(["--no-deps", "--no-build-isolation", "--force-reinstall"])
            .arg(&build),
        "pip install sdk/python",
    );
    std::fs::write(&stamp, wanted).expect("write sdk stamp");
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A digest of every file under `dir` (names and contents, in order).
fn digest_tree(dir: &Path, mut h: u64) -> u64 {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read sdk dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| !p.ends_with("__pycache__") && !p.to_string_lossy().ends_with(".egg-info"))
        .collect();
    entries.sort();
    for p in entries {
        h = fnv(h, p.to_string_lossy().as_bytes());
        if p.is_dir() {
            h = digest_tree(&p, h);
        } else {
            h = fnv(h, &std::fs::read(&p).expect("read sdk file"));
        }
    }
    h
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
