//! A tower layer counting gRPC calls by method and the status the
//! response starts with (`grpc-status` in its headers, as every refusal
//! and trailers-only answer has; `OK` otherwise: the call was answered or
//! its stream opened).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::{CounterFamily, labels};

const CODES: [&str; 17] = [
    "OK",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The name of a numeric gRPC status code.
pub fn code_name(code: &str) -> &'static str {
    code.parse::<usize>()
        .ok()
        .and_then(|c| CODES.get(c).copied())
        .unwrap_or("Unknown")
}

/// Counts calls into `calls` (labels `method`, `code`).
#[derive(Clone)]
pub struct CallsLayer {
    calls: CounterFamily,
}

impl CallsLayer {
    /// A layer recording into `calls`.
    pub fn new(calls: CounterFamily) -> Self {
        Self { calls }
    }
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Calls {
            inner,
            calls: self.calls.clone(),
        }
    }
}

/// The service [`CallsLayer`] wraps.
#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    calls: CounterFamily,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Calls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let fut = self.inner.call(req);
        let calls = self.calls.clone();
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name),
                Err(_) => "Unknown",
            };
            // Paths no service knows are answered Unimplemented; they are
            // counted under one label, so garbage cannot grow the series.
            let method = if code == "Unimplemented" || path.len() > 128 {
                "unknown"
            } else {
                path.as_str()
            };
            calls
                .get_or_create(&labels(&[("method", method), ("code", code)]))
                .inc();
            r
        })
    }
}
