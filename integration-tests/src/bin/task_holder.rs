//! A second workload process for the task end-to-end tests:
//!
//! - `begin SOCKET TYPE [TOOL...]`: begins a task (TTL 5 minutes), prints
//!   `task ID`, then `svids HINT,HINT...` (its FetchX509SVID answer), and
//!   holds the task until its stdin closes; then exits.
//! - `fetch SOCKET`: prints `svids HINT,...` for this process's
//!   FetchX509SVID answer, or `error CODE MESSAGE`.
//! - `end SOCKET ID`: tries to end task ID; prints `ok` or `error CODE`.
//! - `list SOCKET`: prints `tasks N` (this process's tasks).
//! - `hold SOCKET TYPE [TOOL...]`: begins a task with a JWT for audience
//!   `tools`, prints `task ID`, `chain HEX,HEX...` (its X.509-SVID chain)
//!   and `jwt TOKEN`, then follows its FetchX509SVID stream, printing
//!   `stream ok` per message and `stream error CODE MESSAGE` when it ends;
//!   meanwhile each stdin line `fetch` prints a fresh fetch result (as the
//!   `fetch` mode does), each stdin line `child` starts a child process
//!   (fork and exec) that fetches and prints `child svids ...` or
//!   `child error ...`, and each line `grandchild FILE` double-forks: a
//!   child starts a grandchild and exits at once, the grandchild waits
//!   until it is re-parented, then writes its fetch result to FILE. Exits
//!   when stdin closes. `HOLD_SPIFFE_ID` picks the identity to begin the
//!   task under.
//! - `detach SOCKET FILE`: the middle of a double fork (starts `orphan`
//!   and exits).
//! - `orphan SOCKET FILE PPID`: waits until its parent is no longer PPID,
//!   then writes its fetch result to FILE.
//!
//! Test support: exits non-zero with a message on unexpected failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};

use lanyard_proto::task::BeginTaskRequest;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

async fn fetch(socket: &str) -> String {
    let ch = lanyard_uds::unix_channel(std::path::Path::new(socket)).unwrap();
    let mut c = SpiffeWorkloadApiClient::new(ch);
    let reply = async {
        let mut s = c
            .fetch_x509svid(header(X509svidRequest {}))
            .await?
            .into_inner();
        s.message().await
    }
    .await;
    match reply {
        Ok(Some(r)) => format!(
            "svids {}",
            r.svids
                .iter()
                .map(|s| if s.hint.is_empty() {
                    s.spiffe_id.clone()
                } else {
                    s.hint.clone()
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
        Ok(None) => "error ended".into(),
        Err(s) => format!("error {:?} {}", s.code(), s.message()),
    }
}

async fn hold(socket: &str, task_type: &str, tools: Vec<String>) {
    let ch = lanyard_uds::unix_channel(std::path::Path::new(socket)).unwrap();
    let r = TaskIdentityClient::new(ch)
        .begin_task(header(BeginTaskRequest {
            spiffe_id: std::env::var("HOLD_SPIFFE_ID").unwrap_or_default(),
            task_type: task_type.to_owned(),
            tools,
            ttl_seconds: 300,
            jwt_audiences: vec!["tools".into()],
            on_behalf_of: std::env::var("HOLD_ON_BEHALF_OF").unwrap_or_default(),
            intent: std::env::var("HOLD_INTENT").unwrap_or_default(),
            ..Default::default()
        }))
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(s) => {
            println!("error {:?} {}", s.code(), s.message());
            return;
        }
    };
    let chain = lanyard_core::x509::der_chain_split(&r.x509_svid.unwrap().x509_svid).unwrap();
    println!("task {}", r.task_id);
    println!(
        "chain {}",
        chain
            .iter()
            .map(|c| hex_str(c))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("jwt {}", r.jwt_svid.map(|j| j.svid).unwrap_or_default());
    std::io::stdout().flush().unwrap();
    let stream_socket = socket.to_owned();
    tokio::spawn(async move {
        let ch = lanyard_uds::unix_channel(std::path::Path::new(&stream_socket)).unwrap();
        let mut c = SpiffeWorkloadApiClient::new(ch);
        let outcome = async {
            let mut s = c
                .fetch_x509svid(header(X509svidRequest {}))
                .await?
                .into_inner();
            while s.message().await?.is_some() {
                println!("stream ok");
                std::io::stdout().flush().unwrap();
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        match outcome {
            Ok(()) => println!("stream error ended"),
            Err(s) => println!("stream error {:?} {}", s.code(), s.message()),
        }
        std::io::stdout().flush().unwrap();
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let me = std::env::current_exe().unwrap();
    while let Some(line) = rx.recv().await {
        let line = line.trim();
        if line == "fetch" {
            println!("{}", fetch(socket).await);
        } else if line == "child" {
            let out = std::process::Command::new(&me)
                .args(["fetch", socket])
                .output()
                .unwrap();
            println!("child {}", String::from_utf8_lossy(&out.stdout).trim());
        } else if let Some(file) = line.strip_prefix("grandchild ") {
            let status = std::process::Command::new(&me)
                .args(["detach", socket, file])
                .status()
                .unwrap();
            println!("grandchild started {status}");
        }
        std::io::stdout().flush().unwrap();
    }
}

fn hex_str(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("begin") => {
            let ch = lanyard_uds::unix_channel(std::path::Path::new(&args[2])).unwrap();
            let r = TaskIdentityClient::new(ch)
                .begin_task(header(BeginTaskRequest {
                    task_type: args[3].clone(),
                    tools: args[4..].to_vec(),
                    ttl_seconds: 300,
                    ..Default::default()
                }))
                .await;
            match r {
                Ok(r) => println!("task {}", r.into_inner().task_id),
                Err(s) => {
                    println!("error {:?} {}", s.code(), s.message());
                    return;
                }
            }
            println!("{}", fetch(&args[2]).await);
            std::io::stdout().flush().unwrap();
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        }
        Some("fetch") => println!("{}", fetch(&args[2]).await),
        Some("detach") => {
            // Started and left behind: its parent (this process) exits
            // without waiting, so it is re-parented.
            #[allow(clippy::zombie_processes)]
            let _orphan = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "orphan",
                    &args[2],
                    &args[3],
                    &std::process::id().to_string(),
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
        }
        Some("orphan") => {
            let parent: u32 = args[4].parse().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::os::unix::process::parent_id() == parent {
                assert!(std::time::Instant::now() < deadline, "never re-parented");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let result = fetch(&args[2]).await;
            let tmp = format!("{}.tmp", args[3]);
            std::fs::write(&tmp, format!("{result}\n")).unwrap();
            std::fs::rename(&tmp, &args[3]).unwrap();
        }
        Some("hold") => hold(&args[2], &args[3], args[4..].to_vec()).await,
        Some("end") => {
            let ch = lanyard_uds::unix_channel(std::path::Path::new(&args[2])).unwrap();
            let r = TaskIdentityClient::new(ch)
                .end_task(header(lanyard_proto::task::EndTaskRequest {
                    task_id: args[3].clone(),
                }))
                .await;
            match r {
                Ok(_) => println!("ok"),
                Err(s) => println!("error {:?}", s.code()),
            }
        }
        Some("list") => {
            let ch = lanyard_uds::unix_channel(std::path::Path::new(&args[2])).unwrap();
            let r = TaskIdentityClient::new(ch)
                .list_tasks(header(lanyard_proto::task::ListTasksRequest {}))
                .await
                .unwrap();
            println!("tasks {}", r.into_inner().tasks.len());
        }
        _ => panic!("usage: task_holder begin|fetch|end|list SOCKET ..."),
    }
}
