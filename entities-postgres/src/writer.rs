//! The writer: one task that applies batches in the order they were queued, merging those
//! queued together into one transaction (group commit). Every transaction takes a shared
//! advisory lock on each partition this process holds and checks, under it, that its leases
//! are still current (fencing): a takeover takes the exclusive lock, so it waits for commits
//! under way and every later commit of the old owner sees that it lost the partition.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use entities_core::message::{Message, MessageId};
use entities_core::store::{Batch, EntityRecord, InstanceWrite};
use entities_core::{partition_of, partition_of_instance, partition_of_message, EntityId};
use entities_core::{StoreError, StoreErrorKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::rows::{int, status_text};
use crate::{pg_error, Inner};

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 64;

/// What the writer is asked to do.
pub(crate) enum Request {
    Commit(Batch, oneshot::Sender<Result<Batch, StoreError>>),
    /// Accept batches again after a failure, once the database answers.
    Resume(oneshot::Sender<Result<(), StoreError>>),
    /// Answer once every request queued before is done.
    Flush(oneshot::Sender<()>),
}

/// Runs the writer until every sender is gone.
pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Request>) {
    // After a failed commit, every batch is refused with its error until `Resume`.
    let mut failed: Option<StoreError> = None;
    let mut queue: Vec<Request> = Vec::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(request) => queue.push(request),
                None => return,
            }
        }
        while queue.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(request) => queue.push(request),
                Err(_) => break,
            }
        }
        // The group: consecutive commits; a batch creating an instance commits alone (its
        // conflict must fail it only).
        let mut group = Vec::new();
        while let Some(request) = queue.first() {
            match request {
                Request::Commit(batch, _) => {
                    let creates = batch.instances.iter().any(|i| i.create);
                    if creates && !group.is_empty() {
                        break;
                    }
                    group.push(queue.remove(0));
                    if creates {
                        break;
                    }
                }
                _ if group.is_empty() => {
                    group.push(queue.remove(0));
                    break;
                }
                _ => break,
            }
        }
        match group.pop() {
            Some(Request::Resume(tx)) => {
                let result = if inner.is_closed() {
                    Err(StoreError::of_kind(
                        StoreErrorKind::Closed,
                        "the store is closed: its runtime has stopped",
                    ))
                } else {
                    inner.probe().await
                };
                if result.is_ok() {
                    failed = None;
                }
                let _ = tx.send(result);
                continue;
            }
            Some(Request::Flush(tx)) => {
                let _ = tx.send(());
                continue;
            }
            Some(last) => group.push(last),
            None => continue,
        }
        let mut batches = Vec::with_capacity(group.len());
        let mut answers = Vec::with_capacity(group.len());
        for request in group {
            if let Request::Commit(batch, tx) = request {
                batches.push(batch);
                answers.push(tx);
            }
        }
        let result = match (&failed, inner.is_closed()) {
            (Some(err), _) => Err(err.clone()),
            (None, true) => Err(StoreError::of_kind(
                StoreErrorKind::Closed,
                "the store is closed: its runtime has stopped",
            )),
            (None, false) => commit(&inner, &batches).await,
        };
        match result {
            Ok(wake) => {
                if wake {
                    inner.wake_others().await;
                }
                for (batch, tx) in batches.into_iter().zip(answers) {
                    let _ = tx.send(Ok(batch));
                }
            }
            Err(err) => {
                if !err.is_conflict() && err.kind() != StoreErrorKind::Closed {
                    warn!(error = %err, "a commit failed; later batches are refused until the runtime resumes");
                    failed = Some(err.clone());
                }
                for tx in answers {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Commits a group of batches in one transaction; returns whether it stored something other
/// processes wait for (arrivals or replies).
async fn commit(inner: &Inner, batches: &[Batch]) -> Result<bool, StoreError> {
    let failed = |e| pg_error("commit failed", e);
    let count = inner.count;
    let mut conn = inner.connection().await?;
    let tx = conn.transaction().await.map_err(failed)?;
    let verified = inner.fence(&tx).await?;
    let fenced = |what: String| {
        StoreError::of_kind(
            StoreErrorKind::Fenced,
            format!("{what}: this process no longer owns its partition; nothing of the batch was applied"),
        )
    };

    // Creations first: a conflict fails the batch before anything else is written.
    for write in batches
        .iter()
        .flat_map(|b| &b.instances)
        .filter(|i| i.create)
    {
        let record = &write.record;
        let inserted = tx
            .execute(
                "INSERT INTO entities_instances (id, part, name, status, input, output, created, updated) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                &[
                    &record.id.as_bytes(),
                    &(partition_of_instance(&record.id, count) as i32),
                    &record.name,
                    &status_text(record.status),
                    &record.input.to_string(),
                    &record.output.as_ref().map(|o| o.to_string()),
                    &int(record.created),
                    &int(record.updated),
                ],
            )
            .await
            .map_err(failed)?;
        if inserted == 0 {
            return Err(StoreError::of_kind(
                StoreErrorKind::Conflict,
                format!("orchestration instance `{}` exists already", record.id),
            ));
        }
        append_history(&tx, write).await?;
    }

    // Messages produced and consumed within the group are never written.
    let mut produced: HashMap<MessageId, (&Message, bool)> = HashMap::new();
    let mut order: Vec<MessageId> = Vec::new();
    let mut consumed: Vec<i64> = Vec::new();
    let mut entities: HashMap<&EntityId, &EntityRecord> = HashMap::new();
    let mut instances: HashMap<&str, &InstanceWrite> = HashMap::new();
    let mut replies = Vec::new();
    for batch in batches {
        for id in &batch.consumed {
            if produced.remove(id).is_none() {
                consumed.push(int(*id));
            }
        }
        for message in &batch.produced {
            produced.insert(message.id, (message, batch.remote.contains(&message.id)));
            order.push(message.id);
        }
        for record in &batch.entities {
            entities.insert(&record.id, record);
        }
        for write in batch.instances.iter().filter(|i| !i.create) {
            instances.insert(&write.record.id, write);
        }
        replies.extend(&batch.replies);
    }
    for id in entities.keys() {
        let part = partition_of(
            &entities_core::message::Target::Entity((*id).clone()),
            count,
        );
        if !verified.contains(&part) {
            return Err(fenced(format!("writing entity `{id}`")));
        }
    }
    for id in instances.keys() {
        if !verified.contains(&partition_of_instance(id, count)) {
            return Err(fenced(format!("writing orchestration instance `{id}`")));
        }
    }
    if !consumed.is_empty() {
        let rows = tx
            .query(
                "DELETE FROM entities_messages WHERE id = ANY($1) RETURNING part",
                &[&consumed],
            )
            .await
            .map_err(failed)?;
        for row in &rows {
            let part = row.get::<_, i32>(0) as u32;
            if !verified.contains(&part) {
                return Err(fenced(format!("consuming a message of partition {part}")));
            }
        }
        // A message consumed already was consumed by the partition's new owner: this
        // process ran it from a stale memory.
        if rows.len() < consumed.len() {
            return Err(fenced(format!(
                "{} of the messages consumed were consumed elsewhere",
                consumed.len() - rows.len()
            )));
        }
    }

    let mut wake = !replies.is_empty();
    if !produced.is_empty() {
        let (mut ids, mut parts, mut targets, mut times, mut bodies, mut fresh) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut seen = HashSet::new();
        for id in order {
            let Some((message, remote)) = produced.get(&id) else {
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            let part = partition_of_message(message, count);
            // Whoever runs the partition must pick it up: this process, in memory, only if
            // it runs it and still holds it.
            let arrival = *remote || !verified.contains(&part);
            wake |= arrival;
            ids.push(int(id));
            parts.push(part as i32);
            targets.push(message.target.to_string().into_bytes());
            times.push(message.deliver_at.map(int));
            bodies.push(
                serde_json::to_string(&message.body)
                    .map_err(|e| StoreError::with_source("a message body cannot be encoded", e))?,
            );
            fresh.push(arrival);
        }
        tx.execute(
            "INSERT INTO entities_messages (id, part, target, deliver_at, body, fresh) \
             SELECT * FROM unnest($1::bigint[], $2::int[], $3::bytea[], $4::bigint[], $5::text[], $6::bool[])",
            &[&ids, &parts, &targets, &times, &bodies, &fresh],
        )
        .await
        .map_err(failed)?;
    }

    if !entities.is_empty() {
        let mut records: Vec<&EntityRecord> = entities.into_values().collect();
        records.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let names: Vec<&str> = records.iter().map(|r| r.id.name()).collect();
        let keys: Vec<&[u8]> = records.iter().map(|r| r.id.key().as_bytes()).collect();
        let parts: Vec<i32> = records
            .iter()
            .map(|r| {
                partition_of(&entities_core::message::Target::Entity(r.id.clone()), count) as i32
            })
            .collect();
        let states: Vec<Option<String>> = records
            .iter()
            .map(|r| r.state.as_ref().map(|s| s.to_string()))
            .collect();
        let locks: Vec<Option<&[u8]>> = records
            .iter()
            .map(|r| r.lock_owner.as_deref().map(str::as_bytes))
            .collect();
        let times: Vec<i64> = records.iter().map(|r| int(r.last_modified)).collect();
        tx.execute(
            "INSERT INTO entities_entities (name, key, part, state, lock_owner, last_modified) \
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[], $5::bytea[], $6::bigint[]) \
             ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, \
               lock_owner = excluded.lock_owner, last_modified = excluded.last_modified",
            &[&names, &keys, &parts, &states, &locks, &times],
        )
        .await
        .map_err(failed)?;
    }

    for write in instances.into_values() {
        let record = &write.record;
        tx.execute(
            "INSERT INTO entities_instances (id, part, name, status, input, output, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output, \
               updated = excluded.updated",
            &[
                &record.id.as_bytes(),
                &(partition_of_instance(&record.id, count) as i32),
                &record.name,
                &status_text(record.status),
                &record.input.to_string(),
                &record.output.as_ref().map(|o| o.to_string()),
                &int(record.created),
                &int(record.updated),
            ],
        )
        .await
        .map_err(failed)?;
    }
    // Histories of every batch, in order (a later write of an instance keeps its events).
    for write in batches
        .iter()
        .flat_map(|b| &b.instances)
        .filter(|i| !i.create)
    {
        append_history(&tx, write).await?;
    }

    if !replies.is_empty() {
        let waiters: Vec<i64> = replies.iter().map(|r| int(r.waiter)).collect();
        let nodes: Vec<i64> = replies
            .iter()
            .map(|r| int(r.waiter >> crate::NODE_SHIFT))
            .collect();
        let texts: Vec<String> = replies.iter().map(|r| r.reply.to_string()).collect();
        tx.execute(
            "INSERT INTO entities_replies (waiter, node, reply) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) ON CONFLICT DO NOTHING",
            &[&waiters, &nodes, &texts],
        )
        .await
        .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    debug!(batches = batches.len(), "committed");
    Ok(wake)
}

async fn append_history(
    tx: &tokio_postgres::Transaction<'_>,
    write: &InstanceWrite,
) -> Result<(), StoreError> {
    if write.events.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = (0..write.events.len() as u64)
        .map(|i| int(write.first_event + i))
        .collect();
    let events: Vec<String> = write.events.iter().map(|e| e.to_string()).collect();
    tx.execute(
        "INSERT INTO entities_history (instance, seq, event) \
         SELECT $1, * FROM unnest($2::bigint[], $3::text[]) \
         ON CONFLICT (instance, seq) DO UPDATE SET event = excluded.event",
        &[&write.record.id.as_bytes(), &seqs, &events],
    )
    .await
    .map_err(|e| pg_error("commit failed", e))?;
    Ok(())
}
