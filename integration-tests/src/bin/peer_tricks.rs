//! What a hostile process on the node does with a Workload API socket, as a
//! real separate process for the end-to-end tests:
//!
//! - `flood SOCKET N`: opens N connections and holds them idle; prints
//!   `ready K` (K opened) and waits until its stdin closes.
//! - `stall SOCKET N`: opens N connections and on each sends the HTTP/2
//!   preface and the first half of a HEADERS frame, then stalls; prints
//!   `ready K`; each stdin line `count` prints `closed C` (how many of them
//!   the agent has closed); exits when stdin closes.
//! - `handoff SOCKET`: opens a FetchX509SVID stream, reads the first
//!   response, hands the connection to a child process (`relay`) and exits.
//! - `exec SOCKET PROGRAM`: the same, but execs PROGRAM (a copy of this
//!   binary, so another executable) in place with the connection as stdin.
//! - `relay [--after-parent PID]`: reads the stream from stdin and prints
//!   `data` if the agent sends another response, `ended` if it ends the
//!   stream (with `--after-parent`: one sent after the process that handed
//!   the connection over has exited).
//!
//! Test support: exits non-zero with a message on unexpected failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use lanyard_integration_tests::h2raw;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("flood") => flood(&args[2], args[3].parse().unwrap()),
        Some("stall") => stall(&args[2], args[3].parse().unwrap()),
        Some("handoff") => handoff(&args[2], None).await,
        Some("exec") => handoff(&args[2], Some(&args[3])).await,
        Some("relay") => relay(
            args.get(2)
                .filter(|a| *a == "--after-parent")
                .and_then(|_| args.get(3))
                .map(|p| p.parse().unwrap()),
        ),
        _ => panic!("usage: peer_tricks flood|stall|handoff|exec|relay ..."),
    }
}

fn flood(socket: &str, n: usize) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn stall(socket: &str, n: usize) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // A HEADERS frame announcing 1,000 bytes on stream 1, 300 of them sent.
    let mut partial = PREFACE.to_vec();
    partial.extend_from_slice(&[0x00, 0x03, 0xe8, 0x01, 0x00, 0, 0, 0, 1]);
    partial.extend_from_slice(&[0u8; 300]);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(mut s) => {
                if s.write_all(&partial).is_ok() {
                    held.push(s);
                }
            }
            Err(_) => break,
        }
    }
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "count" {
            let closed = held
                .iter_mut()
                .map(|s| {
                    s.set_nonblocking(true).unwrap();
                    let mut buf = [0u8; 4096];
                    // The agent's SETTINGS may come first; EOF or an error
                    // after them means closed.
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => return true,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                            Err(_) => return true,
                        }
                    }
                })
                .filter(|closed| *closed)
                .count();
            println!("closed {closed}");
            std::io::stdout().flush().unwrap();
        }
    }
}

async fn handoff(socket: &str, program: Option<&str>) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    h2raw::send_request(
        &mut s,
        Some(b"localhost"),
        "/SpiffeWorkloadAPI/FetchX509SVID",
        &[("workload.spiffe.io", "true")],
        &[],
    )
    .await
    .unwrap();
    let first = h2raw::read_reply(&mut s, 1).await.unwrap();
    assert_eq!(first.messages.len(), 1, "no first response: {first:?}");
    println!("first");
    std::io::stdout().flush().unwrap();
    let std_stream = s.into_std().unwrap();
    std_stream.set_nonblocking(false).unwrap();
    let fd: OwnedFd = std_stream.into();
    match program {
        None => {
            // A child holds the connection; this process, the one that
            // connected, exits (deliberately without waiting for it).
            #[allow(clippy::zombie_processes)]
            Command::new(std::env::current_exe().unwrap())
                .args(["relay", "--after-parent", &std::process::id().to_string()])
                .stdin(Stdio::from(fd))
                .spawn()
                .unwrap();
        }
        Some(p) => {
            use std::os::unix::process::CommandExt;
            let err = Command::new(p).arg("relay").stdin(Stdio::from(fd)).exec();
            panic!("exec {p}: {err}");
        }
    }
}

/// What one frame from the agent means for the relay.
enum Seen {
    /// A response (DATA on the stream).
    Data,
    /// The stream or connection ended.
    Ended,
    /// Anything else (settings, pings, window updates, headers).
    Other,
}

fn read_frame(input: &mut impl Read, first: Option<u8>) -> Seen {
    let mut head = [0u8; 9];
    let from = match first {
        Some(b) => {
            head[0] = b;
            1
        }
        None => 0,
    };
    if input.read_exact(&mut head[from..]).is_err() {
        return Seen::Ended;
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let (kind, flags) = (head[3], head[4]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    if input.read_exact(&mut payload).is_err() {
        return Seen::Ended;
    }
    match kind {
        0x0 if stream == 1 && len > 0 => Seen::Data,
        0x1 if stream == 1 && flags & 0x1 != 0 => Seen::Ended,
        0x3 if stream == 1 => Seen::Ended,
        0x7 => Seen::Ended,
        _ => Seen::Other,
    }
}

fn relay(after_parent: Option<u32>) {
    // With `--after-parent`: the process that opened the stream is still
    // alive for a moment after handing the connection to this child, and
    // what the agent sent before it was gone was sent to it, legitimately.
    // Wait until it has exited (this process is re-parented), skip the
    // frames already received, then report what the agent does next.
    if let Some(parent) = after_parent {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::os::unix::process::parent_id() == parent && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let conn = {
        use std::os::fd::AsFd;
        let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
        std::os::unix::net::UnixStream::from(fd)
    };
    let mut input = &conn;
    loop {
        conn.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let first = match input.read(&mut b) {
            Ok(1) => b[0],
            Ok(_) => {
                println!("ended");
                return;
            }
            Err(_) => break,
        };
        conn.set_nonblocking(false).unwrap();
        if let Seen::Ended = read_frame(&mut input, Some(first)) {
            println!("ended");
            return;
        }
    }
    conn.set_nonblocking(false).unwrap();
    loop {
        match read_frame(&mut input, None) {
            Seen::Data => {
                println!("data");
                return;
            }
            Seen::Ended => {
                println!("ended");
                return;
            }
            Seen::Other => {}
        }
    }
}
