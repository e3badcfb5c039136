//! Connection limits: a global cap and a cap per caller, so that one local
//! process (or one network peer) holding thousands of idle connections
//! cannot take the descriptors every other caller needs.
//!
//! A [`ConnPermit`] is held by the connection for as long as it is open and
//! gives its slot back when dropped. Over a limit the listener accepts the
//! connection and closes it at once, so the kernel's backlog keeps draining
//! and callers under their limit are still served.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Every connection slot is taken.
    #[error("connection limit reached ({0} open)")]
    Total(usize),
    /// This caller holds its share already.
    #[error("per-caller connection limit reached ({0} open)")]
    PerCaller(usize),
}

struct Counts<K> {
    total: usize,
    by_key: HashMap<K, usize>,
}

/// Counts open connections, overall and per key.
pub struct ConnLimiter<K> {
    max_total: usize,
    max_per_key: usize,
    counts: Arc<Mutex<Counts<K>>>,
}

impl<K> Clone for ConnLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            max_total: self.max_total,
            max_per_key: self.max_per_key,
            counts: self.counts.clone(),
        }
    }
}

impl<K> std::fmt::Debug for ConnLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("max_total", &self.max_total)
            .field("max_per_key", &self.max_per_key)
            .finish()
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> ConnLimiter<K> {
    /// A limiter allowing `max_total` connections, `max_per_key` per key.
    pub fn new(max_total: usize, max_per_key: usize) -> Self {
        Self {
            max_total,
            max_per_key,
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                by_key: HashMap::new(),
            })),
        }
    }

    /// Takes a slot for a connection of `key`, if both limits allow.
    pub fn try_acquire(&self, key: K) -> Result<ConnPermit<K>, LimitError> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(LimitError::Total(c.total));
        }
        let n = c.by_key.entry(key.clone()).or_insert(0);
        if *n >= self.max_per_key {
            return Err(LimitError::PerCaller(*n));
        }
        *n += 1;
        c.total += 1;
        Ok(ConnPermit {
            key: Some(key),
            counts: self.counts.clone(),
        })
    }

    /// Open connections in total.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One connection's slot; released on drop.
pub struct ConnPermit<K: Eq + Hash> {
    key: Option<K>,
    counts: Arc<Mutex<Counts<K>>>,
}

impl<K: Eq + Hash> std::fmt::Debug for ConnPermit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnPermit")
    }
}

impl<K: Eq + Hash> Drop for ConnPermit<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.by_key.remove(&key);
            }
        }
    }
}

/// A stream that holds a connection slot for as long as it lives.
pub struct Limited<IO, K: Eq + Hash> {
    io: IO,
    _permit: ConnPermit<K>,
}

impl<IO, K: Eq + Hash> Limited<IO, K> {
    /// Ties `permit` to `io`.
    pub fn new(io: IO, permit: ConnPermit<K>) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }
}

impl<IO: tonic::transport::server::Connected, K: Eq + Hash> tonic::transport::server::Connected
    for Limited<IO, K>
{
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin, K: Eq + Hash + Unpin> AsyncRead for Limited<IO, K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin, K: Eq + Hash + Unpin> AsyncWrite for Limited<IO, K> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The backoff of a listener whose accepts fail (EMFILE, ENFILE,
/// ENOBUFS...): it sleeps 5 ms, 10 ms, ... up to 1 s instead of spinning,
/// and starts again from 5 ms after a success.
pub fn accept_backoff() -> lanyard_core::backoff::Backoff {
    lanyard_core::backoff::Backoff::new(Duration::from_millis(5), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_key_and_releases_on_drop() {
        let l = ConnLimiter::new(3, 2);
        let a1 = l.try_acquire("a").unwrap();
        let _a2 = l.try_acquire("a").unwrap();
        assert_eq!(l.try_acquire("a").unwrap_err(), LimitError::PerCaller(2));
        let _b1 = l.try_acquire("b").unwrap();
        assert_eq!(l.try_acquire("c").unwrap_err(), LimitError::Total(3));
        drop(a1);
        assert_eq!(l.open(), 2);
        let _c = l.try_acquire("c").unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn accept_backoff_grows_and_resets() {
        let mut b = accept_backoff();
        let first = b.failed();
        let mut last = first;
        for _ in 0..20 {
            last = b.failed();
        }
        assert!(first < last && last <= Duration::from_secs(1));
        b.succeeded();
        assert_eq!(b.failed(), first);
    }
}
