//! The writer thread: the only one that writes. It takes every request queued at the moment,
//! and those arriving while it writes them, and applies them in one transaction (group
//! commit), then answers each.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use entities_core::store::{Batch, InstanceWrite};
use entities_core::StoreError;
use rusqlite::{params, CachedStatement, Connection};
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::sql::status_text;

/// Most requests merged into one transaction.
const MAX_GROUP: usize = 4096;

/// A write asked of the writer thread.
pub(crate) enum WriteRequest {
    Commit(Batch, oneshot::Sender<Result<Batch, StoreError>>),
    DeleteEmptyEntities(oneshot::Sender<Result<u64, StoreError>>),
    PurgeInstance(String, oneshot::Sender<Result<bool, StoreError>>),
}

/// Runs until every sender is gone. After a write fails in a way that is not confined to its
/// own request, every later request is refused: later batches may build on the lost one.
/// Once `closed` is set, nothing more is written.
pub(crate) fn run(
    conn: Arc<Mutex<Connection>>,
    rx: Receiver<WriteRequest>,
    closed: Arc<AtomicBool>,
) {
    let mut group = Vec::new();
    let mut poisoned: Option<String> = None;
    while let Ok(first) = rx.recv() {
        // The group takes in more requests as it is written (see `apply_group`).
        group.push(first);
        let outcome = match &poisoned {
            Some(cause) => Err(format!(
                "an earlier write failed ({cause}); writes are refused"
            )),
            None => {
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                if closed.load(Ordering::SeqCst) {
                    Err("the store is closed".to_string())
                } else {
                    apply_group(&mut conn, &mut group, &rx, &closed)
                }
            }
        };
        if let (Err(cause), None) = (&outcome, &poisoned) {
            poisoned = Some(cause.clone());
        }
        debug!(
            requests = group.len(),
            ok = outcome.is_ok(),
            "group committed"
        );
        answer(group.drain(..), outcome);
    }
}

impl WriteRequest {
    /// Whether a failure of this request is its own: creations that may conflict, and client
    /// clean-ups. Engine batches are not: later batches may build on them.
    fn isolated(&self) -> bool {
        match self {
            WriteRequest::Commit(batch, _) => batch.instances.iter().any(|i| i.create),
            WriteRequest::DeleteEmptyEntities(_) | WriteRequest::PurgeInstance(..) => true,
        }
    }
}

/// What one request of a group came to.
type Outcome = Result<u64, StoreError>;

/// Applies every request in one transaction, taking in those that arrive meanwhile (until the
/// queue is empty, the group full or the store closed); an isolated request runs in a
/// savepoint of its own, so that its failure leaves the others applied. Returns each request's
/// result (counts for deletes); `Err` if the group fails as a whole: then nothing was applied.
fn apply_group(
    conn: &mut Connection,
    group: &mut Vec<WriteRequest>,
    rx: &Receiver<WriteRequest>,
    closed: &AtomicBool,
) -> Result<Vec<Outcome>, String> {
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut writes = Writes::new(&tx);
        let mut next = 0;
        loop {
            // Requests that arrived while this group was being written join it: the commit
            // (and its sync) is paid once for all of them.
            if next == group.len() {
                if group.len() >= MAX_GROUP || closed.load(Ordering::SeqCst) {
                    break;
                }
                match rx.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let request = &group[next];
            next += 1;
            if !request.isolated() {
                // Any failure here fails the whole group: nothing of it is written.
                let n = writes.apply(request).map_err(|e| e.to_string())?;
                results.push(Ok(n));
                continue;
            }
            tx.execute_batch("SAVEPOINT isolated")
                .map_err(|e| e.to_string())?;
            match writes.apply(request) {
                Ok(n) => {
                    tx.execute_batch("RELEASE isolated")
                        .map_err(|e| e.to_string())?;
                    results.push(Ok(n));
                }
                Err(err) => {
                    // Rolls this request back; the others stand.
                    tx.execute_batch("ROLLBACK TO isolated; RELEASE isolated")
                        .map_err(|e| e.to_string())?;
                    results.push(Err(request_error(err)));
                }
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(results)
}

fn request_error(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::conflict(format!("sqlite write refused: {err}"))
        }
        _ => StoreError::with_source("sqlite write failed", err),
    }
}

/// Answers each request of a group.
fn answer(group: impl Iterator<Item = WriteRequest>, outcome: Result<Vec<Outcome>, String>) {
    let mut results = match outcome {
        Ok(results) => results.into_iter(),
        Err(e) => {
            error!(error = %e, "sqlite group commit failed; nothing was written");
            Vec::new().into_iter()
        }
    };
    for request in group {
        let value = results.next().unwrap_or_else(|| {
            Err(StoreError::new(
                "sqlite group commit failed; nothing was written",
            ))
        });
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
        }
    }
}

/// The statements of the hot path, prepared once per group, with reused buffers.
struct Writes<'c> {
    conn: &'c Connection,
    delete: Option<CachedStatement<'c>>,
    insert: Option<CachedStatement<'c>>,
    upsert: Option<CachedStatement<'c>>,
    text: Vec<u8>,
    target: String,
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
        }
    }

    /// Applies one request; returns a count for deletes.
    fn apply(&mut self, request: &WriteRequest) -> rusqlite::Result<u64> {
        match request {
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
        }
    }

    fn batch(&mut self, batch: &Batch) -> rusqlite::Result<()> {
        let conn = self.conn;
        // Creations first: a conflict fails the request before anything else is written.
        for instance in batch.instances.iter().filter(|i| i.create) {
            write_instance(conn, instance)?;
        }
        if !batch.consumed.is_empty() {
            let delete = prepared(conn, &mut self.delete, "DELETE FROM messages WHERE id = ?1")?;
            for id in &batch.consumed {
                delete.execute([*id as i64])?;
            }
        }
        if !batch.produced.is_empty() {
            let insert = prepared(
                conn,
                &mut self.insert,
                "INSERT INTO messages (id, target, deliver_at, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for message in &batch.produced {
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
            }
        }
        if !batch.entities.is_empty() {
            let upsert = prepared(
                conn,
                &mut self.upsert,
                "INSERT INTO entities (name, key, state, lock_owner, last_modified) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, \
                 lock_owner = excluded.lock_owner, last_modified = excluded.last_modified",
            )?;
            for entity in &batch.entities {
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
                    entity.last_modified as i64
                ])?;
            }
        }
        for instance in batch.instances.iter().filter(|i| !i.create) {
            write_instance(conn, instance)?;
        }
        Ok(())
    }
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
    let output = r.output.as_ref().map(|v| v.to_string());
    let sql = if write.create {
        "INSERT INTO instances (id, name, status, input, output, created, updated) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING num"
    } else {
        "INSERT INTO instances (id, name, status, input, output, created, updated) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output, \
         updated = excluded.updated RETURNING num"
    };
    let num: i64 = tx.prepare_cached(sql)?.query_row(
        params![
            r.id,
            r.name,
            status_text(r.status),
            r.input.to_string(),
            output,
            r.created as i64,
            r.updated as i64
        ],
        |row| row.get(0),
    )?;
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

fn purge(tx: &Connection, id: &str) -> rusqlite::Result<u64> {
    tx.execute(
        "DELETE FROM history WHERE instance = (SELECT num FROM instances WHERE id = ?1)",
        [id],
    )?;
    let n = tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
    Ok(n as u64)
}
