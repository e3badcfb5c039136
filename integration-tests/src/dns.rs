//! A tiny authoritative DNS server on loopback UDP for tests: A records
//! set by the test, a fixed TTL, NODATA for other types, NXDOMAIN for
//! unknown names, and a count of the queries it answered.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The running server; stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The question of a query: (name lowercased with a trailing dot, type,
/// end of the question section).
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        name.push_str(&String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        name.push('.');
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((name, qtype, i + 4))
}

impl TestDns {
    /// Starts on `127.0.0.1:0`; answers carry `ttl` seconds.
    pub async fn start(ttl: u32) -> Self {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS");
        let addr = sock.local_addr().expect("DNS address");
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (r, n) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let q = &buf[..len];
                let Some((name, qtype, end)) = question(q) else {
                    continue;
                };
                n.fetch_add(1, Ordering::Relaxed);
                let ips = r.lock().unwrap().get(&name).cloned();
                let answers: Vec<Ipv4Addr> = match (&ips, qtype) {
                    (Some(v), 1) => v.clone(),
                    _ => vec![],
                };
                let mut resp = Vec::with_capacity(512);
                resp.extend_from_slice(&q[..2]);
                // QR, AA, RD copied, RA; NXDOMAIN for unknown names.
                let rcode = if ips.is_none() { 3 } else { 0 };
                resp.extend_from_slice(&[0x84 | (q[2] & 1), 0x80 | rcode]);
                resp.extend_from_slice(&1u16.to_be_bytes());
                resp.extend_from_slice(&(answers.len() as u16).to_be_bytes());
                resp.extend_from_slice(&[0, 0, 0, 0]);
                resp.extend_from_slice(&q[12..end]);
                for ip in answers {
                    resp.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
                    resp.extend_from_slice(&ttl.to_be_bytes());
                    resp.extend_from_slice(&4u16.to_be_bytes());
                    resp.extend_from_slice(&ip.octets());
                }
                let _ = sock.send_to(&resp, peer).await;
            }
        });
        Self {
            addr,
            records,
            queries,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the A records of `name` (no trailing dot needed).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut n = name.to_ascii_lowercase();
        if !n.ends_with('.') {
            n.push('.');
        }
        self.records.lock().unwrap().insert(n, ips.to_vec());
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}
