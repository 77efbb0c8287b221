//! The writer thread: the only one that writes. It takes every request queued at the moment
//! and applies them in one transaction (group commit), then answers each.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use entities_core::store::{Batch, InstanceWrite};
use entities_core::StoreError;
use rusqlite::{params, Connection};
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
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let outcome = match &poisoned {
            Some(cause) => Err(format!(
                "an earlier write failed ({cause}); writes are refused"
            )),
            None => {
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                if closed.load(Ordering::SeqCst) {
                    Err("the store is closed".to_string())
                } else {
                    apply_group(&mut conn, &group)
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

/// Applies every request in one transaction; an isolated request runs in a savepoint of its
/// own, so that its failure leaves the others applied. Returns each request's result (counts
/// for deletes); `Err` if the group fails as a whole: then nothing was applied.
fn apply_group(conn: &mut Connection, group: &[WriteRequest]) -> Result<Vec<Outcome>, String> {
    let mut tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        if !request.isolated() {
            // Any failure here fails the whole group: nothing of it is written.
            let n = apply(&tx, request).map_err(|e| e.to_string())?;
            results.push(Ok(n));
            continue;
        }
        let sp = tx.savepoint().map_err(|e| e.to_string())?;
        match apply(&sp, request) {
            Ok(n) => {
                sp.commit().map_err(|e| e.to_string())?;
                results.push(Ok(n));
            }
            Err(err) => {
                drop(sp); // rolls this request back; the others stand
                results.push(Err(request_error(err)));
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(results)
}

/// Applies one request; returns a count for deletes.
fn apply(conn: &Connection, request: &WriteRequest) -> rusqlite::Result<u64> {
    match request {
        WriteRequest::Commit(batch, _) => apply_batch(conn, batch).map(|()| 0),
        WriteRequest::DeleteEmptyEntities(_) => conn
            .execute(
                "DELETE FROM entities WHERE state IS NULL AND lock_owner IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM messages WHERE target = '@' || entities.name || '@' || entities.key \
                  AND substr(target, 1, 1) = '@')",
                [],
            )
            .map(|n| n as u64),
        WriteRequest::PurgeInstance(id, _) => purge(conn, id),
    }
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

fn apply_batch(tx: &Connection, batch: &Batch) -> rusqlite::Result<()> {
    // Creations first: a conflict fails the request before anything else is written.
    for instance in batch.instances.iter().filter(|i| i.create) {
        write_instance(tx, instance)?;
    }
    if !batch.consumed.is_empty() {
        let mut delete = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
        for id in &batch.consumed {
            delete.execute([*id as i64])?;
        }
    }
    if !batch.produced.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (id, target, deliver_at, body) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let (mut body, mut target) = (Vec::with_capacity(256), String::with_capacity(64));
        for message in &batch.produced {
            body.clear();
            serde_json::to_writer(&mut body, &message.body).map_err(conversion)?;
            target.clear();
            write!(target, "{}", message.target).expect("writing to a String");
            insert.execute(params![
                message.id as i64,
                target,
                message.deliver_at.map(|t| t as i64),
                std::str::from_utf8(&body).expect("serde_json writes UTF-8")
            ])?;
        }
    }
    if !batch.entities.is_empty() {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO entities (name, key, state, lock_owner, last_modified) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, \
             lock_owner = excluded.lock_owner, last_modified = excluded.last_modified",
        )?;
        let mut state = Vec::with_capacity(256);
        for entity in &batch.entities {
            let state = match &entity.state {
                None => None,
                Some(value) => {
                    state.clear();
                    serde_json::to_writer(&mut state, value).map_err(conversion)?;
                    Some(std::str::from_utf8(&state).expect("serde_json writes UTF-8"))
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
        write_instance(tx, instance)?;
    }
    Ok(())
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
