//! `SqliteStore`: the embedded store of `entities`, on SQLite in WAL mode.
//!
//! One writer thread owns the write connection and merges every batch queued at the moment
//! into one transaction (group commit); reads run on separate connections through
//! `spawn_blocking`, so no SQLite call blocks an async worker thread.

#![warn(missing_docs)]

mod schema;
mod sql;
mod writer;

#[cfg(test)]
mod recovery_tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use entities_core::message::{Message, MessageId};
use entities_core::store::{
    Batch, EntityQuery, EntityRecord, EntityRecordPage, InstanceRecord, Recovery, SetAsideMessage,
    Store,
};
use entities_core::{EntityId, Error, StoreError};
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::sync::oneshot;

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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            readers: 2,
            writer_cache_mib: 32,
            reader_cache_mib: 8,
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
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<WriteRequest>,
    writer_conn: Arc<Mutex<Connection>>,
    closed: Arc<AtomicBool>,
    stats: Arc<Mutex<WriteStats>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    path: Option<PathBuf>,
}

fn open_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::new(format!("{what}: {err}")))
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`, in WAL mode with `synchronous=FULL`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the database file at `path` with these options.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let context = |what: &str| format!("{what} `{}`", path.display());
        let mut conn = Connection::open(&path)
            .map_err(|e| open_error(&context("cannot open the database"), e))?;
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 10000; \
             PRAGMA cache_size = -{};",
            options.writer_cache_mib as u64 * 1024
        ))
        .map_err(|e| open_error(&context("cannot configure the database"), e))?;
        schema::migrate(&mut conn)
            .map_err(|e| open_error(&context("cannot migrate the database"), e))?;
        let mut readers = Vec::new();
        for _ in 0..options.readers.max(1) {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| open_error(&context("cannot open a read connection to"), e))?;
            reader
                .execute_batch(&format!(
                    "PRAGMA busy_timeout = 10000; PRAGMA cache_size = -{};",
                    options.reader_cache_mib as u64 * 1024
                ))
                .map_err(|e| open_error(&context("cannot configure"), e))?;
            readers.push(Arc::new(Mutex::new(reader)));
        }
        Ok(Self::start(conn, readers, Some(path)))
    }

    /// A private in-memory database, for tests: nothing survives the process.
    pub fn in_memory() -> Result<Self, Error> {
        let mut conn = Connection::open_in_memory()
            .map_err(|e| open_error("cannot open an in-memory database", e))?;
        schema::migrate(&mut conn).map_err(|e| open_error("cannot create the schema", e))?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Self::start_shared(conn.clone(), vec![conn], None))
    }

    fn start(
        conn: Connection,
        readers: Vec<Arc<Mutex<Connection>>>,
        path: Option<PathBuf>,
    ) -> Self {
        Self::start_shared(Arc::new(Mutex::new(conn)), readers, path)
    }

    fn start_shared(
        writer_conn: Arc<Mutex<Connection>>,
        readers: Vec<Arc<Mutex<Connection>>>,
        path: Option<PathBuf>,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let (conn, flag, count) = (writer_conn.clone(), closed.clone(), stats.clone());
        std::thread::Builder::new()
            .name("entities-sqlite-writer".into())
            .spawn(move || writer::run(conn, rx, flag, count))
            .expect("spawning the sqlite writer thread");
        Self {
            inner: Arc::new(Inner {
                writer: tx,
                writer_conn,
                closed,
                stats,
                readers,
                next_reader: AtomicUsize::new(0),
                path,
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
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
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
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
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
        let (tx, rx) = oneshot::channel();
        let sent = self.inner.writer.send(request(tx));
        async move {
            let stopped = || StoreError::new("the sqlite writer thread has stopped");
            sent.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        }
    }
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

    async fn read_entity(&self, id: &EntityId) -> Result<Option<EntityRecord>, StoreError> {
        let id = id.clone();
        self.read(move |conn| sql::read_entity(conn, &id)).await
    }

    async fn query_entities(&self, query: &EntityQuery) -> Result<EntityRecordPage, StoreError> {
        let query = query.clone();
        self.read(move |conn| sql::query_entities(conn, &query))
            .await
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

    async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.read(sql::running_instances).await
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // The writer holds the connection for a whole group: taking it waits for the group
        // under way; later groups see the flag and write nothing.
        drop(
            self.inner
                .writer_conn
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

#[cfg(test)]
mod tests {
    use entities_core::message::{Body, Message, Target};
    use entities_core::store::{
        Batch, EntityRecord, InstanceRecord, InstanceWrite, RuntimeStatus, Store,
    };
    use entities_core::EntityId;

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
                },
                first_event: 0,
                events: vec![],
                create: true,
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
            lock_owner: None,
            last_modified: 0,
            pending_messages: 0,
        }
    }

    /// Queues the batches while the writer is held, so that they land in one transaction.
    async fn in_one_group(store: &SqliteStore, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        let held = store.inner.writer_conn.lock().unwrap();
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
