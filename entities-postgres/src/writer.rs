//! The writer: one task that applies batches in the order they were queued, merging those
//! queued together into one transaction (group commit). Every transaction takes a shared
//! advisory lock on each partition this process holds and checks, under it, that its leases
//! are still current (fencing): a takeover takes the exclusive lock, so it waits for commits
//! under way and every later commit of the old owner sees that it lost the partition.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entities_core::store::{Batch, EntityRecord, Group, InstanceWrite};
use entities_core::{partition_of, partition_of_instance, partition_of_message};
use entities_core::{StoreError, StoreErrorKind};
use futures::future::{maybe_done, BoxFuture};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::{debug, warn};

use crate::rows::{int, status_text};
use crate::schema::LOCK_CLASS;
use crate::{pg_error, Inner};

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 64;

/// What the writer is asked to do.
// Nearly every request is a commit: boxing its batch would only add an allocation.
#[allow(clippy::large_enum_variant)]
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
        // The group: consecutive commits; a batch creating an instance or claiming a key
        // exclusively commits alone (its conflict must fail it only).
        let mut group = Vec::new();
        while let Some(request) = queue.first() {
            match request {
                Request::Commit(batch, _) => {
                    let alone = batch.instances.iter().any(|i| i.create)
                        || batch.keys_binding_since.is_some();
                    if alone && !group.is_empty() {
                        break;
                    }
                    group.push(queue.remove(0));
                    if alone {
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
            (None, false) => commit_retrying(&inner, &batches).await,
        };
        match result {
            Ok(wake) => {
                for (batch, tx) in batches.into_iter().zip(answers) {
                    let _ = tx.send(Ok(batch));
                }
                if wake {
                    inner.wake_others();
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

/// Commits a group, waiting out a database that cannot be reached: a commit that failed
/// before it could apply (no connection, the server shutting down or restarting) is made
/// again, and one whose `COMMIT` was cut off is looked up by its transaction id: applied, it
/// succeeded; rolled back, it is made again. Past `unavailable_timeout` it fails with
/// [`StoreErrorKind::Unavailable`], nothing of it applied.
async fn commit_retrying(inner: &Inner, batches: &[Batch]) -> Result<bool, StoreError> {
    let timeout = inner.options.unavailable_timeout;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    let mut warned = false;
    loop {
        let mut committing = None;
        let err = match commit(inner, batches, &mut committing).await {
            Ok(wake) => return Ok(wake),
            Err(err) if err.kind() != StoreErrorKind::Unavailable => return Err(err),
            Err(err) => err,
        };
        if let Some(xid) = committing {
            if landed(inner, &xid, started).await? {
                debug!(xid, "a commit cut off by a lost connection had landed");
                return Ok(true);
            }
        }
        if inner.is_closed() {
            return Err(StoreError::of_kind(
                StoreErrorKind::Closed,
                "the store is closed: its runtime has stopped",
            ));
        }
        if started.elapsed() >= timeout {
            return Err(StoreError::of_kind(
                StoreErrorKind::Unavailable,
                format!(
                    "the database could not be reached for {timeout:?}; nothing of the batch \
                     was applied ({err})"
                ),
            ));
        }
        if !warned {
            warn!(error = %err, "the database cannot be reached; the commit is made again once it can");
            warned = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

/// Whether the transaction `xid`, whose `COMMIT` was cut off, committed: asks the database
/// (on a new connection) until it answers, for at most `unavailable_timeout` from `started`.
async fn landed(inner: &Inner, xid: &str, started: Instant) -> Result<bool, StoreError> {
    let timeout = inner.options.unavailable_timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let status = match inner.connection().await {
            Ok(conn) => conn
                .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])
                .await
                .map(|row| row.get::<_, Option<String>>(0))
                .map_err(|e| pg_error("cannot look up a commit cut off", e)),
            Err(err) => Err(err),
        };
        match status {
            Ok(Some(status)) if status == "committed" => return Ok(true),
            Ok(Some(status)) if status == "aborted" => return Ok(false),
            // Still in progress: the server has not yet noticed its client is gone.
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(StoreError::new(format!(
                    "the outcome of transaction {xid}, cut off during COMMIT, is no longer known"
                )))
            }
            Err(err) if err.kind() == StoreErrorKind::Unavailable => {}
            Err(err) => return Err(err),
        }
        if started.elapsed() >= timeout {
            return Err(StoreError::of_kind(
                StoreErrorKind::Other,
                format!(
                    "a commit was cut off during COMMIT and the database did not answer for \
                     {timeout:?}: whether it landed is unknown until the runtime recovers"
                ),
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

/// The statements of a commit, prepared once per connection (deadpool's statement cache).
pub(crate) const XACT_ID: &str = "SELECT pg_current_xact_id()::text";
pub(crate) const LOCK_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared($1, p) FROM unnest($2::int[]) p";
pub(crate) const READ_LEASES: &str =
    "SELECT part, epoch FROM entities_leases WHERE owner = $1 AND part = ANY($2)";
const CREATE_INSTANCES: &str =
    "INSERT INTO entities_instances (id, part, name, status, input, output, created, updated, \
       held) \
     SELECT * FROM unnest($1::bytea[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], \
       $7::bigint[], $8::bigint[], $9::text[]) \
     ON CONFLICT (id) DO NOTHING RETURNING id";
const CONSUME: &str = "DELETE FROM entities_messages WHERE id = ANY($1) RETURNING part";
const PRODUCE: &str =
    "INSERT INTO entities_messages (id, part, target, deliver_at, body, fresh, xid) \
     SELECT *, CASE WHEN fresh THEN pg_current_xact_id()::text::bigint END \
     FROM unnest($1::bigint[], $2::int[], $3::bytea[], $4::bigint[], $5::text[], $6::bool[]) \
       m(id, part, target, deliver_at, body, fresh)";
const WRITE_ENTITIES: &str =
    "INSERT INTO entities_entities (name, key, part, state, lock_owner, last_modified, \
       state_version) \
     SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[], $5::bytea[], $6::bigint[], \
       $7::bigint[]) \
     ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, \
       lock_owner = excluded.lock_owner, last_modified = excluded.last_modified, \
       state_version = excluded.state_version";
const WRITE_INSTANCES: &str =
    "INSERT INTO entities_instances (id, part, name, status, input, output, created, updated, \
       held) \
     SELECT * FROM unnest($1::bytea[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], \
       $7::bigint[], $8::bigint[], $9::text[]) \
     ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output, \
       updated = excluded.updated, held = excluded.held";
const APPEND_HISTORY: &str = "INSERT INTO entities_history (instance, seq, event) \
     SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[]) \
     ON CONFLICT (instance, seq) DO UPDATE SET event = excluded.event";
const RESTART_INSTANCES: &str = "UPDATE entities_instances i SET input = r.input \
     FROM unnest($1::bytea[], $2::text[]) r(id, input) WHERE i.id = r.id";
const DELETE_HISTORIES: &str = "DELETE FROM entities_history WHERE instance = ANY($1)";
const WRITE_REPLIES: &str = "INSERT INTO entities_replies (waiter, node, reply) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) ON CONFLICT DO NOTHING";
const MARK_FRESH: &str = "UPDATE entities_messages SET fresh = true, \
     xid = pg_current_xact_id()::text::bigint WHERE id = ANY($1)";

/// Instance rows as the columns of an `unnest` insert.
#[derive(Default)]
struct InstanceColumns<'a> {
    ids: Vec<&'a [u8]>,
    parts: Vec<i32>,
    names: Vec<&'a str>,
    statuses: Vec<&'static str>,
    inputs: Vec<String>,
    outputs: Vec<Option<String>>,
    created: Vec<i64>,
    updated: Vec<i64>,
    held: Vec<Option<&'a str>>,
}

impl<'a> InstanceColumns<'a> {
    fn push(&mut self, write: &'a InstanceWrite, count: u32) {
        let record = &write.record;
        self.ids.push(record.id.as_bytes());
        self.parts
            .push(partition_of_instance(&record.id, count) as i32);
        self.names.push(&record.name);
        self.statuses.push(status_text(record.status));
        self.inputs.push(record.input.to_string());
        self.outputs
            .push(record.output.as_ref().map(std::string::ToString::to_string));
        self.created.push(int(record.created));
        self.updated.push(int(record.updated));
        self.held.push(record.held.as_deref());
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.parts,
            &self.names,
            &self.statuses,
            &self.inputs,
            &self.outputs,
            &self.created,
            &self.updated,
            &self.held,
        ]
    }
}

/// History events as the columns of an `unnest` insert, in the order of the writes (a later
/// write of an event replaces an earlier one).
#[derive(Default)]
struct HistoryColumns<'a> {
    instances: Vec<&'a [u8]>,
    seqs: Vec<i64>,
    events: Vec<String>,
}

impl<'a> HistoryColumns<'a> {
    fn push(&mut self, write: &'a InstanceWrite) {
        if write.restart {
            // The events written before the restart are deleted with the stored history.
            let id = write.record.id.as_bytes();
            let mut i = 0;
            while i < self.instances.len() {
                if self.instances[i] == id {
                    self.instances.swap_remove(i);
                    self.seqs.swap_remove(i);
                    self.events.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
        for (i, event) in write.events.iter().enumerate() {
            self.instances.push(write.record.id.as_bytes());
            self.seqs.push(int(write.first_event + i as u64));
            self.events.push(event.to_string());
        }
    }

    /// The rows, keeping the last of each `(instance, seq)`: one `INSERT .. ON CONFLICT`
    /// cannot touch a row twice.
    fn dedup(self) -> Self {
        let mut seen = HashSet::new();
        let mut rows: Vec<_> = self
            .instances
            .into_iter()
            .zip(self.seqs)
            .zip(self.events)
            .rev()
            .filter(|((instance, seq), _)| seen.insert((*instance, *seq)))
            .collect();
        rows.reverse();
        let mut kept = Self::default();
        for ((instance, seq), event) in rows {
            kept.instances.push(instance);
            kept.seqs.push(seq);
            kept.events.push(event);
        }
        kept
    }
}

/// Sends `queries` in order before awaiting any answer (tokio-postgres pipelines the requests
/// of one connection), then collects the answers in order. Each query must have its statement
/// prepared already, so that its first poll sends it.
async fn pipelined(
    queries: Vec<BoxFuture<'_, Result<Vec<Row>, tokio_postgres::Error>>>,
) -> Result<Vec<Vec<Row>>, tokio_postgres::Error> {
    let mut pending: Vec<_> = queries.into_iter().map(maybe_done).collect();
    for query in &mut pending {
        let _ = futures::poll!(Pin::new(query));
    }
    let mut answers = Vec::with_capacity(pending.len());
    for mut query in pending {
        Pin::new(&mut query).await;
        answers.push(
            Pin::new(&mut query)
                .take_output()
                .expect("a pipelined query completed")?,
        );
    }
    Ok(answers)
}

/// Commits a group of batches in one transaction; returns whether it stored something other
/// processes wait for (arrivals or replies). Every statement is sent at once after `BEGIN`
/// (pipelined): the fence first (its shared locks, then the lease read, so that writes run
/// under the locks), then the writes; the answers are checked before `COMMIT`, and a failed
/// check drops the transaction, which rolls it back.
async fn commit(
    inner: &Inner,
    batches: &[Batch],
    committing: &mut Option<String>,
) -> Result<bool, StoreError> {
    let failed = |e| pg_error("commit failed", e);
    let count = inner.count;
    let fenced = |what: String| {
        StoreError::of_kind(
            StoreErrorKind::Fenced,
            format!("{what}: this process no longer owns its partition; nothing of the batch was applied"),
        )
    };

    // What the group writes. Messages produced and consumed within the group are never
    // written.
    let mut creations = InstanceColumns::default();
    let mut created_ids = Vec::new();
    let mut history = HistoryColumns::default();
    for write in batches
        .iter()
        .flat_map(|b| &b.instances)
        .filter(|i| i.create)
    {
        creations.push(write, count);
        created_ids.push(write.record.id.as_str());
        history.push(write);
    }
    // The group-commit contract decides which messages and entity rows the group writes.
    let mut group = Group::new();
    let mut consumed: Vec<i64> = Vec::new();
    let mut instances: HashMap<&str, &InstanceWrite> = HashMap::new();
    let mut replies = Vec::new();
    for (index, batch) in batches.iter().enumerate() {
        let deletes = group
            .add(index, batch)
            .map_err(|e| StoreError::with_source("the group cannot be written", e))?;
        consumed.extend(deletes.into_iter().map(int));
        for write in batch.instances.iter().filter(|i| !i.create) {
            instances.insert(&write.record.id, write);
        }
        replies.extend(&batch.replies);
    }
    let held_rows = group.take();
    // Restarts (continue-as-new): their stored histories go, their inputs change.
    let mut restarts: HashMap<&[u8], String> = HashMap::new();
    for write in batches
        .iter()
        .flat_map(|b| &b.instances)
        .filter(|i| !i.create)
    {
        if write.restart {
            restarts.insert(write.record.id.as_bytes(), write.record.input.to_string());
        }
        history.push(write);
    }
    let history = history.dedup();
    let (restarted, restart_inputs): (Vec<&[u8]>, Vec<String>) = restarts.into_iter().unzip();

    // The fence: the partitions this process believes it holds, checked in the transaction.
    let held = inner.held_now();
    let held_parts: Vec<i32> = held.keys().map(|p| *p as i32).collect();

    let (mut ids, mut parts, mut targets, mut times, mut bodies, mut fresh) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for &(index, i) in &held_rows.messages {
        let message = &batches[index].produced[i];
        let remote = batches[index].remote.contains(&message.id);
        let part = partition_of_message(message, count);
        // Whoever runs the partition must pick it up: this process, in memory, only if it
        // runs it and still holds it (checked below, once the fence answered).
        let arrival = remote || !held.contains_key(&part);
        ids.push(int(message.id));
        parts.push(part as i32);
        targets.push(message.target.to_string().into_bytes());
        times.push(message.deliver_at.map(int));
        bodies.push(
            serde_json::to_string(&message.body)
                .map_err(|e| StoreError::with_source("a message body cannot be encoded", e))?,
        );
        fresh.push(arrival);
    }

    let records: Vec<&EntityRecord> = held_rows
        .entities
        .iter()
        .map(|&(index, i)| &batches[index].entities[i])
        .collect();
    let entity_parts: Vec<u32> = records
        .iter()
        .map(|r| partition_of(&entities_core::message::Target::Entity(r.id.clone()), count))
        .collect();
    let names: Vec<&str> = records.iter().map(|r| r.id.name()).collect();
    let keys: Vec<&[u8]> = records.iter().map(|r| r.id.key().as_bytes()).collect();
    let entity_parts_sql: Vec<i32> = entity_parts.iter().map(|p| *p as i32).collect();
    let states: Vec<Option<String>> = records
        .iter()
        .map(|r| r.state.as_ref().map(std::string::ToString::to_string))
        .collect();
    let locks: Vec<Option<&[u8]>> = records
        .iter()
        .map(|r| r.lock_owner.as_deref().map(str::as_bytes))
        .collect();
    let modified: Vec<i64> = records.iter().map(|r| int(r.last_modified)).collect();
    let versions: Vec<i64> = records.iter().map(|r| i64::from(r.state_version)).collect();

    let mut updates = InstanceColumns::default();
    let mut updated_ids = Vec::new();
    for write in instances.into_values() {
        updates.push(write, count);
        updated_ids.push(write.record.id.as_str());
    }

    let waiters: Vec<i64> = replies.iter().map(|r| int(r.waiter)).collect();
    let nodes: Vec<i64> = replies
        .iter()
        .map(|r| int(r.waiter >> crate::NODE_SHIFT))
        .collect();
    let texts: Vec<String> = replies.iter().map(|r| r.reply.to_string()).collect();

    let mut conn = inner.connection().await?;
    let tx = conn.transaction().await.map_err(failed)?;
    let lock_shared = tx.prepare_cached(LOCK_SHARED).await.map_err(failed)?;
    let xact_id = tx.prepare_cached(XACT_ID).await.map_err(failed)?;
    let read_leases = tx.prepare_cached(READ_LEASES).await.map_err(failed)?;
    let create = tx.prepare_cached(CREATE_INSTANCES).await.map_err(failed)?;
    let consume = tx.prepare_cached(CONSUME).await.map_err(failed)?;
    let produce = tx.prepare_cached(PRODUCE).await.map_err(failed)?;
    let write_entities = tx.prepare_cached(WRITE_ENTITIES).await.map_err(failed)?;
    let write_instances = tx.prepare_cached(WRITE_INSTANCES).await.map_err(failed)?;
    let append_history = tx.prepare_cached(APPEND_HISTORY).await.map_err(failed)?;
    let write_replies = tx.prepare_cached(WRITE_REPLIES).await.map_err(failed)?;
    let restarting = !restarted.is_empty();
    let (restart_instances, delete_histories) = if restarting {
        (
            Some(tx.prepare_cached(RESTART_INSTANCES).await.map_err(failed)?),
            Some(tx.prepare_cached(DELETE_HISTORIES).await.map_err(failed)?),
        )
    } else {
        (None, None)
    };

    // The parameters outlive the queries that borrow them.
    let node = inner.node;
    let lock_params: [&(dyn ToSql + Sync); 2] = [&LOCK_CLASS, &held_parts];
    let lease_params: [&(dyn ToSql + Sync); 2] = [&node, &held_parts];
    let creation_params = creations.params();
    let consume_params: [&(dyn ToSql + Sync); 1] = [&consumed];
    let produce_params: [&(dyn ToSql + Sync); 6] =
        [&ids, &parts, &targets, &times, &bodies, &fresh];
    let entity_params: [&(dyn ToSql + Sync); 7] = [
        &names,
        &keys,
        &entity_parts_sql,
        &states,
        &locks,
        &modified,
        &versions,
    ];
    let update_params = updates.params();
    let history_params: [&(dyn ToSql + Sync); 3] =
        [&history.instances, &history.seqs, &history.events];
    let reply_params: [&(dyn ToSql + Sync); 3] = [&waiters, &nodes, &texts];
    let restart_params: [&(dyn ToSql + Sync); 2] = [&restarted, &restart_inputs];
    let delete_history_params: [&(dyn ToSql + Sync); 1] = [&restarted];

    let fenced_query = !held_parts.is_empty();
    let creating = !created_ids.is_empty();
    let consuming = !consumed.is_empty();
    let mut queries: Vec<BoxFuture<'_, Result<Vec<Row>, tokio_postgres::Error>>> = Vec::new();
    queries.push(Box::pin(tx.query(&xact_id, &[])));
    if fenced_query {
        queries.push(Box::pin(tx.query(&lock_shared, &lock_params)));
        queries.push(Box::pin(tx.query(&read_leases, &lease_params)));
    }
    if creating {
        queries.push(Box::pin(tx.query(&create, &creation_params)));
    }
    if consuming {
        queries.push(Box::pin(tx.query(&consume, &consume_params)));
    }
    if !ids.is_empty() {
        queries.push(Box::pin(tx.query(&produce, &produce_params)));
    }
    if !records.is_empty() {
        queries.push(Box::pin(tx.query(&write_entities, &entity_params)));
    }
    if !updated_ids.is_empty() {
        queries.push(Box::pin(tx.query(&write_instances, &update_params)));
    }
    if let (Some(restart), Some(delete)) = (&restart_instances, &delete_histories) {
        queries.push(Box::pin(tx.query(restart, &restart_params)));
        queries.push(Box::pin(tx.query(delete, &delete_history_params)));
    }
    if !history.seqs.is_empty() {
        queries.push(Box::pin(tx.query(&append_history, &history_params)));
    }
    if !waiters.is_empty() {
        queries.push(Box::pin(tx.query(&write_replies, &reply_params)));
    }
    let mut answers = pipelined(queries).await.map_err(failed)?.into_iter();
    let xid: Option<String> = answers
        .next()
        .and_then(|rows| rows.first().map(|row| row.get(0)));

    let verified: HashSet<u32> = if fenced_query {
        let _locks = answers.next();
        let leases = answers.next().unwrap_or_default();
        leases
            .iter()
            .filter(|row| held.get(&(row.get::<_, i32>(0) as u32)) == Some(&row.get::<_, i64>(1)))
            .map(|row| row.get::<_, i32>(0) as u32)
            .collect()
    } else {
        HashSet::new()
    };
    if creating {
        let inserted = answers.next().unwrap_or_default();
        if inserted.len() < created_ids.len() {
            let stored: HashSet<Vec<u8>> = inserted.iter().map(|row| row.get(0)).collect();
            let existing = created_ids
                .iter()
                .find(|id| !stored.contains(id.as_bytes()))
                .unwrap_or(&"?");
            return Err(StoreError::of_kind(
                StoreErrorKind::Conflict,
                format!("orchestration instance `{existing}` exists already"),
            ));
        }
    }
    for (id, part) in records.iter().map(|r| &r.id).zip(&entity_parts) {
        if !verified.contains(part) {
            return Err(fenced(format!("writing entity `{id}`")));
        }
    }
    for id in &updated_ids {
        if !verified.contains(&partition_of_instance(id, count)) {
            return Err(fenced(format!("writing orchestration instance `{id}`")));
        }
    }
    if consuming {
        let rows = answers.next().unwrap_or_default();
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
    // Messages kept for a partition held when the statements were sent but lost since go to
    // its new owner as arrivals.
    let lost: Vec<i64> = ids
        .iter()
        .zip(&parts)
        .zip(&fresh)
        .filter(|((_, part), fresh)| !**fresh && !verified.contains(&(**part as u32)))
        .map(|((id, _), _)| *id)
        .collect();
    if !lost.is_empty() {
        tx.execute(MARK_FRESH, &[&lost]).await.map_err(failed)?;
    }
    write_keys(&tx, batches).await?;
    let wake = !waiters.is_empty() || fresh.iter().any(|f| *f) || !lost.is_empty();
    // From here a lost connection leaves the outcome open: the caller looks it up by the id.
    *committing = xid;
    tx.commit().await.map_err(failed)?;
    debug!(batches = batches.len(), "committed");
    Ok(wake)
}

/// Writes the idempotency keys of the batches, in order: claims, outcomes, then the forgetting
/// of old keys. Only sends that claim a key pay for these statements.
async fn write_keys(
    tx: &tokio_postgres::Transaction<'_>,
    batches: &[Batch],
) -> Result<(), StoreError> {
    let failed = |e| pg_error("a commit failed", e);
    for batch in batches {
        if let (Some(since), false) = (batch.keys_binding_since, batch.keys.is_empty()) {
            // Exclusive claims: a claim of a key another transaction claims meanwhile waits for
            // it, then sees its row, so of two processes claiming one key one wins.
            let keys: Vec<&str> = batch.keys.iter().map(|k| k.key.as_str()).collect();
            let created: Vec<i64> = batch.keys.iter().map(|k| int(k.created)).collect();
            let outcomes: Vec<String> = batch.keys.iter().map(|k| k.outcome.to_string()).collect();
            let claimed = tx
                .query(
                    "INSERT INTO entities_keys (key, created, outcome) \
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) \
                     ON CONFLICT (key) DO UPDATE SET created = excluded.created, \
                     outcome = excluded.outcome WHERE entities_keys.created < $4 \
                     RETURNING key",
                    &[&keys, &created, &outcomes, &int(since)],
                )
                .await
                .map_err(failed)?;
            if claimed.len() < keys.len() {
                let claimed: HashSet<String> = claimed.iter().map(|r| r.get(0)).collect();
                let taken = keys.iter().find(|k| !claimed.contains(**k)).unwrap_or(&"");
                return Err(StoreError::key_claimed(taken));
            }
        } else if !batch.keys.is_empty() {
            let keys: Vec<&str> = batch.keys.iter().map(|k| k.key.as_str()).collect();
            let created: Vec<i64> = batch.keys.iter().map(|k| int(k.created)).collect();
            let outcomes: Vec<String> = batch.keys.iter().map(|k| k.outcome.to_string()).collect();
            tx.execute(
                "INSERT INTO entities_keys (key, created, outcome) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) \
                 ON CONFLICT (key) DO UPDATE SET created = excluded.created, \
                 outcome = excluded.outcome",
                &[&keys, &created, &outcomes],
            )
            .await
            .map_err(failed)?;
        }
        if !batch.key_outcomes.is_empty() {
            let keys: Vec<&str> = batch.key_outcomes.iter().map(|(k, _)| k.as_str()).collect();
            let outcomes: Vec<String> = batch
                .key_outcomes
                .iter()
                .map(|(_, o)| o.to_string())
                .collect();
            tx.execute(
                "UPDATE entities_keys k SET outcome = u.outcome \
                 FROM unnest($1::text[], $2::text[]) AS u(key, outcome) WHERE k.key = u.key",
                &[&keys, &outcomes],
            )
            .await
            .map_err(failed)?;
        }
        if let Some(before) = batch.forget_keys_before {
            tx.execute(
                "DELETE FROM entities_keys WHERE created < $1",
                &[&int(before)],
            )
            .await
            .map_err(failed)?;
        }
    }
    Ok(())
}
