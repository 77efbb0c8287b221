//! The server's accept loop: a cap on connections, a header read timeout and an idle
//! keep-alive timeout, which `axum::serve` does not offer.
//!
//! Each connection is served by hyper's HTTP/1 connection. hyper's own
//! `header_read_timeout` starts when a connection goes idle, so it cannot tell a slow request
//! head from a keep-alive connection waiting for its next request; the two timeouts are kept
//! here instead, from what the connection reads and whether a request is under way:
//!
//! - from the accept, or from the first byte after an idle time, the request head must be
//!   complete within the header read timeout;
//! - between requests, the next one must start within the idle timeout;
//! - while a request is under way, neither applies (the request timeout of the guard does).
//!
//! A request changes the phase three times; none of them wakes the connection's task or
//! touches the timer wheel, which would cost a measurable share of a request. The task's one
//! timer is armed for the current deadline, but never further out than the shorter of the two
//! timeouts: a deadline that appears later (a new phase) is never earlier than that, so the
//! timer fires in time to see it and is armed again.
//!
//! At the cap, the connection idle the longest (no request under way: waiting for its next
//! request, or for its first) is closed to make room, as nginx does with its keep-alive
//! connections; when every connection has a request under way, accepting waits for one to end.
//! So connections that send nothing cannot lock other clients out.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::Service;

use crate::guard::Guard;

/// The connection limits of a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (from the accept, or from its first byte after an idle time).
    Head,
    /// Waiting for the next request after an answer.
    Idle,
    /// A request is under way.
    Busy,
}

/// What the accept loop, the connection's task, its reads and its requests share.
#[derive(Debug)]
struct Conn {
    /// The phase and when it began.
    phase: Mutex<(Phase, Instant)>,
    /// Requests under way (HTTP/1: at most one, but counted to stay right).
    in_flight: AtomicUsize,
    /// Set when the accept loop closes this connection to make room.
    evicted: AtomicBool,
    /// Wakes the connection's task when the accept loop evicts it.
    wake: Notify,
}

impl Conn {
    fn new() -> Self {
        Self {
            phase: Mutex::new((Phase::Head, Instant::now())),
            in_flight: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn phase(&self) -> (Phase, Instant) {
        *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_phase(&self, phase: Phase) {
        let mut current = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A busy connection has no deadline: its start time is never read.
        let since = match phase {
            Phase::Busy => current.1,
            Phase::Head | Phase::Idle => Instant::now(),
        };
        *current = (phase, since);
    }

    /// Bytes arrived: after an idle time, they begin the next request head.
    fn on_read(&self) {
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if phase.0 == Phase::Idle {
            *phase = (Phase::Head, Instant::now());
        }
    }

    /// When the connection must close unless its phase changes first; `None` while busy.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.phase() {
            (Phase::Head, since) => Some(since + limits.header_read_timeout),
            (Phase::Idle, since) => Some(since + limits.idle_timeout),
            (Phase::Busy, _) => None,
        }
    }
}

/// Counts a request under way while it lives.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Self {
        if conn.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            conn.set_phase(Phase::Busy);
        }
        Self(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.set_phase(Phase::Idle);
        }
    }
}

/// A TCP stream that tells its connection when bytes arrive.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The open connections, by accept number.
type Registry = Arc<Mutex<HashMap<u64, Arc<Conn>>>>;

/// Serves `guard` (the routes behind their checks) on `listener` until `shutdown` resolves, then stops accepting, lets the
/// requests under way finish, and returns once every connection has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    guard: Guard,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let open: Registry = Arc::default();
    let (stop, stopped) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &slots, &open) => accepted,
        };
        let (stream, permit) = accepted;
        // Answers go out at once instead of waiting for the peer's acknowledgement (Nagle).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on an accepted connection");
        }
        next += 1;
        let conn = Arc::new(Conn::new());
        open.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(next, conn.clone());
        let task = run_connection(stream, conn, guard.clone(), limits, stopped.clone());
        let open = open.clone();
        let id = next;
        tokio::spawn(async move {
            task.await;
            open.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    drop(stopped);
    // Every connection's task holds its receiver: tell them all, then wait for the last one.
    let _ = stop.send(());
    stop.closed().await;
}

/// The next connection and its slot. At the cap, closes the connection idle the longest to
/// make room, or waits for a slot when every connection has a request under way.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    open: &Registry,
) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        let permit = slot(slots, open).await;
        match listener.accept().await {
            Ok((stream, _)) => return (stream, permit),
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                // Out of file descriptors, most likely: free one and retry soon.
                tracing::warn!(error = %err, "cannot accept a connection; retrying in 100 ms");
                drop(permit);
                evict_idlest(open);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn slot(slots: &Arc<Semaphore>, open: &Registry) -> OwnedSemaphorePermit {
    loop {
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return permit;
        }
        evict_idlest(open);
        // The evicted connection gives its slot back at once; when every connection was busy,
        // look again for one that has become idle now and then.
        let wait = tokio::time::timeout(Duration::from_millis(100), slots.clone().acquire_owned());
        if let Ok(Ok(permit)) = wait.await {
            return permit;
        }
    }
}

/// Closes the connection with no request under way that has waited the longest, if any.
fn evict_idlest(open: &Registry) {
    let open = open
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let idlest = open
        .values()
        .filter(|conn| !conn.evicted.load(Ordering::SeqCst))
        .filter_map(|conn| match conn.phase() {
            (Phase::Busy, _) => None,
            (_, since) => Some((since, conn)),
        })
        .min_by_key(|(since, _)| *since);
    if let Some((_, conn)) = idlest {
        tracing::debug!("connection limit reached: closing the connection idle the longest");
        conn.evicted.store(true, Ordering::SeqCst);
        conn.wake.notify_one();
    }
}

/// Whether an accept error concerns only that one connection.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it closes, times out, is evicted, or the server stops (then
/// gracefully: the request under way finishes).
async fn run_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    guard: Guard,
    limits: Limits,
    mut stopped: watch::Receiver<()>,
) {
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    let requests = conn.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::new(requests.clone());
        let answer = guard.clone().call(request);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header read timeout is kept above (hyper's would also count the idle time).
    builder.header_read_timeout(None);
    let http = builder.serve_connection(io, service);
    let mut http = std::pin::pin!(http);
    // A deadline that appears after the timer is armed is at least this far out.
    let longest_wait = limits.header_read_timeout.min(limits.idle_timeout);
    let timer = tokio::time::sleep(longest_wait);
    let mut timer = std::pin::pin!(timer);
    let mut fired = true;
    let mut stopping = false;
    loop {
        if fired {
            fired = false;
            let at_most = Instant::now() + longest_wait;
            let deadline = conn.deadline(&limits).map_or(at_most, |d| d.min(at_most));
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            result = http.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "HTTP connection ended with an error");
                }
                return;
            }
            _ = conn.wake.notified() => {}
            _ = timer.as_mut() => fired = true,
            _ = stopped.changed(), if !stopping => {
                stopping = true;
                http.as_mut().graceful_shutdown();
            }
        }
        let busy = conn.in_flight.load(Ordering::SeqCst) > 0;
        if conn.evicted.load(Ordering::SeqCst) {
            if !busy {
                return;
            }
            if !stopping {
                stopping = true;
                http.as_mut().graceful_shutdown();
            }
        }
        if let Some(deadline) = conn.deadline(&limits) {
            if Instant::now() >= deadline {
                match conn.phase().0 {
                    Phase::Head => tracing::debug!(
                        timeout = ?limits.header_read_timeout,
                        "closing a connection that did not send a request head in time"
                    ),
                    _ => tracing::trace!("closing an idle keep-alive connection"),
                }
                return;
            }
        }
    }
}
