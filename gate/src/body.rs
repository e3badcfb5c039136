//! Response bodies: one boxed type for everything the gateway answers, and
//! the counting body that streams an upstream's answer to the caller,
//! counts its bytes, ends it when the caller's credential is revoked, and
//! reports the call exactly once, when the answer ends, fails or the caller
//! goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// An error inside a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the gateway answers with.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// How a streamed answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Bytes passed to the caller.
    pub bytes: u64,
    /// Empty when it ended normally; else why not.
    pub error: String,
}

/// Called once when the body ends.
pub type OnEnd = Box<dyn FnOnce(Ended) + Send>;

/// Streams `inner`, counting; ends early (with an error the connection
/// carries to the caller) when `cut` completes.
pub struct Counted {
    inner: Body,
    bytes: u64,
    cut: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
    on_end: Option<OnEnd>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(
        inner: Body,
        cut: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
        on_end: OnEnd,
    ) -> Self {
        Self {
            inner,
            bytes: 0,
            cut,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, error: String) {
        if let Some(f) = self.on_end.take() {
            f(Ended {
                bytes: self.bytes,
                error,
            });
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        if let Some(cut) = me.cut.as_mut()
            && let Poll::Ready(why) = cut.as_mut().poll(cx)
        {
            me.cut = None;
            let msg = format!("stream cut: {why}");
            me.finish(msg.clone());
            return Poll::Ready(Some(Err(msg.into())));
        }
        match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    me.bytes += d.len() as u64;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                me.finish(format!("upstream body: {e}"));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                me.finish(String::new());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Dropped before its end: the caller went away mid-answer.
        self.finish("the caller disconnected before the end of the answer".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder() -> (Arc<Mutex<Vec<Ended>>>, OnEnd) {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        (seen, Box::new(move |e| s.lock().unwrap().push(e)))
    }

    #[tokio::test]
    async fn a_whole_answer_is_reported_once_with_its_size() {
        let (seen, on_end) = recorder();
        let b = Counted::new(full("hello"), None, on_end);
        let bytes = b.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Ended {
                bytes: 5,
                error: String::new()
            }]
        );
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_is_reported_once() {
        let (seen, on_end) = recorder();
        drop(Counted::new(full("hello"), None, on_end));
        let s = seen.lock().unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].error.contains("disconnected"));
    }

    #[tokio::test]
    async fn a_cut_ends_the_stream_with_its_reason() {
        let (seen, on_end) = recorder();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let pending = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >())
        .boxed_unsync();
        let b = Counted::new(
            pending,
            Some(Box::pin(async move {
                let _ = rx.await;
                "credential revoked".to_owned()
            })),
            on_end,
        );
        let _ = tx.send(());
        let err = b.collect().await.err().unwrap();
        assert!(err.to_string().contains("credential revoked"));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Longer than allowed.
    TooLarge(usize),
    /// Broken off.
    Broken(String),
}

/// Reads `body` whole, at most `max` bytes.
pub async fn read_limited<B>(mut body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ReadError::TooLarge(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
