//! The writer thread: the only one that writes. It takes every request queued at the moment
//! and applies them in one transaction (group commit), then answers each.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use entities_core::store::{Batch, InstanceWrite};
use entities_core::StoreError;
use rusqlite::{params, Connection, Transaction};
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

/// Runs until every sender is gone.
pub(crate) fn run(conn: Arc<Mutex<Connection>>, rx: Receiver<WriteRequest>) {
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = apply_group(&mut conn, &group);
        drop(conn);
        debug!(
            requests = group.len(),
            ok = outcome.is_ok(),
            "group committed"
        );
        answer(group.drain(..), outcome);
    }
}

/// Applies every request in one transaction; returns each request's own result
/// (`Ok(None)` for commits, counts for the others).
fn apply_group(conn: &mut Connection, group: &[WriteRequest]) -> Result<Vec<u64>, String> {
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let result = match request {
            WriteRequest::Commit(batch, _) => apply_batch(&tx, batch).map(|()| 0),
            WriteRequest::DeleteEmptyEntities(_) => tx
                .execute(
                    "DELETE FROM entities WHERE state IS NULL AND lock_owner IS NULL AND NOT EXISTS \
                     (SELECT 1 FROM messages WHERE target = '@' || entities.name || '@' || entities.key)",
                    [],
                )
                .map(|n| n as u64),
            WriteRequest::PurgeInstance(id, _) => purge(&tx, id),
        }
        .map_err(|e| e.to_string())?;
        results.push(result);
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(results)
}

fn answer(group: impl Iterator<Item = WriteRequest>, outcome: Result<Vec<u64>, String>) {
    let error = |e: &String| StoreError::new(format!("sqlite write failed: {e}"));
    if let Err(e) = &outcome {
        error!(error = %e, "sqlite group commit failed");
    }
    for (i, request) in group.enumerate() {
        let value = outcome.as_ref().map(|r| r[i]);
        match request {
            WriteRequest::Commit(batch, tx) => {
                let _ = tx.send(value.map(|_| batch).map_err(error));
            }
            WriteRequest::DeleteEmptyEntities(tx) => {
                let _ = tx.send(value.map_err(error));
            }
            WriteRequest::PurgeInstance(_, tx) => {
                let _ = tx.send(value.map(|n| n > 0).map_err(error));
            }
        }
    }
}

fn apply_batch(tx: &Transaction<'_>, batch: &Batch) -> rusqlite::Result<()> {
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
        for message in &batch.produced {
            let body = serde_json::to_string(message)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            insert.execute(params![
                message.id as i64,
                message.target.key(),
                message.deliver_at.map(|t| t as i64),
                body
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
        for entity in &batch.entities {
            let state = entity
                .state
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            upsert.execute(params![
                entity.id.name(),
                entity.id.key(),
                state,
                entity.lock_owner,
                entity.last_modified as i64
            ])?;
        }
    }
    for instance in &batch.instances {
        write_instance(tx, instance)?;
    }
    Ok(())
}

fn write_instance(tx: &Transaction<'_>, write: &InstanceWrite) -> rusqlite::Result<()> {
    let r = &write.record;
    let output = r.output.as_ref().map(|v| v.to_string());
    tx.prepare_cached(
        "INSERT INTO instances (id, name, status, input, output, created, updated) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output, \
         updated = excluded.updated",
    )?
    .execute(params![
        r.id,
        r.name,
        status_text(r.status),
        r.input.to_string(),
        output,
        r.created as i64,
        r.updated as i64
    ])?;
    let mut insert =
        tx.prepare_cached("INSERT INTO history (instance, seq, event) VALUES (?1, ?2, ?3)")?;
    for (i, event) in write.events.iter().enumerate() {
        insert.execute(params![
            r.id,
            (write.first_event + i as u64) as i64,
            event.to_string()
        ])?;
    }
    Ok(())
}

fn purge(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<u64> {
    tx.execute("DELETE FROM history WHERE instance = ?1", [id])?;
    let n = tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
    Ok(n as u64)
}
