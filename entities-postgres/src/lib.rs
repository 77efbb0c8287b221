//! `entities-postgres`: a PostgreSQL store for `entities` that several processes share.
//!
//! Entities and orchestration instances hash to partitions (the count is fixed when the
//! schema is created, [`PostgresOptions::partitions`]). Each running process owns a share of
//! them through leases in the database: a lease has an owner, an epoch and an expiry, is
//! renewed while its owner lives and taken over (epoch + 1) once expired. Every commit takes a
//! shared advisory lock on the partitions its process holds and checks, in the same
//! transaction, that it still holds their current epochs; a process that lost a partition can
//! never commit for it. Messages to a partition run elsewhere are written in the producer's
//! commit and claimed by the owner, woken by `LISTEN`/`NOTIFY` (sent after the commit, never
//! inside it) and, without it, by polling.
//!
//! The client is `tokio-postgres` (with a `deadpool-postgres` pool): it pipelines queries and
//! binds arrays, so a whole group of batches is written with a few `unnest` statements per
//! transaction, and it is maintained alongside the async PostgreSQL ecosystem it belongs to.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use entities_postgres::{PostgresOptions, PostgresStore};
//!
//! let store = PostgresStore::connect_with(
//!     "postgres://app@127.0.0.1:5432/app",
//!     PostgresOptions { lease: Duration::from_secs(10), ..Default::default() },
//! )
//! .await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! # TLS
//!
//! The URL's `sslmode` and `sslrootcert` (a PEM file) mean what they mean to libpq:
//!
//! | `sslmode` | TLS | verified |
//! | --- | --- | --- |
//! | `disable` | never | |
//! | `prefer` (the default) | if the server offers it | nothing |
//! | `require` | always | nothing; the chain, as `verify-ca`, if `sslrootcert` is given |
//! | `verify-ca` | always | the chain, against the roots; not the host name |
//! | `verify-full` | always | the chain and the host name |
//!
//! Without `sslrootcert` the roots are the system's (`sslrootcert=system` says so too, and
//! makes `verify-full` the default). Both the URL form and the `key=value` form take them:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use entities_postgres::PostgresStore;
//!
//! let store = PostgresStore::connect(
//!     "postgres://app@db.internal:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
//! )
//! .await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! A refusal is [`Error::Tls`] and says which check failed ([`TlsError`]): an unknown
//! authority, a certificate for another host, a server without TLS when the mode demands it,
//! a root file that cannot be read. The pool and the `LISTEN` connection use the same
//! settings. The TLS stack is rustls with the `ring` provider and the system's roots from
//! `rustls-native-certs`: pure Rust, so the workspace still builds on a fresh machine with
//! only the Rust toolchain (native-tls would need OpenSSL's headers, aws-lc-rs cmake). Client
//! certificates (`sslcert`, `sslkey`) and `sslmode=allow` are not supported.

mod arrivals;
mod leases;
mod reads;
mod rows;
mod schema;
mod tls;
mod writer;

#[cfg(feature = "test-server")]
pub mod test_server;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use entities_core::message::{Message, MessageId};
use entities_core::store::{
    Batch, EntityQuery, EntityRecord, EntityRecordPage, InstanceQuery, InstanceRecord,
    InstanceRecordPage, LockRecord, OwnershipEvent, Partitioned, Recovery, RemoteReply,
    SetAsideMessage, StoreStats,
};
use entities_core::{EntityId, Store, StoreError, StoreErrorKind};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex, Notify};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{debug, warn};

use crate::leases::Held;
use crate::schema::LOCK_CLASS;
use crate::tls::TlsSettings;
pub use crate::tls::{SslMode, TlsError};

/// Message ids are `node << NODE_SHIFT | counter`: unique across processes without
/// coordination, and a call's id tells which process waits for its reply.
pub(crate) const NODE_SHIFT: u32 = 40;

/// Errors of connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection URL cannot be parsed.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// TLS was refused (which check failed, see [`TlsError`]) or cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Options of [`PostgresStore::connect_with`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Partitions, used when the schema is created (later connections use the stored count).
    /// More partitions spread finer over more processes; each costs a lease row. Default 32.
    pub partitions: u32,
    /// How long a process's partitions wait after it stopped renewing before another process
    /// takes them (leases are renewed every quarter of it). Default 10 seconds.
    pub lease: Duration,
    /// Connections in the pool (reads, claims, leases; commits use one at a time). Default 8.
    pub pool_size: usize,
    /// How long sends and calls wait while the database cannot be reached (a restart, a
    /// network cut) before they fail with
    /// [`StoreErrorKind::Unavailable`]; a commit
    /// that failed before it could apply is sent again meanwhile. Default 30 seconds.
    pub unavailable_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            partitions: 32,
            lease: Duration::from_secs(10),
            pool_size: 8,
            unavailable_timeout: Duration::from_secs(30),
        }
    }
}

/// A store in a PostgreSQL database that several runtime processes share. See the crate
/// documentation.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
    writer: mpsc::UnboundedSender<writer::Request>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("node", &self.inner.node)
            .field("partitions", &self.inner.count)
            .finish_non_exhaustive()
    }
}

/// What the store's tasks share.
pub(crate) struct Inner {
    pool: Pool,
    /// This process's number in the database (new at every connect).
    pub(crate) node: i64,
    pub(crate) count: u32,
    pub(crate) options: PostgresOptions,
    /// Partitions held and their epochs.
    pub(crate) held: Mutex<Held>,
    /// Which arrivals were taken.
    pub(crate) arrivals: Mutex<arrivals::ArrivalCursor>,
    /// What this process has seen of the leases (see [`leases::Observed`]).
    pub(crate) observed: Mutex<leases::Observed>,
    /// Partitions being handed over (held until the runtime let go of them).
    pub(crate) releasing: Mutex<BTreeSet<u32>>,
    pub(crate) events: mpsc::UnboundedSender<OwnershipEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<OwnershipEvent>>>,
    /// Arrivals or replies may be waiting.
    hint: Arc<Notify>,
    /// A commit stored arrivals or replies for other processes: a hint should go out.
    wake_wanted: Arc<Notify>,
    /// Another process joined or left.
    pub(crate) leases_changed: Notify,
    /// One lease round at a time.
    pub(crate) lease_round: AsyncMutex<()>,
    leasing: AtomicBool,
    closed: AtomicBool,
    /// The background lease rounds are suspended (a test stands for a paused process).
    leases_paused: AtomicBool,
}

/// A database error as a [`StoreError`] with `what` as context, classified by kind. A lost
/// connection (the server restarts, shuts down or cannot be reached) is
/// [`StoreErrorKind::Unavailable`]: the statement it cut off was not applied (a `COMMIT` cut
/// off is the one case that can have been, and the writer resolves it itself).
pub(crate) fn pg_error(what: &str, err: tokio_postgres::Error) -> StoreError {
    let kind = if connection_lost(&err) {
        StoreErrorKind::Unavailable
    } else {
        match err.code().map(tokio_postgres::error::SqlState::code) {
            Some("53100") => StoreErrorKind::DiskFull,
            Some("25006") => StoreErrorKind::ReadOnly,
            Some("58030") => StoreErrorKind::Io,
            _ => StoreErrorKind::Other,
        }
    };
    StoreError::with_kind(kind, what, err)
}

/// Whether `err` means the connection is gone rather than that a statement failed: closed,
/// an I/O error, a connection exception (SQLSTATE class 08), the server shutting down or
/// starting (57P01, 57P02, 57P03), or the session ended for idling in a transaction (25P03,
/// after a pause of the process or the server). Each rolls back what the session had not
/// committed.
pub(crate) fn connection_lost(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "25P03");
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A connection that cannot be had from the pool: the database cannot be reached.
fn pool_error(err: deadpool_postgres::PoolError) -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::Unavailable,
        "cannot get a PostgreSQL connection",
        err,
    )
}

impl PostgresStore {
    /// Connects with default options, creating or migrating the schema. `url` may carry
    /// `sslmode` and `sslrootcert` (see the crate documentation, "TLS").
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options`, creating or migrating the schema (safe when several processes
    /// connect at once).
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, Error> {
        let (url, tls) = TlsSettings::split(url)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(Error::Url)?;
        config.ssl_mode(tls.negotiation());
        let connector = tls.connector()?;
        // A process that stops (SIGSTOP, a long pause) inside a transaction must not keep
        // its locks: the server ends such a session, rolls its transaction back, and the
        // partitions can be taken over.
        let idle = (options.lease / 4)
            .max(Duration::from_millis(100))
            .as_millis();
        // A server that accepts connections but does not answer (a frozen host) must not
        // hold a connection attempt forever: the attempt is made again.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let existing = config.get_options().unwrap_or("").to_string();
        config.options(format!("{existing} -c idle_in_transaction_session_timeout={idle}").trim());
        if options.partitions == 0 || options.partitions > 4096 {
            return Err(StoreError::new("`partitions` must be between 1 and 4096").into());
        }
        if options.lease < Duration::from_millis(200) {
            return Err(StoreError::new("`lease` must be at least 200 ms").into());
        }
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .build()
            .map_err(|e| StoreError::with_source("cannot build the connection pool", e))?;
        // The first connection: a TLS refusal says which.
        let mut conn = pool.get().await.map_err(|err| match err {
            deadpool_postgres::PoolError::Backend(err) => match tls.classify(err) {
                Ok(refused) => Error::Tls(refused),
                Err(err) => pool_error(deadpool_postgres::PoolError::Backend(err)).into(),
            },
            err => pool_error(err).into(),
        })?;
        let count = schema::migrate(&mut conn, options.partitions).await?;
        let node: i64 = conn
            .query_one("SELECT nextval('entities_nodes')", &[])
            .await
            .map_err(|e| pg_error("cannot join", e))?
            .get(0);
        drop(conn);
        let (events, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            pool,
            node,
            count,
            options,
            held: Mutex::new(Held::new()),
            releasing: Mutex::new(BTreeSet::new()),
            observed: Mutex::default(),
            events,
            events_rx: Mutex::new(Some(events_rx)),
            hint: Arc::new(Notify::new()),
            wake_wanted: Arc::new(Notify::new()),
            leases_changed: Notify::new(),
            lease_round: AsyncMutex::new(()),
            leasing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            leases_paused: AtomicBool::new(false),
            arrivals: Mutex::default(),
        });
        tokio::spawn(listen(config, tls, connector, Arc::downgrade(&inner)));
        tokio::spawn(send_wake_hints(
            inner.wake_wanted.clone(),
            Arc::downgrade(&inner),
        ));
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(inner.clone(), rx));
        debug!(node, partitions = count, "connected to PostgreSQL");
        Ok(Self { inner, writer })
    }

    /// The partition count of the database.
    pub fn partitions(&self) -> u32 {
        self.inner.count
    }

    /// Suspends this store's background lease rounds, as a stalled process would: its leases
    /// expire and others may take them over. Lease rounds run by `recover` still happen. For
    /// tests of fencing (cargo feature `test-server`).
    #[cfg(feature = "test-server")]
    pub fn pause_lease_rounds(&self) {
        self.inner.leases_paused.store(true, Ordering::SeqCst);
    }

    /// The partitions this process holds now.
    pub fn held_partitions(&self) -> Vec<u32> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// This process's number in the database (message ids carry it).
    pub fn node(&self) -> i64 {
        self.inner.node
    }
}

/// Listens for hints on a connection of its own: `entities_wake` (arrivals or replies
/// stored) and `entities_leases` (a process joined or left). Reconnects when the connection
/// drops (polling covers the gap); stops when the store is gone.
async fn listen(
    config: tokio_postgres::Config,
    settings: TlsSettings,
    tls: MakeRustlsConnect,
    inner: std::sync::Weak<Inner>,
) {
    loop {
        match listen_once(&config, &settings, &tls, &inner).await {
            Ok(()) => {}
            Err(err) => warn!(error = %err, "the hint listener failed; polling covers the gap"),
        }
        match inner.upgrade() {
            Some(strong) if !strong.is_closed() => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One listening connection, until it drops or the store is gone.
async fn listen_once(
    config: &tokio_postgres::Config,
    settings: &TlsSettings,
    tls: &MakeRustlsConnect,
    inner: &std::sync::Weak<Inner>,
) -> Result<(), StoreError> {
    const FAILED: &str = "cannot connect the listener";
    let (client, mut connection) =
        config
            .connect(tls.clone())
            .await
            .map_err(|err| match settings.classify(err) {
                Ok(refused) => StoreError::with_source(FAILED, refused),
                Err(err) => pg_error(FAILED, err),
            })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let own = match inner.upgrade() {
        Some(inner) => inner.node.to_string(),
        None => return Ok(()),
    };
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut stream).await {
            match message {
                // A wake-up hint carries its sender's node: this process's own are skipped.
                Ok(AsyncMessage::Notification(n)) if n.payload() != own => {
                    let _ = tx.send(n.channel() == "entities_leases");
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(error = %err, "the listener connection failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute("LISTEN entities_wake; LISTEN entities_leases")
        .await
        .map_err(|e| pg_error("cannot listen", e))?;
    while let Some(leases) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        if inner.is_closed() {
            return Ok(());
        }
        if leases {
            inner.leases_changed.notify_one();
        } else {
            inner.hint.notify_one();
        }
    }
    Ok(())
}

/// Sends the hints that [`Inner::wake_others`] asks for, one at a time, until the store is gone
/// or closed. A `NOTIFY` commits a transaction of its own, with an id: it is sent with
/// `synchronous_commit` off, so that it does not wait for a WAL flush. A hint lost in a crash
/// of the server costs nothing but a poll interval.
async fn send_wake_hints(wanted: Arc<Notify>, inner: std::sync::Weak<Inner>) {
    loop {
        let asked = tokio::time::timeout(Duration::from_secs(1), wanted.notified())
            .await
            .is_ok();
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        if !asked {
            continue;
        }
        if let Ok(conn) = inner.connection().await {
            if let Err(err) = conn
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL synchronous_commit TO off; \
                     SELECT pg_notify('entities_wake', '{}'); COMMIT",
                    inner.node
                ))
                .await
            {
                debug!(error = %err, "wake-up hint not sent");
            }
        }
    }
}

impl Inner {
    pub(crate) async fn connection(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether the background lease rounds are suspended.
    pub(crate) fn leases_paused(&self) -> bool {
        self.leases_paused.load(Ordering::SeqCst)
    }

    /// Whether the database answers (after a failure).
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
        let conn = self.connection().await?;
        conn.execute("SELECT 1", &[])
            .await
            .map_err(|e| pg_error("the database does not answer", e))?;
        Ok(())
    }

    /// Asks for a hint to other processes that arrivals or replies wait. The hint goes out
    /// from a task of its own, outside every write transaction and after the commit's senders
    /// were answered; requests made while a hint is being sent make one more hint, not one
    /// each.
    pub(crate) fn wake_others(&self) {
        self.wake_wanted.notify_one();
    }

    /// The partitions this process holds now, with their epochs.
    pub(crate) fn held_now(&self) -> Held {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes the shared advisory lock of every partition held, in order, and returns those
    /// whose lease is still this process's at the epoch it holds.
    pub(crate) async fn fence(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<HashSet<u32>, StoreError> {
        let held: Held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if held.is_empty() {
            return Ok(HashSet::new());
        }
        let parts: Vec<i32> = held.keys().map(|p| *p as i32).collect();
        let failed = |e| pg_error("cannot check partition leases", e);
        let lock = tx
            .prepare_cached(writer::LOCK_SHARED)
            .await
            .map_err(failed)?;
        let read = tx
            .prepare_cached(writer::READ_LEASES)
            .await
            .map_err(failed)?;
        tx.execute(&lock, &[&LOCK_CLASS, &parts])
            .await
            .map_err(failed)?;
        let rows = tx
            .query(&read, &[&self.node, &parts])
            .await
            .map_err(failed)?;
        Ok(rows
            .iter()
            .filter(|row| held.get(&(row.get::<_, i32>(0) as u32)) == Some(&row.get::<_, i64>(1)))
            .map(|row| row.get::<_, i32>(0) as u32)
            .collect())
    }

    fn first_id(&self) -> MessageId {
        (self.node as u64) << NODE_SHIFT
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn recover(&self, horizon: u64) -> Result<Recovery, StoreError> {
        self.inner.sync_leases().await?;
        if !self.inner.leasing.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.inner.clone().run_leases());
            // Others rebalance now rather than at their next round.
            if let Ok(conn) = self.inner.connection().await {
                let _ = conn
                    .execute("SELECT pg_notify('entities_leases', '')", &[])
                    .await;
            }
        }
        let parts = self.held_partitions();
        let mut recovery = self
            .inner
            .claim_partitions(&parts, (horizon, MessageId::MAX))
            .await?;
        recovery.partitions = Some(parts);
        Ok(recovery)
    }

    async fn scheduled_messages(
        &self,
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.scheduled(None, after, until, limit).await
    }

    async fn set_aside_messages(&self) -> Result<Vec<SetAsideMessage>, StoreError> {
        self.inner.set_aside_messages().await
    }

    fn commit(&self, batch: Batch) -> BoxFuture<'static, Result<Batch, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(writer::Request::Commit(batch, tx));
        async move {
            if sent.is_err() {
                return Err(StoreError::of_kind(
                    StoreErrorKind::Closed,
                    "the writer is gone",
                ));
            }
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::of_kind(
                    StoreErrorKind::Closed,
                    "the writer is gone",
                ))
            })
        }
        .boxed()
    }

    async fn load_entities(&self, ids: Vec<EntityId>) -> Result<Vec<EntityRecord>, StoreError> {
        self.inner.load_entities(ids).await
    }

    async fn read_entity(&self, id: &EntityId) -> Result<Option<EntityRecord>, StoreError> {
        self.inner.read_entity(id).await
    }

    async fn scheduled_for(
        &self,
        target: &entities_core::message::Target,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.scheduled_for(target).await
    }

    async fn idle_entities(
        &self,
        name: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<EntityId>, StoreError> {
        self.inner.idle_entities(name, before, limit).await
    }

    async fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<entities_core::store::IdempotencyKey>, StoreError> {
        self.inner.idempotency_key(key).await
    }

    async fn query_entities(&self, query: &EntityQuery) -> Result<EntityRecordPage, StoreError> {
        self.inner.query_entities(query).await
    }

    async fn delete_empty_entities(&self) -> Result<u64, StoreError> {
        self.inner.delete_empty_entities().await
    }

    async fn read_instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner.read_instance(id).await
    }

    async fn read_history(&self, id: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.read_history(id).await
    }

    async fn purge_instance(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.purge_instance(id).await
    }

    async fn purge_instances(&self, query: &InstanceQuery) -> Result<u64, StoreError> {
        self.inner.purge_instances(query).await
    }

    async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.inner.running_instances().await
    }

    async fn query_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<InstanceRecordPage, StoreError> {
        self.inner.query_instances(query).await
    }

    async fn locked_entities(&self) -> Result<Vec<LockRecord>, StoreError> {
        self.inner.locked_entities().await
    }

    async fn count_entities(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.count_entities().await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats().await
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }

    fn resume(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(writer::Request::Resume(tx));
        async move {
            if sent.is_err() {
                return Err(StoreError::of_kind(
                    StoreErrorKind::Closed,
                    "the writer is gone",
                ));
            }
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::of_kind(
                    StoreErrorKind::Closed,
                    "the writer is gone",
                ))
            })
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(writer::Request::Flush(tx)).is_ok();
        async move {
            if sent {
                let _ = rx.await;
            }
            inner.closed.store(true, Ordering::SeqCst);
            let _round = inner.lease_round.lock().await;
            if let Err(err) = inner.leave().await {
                warn!(error = %err, "could not hand partitions over at shutdown; they move when their leases expire");
            }
        }
        .boxed()
    }

    fn partitioned(&self) -> Option<Arc<dyn Partitioned>> {
        Some(self.inner.clone())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.probe().await
    }

    fn unavailable_timeout(&self) -> Duration {
        self.inner.options.unavailable_timeout
    }
}

#[async_trait]
impl Partitioned for Inner {
    fn count(&self) -> u32 {
        self.count
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<OwnershipEvent>> {
        self.events_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn hint(&self) -> Arc<Notify> {
        self.hint.clone()
    }

    async fn recover_partitions(
        &self,
        parts: &[u32],
        until: (u64, MessageId),
    ) -> Result<Recovery, StoreError> {
        self.claim_partitions(parts, until).await
    }

    async fn arrivals(&self, parts: &[u32], limit: usize) -> Result<Vec<Message>, StoreError> {
        self.claim_arrivals(parts, limit).await
    }

    async fn scheduled_in(
        &self,
        parts: &[u32],
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.scheduled(Some(parts), after, until, limit).await
    }

    fn id_base(&self) -> MessageId {
        self.first_id() + 1
    }

    async fn take_replies(&self) -> Result<Vec<RemoteReply>, StoreError> {
        let mut conn = self.connection().await?;
        let failed = |e| pg_error("cannot read replies", e);
        // Most polls find no reply: look before writing.
        let exists = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM entities_replies WHERE node = $1)")
            .await
            .map_err(failed)?;
        let any = conn
            .query_one(&exists, &[&self.node])
            .await
            .map_err(failed)?
            .get::<_, bool>(0);
        if !any {
            return Ok(Vec::new());
        }
        // Without waiting for a WAL flush: a deletion lost in a crash of the server brings
        // back replies whose waiters have heard already, and those are ignored.
        let tx = conn.transaction().await.map_err(failed)?;
        // A poll never waits long on a row lock (none is expected): it holds the gate of
        // the polls, which a reload of the engine waits for.
        tx.batch_execute("SET LOCAL synchronous_commit TO off; SET LOCAL lock_timeout = '2s'")
            .await
            .map_err(failed)?;
        let rows = tx
            .query(
                "DELETE FROM entities_replies WHERE node = $1 RETURNING waiter, reply",
                &[&self.node],
            )
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(rows
            .iter()
            .map(|row| RemoteReply {
                waiter: row.get::<_, i64>(0) as u64,
                reply: serde_json::from_str(row.get::<_, &str>(1)).unwrap_or_default(),
            })
            .collect())
    }
}

/// Partitions as the database stores them, sorted (locks are taken in order).
pub(crate) fn sorted_parts(parts: &[u32]) -> Vec<i32> {
    let set: BTreeSet<i32> = parts.iter().map(|p| *p as i32).collect();
    set.into_iter().collect()
}
