//! The Workload API listener: accepted unix connections carry the caller's
//! kernel credentials and the moment they were accepted (in the same clock
//! as process start times), so attestation can tell a process that was
//! there when it connected from one that reused its PID later.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// Clock ticks per second of /proc/PID/stat start times (`USER_HZ`, 100 on
/// every Linux ABI).
pub const USER_HZ: u64 = 100;

/// What the Workload API knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Unique per accepted connection (for per-connection caches).
    pub id: u64,
    /// `SO_PEERCRED` of the caller.
    pub cred: Option<UCred>,
    /// Time since boot when the connection was accepted, in `USER_HZ` ticks.
    pub accepted_ticks: Option<u64>,
}

/// An accepted Workload API connection.
pub struct WorkloadConn {
    inner: UnixStream,
    info: ConnInfo,
}

impl Connected for WorkloadConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Time since boot in `USER_HZ` ticks, from /proc/uptime (the clock process
/// start times are counted in).
pub fn uptime_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime_ticks(&text)
}

fn parse_uptime_ticks(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, "0"));
    let secs: u64 = secs.parse().ok()?;
    let hundredths: u64 = format!("{frac:0<2}").get(..2)?.parse().ok()?;
    Some(secs * USER_HZ + hundredths * USER_HZ / 100)
}

/// Accepted connections with their [`ConnInfo`].
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<WorkloadConn>> {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    futures_util::stream::unfold(listener, |listener| async move {
        let item = match listener.accept().await {
            Ok((stream, _)) => {
                let accepted_ticks = uptime_ticks();
                let cred = stream.peer_cred().ok();
                Ok(WorkloadConn {
                    inner: stream,
                    info: ConnInfo {
                        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        cred,
                        accepted_ticks,
                    },
                })
            }
            Err(e) => Err(e),
        };
        Some((item, listener))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uptime() {
        assert_eq!(parse_uptime_ticks("12345.67 54321.00\n"), Some(1_234_567));
        assert_eq!(parse_uptime_ticks("5.1 1.0"), Some(510));
        assert_eq!(parse_uptime_ticks("garbage"), None);
        assert!(uptime_ticks().unwrap() > 0);
    }
}
