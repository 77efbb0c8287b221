//! The writer thread: the only one that writes. It takes every request queued at the moment,
//! and those arriving while it writes them, and applies them in one transaction (group
//! commit), then answers each.
//!
//! Within a group, message inserts and entity rows are held back until the group is complete,
//! as the core's group-commit contract ([`Group`]) has it: a message consumed by a later batch
//! of the same group is never written, and an entity written by several batches is written
//! once, with its last record. The group commits atomically, so what lands is the same.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Seek, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use entities_core::message::{now_millis, Message, MessageId};
use entities_core::store::{
    Batch, DuplicateMessage, EntityRecord, Group, InstanceQuery, InstanceWrite,
};
use entities_core::{StoreError, StoreErrorKind};
use rusqlite::{params, CachedStatement, Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::file::DbFile;
use crate::sql::{status_text, Undecodable};
use crate::{io_error, sqlite_write_error, WriteStats};

/// Most requests merged into one transaction.
const MAX_GROUP: usize = 4096;

/// Bytes written to the lock file to check that the disk has space (see [`Writer::check`]).
const SPACE_CHECK: usize = 1 << 20;

/// A write asked of the writer thread.
// Nearly every request is a commit: boxing its batch would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum WriteRequest {
    Commit(Batch, oneshot::Sender<Result<Batch, StoreError>>),
    DeleteEmptyEntities(oneshot::Sender<Result<u64, StoreError>>),
    PurgeInstance(String, oneshot::Sender<Result<bool, StoreError>>),
    /// Deletes ended instances by query (see `Store::purge_instances`); answers how many.
    PurgeInstances(InstanceQuery, oneshot::Sender<Result<u64, StoreError>>),
    /// Accept writes again after a failure (see `Store::resume`). Never part of a group.
    Resume(oneshot::Sender<Result<(), StoreError>>),
    /// Moves messages that cannot be decoded to `set_aside_messages`; answers how many moved.
    SetAside(Vec<Undecodable>, oneshot::Sender<Result<u64, StoreError>>),
}

/// A request with the span of its caller, which the writer thread enters to write it.
pub(crate) type Traced = (WriteRequest, tracing::Span);

/// What the writer thread shares with its store.
pub(crate) struct Writer {
    /// The write connection, held for a whole group.
    pub(crate) conn: Arc<Mutex<Connection>>,
    /// Set when the store is closed: nothing more is written.
    pub(crate) closed: Arc<AtomicBool>,
    /// What was written.
    pub(crate) stats: Arc<Mutex<WriteStats>>,
    /// The lock file, while the store owns its database file.
    pub(crate) lock: Arc<Mutex<Option<File>>>,
    /// The database file, checked at each commit; `None` in memory.
    pub(crate) file: Option<Arc<DbFile>>,
}

impl Writer {
    /// Runs until every sender is gone. After a write fails in a way that is not confined to
    /// its own request, every later request is refused (later batches may build on the lost
    /// one) until a resume request finds the database writable; a resume request that does
    /// not, refuses the requests after it too. Once `closed` is set, nothing more is written.
    ///
    /// A group is written inside a span whose parent is its first request's caller's span
    /// (the runtime's `commit` span), and which follows from the other requests' callers.
    pub(crate) fn run(self, rx: Receiver<Traced>) {
        let mut group = Vec::new();
        let mut poisoned: Option<StoreError> = None;
        // A resume request that ended the last group.
        let mut next = None;
        while let Some((first, caller)) = next.take().or_else(|| rx.recv().ok()) {
            // The caller's subscriber too, for one set for its thread only.
            let dispatch = caller.with_subscriber(|(_, dispatch)| dispatch.clone());
            let write = || {
                let span = tracing::debug_span!(parent: &caller, "sqlite_write");
                let _entered = span.enter();
                self.write_group(first, &rx, &mut group, &mut next, &mut poisoned);
            };
            match dispatch {
                Some(dispatch) => tracing::dispatcher::with_default(&dispatch, write),
                None => write(),
            }
        }
    }

    /// Writes the group that `first` starts (or runs the resume request `first`).
    fn write_group(
        &self,
        first: WriteRequest,
        rx: &Receiver<Traced>,
        group: &mut Vec<WriteRequest>,
        next: &mut Option<Traced>,
        poisoned: &mut Option<StoreError>,
    ) {
        if let WriteRequest::Resume(tx) = first {
            let result = self.check();
            *poisoned = result.clone().err();
            let _ = tx.send(result);
            return;
        }
        // The group takes in more requests as it is written (see `apply_group`).
        group.push(first);
        let outcome = match &*poisoned {
            Some(cause) => Err(cause
                .clone()
                .context("refused: an earlier sqlite write failed and the store has not resumed")),
            None => {
                let conn = self
                    .conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if self.closed.load(Ordering::SeqCst) {
                    Err(closed())
                } else {
                    let outcome = self.apply_group(&conn, group, rx, next);
                    if let Err(e) = &outcome {
                        error!(error = %e, "sqlite group commit failed");
                        if e.kind() == StoreErrorKind::Gone {
                            self.orphaned(&conn);
                        }
                    }
                    outcome
                }
            }
        };
        if let (Err(cause), None) = (&outcome, &*poisoned) {
            *poisoned = Some(cause.clone());
        }
        debug!(
            requests = group.len(),
            ok = outcome.is_ok(),
            "group committed"
        );
        answer(group.drain(..), outcome);
    }

    /// Once the database file is noticed gone: checkpoints the WAL into the old file, which the
    /// connection still has open (a file renamed away then holds every commit; a deleted one
    /// can still be copied from `/proc/<pid>/fd`), then removes the `-wal` and `-shm` files
    /// at the path (see [`DbFile::remove_journals`]). If the checkpoint does not complete,
    /// they are left, with a warning.
    fn orphaned(&self, conn: &Connection) {
        let Some(file) = &self.file else { return };
        let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        });
        match checkpoint {
            Ok(0) => file.remove_journals(),
            Ok(_) => warn!(
                "the WAL of a database whose file went away could not be checkpointed (readers \
                 were busy); its -wal and -shm files are left at the path: move them away \
                 before a database is opened there"
            ),
            Err(e) => warn!(
                error = %e,
                "the WAL of a database whose file went away could not be checkpointed; its -wal \
                 and -shm files are left at the path: move them away before a database is \
                 opened there"
            ),
        }
    }

    /// Checks that the database accepts writes: commits a write that changes nothing, and, for
    /// a database file, writes and syncs [`SPACE_CHECK`] bytes to the lock file, then empties
    /// it. SQLite reuses the WAL space a failed commit took, so a small commit may succeed on a
    /// full disk; new data written to another file fails there. First of all, the database
    /// file must still be there (see [`DbFile::check`]).
    fn check(&self) -> Result<(), StoreError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        if let Some(file) = &self.file {
            file.check()?;
        }
        if let Some(file) = &mut *self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            let written = file
                .write_all(&[0; SPACE_CHECK])
                .and_then(|()| file.sync_data());
            // Emptied even if the write failed half-way: its bytes would hold the space.
            let emptied = file.set_len(0).and_then(|()| file.rewind());
            written.map_err(|e| match e.kind() {
                std::io::ErrorKind::StorageFull => {
                    io_error("the disk has no space for new writes", e)
                }
                _ => io_error("cannot write the lock file to check for free space", e),
            })?;
            emptied.map_err(|e| io_error("cannot empty the lock file", e))?;
        }
        let refused = |conn: &Connection, e| {
            sqlite_write_error(conn, "the database does not accept writes", e)
        };
        // Unchecked (borrowing the connection shared, for `refused`): this thread is the only
        // one using it, and no transaction is open on it.
        let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(|e| refused(&conn, e))?;
        // Writes the header page with what it holds: a real commit, changing nothing.
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| refused(&tx, e))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(|e| refused(&tx, e))?;
        let committed = tx.commit();
        committed.map_err(|e| refused(&conn, e))
    }

    /// Applies every request in one transaction, taking in those that arrive meanwhile (until
    /// the queue is empty, the group full, a resume request arrives, put in `next`, or the
    /// store closed); an isolated request runs in a savepoint of its own, so that its failure
    /// leaves the others applied. Returns each request's result (counts for deletes); `Err` if
    /// the group fails as a whole: then nothing was applied.
    fn apply_group(
        &self,
        conn: &Connection,
        group: &mut Vec<WriteRequest>,
        rx: &Receiver<Traced>,
        next: &mut Option<Traced>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let failed = |conn: &Connection, e| {
            sqlite_write_error(conn, "sqlite group commit failed; nothing was written", e)
        };
        // Unchecked (borrowing the connection shared, for `failed`): this thread is the only
        // one using it, and no transaction is open on it.
        let tx = conn.unchecked_transaction().map_err(|e| failed(conn, e))?;
        let mut results = Vec::with_capacity(group.len());
        let count = {
            let mut writes = Writes::new(&tx);
            let mut index = 0;
            loop {
                // Requests that arrived while this group was being written join it: the commit
                // (and its sync) is paid once for all of them.
                if index == group.len() {
                    if group.len() >= MAX_GROUP || self.closed.load(Ordering::SeqCst) {
                        break;
                    }
                    match rx.try_recv() {
                        Ok((request @ WriteRequest::Resume(_), caller)) => {
                            *next = Some((request, caller));
                            break;
                        }
                        Ok((request, caller)) => {
                            tracing::Span::current().follows_from(&caller);
                            group.push(request);
                        }
                        Err(_) => break,
                    }
                }
                let request = index;
                index += 1;
                if !group[request].isolated() {
                    // Any failure here fails the whole group: nothing of it is written.
                    let n = writes.defer(group, request).map_err(|e| failed(&tx, e))?;
                    results.push(Ok(n));
                    continue;
                }
                // What is held back goes first, outside the savepoint: a rollback of this
                // request must not take it along, and this request may read or consume it.
                writes.flush(group).map_err(|e| failed(&tx, e))?;
                tx.execute_batch("SAVEPOINT isolated")
                    .map_err(|e| failed(&tx, e))?;
                let count = writes.count;
                match writes.apply(&group[request]) {
                    Ok(n) => {
                        tx.execute_batch("RELEASE isolated")
                            .map_err(|e| failed(&tx, e))?;
                        results.push(Ok(n));
                    }
                    Err(err) => {
                        // Rolls this request back; the others stand.
                        tx.execute_batch("ROLLBACK TO isolated; RELEASE isolated")
                            .map_err(|e| failed(&tx, e))?;
                        writes.count = count;
                        results.push(Err(request_error(&tx, err)));
                    }
                }
            }
            writes.flush(group).map_err(|e| failed(&tx, e))?;
            writes.count
        };
        // A commit to a file that was deleted or replaced would be lost: it fails. Checked
        // before the commit, so that, in all but a narrow race, nothing of it is written (and
        // read) either; and after, so that none is acknowledged that was written to a file
        // gone meanwhile.
        if let Some(file) = &self.file {
            file.check()?;
        }
        let committed = tx.commit();
        committed.map_err(|e| failed(conn, e))?;
        if let Some(file) = &self.file {
            file.check()?;
        }
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stats.add(&WriteStats {
            transactions: 1,
            requests: group.len() as u64,
            ..count
        });
        Ok(results)
    }
}

impl WriteRequest {
    /// Whether a failure of this request is its own: creations that may conflict, and client
    /// clean-ups, setting messages aside. Engine batches are not: later batches may build on
    /// them.
    fn isolated(&self) -> bool {
        match self {
            WriteRequest::Commit(batch, _) => {
                batch.instances.iter().any(|i| i.create) || batch.keys_binding_since.is_some()
            }
            WriteRequest::DeleteEmptyEntities(_)
            | WriteRequest::PurgeInstance(..)
            | WriteRequest::PurgeInstances(..)
            | WriteRequest::Resume(_)
            | WriteRequest::SetAside(..) => true,
        }
    }
}

/// What one request of a group came to.
type Outcome = Result<u64, StoreError>;

/// The error of a write to a closed store.
fn closed() -> StoreError {
    StoreError::of_kind(StoreErrorKind::Closed, "the sqlite store is closed")
}

/// The error of one isolated request that failed on `conn`.
fn request_error(conn: &Connection, err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            StoreError::with_kind(StoreErrorKind::Conflict, "sqlite write refused", err)
        }
        _ => sqlite_write_error(conn, "sqlite write failed", err),
    }
}

/// Answers each request of a group: each gets its own result, or, if the group failed, the
/// group's error.
fn answer(group: impl Iterator<Item = WriteRequest>, outcome: Result<Vec<Outcome>, StoreError>) {
    let (mut results, failure) = match outcome {
        Ok(results) => (results.into_iter(), None),
        Err(e) => (Vec::new().into_iter(), Some(e)),
    };
    for request in group {
        let value = match (results.next(), &failure) {
            (Some(value), _) => value,
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(StoreError::new(
                "the sqlite writer lost this request's result",
            )),
        };
        match request {
            WriteRequest::Commit(batch, tx) => {
                let _ = tx.send(value.map(|_| batch));
            }
            WriteRequest::DeleteEmptyEntities(tx) => {
                let _ = tx.send(value);
            }
            WriteRequest::PurgeInstance(_, tx) => {
                let _ = tx.send(value.map(|n| n > 0));
            }
            WriteRequest::PurgeInstances(_, tx) => {
                let _ = tx.send(value);
            }
            WriteRequest::Resume(tx) => {
                let _ = tx.send(value.map(|_| ()));
            }
            WriteRequest::SetAside(_, tx) => {
                let _ = tx.send(value);
            }
        }
    }
}

/// The writes of one group: the statements of the hot path, prepared once per group, reused
/// buffers, and the rows held back until the group is complete.
struct Writes<'c> {
    conn: &'c Connection,
    delete: Option<CachedStatement<'c>>,
    insert: Option<CachedStatement<'c>>,
    upsert: Option<CachedStatement<'c>>,
    text: Vec<u8>,
    target: String,
    /// The rows held back until the group is complete (the group-commit contract).
    held: Group,
    /// What this group wrote so far (its rows only).
    count: WriteStats,
}

impl<'c> Writes<'c> {
    fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            delete: None,
            insert: None,
            upsert: None,
            text: Vec::with_capacity(256),
            target: String::with_capacity(64),
            held: Group::new(),
            count: WriteStats::default(),
        }
    }

    /// Applies one request now; returns a count for deletes.
    fn apply(&mut self, request: &WriteRequest) -> rusqlite::Result<u64> {
        match request {
            WriteRequest::Resume(_) => Ok(0),
            WriteRequest::Commit(batch, _) => self.batch(batch).map(|()| 0),
            WriteRequest::DeleteEmptyEntities(_) => self
                .conn
                .execute(
                    "DELETE FROM entities WHERE state IS NULL AND lock_owner IS NULL AND NOT EXISTS \
                     (SELECT 1 FROM messages WHERE target = '@' || entities.name || '@' || entities.key \
                      AND substr(target, 1, 1) = '@')",
                    [],
                )
                .map(|n| n as u64),
            WriteRequest::PurgeInstance(id, _) => purge(self.conn, id),
            WriteRequest::PurgeInstances(query, _) => crate::sql::purge_instances(self.conn, query),
            WriteRequest::SetAside(messages, _) => set_aside(self.conn, messages),
        }
    }

    /// Applies request `index` of the group, holding back its message inserts and entity rows
    /// (see [`Writes::flush`]). Not for isolated requests: their writes must land in their
    /// savepoint.
    fn defer(&mut self, group: &[WriteRequest], index: usize) -> rusqlite::Result<u64> {
        let WriteRequest::Commit(batch, _) = &group[index] else {
            return self.apply(&group[index]);
        };
        let deletes = self
            .held
            .add(index, batch)
            .map_err(|DuplicateMessage(id)| duplicate_message(id))?;
        self.count.messages_elided += (batch.consumed.len() - deletes.len()) as u64;
        for id in deletes {
            self.delete(id)?;
        }
        for instance in &batch.instances {
            write_instance(self.conn, instance)?;
        }
        write_keys(self.conn, batch)?;
        Ok(0)
    }

    /// Writes the rows held back: the messages still unconsumed, and each entity's last record.
    fn flush(&mut self, group: &[WriteRequest]) -> rusqlite::Result<()> {
        let batch = |request: usize| match &group[request] {
            WriteRequest::Commit(batch, _) => batch,
            _ => unreachable!("only batches hold rows back"),
        };
        let held = self.held.take();
        for (request, i) in held.messages {
            self.insert(&batch(request).produced[i])?;
        }
        for (request, i) in held.entities {
            self.upsert(&batch(request).entities[i])?;
        }
        Ok(())
    }

    fn batch(&mut self, batch: &Batch) -> rusqlite::Result<()> {
        // Creations first: a conflict fails the request before anything else is written.
        for instance in batch.instances.iter().filter(|i| i.create) {
            write_instance(self.conn, instance)?;
        }
        for id in &batch.consumed {
            self.delete(*id)?;
        }
        for message in &batch.produced {
            self.insert(message)?;
        }
        for entity in &batch.entities {
            self.upsert(entity)?;
        }
        for instance in batch.instances.iter().filter(|i| !i.create) {
            write_instance(self.conn, instance)?;
        }
        write_keys(self.conn, batch)
    }

    fn delete(&mut self, id: MessageId) -> rusqlite::Result<()> {
        let delete = prepared(
            self.conn,
            &mut self.delete,
            "DELETE FROM messages WHERE id = ?1",
        )?;
        delete.execute([id as i64])?;
        self.count.messages_deleted += 1;
        Ok(())
    }

    fn insert(&mut self, message: &Message) -> rusqlite::Result<()> {
        let insert = prepared(
            self.conn,
            &mut self.insert,
            "INSERT INTO messages (id, target, deliver_at, body) VALUES (?1, ?2, ?3, ?4)",
        )?;
        self.text.clear();
        serde_json::to_writer(&mut self.text, &message.body).map_err(conversion)?;
        self.target.clear();
        write!(self.target, "{}", message.target).expect("writing to a String");
        insert.execute(params![
            message.id as i64,
            self.target,
            message.deliver_at.map(|t| t as i64),
            std::str::from_utf8(&self.text).expect("serde_json writes UTF-8")
        ])?;
        self.count.messages_written += 1;
        Ok(())
    }

    fn upsert(&mut self, entity: &EntityRecord) -> rusqlite::Result<()> {
        let upsert = prepared(
            self.conn,
            &mut self.upsert,
            "INSERT INTO entities (name, key, state, lock_owner, last_modified, state_version) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, \
             lock_owner = excluded.lock_owner, last_modified = excluded.last_modified, \
             state_version = excluded.state_version",
        )?;
        let state = match &entity.state {
            None => None,
            Some(value) => {
                self.text.clear();
                serde_json::to_writer(&mut self.text, value).map_err(conversion)?;
                Some(std::str::from_utf8(&self.text).expect("serde_json writes UTF-8"))
            }
        };
        upsert.execute(params![
            entity.id.name(),
            entity.id.key(),
            state,
            entity.lock_owner,
            entity.last_modified as i64,
            i64::from(entity.state_version)
        ])?;
        self.count.entity_rows_written += 1;
        Ok(())
    }
}

/// Writes the idempotency keys of a batch: claims, then outcomes, then the forgetting of old
/// keys.
fn write_keys(conn: &Connection, batch: &Batch) -> rusqlite::Result<()> {
    if let Some(since) = batch.keys_binding_since {
        // Exclusive claims: a key still binding refuses the batch (it runs isolated).
        let mut claim = conn.prepare_cached(
            "INSERT INTO idempotency_keys (key, created, outcome) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET created = excluded.created, \
             outcome = excluded.outcome WHERE idempotency_keys.created < ?4",
        )?;
        for key in &batch.keys {
            let claimed = claim.execute(params![
                key.key,
                key.created as i64,
                key.outcome.to_string(),
                since as i64
            ])?;
            if claimed == 0 {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE),
                    Some(StoreError::key_claimed(&key.key).to_string()),
                ));
            }
        }
    } else if !batch.keys.is_empty() {
        let mut claim = conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys (key, created, outcome) VALUES (?1, ?2, ?3)",
        )?;
        for key in &batch.keys {
            claim.execute(params![
                key.key,
                key.created as i64,
                key.outcome.to_string()
            ])?;
        }
    }
    if !batch.key_outcomes.is_empty() {
        let mut update =
            conn.prepare_cached("UPDATE idempotency_keys SET outcome = ?2 WHERE key = ?1")?;
        for (key, outcome) in &batch.key_outcomes {
            update.execute(params![key, outcome.to_string()])?;
        }
    }
    if let Some(before) = batch.forget_keys_before {
        conn.prepare_cached("DELETE FROM idempotency_keys WHERE created < ?1")?
            .execute([before as i64])?;
    }
    Ok(())
}

/// The error SQLite gives for a message id used twice, for a duplicate within one group.
fn duplicate_message(id: MessageId) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
        Some(format!("message {id} is stored twice")),
    )
}

/// The statement in `slot`, prepared on first use.
fn prepared<'a, 'c>(
    conn: &'c Connection,
    slot: &'a mut Option<CachedStatement<'c>>,
    sql: &str,
) -> rusqlite::Result<&'a mut CachedStatement<'c>> {
    if slot.is_none() {
        *slot = Some(conn.prepare_cached(sql)?);
    }
    Ok(slot.as_mut().expect("prepared above"))
}

fn conversion(err: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(err))
}

fn write_instance(tx: &Connection, write: &InstanceWrite) -> rusqlite::Result<()> {
    let r = &write.record;
    let output = r.output.as_ref().map(std::string::ToString::to_string);
    let sql = if write.create {
        "INSERT INTO instances (id, name, status, input, output, created, updated, held) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING num"
    } else {
        "INSERT INTO instances (id, name, status, input, output, created, updated, held) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output, \
         updated = excluded.updated, held = excluded.held RETURNING num"
    };
    let num: i64 = tx.prepare_cached(sql)?.query_row(
        params![
            r.id,
            r.name,
            status_text(r.status),
            r.input.to_string(),
            output,
            r.created as i64,
            r.updated as i64,
            r.held
        ],
        |row| row.get(0),
    )?;
    if write.restart {
        // Continue-as-new: the new run's input, and its history alone.
        tx.prepare_cached("UPDATE instances SET input = ?2 WHERE num = ?1")?
            .execute(params![num, r.input.to_string()])?;
        tx.prepare_cached("DELETE FROM history WHERE instance = ?1")?
            .execute([num])?;
    }
    let mut insert =
        tx.prepare_cached("INSERT INTO history (instance, seq, event) VALUES (?1, ?2, ?3)")?;
    for (i, event) in write.events.iter().enumerate() {
        insert.execute(params![
            num,
            (write.first_event + i as u64) as i64,
            event.to_string()
        ])?;
    }
    Ok(())
}

/// Moves each message, as stored, from `messages` to `set_aside_messages` (one that is gone
/// already is skipped), logging it; returns how many it moved.
fn set_aside(tx: &Connection, messages: &[Undecodable]) -> rusqlite::Result<u64> {
    let mut copy = tx.prepare_cached(
        "INSERT OR REPLACE INTO set_aside_messages \
         (id, target, deliver_at, body, error, set_aside_at) \
         SELECT id, target, deliver_at, body, ?2, ?3 FROM messages WHERE id = ?1",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    let now = now_millis() as i64;
    let mut moved = 0;
    for message in messages {
        if copy.execute(params![message.id as i64, message.error, now])? == 0 {
            continue;
        }
        delete.execute([message.id as i64])?;
        moved += 1;
        warn!(
            id = message.id,
            target = %message.target,
            error = %message.error,
            "a stored message cannot be decoded: set aside (see `Store::set_aside_messages`)"
        );
    }
    Ok(moved)
}

fn purge(tx: &Connection, id: &str) -> rusqlite::Result<u64> {
    tx.execute(
        "DELETE FROM history WHERE instance = (SELECT num FROM instances WHERE id = ?1)",
        [id],
    )?;
    let n = tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
    Ok(n as u64)
}
