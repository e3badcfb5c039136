//! The I/O side of the `:authority` rewrite ([`crate::authority`]): an
//! accepted unix stream whose client-to-server bytes go through a
//! [`Rewriter`], with two defences against a local peer that connects and
//! stalls:
//!
//! - **A header-read deadline.** The client preface, and every frame header
//!   and header block after it, must be complete within the deadline
//!   ([`DEFAULT_HEADER_TIMEOUT`]) of their first byte (of the connection,
//!   for the preface); otherwise the connection ends with `TimedOut`. A
//!   peer dribbling a byte at a time does not reset it. Streams that are
//!   merely quiet hold nothing here (HTTP/2 keepalive on the server ends
//!   peers that stop answering).
//! - **A budget of buffered bytes** shared by the shims of one listener
//!   ([`HeaderBudget`]): bytes held for incomplete
//!   frames and header blocks are counted, and a connection whose next
//!   read would exceed the budget ends with an error instead of growing
//!   memory. Buffers are released as soon as a block is complete, so an
//!   idle connection holds none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::authority::{MAX_BLOCK, Rewriter};

/// How long a peer has to complete the preface, a frame header or a
/// header block once started.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default budget of bytes all shims of the process may hold.
pub const DEFAULT_BUFFER_BUDGET: usize = 64 * 1024 * 1024;
/// Size of one read from the socket into the shim's buffer (header frames
/// are small; DATA bypasses it).
const READ_CHUNK: usize = 4 * 1024;
/// Frame header length.
const FRAME_HEADER: usize = 9;

/// The bytes held for incomplete HTTP/2 frames and header blocks by the
/// shims of one listener, and their bound. Shared by the listener's
/// connections (an `Arc`), read by its metric.
#[derive(Debug)]
pub struct HeaderBudget {
    held: AtomicUsize,
    max: usize,
}

impl HeaderBudget {
    /// A budget of `max` bytes (at least one read buffer).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            max: max.max(READ_CHUNK),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// What a listener's shims are held to.
#[derive(Debug, Clone)]
pub struct ShimLimits {
    /// Deadline of the preface, frame headers and header blocks.
    pub header_timeout: Duration,
    /// The bytes all of them may hold.
    pub budget: Arc<HeaderBudget>,
}

impl Default for ShimLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            budget: HeaderBudget::new(DEFAULT_BUFFER_BUDGET),
        }
    }
}

/// An accepted unix stream whose client-to-server HTTP/2 bytes go through a
/// [`Rewriter`]; writes pass straight through.
pub struct AuthorityShim<IO> {
    io: IO,
    rewriter: Rewriter,
    input: BytesMut,
    output: BytesMut,
    /// Read buffer, present only while the shim is reading something it
    /// must look at.
    scratch: Option<Box<[u8]>>,
    eof: bool,
    /// Bytes this shim counts in its budget.
    held: usize,
    budget: Arc<HeaderBudget>,
    header_timeout: Duration,
    /// When the current preface, frame header or header block must be
    /// complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// When the connection was accepted (the preface's deadline runs from
    /// here).
    accepted: Instant,
}

impl<IO> std::fmt::Debug for AuthorityShim<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityShim")
            .field("rewriter", &self.rewriter)
            .field("held", &self.held)
            .finish()
    }
}

impl<IO> AuthorityShim<IO> {
    /// Wraps an accepted stream (call inside the runtime), held to
    /// `limits`.
    pub fn new(io: IO, limits: &ShimLimits) -> Self {
        Self {
            io,
            rewriter: Rewriter::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            scratch: None,
            eof: false,
            held: 0,
            budget: limits.budget.clone(),
            header_timeout: limits.header_timeout,
            deadline: None,
            accepted: Instant::now(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Releases the buffers when nothing is pending in them.
    fn release_idle(&mut self) {
        if self.input.is_empty() {
            if self.input.capacity() > 0 {
                self.input = BytesMut::new();
            }
            if self.rewriter.held() == 0 {
                self.scratch = None;
            }
        }
        if self.output.is_empty() && self.output.capacity() > 0 {
            self.output = BytesMut::new();
        }
    }

    /// Counts what the buffers hold now. Errors when growing would exceed
    /// the budget of the listener it belongs to.
    fn account(&mut self) -> io::Result<()> {
        let now = self.input.capacity()
            + self.output.capacity()
            + self.rewriter.held()
            + self.scratch.as_ref().map_or(0, |s| s.len());
        if now > self.held {
            let grow = now - self.held;
            let total = self.budget.held.fetch_add(grow, Ordering::Relaxed) + grow;
            self.held = now;
            if total > self.budget.max {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "the HTTP/2 buffer budget of the socket is exhausted; connection closed",
                ));
            }
        } else {
            self.budget
                .held
                .fetch_sub(self.held - now, Ordering::Relaxed);
            self.held = now;
        }
        Ok(())
    }

    /// Arms or disarms the header-read deadline for the current state;
    /// with `cx`, an armed deadline that passed is an error (and one not
    /// yet passed will wake the task).
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.rewriter.mid_header(!self.input.is_empty()) {
            self.deadline = None;
            return Ok(());
        }
        let timeout = self.header_timeout;
        // The preface's deadline runs from the accept; a frame's or a
        // block's from when it was found incomplete.
        let start = if self.rewriter.in_preface() {
            self.accepted
        } else {
            Instant::now()
        };
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(start + timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP/2 header not completed in time; connection closed",
            ));
        }
        Ok(())
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityShim<IO>
{
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO> Drop for AuthorityShim<IO> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityShim<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = this.rewriter.progress();
        let r = this.read_frames(cx, buf);
        // A frame or block completed: whatever is incomplete now gets a
        // deadline of its own (CONTINUATION frames inside a block do not
        // count, so a block dribbled frame by frame keeps its first one).
        if this.rewriter.progress() != before {
            this.deadline = None;
        }
        this.release_idle();
        let accounted = this.account();
        match r {
            Poll::Ready(Ok(())) => Poll::Ready(accounted),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                accounted?;
                this.check_deadline(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AuthorityShim<IO> {
    fn read_frames(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.output.is_empty() {
                let n = self.output.len().min(buf.remaining());
                buf.put_slice(&self.output[..n]);
                self.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            // Bytes that need no inspection go straight into the caller's
            // buffer (DATA frames, or everything once transparent).
            let budget = self.rewriter.direct_budget();
            if self.input.is_empty() && budget > 0 && buf.remaining() > 0 {
                let limit = budget.min(buf.remaining());
                let slot = buf.initialize_unfilled_to(limit);
                let mut sub = ReadBuf::new(slot);
                std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                if n == 0 {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                buf.advance(n);
                self.rewriter.consumed_directly(n);
                return Poll::Ready(Ok(()));
            }
            if !self.input.is_empty() {
                let before = (self.input.len(), self.output.len());
                self.rewriter.process(&mut self.input, &mut self.output)?;
                if !self.output.is_empty() {
                    continue;
                }
                let progressed = (self.input.len(), self.output.len()) != before;
                if progressed && self.rewriter.direct_budget() > 0 && self.input.is_empty() {
                    continue;
                }
            }
            if self.input.len() > MAX_BLOCK + FRAME_HEADER {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 header block too large",
                )));
            }
            // Counted before the read: a flood of stalled peers is refused
            // here instead of each growing its buffers.
            if self.scratch.is_none() {
                self.scratch = Some(vec![0u8; READ_CHUNK].into_boxed_slice());
                self.account()?;
            }
            let Some(scratch) = self.scratch.as_mut() else {
                return Poll::Ready(Err(io::Error::other("shim read buffer missing")));
            };
            let mut rb = ReadBuf::new(&mut scratch[..]);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                self.eof = true;
                // An incomplete frame is left for the server to notice the
                // truncated connection.
                continue;
            }
            self.input.extend_from_slice(rb.filled());
            self.rewriter.process(&mut self.input, &mut self.output)?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityShim<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A HEADERS frame header announcing `len` bytes, without END_HEADERS.
    fn headers_start(len: usize) -> Vec<u8> {
        let mut v = (len as u32).to_be_bytes()[1..].to_vec();
        v.extend_from_slice(&[0x1, 0x0, 0, 0, 0, 1]);
        v
    }

    /// Reads until EOF or an error (within 10 s: no deadline is a failure).
    async fn read_all(shim: &mut AuthorityShim<UnixStream>, out: &mut Vec<u8>) -> io::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), read_until_end(shim, out))
            .await
            .expect("the shim ended the stalled connection")
    }

    async fn read_until_end(
        shim: &mut AuthorityShim<UnixStream>,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let n = shim.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn stalled_peers_time_out_and_the_budget_bounds_what_they_hold() {
        let timeout = Duration::from_millis(300);
        let limits = ShimLimits {
            header_timeout: timeout,
            budget: HeaderBudget::new(DEFAULT_BUFFER_BUDGET),
        };
        let buffered_bytes = || limits.budget.held();
        // Nothing sent at all: the preface's deadline ends it.
        let (client, server) = UnixStream::pair().unwrap();
        let mut shim = AuthorityShim::new(server, &limits);
        let e = read_all(&mut shim, &mut vec![]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(shim);

        // The preface and half a header frame, then a stall: held while
        // pending, ended by the deadline, released after.
        let floor = buffered_bytes();
        let (mut client2, server) = UnixStream::pair().unwrap();
        let mut shim = AuthorityShim::new(server, &limits);
        client2.write_all(PREFACE).await.unwrap();
        client2.write_all(&headers_start(1000)).await.unwrap();
        client2.write_all(&[0u8; 400]).await.unwrap();
        let mut seen = vec![];
        let started = Instant::now();
        let e = read_all(&mut shim, &mut seen).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() >= timeout / 2);
        assert_eq!(seen, PREFACE);
        assert!(buffered_bytes() > floor);
        drop(shim);
        assert_eq!(buffered_bytes(), floor);

        // A peer that keeps dribbling bytes of one frame does not reset
        // the deadline.
        let (mut client3, server) = UnixStream::pair().unwrap();
        let mut shim = AuthorityShim::new(server, &limits);
        client3.write_all(PREFACE).await.unwrap();
        client3.write_all(&headers_start(1000)).await.unwrap();
        let dribble = tokio::spawn(async move {
            for _ in 0..40 {
                if client3.write_all(&[0u8]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        let e = read_all(&mut shim, &mut vec![]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(shim);
        dribble.abort();

        // A complete exchange holds nothing once the frames are through,
        // and a quiet connection is not timed out.
        let (mut client4, server) = UnixStream::pair().unwrap();
        let mut shim = AuthorityShim::new(server, &limits);
        let settings = [0u8, 0, 0, 0x4, 0, 0, 0, 0, 0];
        client4.write_all(PREFACE).await.unwrap();
        client4.write_all(&settings).await.unwrap();
        let mut got = vec![0u8; PREFACE.len() + settings.len()];
        shim.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[PREFACE.len()..], &settings[..]);
        assert_eq!(shim.held, 0);
        let quiet = tokio::time::timeout(timeout * 3, shim.read(&mut [0u8; 16])).await;
        assert!(quiet.is_err(), "a quiet connection was ended: {quiet:?}");

        // Over the budget: the connection that would exceed it is ended,
        // and the bytes come back.
        let small = ShimLimits {
            header_timeout: Duration::from_secs(30),
            budget: HeaderBudget::new(READ_CHUNK * 2),
        };
        let (mut client5, server) = UnixStream::pair().unwrap();
        let mut shim5 = AuthorityShim::new(server, &small);
        client5.write_all(PREFACE).await.unwrap();
        client5.write_all(&headers_start(60_000)).await.unwrap();
        client5.write_all(&vec![0u8; 40_000]).await.unwrap();
        let e = read_all(&mut shim5, &mut vec![]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{e}");
        drop(shim5);
        assert_eq!(small.budget.held(), 0);
        drop(shim);
        assert_eq!(buffered_bytes(), floor);
        drop((client, client2, client4, client5));
    }
}
