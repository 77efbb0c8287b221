//! The HTTP API of `entities`: an [axum] router over a runtime's [`Client`].
//!
//! ```no_run
//! # async fn run(runtime: entities_core::Runtime) -> Result<(), entities_http::HttpError> {
//! // Mount it in an app of your own...
//! let app: axum::Router = entities_http::router(runtime.client());
//! // ...or serve it alone, here with a bearer token and a 64 KiB body limit.
//! entities_http::Http::new(runtime.client())
//!     .token("s3cret")
//!     .body_limit(64 * 1024)
//!     .serve("127.0.0.1:8080")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /entities/{name}/{key}/{operation}` | calls the operation, body = JSON input (empty = none) | 200 with the JSON result; 422 with the operation's error |
//! | `POST /entities/{name}/{key}/{operation}/send` | signals it | 202 once durably stored |
//! | `GET /entities/{name}/{key}` | reads the committed state and metadata | 200, or 404 when it has no state |
//! | `PUT /entities/{name}/{key}` | replaces the state (`Client::set_entity_state`), body = state | 200 once applied |
//! | `GET /entities?name=&prefix=&page_size=&continuation=` | lists entities | 200 with a page |
//! | `GET /locks` | lists locked entities and the instance holding each | 200 |
//! | `POST /clean` | `Client::clean_entity_storage` | 200 with what it did |
//! | `POST /orchestrations/{name}` (`?id=` optional) | starts an instance, body = input | 202 with `{"id": ..}`; 409 if the id exists |
//! | `GET /orchestrations/{id}` (`?wait=5s` optional) | status, input, output or error | 200, or 404 |
//! | `GET /orchestrations/{id}/history` | the recorded history events | 200, or 404 |
//! | `GET /orchestrations?name=&status=&created_from=&created_to=&page_size=&continuation=` | lists instances | 200 with a page |
//! | `POST /orchestrations/{id}/events/{event}` | raises an event, body = data | 202, or 404 |
//! | `POST /orchestrations/{id}/terminate` | terminates, body = reason (a JSON string) | 202, or 404 |
//! | `DELETE /orchestrations/{id}` | purges an ended instance | 200, 404, or 409 while it runs |
//! | `GET /health`, `GET /metrics`, `GET /openapi.json` | liveness; Prometheus text; the API's description | 200 |
//! | `GET /ready` | readiness, for load balancers | 200; 503 with the reason while draining, shut down, or the store cannot be reached |
//!
//! Names are case-insensitive; keys (and instance ids) are percent-decoded path segments, so
//! a key with `/` or `@` travels as `%2F` or `%40`. Every error is JSON with a `message` and a
//! `kind`: 400 bad input (an `Idempotency-Key` must be 1 to 255 bytes), 401 without the
//! token, 403 a `Host` not allowed or a page of another origin, 404 unknown entity name or
//! instance, 409 instance exists (or still running, for a purge), 413 body too large (at once
//! when `Content-Length` says so), 415 a body not declared as JSON, 422 the operation's own
//! error, 503 the runtime is shut down or the request ran past the request timeout.
//!
//! **Browser safety.** A web page of another site must not drive the API through its
//! visitor's browser, which needs no token when none is set:
//! - request bodies must be `Content-Type: application/json` (or `application/*+json`): a
//!   page can send `text/plain`, form data or multipart anywhere without asking, never JSON;
//! - POST, PUT, DELETE and PATCH are refused when their `Origin` is not the server's own (the
//!   request's `Host`, or a name given to [`Http::allowed_hosts`]), or, without an `Origin`,
//!   when `Sec-Fetch-Site` is `cross-site` or `same-site`;
//! - without a token, the `Host` must be an IP address (a page cannot rebind one),
//!   `localhost`, or a name given to [`Http::allowed_hosts`]: a page whose name an attacker
//!   points at this server (DNS rebinding) cannot read it. With a token, any `Host` passes.
//!   `/health` and `/ready` answer whatever the `Host`.
//!
//! Clients that are not browsers send neither `Origin` nor `Sec-Fetch-Site`; the CLI and the
//! dashboard send their bodies as JSON.
//!
//! **Limits.** [`Http::serve`] and its kin close a connection that does not send its request
//! head within [`Http::header_read_timeout`] and a keep-alive connection idle past
//! [`Http::idle_timeout`], stop a request past [`Http::request_timeout`] (calls and `?wait=`
//! reads excepted), and serve at most [`Http::max_connections`] at once, closing idle ones to
//! make room. A router mounted in an app of your own gets the request timeout, the body limit
//! and the browser checks; its server's own settings govern the connections.
//!
//! With a token set, every route but `/health` and `/ready` requires
//! `Authorization: Bearer <token>` (compared in constant time).
//!
//! `GET /ready` answers 200 `{"status": "ready"}` while the process can serve, and 503 with
//! the reason in `kind` otherwise: `draining` once the shutdown signal of
//! [`Http::serve_with_shutdown`] has fired, `shut_down` once the runtime has shut down,
//! `store_unavailable` while the store does not answer a ping (within 2 s, see
//! [`Client::ready`]). `/health` stays the liveness check: it fails only once the runtime has
//! shut down.
//!
//! `/metrics` renders the `metrics` facade through a Prometheus recorder that this crate
//! installs globally the first time a router is built, unless the process installed a
//! recorder already: then pass its handle with [`Http::prometheus`].

#![warn(missing_docs)]

mod auth;
mod browser;
mod error;
mod guard;
mod limits;
mod openapi;
mod routes;
mod server;
mod ui;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use entities_core::Client;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, ToSocketAddrs};

pub use crate::error::HttpError;
pub use crate::openapi::{openapi, ROUTES};

/// The default limit on a request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default longest `?wait=` an orchestration read honours: 60 seconds.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

/// The default time a connection gets to send a complete request head: 10 seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time a keep-alive connection may wait for its next request: 60 seconds.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default time a request may take, calls and `?wait=` reads excepted: 30 seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The default most connections served at once: 512 (nginx's `worker_connections`), well
/// below the common limit of 1,024 open files.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The router over `client` with the default options: no token, a body limit of
/// [`DEFAULT_BODY_LIMIT`]. Use [`Http`] for other options.
pub fn router(client: Client) -> Router {
    Http::new(client).router()
}

/// Serves the router over `client` with the default options on `addr` until the process
/// ends. Use [`Http`] for other options.
pub async fn serve(client: Client, addr: impl ToSocketAddrs) -> Result<(), HttpError> {
    Http::new(client).serve(addr).await
}

/// The HTTP API with its options: build the router or serve it.
///
/// Clones share one drain state: once the shutdown signal of [`serve_with_shutdown`]
/// (or [`serve_on`]) has fired, `/ready` answers 503 on every router built from this `Http`
/// or a clone of it.
///
/// [`serve_with_shutdown`]: Http::serve_with_shutdown
/// [`serve_on`]: Http::serve_on
#[derive(Clone)]
pub struct Http {
    client: Client,
    token: Option<Arc<[u8]>>,
    body_limit: usize,
    max_wait: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    allowed_hosts: Vec<browser::HostPattern>,
    prometheus: Option<PrometheusHandle>,
    drain_delay: Duration,
    /// Set when the shutdown signal of a serve has fired.
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("body_limit", &self.body_limit)
            .field("max_wait", &self.max_wait)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_connections", &self.max_connections)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("drain_delay", &self.drain_delay)
            .field("draining", &self.draining.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Http {
    /// The API over `client`, with no token and the default limits.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            max_wait: DEFAULT_MAX_WAIT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_hosts: Vec::new(),
            prometheus: None,
            drain_delay: Duration::ZERO,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Requires `Authorization: Bearer <token>` on every route but `/health` and `/ready`
    /// (probes carry no secret). An empty token turns the requirement off.
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        let token = token.as_ref();
        self.token = (!token.is_empty()).then(|| Arc::from(token.as_bytes()));
        self
    }

    /// The largest request body accepted, in bytes; a larger one is refused with 413 (at once,
    /// before the body is read, when its `Content-Length` says so). Default
    /// [`DEFAULT_BODY_LIMIT`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long a connection gets to send a complete request head, from its accept or from
    /// the first byte of a next request; past it the connection is closed. Default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`]. Applies to [`serve`](Self::serve) and its kin, not
    /// to a [`router`](Self::router) mounted elsewhere.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may wait for its next request after an answer; past
    /// it the connection is closed. Default [`DEFAULT_IDLE_TIMEOUT`]. Applies to
    /// [`serve`](Self::serve) and its kin.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a request may take, from its head to its answer; past it, it is stopped and
    /// answers 503 with `kind` `request_timeout` (what it did may or may not have been
    /// applied). Calls (`POST /entities/{name}/{key}/{operation}`) and reads with `?wait=`
    /// are excepted: they wait for the operation or the instance by design (a `?wait=` up to
    /// [`max_wait`](Self::max_wait)), and get this time for their body only (408 past it).
    /// Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The most connections served at once (at least 1). At the limit, the connection that
    /// has waited longest without a request under way (for its first request or its next) is
    /// closed to make room; when every connection has a request under way, accepting waits
    /// for one to end. So connections that send nothing cannot lock clients out. Keep it
    /// below the process's limit on open files. Default [`DEFAULT_MAX_CONNECTIONS`]. Applies
    /// to [`serve`](Self::serve) and its kin.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Adds names this server answers to, beside the ones it always does (any IP address,
    /// and `localhost`), each `name` (any port) or `name:port`; `*` takes any `Host`.
    ///
    /// Without a token, a request whose `Host` is none of these is refused with 403
    /// (`host_not_allowed`): a web page whose name an attacker points at this server (DNS
    /// rebinding) could read the API otherwise. With a token, `Host` is not checked.
    ///
    /// The names also count as this server's own origins: an unsafe request (POST, PUT,
    /// DELETE, PATCH) from a page of one of them is let through (behind a proxy that rewrites
    /// `Host`, give the public name here); `*` does not count for origins. Entries that are no
    /// host name are skipped with a warning.
    ///
    /// ```no_run
    /// # async fn run(runtime: entities_core::Runtime) -> Result<(), entities_http::HttpError> {
    /// entities_http::Http::new(runtime.client())
    ///     .allowed_hosts(["entities.internal", "dashboard.example.com:443"])
    ///     .serve("0.0.0.0:8080")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for host in hosts {
            match browser::HostPattern::parse(host.as_ref()) {
                Some(pattern) => self.allowed_hosts.push(pattern),
                None => tracing::warn!(
                    host = host.as_ref(),
                    "Http::allowed_hosts: not a host name (such as `example.com` or `example.com:8443`); skipped"
                ),
            }
        }
        self
    }

    /// The longest `?wait=` an orchestration read honours; longer waits are cut to it.
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.max_wait = max;
        self
    }

    /// How long [`serve_with_shutdown`](Self::serve_with_shutdown) goes on taking requests
    /// after its shutdown signal, with `/ready` answering 503, before it stops taking new
    /// ones: time for a load balancer that polls `/ready` to stop sending here first. Default
    /// zero: new requests stop at the signal.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Renders `/metrics` with this Prometheus handle instead of the recorder this crate
    /// installs (for a process that installed its own).
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        Router::new().fallback_service(self.guard())
    }

    /// The routes behind their checks.
    fn guard(self) -> guard::Guard {
        let prometheus = self.prometheus.or_else(global_prometheus);
        let state = routes::AppState {
            client: self.client,
            max_wait: self.max_wait,
            prometheus,
            token_required: self.token.is_some(),
            draining: self.draining,
        };
        let checks = guard::Checks {
            browser: browser::Policy {
                allowed: self.allowed_hosts.into(),
                check_host: self.token.is_none(),
            },
            token: self.token,
            limits: limits::RequestLimits {
                body_limit: self.body_limit,
                request_timeout: self.request_timeout,
            },
        };
        guard::Guard::new(routes::router(state, self.body_limit), checks)
    }

    /// Binds `addr` and serves until the process ends. Errors accepting a connection (such as
    /// running out of file descriptors) are logged and retried.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> Result<(), HttpError> {
        self.serve_with_shutdown(addr, std::future::pending()).await
    }

    /// Binds `addr` and serves until `shutdown` resolves. From the
    /// moment `shutdown` resolves, `/ready` answers 503 (`draining`); after the
    /// [`drain_delay`](Self::drain_delay) (default none) it stops taking new connections and
    /// requests, finishes the requests under way, and returns: then call
    /// `runtime.shutdown()`, which hands the runtime's partitions over.
    ///
    /// ```no_run
    /// # async fn run(runtime: entities_core::Runtime) -> Result<(), Box<dyn std::error::Error>> {
    /// // Fired by a signal handler (SIGTERM, Ctrl-C): see `examples/server.rs`.
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # drop(stop);
    /// entities_http::Http::new(runtime.client())
    ///     .serve_with_shutdown("0.0.0.0:8080", async {
    ///         let _ = stopped.await;
    ///     })
    ///     .await?;
    /// runtime.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_with_shutdown(
        self,
        addr: impl ToSocketAddrs,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { source })?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on a listener bound already (for instance to port 0) until `shutdown`
    /// resolves, draining as
    /// [`serve_with_shutdown`](Self::serve_with_shutdown) does.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "entities HTTP API listening");
        }
        let draining = self.draining.clone();
        let delay = self.drain_delay;
        let shutdown = async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            tracing::info!(
                ?delay,
                "shutdown signal: /ready answers 503; requests under way finish, new ones stop after the drain delay"
            );
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        };
        let limits = server::Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        };
        server::serve(listener, self.guard(), limits, shutdown).await;
        Ok(())
    }
}

/// Installs the Prometheus recorder that `/metrics` renders (once per process; later calls
/// return the same handle), and returns its handle; `None` if another metrics recorder was
/// installed first. Building a router does this too: call it before starting the runtime to
/// count from the very start.
pub fn prometheus() -> Option<PrometheusHandle> {
    global_prometheus()
}

/// The Prometheus recorder this crate installs once per process; `None` if another recorder
/// was installed first.
fn global_prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(error = %err, "cannot install the Prometheus recorder (another metrics recorder is installed?); /metrics stays empty unless a handle is given with Http::prometheus");
                None
            }
        })
        .clone()
}
