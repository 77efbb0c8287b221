//! `SqliteStore`: the embedded store of `entities`, on SQLite in WAL mode.
//!
//! One writer thread owns the write connection and merges every batch queued at the moment
//! into one transaction (group commit); reads run on separate connections through
//! `spawn_blocking`, so no SQLite call blocks an async worker thread.

#![warn(missing_docs)]

mod file;
mod schema;
mod sql;
mod writer;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod recovery_tests;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use entities_core::message::{Message, MessageId, Target};
use entities_core::store::{
    Batch, EntityQuery, EntityRecord, EntityRecordPage, IdempotencyKey, InstanceQuery,
    InstanceRecord, InstanceRecordPage, LockRecord, Recovery, SetAsideMessage, Store, StoreStats,
};
use entities_core::{EntityId, Error, StoreError, StoreErrorKind};
use futures::future::BoxFuture;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::file::DbFile;
use crate::writer::WriteRequest;

/// How hard SQLite syncs to disk at each commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `synchronous=FULL`: a commit is on disk when it returns, even after a power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode, a commit survives a process crash but the last
    /// commits may be lost on power loss; faster.
    Normal,
}

/// Options of [`SqliteStore::open_with`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Durability of commits. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// Read connections. Default 2.
    pub readers: usize,
    /// Page cache of the write connection, in MiB. Default 32.
    pub writer_cache_mib: u32,
    /// Page cache of each read connection, in MiB. Default 8.
    pub reader_cache_mib: u32,
    /// How long a send waits while the database does not accept writes (a full disk, a
    /// read-only file) before it fails with [`StoreErrorKind::Unavailable`], nothing of it
    /// applied. Default 30 s.
    pub unavailable_timeout: std::time::Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            readers: 2,
            writer_cache_mib: 32,
            reader_cache_mib: 8,
            unavailable_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// What the writer has written since the store was opened (see [`SqliteStore::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Requests (batches and clean-ups) applied in them.
    pub requests: u64,
    /// Message rows inserted.
    pub messages_written: u64,
    /// Messages never written: produced and consumed within one transaction.
    pub messages_elided: u64,
    /// Message rows deleted.
    pub messages_deleted: u64,
    /// Entity rows written (one per entity per transaction, however many batches changed it).
    pub entity_rows_written: u64,
}

impl WriteStats {
    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &WriteStats) {
        self.transactions += other.transactions;
        self.requests += other.requests;
        self.messages_written += other.messages_written;
        self.messages_elided += other.messages_elided;
        self.messages_deleted += other.messages_deleted;
        self.entity_rows_written += other.entity_rows_written;
    }
}

/// The embedded SQLite store. Cheap to clone; clones share the database.
///
/// A store opened with [`SqliteStore::open`] owns its database file: no other store, in this
/// process or another, can open it until this one is closed ([`Store::close`]) or its last
/// clone is dropped, or its process ends.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer thread; `None` for a store opened read-only.
    writer: Option<Writer>,
    closed: Arc<AtomicBool>,
    stats: Arc<Mutex<WriteStats>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    path: Option<PathBuf>,
    /// The locked lock file while this store owns the database (see [`own`]); taken out and
    /// closed by `close`. The writer thread writes to it to check for free space.
    lock: Arc<Mutex<Option<File>>>,
    /// The database file the writer opened, checked by `ping` as by every commit; `None` for
    /// an in-memory or read-only store.
    file: Option<Arc<DbFile>>,
    /// See [`SqliteOptions::unavailable_timeout`].
    unavailable_timeout: std::time::Duration,
}

/// The writer thread's queue and connection.
struct Writer {
    queue: mpsc::Sender<writer::Traced>,
    conn: Arc<Mutex<Connection>>,
}

impl Inner {
    /// Stops the writes, waits for the one under way and gives up the ownership.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(writer) = &self.writer {
            // The writer holds the connection for a whole group: taking it waits for the
            // group under way; later groups see the flag and write nothing.
            drop(
                writer
                    .conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
        // Closing the file releases the lock: nothing of this store can be written any more.
        drop(
            self.lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// The kind of a SQLite failure; `os` is the operating system's error behind it, if known.
fn sqlite_kind(err: &rusqlite::Error, os: Option<&std::io::Error>) -> StoreErrorKind {
    match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreErrorKind::DiskFull,
        // Every SQLITE_READONLY_* code has this primary code.
        Some(ErrorCode::ReadOnly) => StoreErrorKind::ReadOnly,
        // `EPERM` (an immutable file), `EACCES` and `EROFS` (a read-only mount) on a write.
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            match os.map(std::io::Error::kind) {
                Some(
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem,
                ) => StoreErrorKind::ReadOnly,
                Some(std::io::ErrorKind::StorageFull) => StoreErrorKind::DiskFull,
                _ => StoreErrorKind::Io,
            }
        }
        _ => StoreErrorKind::Other,
    }
}

/// A SQLite failure as a [`StoreError`] of its kind, with `err` as its source.
pub(crate) fn sqlite_error(context: impl std::fmt::Display, err: rusqlite::Error) -> StoreError {
    classified(context, err, None)
}

/// A failure of a write on `conn` as a [`StoreError`] of its kind, with `err` as its source:
/// for an I/O failure, the operating system's error behind it (`sqlite3_system_errno`)
/// decides the kind and is named in the message. Call it before anything else runs on
/// `conn`.
pub(crate) fn sqlite_write_error(
    conn: &Connection,
    context: impl std::fmt::Display,
    err: rusqlite::Error,
) -> StoreError {
    let os = match err.sqlite_error_code() {
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            // SAFETY: the handle is valid while `conn` is borrowed, and
            // `sqlite3_system_errno` only reads a field of it; the caller holds the connection
            // (behind its mutex), so no other thread uses it meanwhile.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
            (errno != 0).then(|| std::io::Error::from_raw_os_error(errno))
        }
        _ => None,
    };
    classified(context, err, os)
}

/// `err` as a [`StoreError`] of its kind; `os` is the operating system's error behind it.
fn classified(
    context: impl std::fmt::Display,
    err: rusqlite::Error,
    os: Option<std::io::Error>,
) -> StoreError {
    let kind = sqlite_kind(&err, os.as_ref());
    match (os, kind) {
        (Some(os), StoreErrorKind::ReadOnly) => StoreError::with_kind(
            kind,
            format!(
                "{context}: the database files cannot be written ({os}: is the mount \
                 read-only, a file immutable, or a permission missing?); make them writable \
                 and the runtime resumes by itself"
            ),
            err,
        ),
        (Some(os), _) => StoreError::with_kind(kind, format!("{context}: {os}"), err),
        (None, _) => StoreError::with_kind(kind, context, err),
    }
}

/// A file-system failure as a [`StoreError`] of its kind, with `err` as its source.
pub(crate) fn io_error(context: impl std::fmt::Display, err: std::io::Error) -> StoreError {
    let kind = match err.kind() {
        std::io::ErrorKind::StorageFull => StoreErrorKind::DiskFull,
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            StoreErrorKind::ReadOnly
        }
        _ => StoreErrorKind::Io,
    };
    StoreError::with_kind(kind, context, err)
}

/// The lock file of the database at `path`: `<path>-lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    PathBuf::from(name)
}

/// Makes this store the only owner of the database at `path`: takes an exclusive lock on its
/// lock file, held until the returned file is closed (or the process ends).
///
/// The lock is on a separate file, not on the database: SQLite locks the database with POSIX
/// `fcntl` locks, and closing *any* descriptor of a file drops every such lock the process
/// holds on it. A descriptor of our own on the database would have to stay open as long as
/// any connection, in any store of this process, uses the file; a separate file has no such
/// hazard; nor does it get in the way of SQLite's I/O where locks are mandatory (Windows).
/// On Linux `flock`, which `File::try_lock` uses, is independent of `fcntl` locks, and it
/// conflicts between two descriptors of one process, so that a second store of the same
/// process is refused too. The lock file is never deleted: deleting it while another process
/// is about to lock it would let two owners in.
fn own(path: &Path) -> Result<File, StoreError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            io_error(
                format!("cannot open the lock file `{}`", lock_path.display()),
                e,
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::of_kind(
            StoreErrorKind::InUse,
            format!(
                "the database `{}` is in use: another runtime (in this process or another) \
                 holds its lock file `{}`; stop that runtime first, or inspect the database \
                 with `SqliteStore::open_read_only`",
                path.display(),
                lock_path.display()
            ),
        )),
        Err(TryLockError::Error(e)) => Err(io_error(
            format!("cannot lock the lock file `{}`", lock_path.display()),
            e,
        )),
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`, in WAL mode with `synchronous=FULL`.
    ///
    /// The store owns the file until it is closed or its last clone is dropped: opening it
    /// again meanwhile, in this process or another, fails with a [`StoreErrorKind::InUse`]
    /// store error. The ownership is a lock on the file `<path>-lock`, created next to it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the database file at `path` with these options; see
    /// [`SqliteStore::open`].
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let lock = own(&path)?;
        let context = |what: &str| format!("{what} `{}`", path.display());
        let mut conn = Connection::open(&path)
            .map_err(|e| sqlite_error(context("cannot open the database"), e))?;
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 10000; \
             PRAGMA cache_size = -{};",
            options.writer_cache_mib as u64 * 1024
        ))
        .map_err(|e| sqlite_error(context("cannot configure the database"), e))?;
        schema::migrate(&mut conn)
            .map_err(|e| e.context(context("cannot migrate the database")))?;
        let file = DbFile::opened(&path)?;
        let readers = open_readers(&path, &options)?;
        Ok(Self::start(
            Arc::new(Mutex::new(conn)),
            readers,
            Some(path),
            Some((lock, file)),
            options.unavailable_timeout,
        ))
    }

    /// Opens the existing database at `path` for reads only, without owning it: it can be
    /// inspected while a runtime, in this process or another, owns it. Every write (commit,
    /// clean-up, purge, resume) fails with a [`StoreErrorKind::ReadOnly`] store error.
    ///
    /// Neither creates nor migrates the file: fails if it does not exist or its schema is of
    /// another version than this build's.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        std::fs::metadata(&path).map_err(|e| {
            io_error(
                format!("cannot open the database `{}` read-only", path.display()),
                e,
            )
        })?;
        let readers = open_readers(&path, &SqliteOptions::default())?;
        schema::check(
            &readers[0]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .map_err(|e| e.context(format!("cannot read the database `{}`", path.display())))?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: None,
                closed: Arc::new(AtomicBool::new(false)),
                stats: Arc::new(Mutex::new(WriteStats::default())),
                readers,
                next_reader: AtomicUsize::new(0),
                path: Some(path),
                lock: Arc::new(Mutex::new(None)),
                file: None,
                unavailable_timeout: SqliteOptions::default().unavailable_timeout,
            }),
        })
    }

    /// A private in-memory database, for tests: nothing survives the process.
    pub fn in_memory() -> Result<Self, Error> {
        let mut conn = Connection::open_in_memory()
            .map_err(|e| sqlite_error("cannot open an in-memory database", e))?;
        schema::migrate(&mut conn).map_err(|e| e.context("cannot create the schema"))?;
        let conn = Arc::new(Mutex::new(conn));
        let timeout = SqliteOptions::default().unavailable_timeout;
        Ok(Self::start(conn.clone(), vec![conn], None, None, timeout))
    }

    /// Starts the writer thread; `owned` is the lock file and the database file of a store
    /// on a file.
    fn start(
        writer_conn: Arc<Mutex<Connection>>,
        readers: Vec<Arc<Mutex<Connection>>>,
        path: Option<PathBuf>,
        owned: Option<(File, DbFile)>,
        unavailable_timeout: std::time::Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let (lock, file) = match owned {
            Some((lock, file)) => (Some(lock), Some(Arc::new(file))),
            None => (None, None),
        };
        let lock = Arc::new(Mutex::new(lock));
        let writer = writer::Writer {
            conn: writer_conn.clone(),
            closed: closed.clone(),
            stats: stats.clone(),
            lock: lock.clone(),
            file: file.clone(),
        };
        std::thread::Builder::new()
            .name("entities-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .expect("spawning the sqlite writer thread");
        Self {
            inner: Arc::new(Inner {
                writer: Some(Writer {
                    queue: tx,
                    conn: writer_conn,
                }),
                closed,
                stats,
                readers,
                next_reader: AtomicUsize::new(0),
                path,
                lock,
                file,
                unavailable_timeout,
            }),
        }
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Counts of what the writer has written since the store was opened, committed
    /// transactions only.
    pub fn stats(&self) -> WriteStats {
        *self
            .inner
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a read on one of the read connections, off the async executor.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, sql::ReadError> + Send + 'static,
    {
        let i = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) % self.inner.readers.len();
        let conn = self.inner.readers[i].clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn).map_err(StoreError::from)
        })
        .await
        .map_err(|e| StoreError::new(format!("sqlite read task failed: {e}")))?
    }

    /// Sets aside the messages that cannot be decoded, through the writer; returns how many
    /// it moved.
    async fn set_aside(&self, messages: Vec<sql::Undecodable>) -> Result<usize, StoreError> {
        if messages.is_empty() {
            return Ok(0);
        }
        let moved = self
            .queue(|tx| WriteRequest::SetAside(messages, tx))
            .await
            .map_err(|e| e.context("cannot set aside stored messages that cannot be decoded"))?;
        Ok(moved as usize)
    }

    /// Queues a request for the writer thread now; the returned future waits for its answer.
    fn queue<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteRequest,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
    {
        let stopped = || {
            StoreError::of_kind(
                StoreErrorKind::Closed,
                "the sqlite writer thread has stopped",
            )
        };
        let (tx, rx) = oneshot::channel();
        let sent = match &self.inner.writer {
            // The writer thread writes it inside the caller's span.
            Some(writer) => writer
                .queue
                .send((request(tx), tracing::Span::current()))
                .map_err(|_| stopped()),
            None => Err(StoreError::of_kind(
                StoreErrorKind::ReadOnly,
                format!(
                    "the database `{}` was opened with `SqliteStore::open_read_only`: it cannot \
                     be written",
                    self.path().unwrap_or(Path::new("")).display()
                ),
            )),
        };
        async move {
            sent?;
            rx.await.map_err(|_| stopped())?
        }
    }
}

/// Opens the read connections of a database.
fn open_readers(
    path: &Path,
    options: &SqliteOptions,
) -> Result<Vec<Arc<Mutex<Connection>>>, StoreError> {
    let context = |what: &str| format!("{what} `{}`", path.display());
    let mut readers = Vec::new();
    for _ in 0..options.readers.max(1) {
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_error(context("cannot open a read connection to"), e))?;
        reader
            .execute_batch(&format!(
                "PRAGMA busy_timeout = 10000; PRAGMA cache_size = -{};",
                options.reader_cache_mib as u64 * 1024
            ))
            .map_err(|e| sqlite_error(context("cannot configure a read connection to"), e))?;
        readers.push(Arc::new(Mutex::new(reader)));
    }
    Ok(readers)
}

#[async_trait]
impl Store for SqliteStore {
    async fn recover(&self, horizon: u64) -> Result<Recovery, StoreError> {
        let (rows, max_message_id) = self.read(move |conn| sql::recover(conn, horizon)).await?;
        let set_aside = self.set_aside(rows.undecodable).await?;
        Ok(Recovery {
            messages: rows.messages,
            max_message_id,
            set_aside,
            partitions: None,
        })
    }

    async fn scheduled_messages(
        &self,
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = self
            .read(move |conn| sql::scheduled_messages(conn, after, until, limit))
            .await?;
        self.set_aside(rows.undecodable).await?;
        Ok(rows.messages)
    }

    async fn scheduled_for(&self, target: &Target) -> Result<Vec<Message>, StoreError> {
        let target = target.clone();
        let rows = self
            .read(move |conn| sql::scheduled_for(conn, &target))
            .await?;
        self.set_aside(rows.undecodable).await?;
        Ok(rows.messages)
    }

    async fn idle_entities(
        &self,
        name: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<EntityId>, StoreError> {
        let name = name.to_string();
        self.read(move |conn| sql::idle_entities(conn, &name, before, limit))
            .await
    }

    async fn set_aside_messages(&self) -> Result<Vec<SetAsideMessage>, StoreError> {
        self.read(sql::set_aside_messages).await
    }

    fn commit(&self, batch: Batch) -> BoxFuture<'static, Result<Batch, StoreError>> {
        let answer = self.queue(|tx| WriteRequest::Commit(batch, tx));
        Box::pin(answer)
    }

    async fn load_entities(&self, ids: Vec<EntityId>) -> Result<Vec<EntityRecord>, StoreError> {
        self.read(move |conn| sql::load_entities(conn, &ids)).await
    }

    async fn idempotency_key(&self, key: &str) -> Result<Option<IdempotencyKey>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| sql::idempotency_key(conn, &key))
            .await
    }

    async fn read_entity(&self, id: &EntityId) -> Result<Option<EntityRecord>, StoreError> {
        let id = id.clone();
        self.read(move |conn| sql::read_entity(conn, &id)).await
    }

    async fn query_entities(&self, query: &EntityQuery) -> Result<EntityRecordPage, StoreError> {
        let query = query.clone();
        self.read(move |conn| sql::query_entities(conn, &query))
            .await
    }

    async fn query_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<InstanceRecordPage, StoreError> {
        let query = query.clone();
        self.read(move |conn| sql::query_instances(conn, &query))
            .await
    }

    async fn locked_entities(&self) -> Result<Vec<LockRecord>, StoreError> {
        self.read(sql::locked_entities).await
    }

    async fn count_entities(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(sql::count_entities).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(sql::stats).await
    }

    async fn delete_empty_entities(&self) -> Result<u64, StoreError> {
        self.queue(WriteRequest::DeleteEmptyEntities).await
    }

    async fn read_instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| sql::read_instance(conn, &id)).await
    }

    async fn read_history(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| sql::read_history(conn, &id)).await
    }

    async fn purge_instance(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.queue(|tx| WriteRequest::PurgeInstance(id, tx)).await
    }

    async fn purge_instances(&self, query: &InstanceQuery) -> Result<u64, StoreError> {
        let query = query.clone();
        self.queue(|tx| WriteRequest::PurgeInstances(query, tx))
            .await
    }

    async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.read(sql::running_instances).await
    }

    fn unavailable_timeout(&self) -> std::time::Duration {
        self.inner.unavailable_timeout
    }

    /// Checks that the database file is still the one the store opened: one deleted or
    /// replaced fails with [`StoreErrorKind::Gone`] (as every commit then does), so that a
    /// readiness probe reports it. The check runs off the async executor.
    async fn ping(&self) -> Result<(), StoreError> {
        let Some(file) = self.inner.file.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || file.check())
            .await
            .map_err(|e| StoreError::new(format!("sqlite ping task failed: {e}")))?
    }

    /// Stops the writes, waits for the one under way and gives up the ownership of the
    /// database file: it can be opened again. Reads keep working.
    fn close(&self) {
        self.inner.close();
    }

    /// See [`Store::resume`]. The check (run even if no commit failed) commits a write that
    /// changes nothing and, for a database file, writes and syncs 1 MiB to its lock file, then
    /// empties it again: SQLite reuses the space of a failed commit, so that a small commit
    /// can succeed on a full disk; only a write of new data tells. A read-only store fails
    /// with [`StoreErrorKind::ReadOnly`], a closed one with [`StoreErrorKind::Closed`].
    fn resume(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(self.queue(WriteRequest::Resume))
    }
}

#[cfg(test)]
mod tests {
    use entities_core::message::{Body, Message, Target};
    use entities_core::store::{
        Batch, EntityQuery, EntityRecord, InstanceRecord, InstanceWrite, RuntimeStatus, Store,
    };
    use entities_core::{EntityId, StoreErrorKind};

    use super::*;

    fn signal(id: u64) -> Message {
        Message {
            id,
            target: Target::Entity(EntityId::new("Counter", "k")),
            deliver_at: None,
            body: Body::Operation {
                name: "add".into(),
                input: Some(serde_json::json!(1)),
                reply: None,
                sender: None,
            },
        }
    }

    fn batch(messages: Vec<Message>) -> Batch {
        Batch {
            produced: messages,
            ..Batch::default()
        }
    }

    fn create(id: &str) -> Batch {
        Batch {
            produced: vec![],
            instances: vec![InstanceWrite {
                record: InstanceRecord {
                    id: id.into(),
                    name: "o".into(),
                    status: RuntimeStatus::Running,
                    input: serde_json::Value::Null,
                    output: None,
                    created: 0,
                    updated: 0,
                    held: None,
                },
                first_event: 0,
                events: vec![],
                create: true,
                restart: false,
            }],
            ..Batch::default()
        }
    }

    #[tokio::test]
    async fn a_failed_batch_stops_all_later_writes() {
        let store = SqliteStore::in_memory().unwrap();
        store.commit(batch(vec![signal(1)])).await.unwrap();
        // A batch that cannot apply (its message id is taken), then a good one queued behind it.
        let (bad, good) = tokio::join!(
            store.commit(batch(vec![signal(2), signal(1)])),
            store.commit(batch(vec![signal(3)]))
        );
        assert!(bad.is_err());
        assert!(good.is_err(), "a batch after a failed one must not land");
        assert!(store.commit(batch(vec![signal(4)])).await.is_err());
        let recovered = store.recover(u64::MAX).await.unwrap();
        let ids: Vec<u64> = recovered.messages.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [1],
            "nothing of the failed batch or after it was written"
        );
    }

    #[tokio::test]
    async fn a_failed_commit_carries_its_cause_and_resume_accepts_writes_again() {
        let store = SqliteStore::in_memory().unwrap();
        store.commit(batch(vec![signal(1)])).await.unwrap();
        let (bad, later) = tokio::join!(
            store.commit(batch(vec![signal(2), signal(1)])),
            store.commit(batch(vec![signal(3)]))
        );
        let bad = bad.unwrap_err();
        let cause = std::error::Error::source(&bad).expect("the sqlite error is the source");
        assert!(
            cause.to_string().contains("UNIQUE constraint failed"),
            "{cause}"
        );
        let later = later.unwrap_err();
        assert!(
            later.to_string().contains("UNIQUE constraint failed"),
            "{later}"
        );
        assert!(std::error::Error::source(&later).is_some());

        // A resume queued behind a refused batch: the batch is refused, the one after lands.
        let refused = store.commit(batch(vec![signal(4)]));
        let resumed = store.resume();
        let accepted = store.commit(batch(vec![signal(5)]));
        assert!(refused.await.is_err());
        resumed.await.unwrap();
        accepted.await.unwrap();
        let recovered = store.recover(u64::MAX).await.unwrap();
        let ids: Vec<u64> = recovered.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 5]);
    }

    #[tokio::test]
    async fn a_closed_store_refuses_writes_as_closed() {
        let store = SqliteStore::in_memory().unwrap();
        store.close();
        let err = store.commit(batch(vec![signal(1)])).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Closed);
        assert_eq!(
            store.resume().await.unwrap_err().kind(),
            StoreErrorKind::Closed
        );
    }

    #[test]
    fn sqlite_failures_are_classified() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let kinds = [
            (rusqlite::ffi::SQLITE_FULL, StoreErrorKind::DiskFull),
            (rusqlite::ffi::SQLITE_READONLY, StoreErrorKind::ReadOnly),
            (
                rusqlite::ffi::SQLITE_READONLY_DIRECTORY,
                StoreErrorKind::ReadOnly,
            ),
            (rusqlite::ffi::SQLITE_IOERR_WRITE, StoreErrorKind::Io),
            (rusqlite::ffi::SQLITE_CANTOPEN, StoreErrorKind::Io),
            (rusqlite::ffi::SQLITE_CORRUPT, StoreErrorKind::Other),
        ];
        for (code, kind) in kinds {
            let err = sqlite_error("context", failure(code));
            assert_eq!(err.kind(), kind, "code {code}");
            assert!(std::error::Error::source(&err).is_some());
        }
    }

    /// The OS error behind an I/O failure decides its kind: what `sqlite3_system_errno` gives
    /// for a write refused by an immutable file (`EPERM`), a permission (`EACCES`) or a
    /// read-only mount (`EROFS`) is `ReadOnly`. (`EPERM` is provoked for real in
    /// `tests/read_only.rs`; the others cannot be without mounting.)
    #[cfg(target_os = "linux")]
    #[test]
    fn io_failures_are_classified_by_their_os_error() {
        const EPERM: i32 = 1;
        const EIO: i32 = 5;
        const EACCES: i32 = 13;
        const ENOSPC: i32 = 28;
        const EROFS: i32 = 30;
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let kinds = [
            (
                rusqlite::ffi::SQLITE_IOERR_WRITE,
                EPERM,
                StoreErrorKind::ReadOnly,
            ),
            (
                rusqlite::ffi::SQLITE_IOERR_FSYNC,
                EROFS,
                StoreErrorKind::ReadOnly,
            ),
            (
                rusqlite::ffi::SQLITE_IOERR_TRUNCATE,
                EACCES,
                StoreErrorKind::ReadOnly,
            ),
            (
                rusqlite::ffi::SQLITE_CANTOPEN,
                EACCES,
                StoreErrorKind::ReadOnly,
            ),
            (
                rusqlite::ffi::SQLITE_IOERR_WRITE,
                ENOSPC,
                StoreErrorKind::DiskFull,
            ),
            (rusqlite::ffi::SQLITE_IOERR_WRITE, EIO, StoreErrorKind::Io),
            // Only I/O failures are classified by it.
            (rusqlite::ffi::SQLITE_CORRUPT, EPERM, StoreErrorKind::Other),
        ];
        for (code, errno, kind) in kinds {
            let os = std::io::Error::from_raw_os_error(errno);
            let err = classified("context", failure(code), Some(os));
            assert_eq!(err.kind(), kind, "code {code}, errno {errno}");
            assert!(
                err.to_string().contains(&format!("os error {errno}")),
                "the OS error is named: {err}"
            );
            let cause = std::error::Error::source(&err).expect("SQLite's error is the source");
            assert!(cause.downcast_ref::<rusqlite::Error>().is_some());
        }
    }

    #[tokio::test]
    async fn a_key_prefix_with_nul_matches_bytes() {
        let store = SqliteStore::in_memory().unwrap();
        let keys = ["a\0b", "a\0c", "a\0", "a", "ab", "a\u{1}"];
        let entities = keys.iter().map(|key| entity(key, 1)).collect();
        store
            .commit(Batch {
                entities,
                ..Batch::default()
            })
            .await
            .unwrap();
        let keys_with = |prefix: &str| {
            let query = EntityQuery {
                key_prefix: Some(prefix.into()),
                ..EntityQuery::default()
            };
            let store = store.clone();
            async move {
                let page = store.query_entities(&query).await.unwrap();
                page.entities
                    .iter()
                    .map(|e| e.id.key().to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(keys_with("a\0").await, ["a\0", "a\0b", "a\0c"]);
        assert_eq!(keys_with("a\0b").await, ["a\0b"]);
        assert_eq!(keys_with("a").await.len(), keys.len());
        assert_eq!(keys_with("a\u{1}").await, ["a\u{1}"]);
    }

    #[tokio::test]
    async fn batches_apply_in_the_order_commit_was_called() {
        let store = SqliteStore::in_memory().unwrap();
        // Queue a batch storing message 1, then one consuming it; await them the other way
        // round. Applied out of order, the delete would find nothing and message 1 would stay.
        let store_it = store.commit(batch(vec![signal(1)]));
        let consume_it = store.commit(Batch {
            consumed: vec![1],
            ..Batch::default()
        });
        consume_it.await.unwrap();
        store_it.await.unwrap();
        assert!(store.recover(u64::MAX).await.unwrap().messages.is_empty());
    }

    fn entity(key: &str, value: i64) -> EntityRecord {
        EntityRecord {
            id: EntityId::new("Counter", key),
            state: Some(serde_json::json!(value)),
            state_version: 1,
            lock_owner: None,
            last_modified: 0,
            pending_messages: 0,
        }
    }

    /// Queues the batches while the writer is held, so that they land in one transaction.
    async fn in_one_group(store: &SqliteStore, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        let held = store.inner.writer.as_ref().unwrap().conn.lock().unwrap();
        let commits: Vec<_> = batches.into_iter().map(|b| store.commit(b)).collect();
        drop(held);
        let mut results = Vec::new();
        for commit in commits {
            results.push(commit.await.map(|_| ()));
        }
        results
    }

    #[tokio::test]
    async fn a_message_consumed_in_the_transaction_that_stores_it_is_never_written() {
        let store = SqliteStore::in_memory().unwrap();
        let results = in_one_group(
            &store,
            vec![
                batch(vec![signal(1), signal(2)]),
                Batch {
                    consumed: vec![1],
                    entities: vec![entity("k", 1)],
                    ..Batch::default()
                },
            ],
        )
        .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let stats = store.stats();
        assert_eq!(stats.transactions, 1);
        assert_eq!(
            (
                stats.messages_written,
                stats.messages_elided,
                stats.messages_deleted
            ),
            (1, 1, 0)
        );
        let ids: Vec<u64> = store
            .recover(u64::MAX)
            .await
            .unwrap()
            .messages
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [2]);
    }

    #[tokio::test]
    async fn an_entity_written_by_several_batches_of_a_group_is_written_once_with_the_last() {
        let store = SqliteStore::in_memory().unwrap();
        let write = |value| Batch {
            entities: vec![entity("k", value)],
            ..Batch::default()
        };
        let results = in_one_group(&store, vec![write(1), write(2), write(3)]).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(store.stats().entity_rows_written, 1);
        let id = EntityId::new("Counter", "k");
        let record = store.read_entity(&id).await.unwrap().unwrap();
        assert_eq!(record.state, Some(serde_json::json!(3)));
    }

    #[tokio::test]
    async fn an_isolated_batch_sees_the_rows_held_back_before_it() {
        let store = SqliteStore::in_memory().unwrap();
        // The second batch deletes the message the first stores: it must find it written.
        let mut consume = create("a");
        consume.consumed = vec![5];
        let results = in_one_group(&store, vec![batch(vec![signal(5)]), consume]).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(store.recover(u64::MAX).await.unwrap().messages.is_empty());
    }

    #[tokio::test]
    async fn a_message_stored_twice_in_one_group_fails_the_group() {
        let store = SqliteStore::in_memory().unwrap();
        let results =
            in_one_group(&store, vec![batch(vec![signal(1)]), batch(vec![signal(1)])]).await;
        assert!(results.iter().all(Result::is_err), "{results:?}");
        assert!(store.recover(u64::MAX).await.unwrap().messages.is_empty());
    }

    #[tokio::test]
    async fn a_conflicting_creation_fails_alone() {
        let store = SqliteStore::in_memory().unwrap();
        store.commit(create("a")).await.unwrap();
        let (dup, other) = tokio::join!(
            store.commit(create("a")),
            store.commit(batch(vec![signal(7)]))
        );
        assert!(dup.unwrap_err().is_conflict());
        other.unwrap();
        store.commit(batch(vec![signal(8)])).await.unwrap();
        assert_eq!(store.recover(u64::MAX).await.unwrap().messages.len(), 2);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }
}
