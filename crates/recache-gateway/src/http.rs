//! The HTTP server: the axum router on hyper's HTTP/1 connections, with the
//! limits `axum::serve` does not set (`docs/operations.md`, "Security"):
//!
//! - **Header timeout**: a client must send a request's headers within
//!   `server.header_timeout_ms` of connecting, or of the first byte of its
//!   next request, else the connection is closed: a connection that dribbles
//!   a header holds nothing for long. (hyper's own header timeout is not
//!   used: it also runs while a keep-alive connection waits, which would cut
//!   idle connections at the header timeout instead of the idle one.)
//! - **Body timeout**: the body must arrive within `server.body_timeout_ms`
//!   of the request's start; a late body fails the read, which the handlers
//!   answer with 408 ([`BodyTimedOut`]).
//! - **Idle timeout**: a keep-alive connection with no request for
//!   `server.idle_timeout_ms` is closed (after the response in progress, if any).
//! - **Concurrency**: at most `server.max_concurrent_requests` requests are
//!   served at once (a request holds its place until its response body
//!   ends); past it, 503 with `Retry-After: 1` at once, never a queue.
//!   `/health/*` and `/metrics` are not counted, so an orchestrator can
//!   still see a saturated gateway.
//!
//! The client's address is given to the handlers as axum's `ConnectInfo`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use recache_core::config::ServerConfig;
use recache_engine::error::ApiError;

/// The limits of [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent: usize,
}

impl Limits {
    pub fn from_config(c: &ServerConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            body_timeout: Duration::from_millis(c.body_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            max_concurrent: c.max_concurrent_requests,
        }
    }
}

/// The error a request body's read fails with past the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} ms")]
pub struct BodyTimedOut(pub u64);

impl BodyTimedOut {
    /// Whether a body read failed because of the body timeout (and after how long).
    pub fn find(e: &axum::Error) -> Option<u64> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cur {
            if let Some(t) = c.downcast_ref::<BodyTimedOut>() {
                return Some(t.0);
            }
            cur = c.source();
        }
        None
    }
}

/// Paths outside the concurrency limit.
fn unlimited(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics"
}

/// When a connection last started or finished a request, how many it is
/// serving, and since when it has been waiting for a request's headers.
struct Activity {
    born: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// 0: not waiting for headers; else 1 + ms since `born` when the wait began.
    head_since: AtomicU64,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    /// Bytes arrived: when no request is being served, a request's headers are on their way.
    fn bytes_in(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }
    /// How long the headers of a request have been awaited, if they are.
    fn head_wait(&self) -> Option<Duration> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t - 1))),
        }
    }
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.born.elapsed().saturating_sub(last))
    }
}

/// Marks a request done when dropped (its response body ended, or the client left).
struct Done(Arc<Activity>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The connection's socket, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_in();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body whose reads fail past a deadline.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    after_ms: u64,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimedOut(self.after_ms).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps `guard` alive until it ends (or is dropped).
struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    let permits = Arc::new(Semaphore::new(limits.max_concurrent));
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = signal_tx.closed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            limits,
            permits: permits.clone(),
            addr,
        };
        let signal = signal_tx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            conn.run(stream, signal).await;
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

struct Connection {
    app: Router,
    limits: Limits,
    permits: Arc<Semaphore>,
    addr: SocketAddr,
}

impl Connection {
    async fn run(self, stream: tokio::net::TcpStream, signal: watch::Sender<()>) {
        let Connection {
            app,
            limits,
            permits,
            addr,
        } = self;
        let activity = Arc::new(Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            // A new connection owes its first request's headers from the start.
            head_since: AtomicU64::new(1),
        });
        let act = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            act.in_flight.fetch_add(1, Ordering::Relaxed);
            act.head_since.store(0, Ordering::Relaxed);
            act.touch();
            let done = Done(act.clone());
            let app = app.clone();
            let permits = permits.clone();
            async move {
                let deadline = tokio::time::Instant::now() + limits.body_timeout;
                let after_ms = limits.body_timeout.as_millis() as u64;
                let (mut parts, body) = req.into_parts();
                parts.extensions.insert(ConnectInfo(addr));
                let body = TimedBody {
                    inner: body,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    after_ms,
                };
                let req = Request::from_parts(parts, Body::new(body));
                let permit = if unlimited(req.uri().path()) {
                    None
                } else {
                    match permits.try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => return Ok::<_, std::convert::Infallible>(ApiError::Overloaded.into_response()),
                    }
                };
                let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                let (parts, body) = resp.into_parts();
                let body = Body::new(Guarded {
                    inner: body,
                    _guard: (permit, done),
                });
                Ok(Response::from_parts(parts, body))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.header_read_timeout(None).keep_alive(true);
        let io = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        let mut signal_closed = std::pin::pin!(signal.closed());
        let tick = (limits.idle_timeout.min(limits.header_timeout) / 4)
            .clamp(Duration::from_millis(25), Duration::from_secs(2));
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(client = %addr, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = &mut signal_closed, if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(tick) => {
                    if activity.head_wait().is_some_and(|d| d >= limits.header_timeout) {
                        // Headers too slow: drop the connection (nothing is being served on it).
                        tracing::debug!(client = %addr, "request headers not received in time; connection closed");
                        break;
                    }
                    if !closing && activity.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}
