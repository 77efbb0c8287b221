//! [`MemoryStore`]: a [`Store`] that keeps everything in memory, the reference implementation
//! of the store contract, for tests and examples.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::{StoreError, StoreErrorKind};
use crate::id::EntityId;
use crate::message::{Message, MessageId, Target};
use crate::store::{
    Batch, EntityQuery, EntityRecord, EntityRecordPage, IdempotencyKey, InstanceQuery,
    InstanceRecord, InstanceRecordPage, InstanceWrite, LockRecord, Recovery, RuntimeStatus, Store,
    StoreStats,
};

/// A store that keeps everything in memory: nothing survives the process. It implements every
/// method of [`Store`] with the semantics `SqliteStore` (of `entities-sqlite`) has: the two
/// pass the same conformance suite (the `conformance` feature of this crate), so a runtime runs on it exactly as on a database, only without
/// durability:
///
/// ```
/// # async fn run() -> entities_core::Result<()> {
/// use entities_core::{MemoryStore, Runtime};
///
/// let runtime = Runtime::builder().store(MemoryStore::new()).start().await?;
/// runtime.shutdown().await
/// # }
/// ```
///
/// Each commit is applied when [`Store::commit`] is called, under one lock, so batches apply
/// in call order and reads see whole batches only. Clones share the data and the state of the
/// handle (closed, refusing after a failure); [`MemoryStore::reopen`] gives a new handle on the
/// same data, like opening a database file again after its runtime stopped.
///
/// For tests of faults, [`MemoryStore::fail_next_commit`] makes the next commit fail as a
/// database failure would: the store then refuses every batch until [`Store::resume`].
#[derive(Clone, Default)]
pub struct MemoryStore {
    handle: Arc<Handle>,
}

/// One handle on the data: what `close`, a failed commit and `fail_next_commit` change.
#[derive(Default)]
struct Handle {
    data: Arc<Mutex<Data>>,
    writes: Mutex<Writes>,
}

/// The state of the writes of one handle.
#[derive(Default)]
struct Writes {
    /// Set by `close`: every later write fails with kind `Closed`.
    closed: bool,
    /// The failure of an earlier commit: every later write is refused until `resume`.
    failed: Option<StoreError>,
    /// The error the next commit fails with (see [`MemoryStore::fail_next_commit`]).
    fail_next: Option<StoreError>,
}

/// What the store holds.
#[derive(Default)]
struct Data {
    /// Entities, ordered by name then key (as bytes), as a query lists them.
    entities: BTreeMap<EntityId, EntityRow>,
    /// Stored messages, by id.
    messages: BTreeMap<MessageId, Message>,
    /// Scheduled messages, by `(deliver_at, id)`.
    scheduled: BTreeMap<(u64, MessageId), ()>,
    /// How many stored messages target each entity (entities with none are left out).
    pending: HashMap<EntityId, u64>,
    /// Orchestration instances, by id.
    instances: HashMap<String, InstanceRow>,
    /// Idempotency keys, by key.
    keys: HashMap<String, IdempotencyKey>,
}

/// An entity as stored.
struct EntityRow {
    state: Option<Value>,
    state_version: u32,
    lock_owner: Option<String>,
    last_modified: u64,
}

/// An orchestration instance as stored.
struct InstanceRow {
    record: InstanceRecord,
    /// History events by sequence number.
    history: BTreeMap<u64, Value>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The order of every place that takes both locks: writes, then data.
        let writes = self.handle.writes();
        let data = self.handle.data();
        f.debug_struct("MemoryStore")
            .field("entities", &data.entities.len())
            .field("messages", &data.messages.len())
            .field("instances", &data.instances.len())
            .field("closed", &writes.closed)
            .field("failed", &writes.failed)
            .finish()
    }
}

impl Handle {
    fn data(&self) -> MutexGuard<'_, Data> {
        // Nothing panics while the lock is held with the data half-changed: a batch is checked
        // before anything of it is applied.
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn writes(&self) -> MutexGuard<'_, Writes> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a write other than a commit (a clean-up, a purge): refused once the handle is
    /// closed or a commit has failed.
    fn write<T>(&self, f: impl FnOnce(&mut Data) -> T) -> Result<T, StoreError> {
        let writes = self.writes();
        writes.check()?;
        let result = f(&mut self.data());
        drop(writes);
        Ok(result)
    }
}

impl Writes {
    /// Fails if writes are refused: the handle is closed, or a commit failed and the store has
    /// not resumed.
    fn check(&self) -> Result<(), StoreError> {
        if self.closed {
            return Err(closed());
        }
        if let Some(cause) = &self.failed {
            return Err(cause
                .clone()
                .context("refused: an earlier commit failed and the store has not resumed"));
        }
        Ok(())
    }
}

/// The error of a write to a closed store.
fn closed() -> StoreError {
    StoreError::of_kind(StoreErrorKind::Closed, "the memory store is closed")
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new handle on the same data, open and accepting writes whatever the state of this
    /// one: what opening a database file again is to a store on disk. Use it to restart a
    /// runtime on what a stopped one (which closed its store) left. It does not check that
    /// the other handles are closed: keep one runtime on the data at a time.
    pub fn reopen(&self) -> Self {
        Self {
            handle: Arc::new(Handle {
                data: self.handle.data.clone(),
                writes: Mutex::default(),
            }),
        }
    }

    /// Makes the next [`Store::commit`] of this handle (and its clones) fail with `error`,
    /// applying nothing, as a failed database write would: every commit after it is refused
    /// too, with `error` as the cause, until [`Store::resume`]. Meant for tests of the
    /// runtime's handling of faults. A second call before that commit replaces the error.
    pub fn fail_next_commit(&self, error: StoreError) {
        self.handle.writes().fail_next = Some(error);
    }

    /// Applies `batch` now, or fails without applying anything of it.
    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut writes = self.handle.writes();
        writes.check()?;
        if let Some(error) = writes.fail_next.take() {
            writes.failed = Some(error.clone());
            return Err(error);
        }
        let mut data = self.handle.data();
        match data.check(batch) {
            Ok(()) => {
                data.apply(batch);
                Ok(())
            }
            // A batch that creates an instance fails by itself (the client that sent it learns
            // of it before anything acts on its messages); any other failure refuses the
            // batches after it, which may build on it.
            Err(err) if batch.instances.iter().any(|i| i.create) => Err(err),
            Err(err) => {
                writes.failed = Some(err.clone());
                Err(err)
            }
        }
    }
}

impl Data {
    /// Checks that `batch` applies: the instances it creates do not exist, the messages it
    /// stores do not exist (once those it consumes are gone) and neither do the history
    /// events it appends.
    fn check(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut created = HashSet::new();
        for write in batch.instances.iter().filter(|i| i.create) {
            let id = &write.record.id;
            if self.instances.contains_key(id) || !created.insert(id.as_str()) {
                return Err(StoreError::conflict(format!(
                    "orchestration instance `{id}` exists already"
                )));
            }
        }
        let consumed: HashSet<MessageId> = batch.consumed.iter().copied().collect();
        let mut produced = HashSet::new();
        for message in &batch.produced {
            let id = message.id;
            let taken = self.messages.contains_key(&id) && !consumed.contains(&id);
            if taken || !produced.insert(id) {
                return Err(StoreError::new(format!(
                    "message {id} is stored already; message ids must be unique"
                )));
            }
        }
        if let Some(since) = batch.keys_binding_since {
            if let Some(key) = batch.keys.iter().find(|k| {
                self.keys
                    .get(&k.key)
                    .is_some_and(|row| row.created >= since)
            }) {
                return Err(StoreError::key_claimed(&key.key));
            }
        }
        let mut appended = HashSet::new();
        for write in &batch.instances {
            let id = write.record.id.as_str();
            let history = match self.instances.get(id) {
                Some(row) if !write.create => Some(&row.history),
                _ => None,
            };
            for seq in (write.first_event..).take(write.events.len()) {
                let exists = !write.restart && history.is_some_and(|h| h.contains_key(&seq));
                if exists || !appended.insert((id, seq)) {
                    return Err(StoreError::new(format!(
                        "event {seq} of the history of orchestration instance `{id}` is \
                         stored already"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies a checked batch, in the order SQLite does: creations, consumed messages,
    /// produced messages, entities, other instance writes.
    fn apply(&mut self, batch: &Batch) {
        for write in batch.instances.iter().filter(|i| i.create) {
            self.write_instance(write);
        }
        for id in &batch.consumed {
            self.remove_message(*id);
        }
        for message in &batch.produced {
            self.insert_message(message.clone());
        }
        for record in &batch.entities {
            self.entities.insert(
                record.id.clone(),
                EntityRow {
                    state: record.state.clone(),
                    state_version: record.state_version,
                    lock_owner: record.lock_owner.clone(),
                    last_modified: record.last_modified,
                },
            );
        }
        for write in batch.instances.iter().filter(|i| !i.create) {
            self.write_instance(write);
        }
        for key in &batch.keys {
            self.keys.insert(key.key.clone(), key.clone());
        }
        for (key, outcome) in &batch.key_outcomes {
            if let Some(row) = self.keys.get_mut(key) {
                row.outcome = outcome.clone();
            }
        }
        if let Some(before) = batch.forget_keys_before {
            self.keys.retain(|_, row| row.created >= before);
        }
    }

    /// Writes an instance: a new one whole; of an existing one, only its status, output,
    /// update time and held reason (its name, input and creation time stay), and its input
    /// too on a restart.
    /// Appends its events, after deleting the stored ones on a restart.
    fn write_instance(&mut self, write: &InstanceWrite) {
        let record = &write.record;
        let row = self
            .instances
            .entry(record.id.clone())
            .and_modify(|row| {
                row.record.status = record.status;
                row.record.output = record.output.clone();
                row.record.updated = record.updated;
                row.record.held = record.held.clone();
                if write.restart {
                    row.record.input = record.input.clone();
                    row.history.clear();
                }
            })
            .or_insert_with(|| InstanceRow {
                record: record.clone(),
                history: BTreeMap::new(),
            });
        for (seq, event) in (write.first_event..).zip(&write.events) {
            row.history.insert(seq, event.clone());
        }
    }

    fn insert_message(&mut self, message: Message) {
        if let Some(at) = message.deliver_at {
            self.scheduled.insert((at, message.id), ());
        }
        if let Target::Entity(id) = &message.target {
            *self.pending.entry(id.clone()).or_default() += 1;
        }
        self.messages.insert(message.id, message);
    }

    fn remove_message(&mut self, id: MessageId) {
        let Some(message) = self.messages.remove(&id) else {
            return;
        };
        if let Some(at) = message.deliver_at {
            self.scheduled.remove(&(at, id));
        }
        if let Target::Entity(entity) = &message.target {
            if let Some(count) = self.pending.get_mut(entity) {
                *count -= 1;
                if *count == 0 {
                    self.pending.remove(entity);
                }
            }
        }
    }

    /// The record of a stored entity; its count of pending messages if `pending`.
    fn record(&self, id: &EntityId, row: &EntityRow, state: bool, pending: bool) -> EntityRecord {
        EntityRecord {
            id: id.clone(),
            state: if state { row.state.clone() } else { None },
            state_version: row.state_version,
            lock_owner: row.lock_owner.clone(),
            last_modified: row.last_modified,
            pending_messages: if pending {
                self.pending.get(id).copied().unwrap_or(0)
            } else {
                0
            },
        }
    }
}

/// The continuation token after entity `id`: the JSON array `[name, key]`, as SQLite gives.
fn continuation(id: &EntityId) -> String {
    Value::from(vec![id.name(), id.key()]).to_string()
}

/// The entity a continuation token names.
fn after(token: &str) -> Result<EntityId, StoreError> {
    let (name, key) = serde_json::from_str::<(String, String)>(token)
        .map_err(|e| StoreError::with_source("invalid continuation token", e))?;
    EntityId::try_new(name, key)
        .map_err(|e| StoreError::with_source("invalid continuation token", e))
}

#[async_trait]
impl Store for MemoryStore {
    async fn recover(&self, horizon: u64) -> Result<Recovery, StoreError> {
        let data = self.handle.data();
        let messages = data
            .messages
            .values()
            .filter(|m| m.deliver_at.is_none_or(|at| at <= horizon))
            .cloned()
            .collect();
        Ok(Recovery {
            messages,
            max_message_id: data.messages.keys().next_back().copied().unwrap_or(0),
            set_aside: 0,
            partitions: None,
        })
    }

    async fn scheduled_messages(
        &self,
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let data = self.handle.data();
        Ok(data
            .scheduled
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take_while(|((at, _), ())| *at <= until)
            .take(limit)
            .map(|((_, id), ())| data.messages[id].clone())
            .collect())
    }

    fn commit(&self, batch: Batch) -> BoxFuture<'static, Result<Batch, StoreError>> {
        let result = self.apply(&batch).map(|()| batch);
        Box::pin(std::future::ready(result))
    }

    /// Reads several entities; like SQLite, leaves their `pending_messages` at 0.
    async fn load_entities(&self, ids: Vec<EntityId>) -> Result<Vec<EntityRecord>, StoreError> {
        let data = self.handle.data();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let row = data.entities.get(id)?;
                Some(data.record(id, row, true, false))
            })
            .collect())
    }

    async fn idempotency_key(&self, key: &str) -> Result<Option<IdempotencyKey>, StoreError> {
        Ok(self.handle.data().keys.get(key).cloned())
    }

    async fn read_entity(&self, id: &EntityId) -> Result<Option<EntityRecord>, StoreError> {
        let data = self.handle.data();
        Ok(data
            .entities
            .get(id)
            .map(|row| data.record(id, row, true, true)))
    }

    async fn query_entities(&self, query: &EntityQuery) -> Result<EntityRecordPage, StoreError> {
        let start = match &query.continuation {
            Some(token) => Bound::Excluded(after(token)?),
            None => Bound::Unbounded,
        };
        let name = query.name.as_ref().map(|n| n.to_lowercase());
        let prefix = query.key_prefix.as_deref().unwrap_or("");
        let page_size = query.page_size.max(1);
        let data = self.handle.data();
        let mut entities: Vec<EntityRecord> = data
            .entities
            .range((start, Bound::Unbounded))
            .filter(|(id, row)| {
                name.as_ref().is_none_or(|name| id.name() == name)
                    && id.key().as_bytes().starts_with(prefix.as_bytes())
                    && (query.include_stateless || row.state.is_some())
            })
            .take(page_size + 1)
            .map(|(id, row)| data.record(id, row, query.include_state, true))
            .collect();
        let continuation = if entities.len() > page_size {
            entities.truncate(page_size);
            entities.last().map(|last| continuation(&last.id))
        } else {
            None
        };
        Ok(EntityRecordPage {
            entities,
            continuation,
        })
    }

    async fn delete_empty_entities(&self) -> Result<u64, StoreError> {
        self.handle.write(|data| {
            let before = data.entities.len();
            let pending = &data.pending;
            data.entities.retain(|id, row| {
                row.state.is_some() || row.lock_owner.is_some() || pending.contains_key(id)
            });
            (before - data.entities.len()) as u64
        })
    }

    async fn read_instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self
            .handle
            .data()
            .instances
            .get(id)
            .map(|row| row.record.clone()))
    }

    async fn read_history(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .handle
            .data()
            .instances
            .get(id)
            .map(|row| row.history.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn purge_instance(&self, id: &str) -> Result<bool, StoreError> {
        self.handle
            .write(|data| data.instances.remove(id).is_some())
    }

    async fn purge_instances(&self, query: &InstanceQuery) -> Result<u64, StoreError> {
        let limit = query.page_size.max(1);
        self.handle.write(|data| {
            let mut doomed: Vec<(u64, String)> = data
                .instances
                .values()
                .map(|row| &row.record)
                .filter(|r| r.status.is_terminal() && query.selects(r))
                .map(|r| (r.created, r.id.clone()))
                .collect();
            doomed.sort();
            doomed.truncate(limit);
            for (_, id) in &doomed {
                data.instances.remove(id);
            }
            doomed.len() as u64
        })
    }

    /// Instances in creation order, ties broken by id; the continuation is the
    /// `[created, id]` of the page's last instance.
    async fn query_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<InstanceRecordPage, StoreError> {
        let after = match &query.continuation {
            Some(token) => Some(serde_json::from_str::<(u64, String)>(token).map_err(|e| {
                StoreError::with_source(format!("invalid continuation token `{token}`"), e)
            })?),
            None => None,
        };
        let page_size = query.page_size.max(1);
        let data = self.handle.data();
        let mut instances: Vec<InstanceRecord> = data
            .instances
            .values()
            .map(|row| &row.record)
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|(created, id)| (r.created, &r.id) > (*created, id))
                    && query.selects(r)
            })
            .cloned()
            .collect();
        instances.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let continuation = if instances.len() > page_size {
            instances.truncate(page_size);
            instances
                .last()
                .map(|last| serde_json::json!([last.created, last.id]).to_string())
        } else {
            None
        };
        Ok(InstanceRecordPage {
            instances,
            continuation,
        })
    }

    async fn locked_entities(&self) -> Result<Vec<LockRecord>, StoreError> {
        let data = self.handle.data();
        Ok(data
            .entities
            .iter()
            .filter_map(|(id, row)| {
                row.lock_owner.clone().map(|owner| LockRecord {
                    id: id.clone(),
                    owner,
                })
            })
            .collect())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let data = self.handle.data();
        let mut by_status: Vec<(RuntimeStatus, u64)> = Vec::new();
        for row in data.instances.values() {
            match by_status.iter_mut().find(|(s, _)| *s == row.record.status) {
                Some((_, n)) => *n += 1,
                None => by_status.push((row.record.status, 1)),
            }
        }
        Ok(StoreStats {
            instances_by_status: by_status,
            instances_held: data
                .instances
                .values()
                .filter(|row| row.record.held.is_some())
                .count() as u64,
            locked_entities: data
                .entities
                .values()
                .filter(|row| row.lock_owner.is_some())
                .count() as u64,
            scheduled_messages: data.scheduled.len() as u64,
            messages: data.messages.len() as u64,
        })
    }

    async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let data = self.handle.data();
        let mut running: Vec<_> = data
            .instances
            .values()
            .filter(|row| !row.record.status.is_terminal())
            .map(|row| row.record.clone())
            .collect();
        running.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(running)
    }

    /// Refuses every later write of this handle and its clones with kind
    /// [`StoreErrorKind::Closed`]; reads keep working.
    fn close(&self) {
        self.handle.writes().closed = true;
    }

    /// Accepts writes again after a failed commit; fails with kind
    /// [`StoreErrorKind::Closed`] once closed. Takes effect when called: a batch committed
    /// after this call is accepted even before the returned future is polled.
    fn resume(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let mut writes = self.handle.writes();
        let result = if writes.closed {
            Err(closed())
        } else {
            writes.failed = None;
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::message::Body;

    fn signal(id: MessageId) -> Message {
        Message {
            id,
            target: Target::Entity(EntityId::new("Counter", "k")),
            deliver_at: None,
            body: Body::Operation {
                name: "add".into(),
                input: Some(json!(1)),
                reply: None,
                sender: None,
            },
        }
    }

    fn produce(id: MessageId) -> Batch {
        Batch {
            produced: vec![signal(id)],
            ..Batch::default()
        }
    }

    async fn stored(store: &MemoryStore) -> Vec<MessageId> {
        let recovery = store.recover(u64::MAX).await.unwrap();
        recovery.messages.iter().map(|m| m.id).collect()
    }

    #[tokio::test]
    async fn an_injected_failure_fails_the_next_commit_and_refuses_until_resume() {
        let store = MemoryStore::new();
        store.commit(produce(1)).await.unwrap();
        store.fail_next_commit(StoreError::of_kind(StoreErrorKind::DiskFull, "injected"));
        let clone = store.clone();
        let err = clone.commit(produce(2)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::DiskFull);
        assert_eq!(err.to_string(), "injected");
        let refused = store.commit(produce(3)).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            StoreErrorKind::DiskFull,
            "keeps the cause's kind"
        );
        assert!(refused.to_string().contains("injected"), "{refused}");
        assert_eq!(
            store.delete_empty_entities().await.unwrap_err().kind(),
            StoreErrorKind::DiskFull,
            "clean-ups are refused too"
        );
        store.resume().await.unwrap();
        store.commit(produce(4)).await.unwrap();
        assert_eq!(stored(&store).await, [1, 4]);
    }

    #[tokio::test]
    async fn reopen_gives_an_open_handle_on_the_same_data() {
        let store = MemoryStore::new();
        store.commit(produce(1)).await.unwrap();
        store.close();
        let reopened = store.reopen();
        reopened.commit(produce(2)).await.unwrap();
        let err = store.commit(produce(3)).await.unwrap_err();
        assert_eq!(
            err.kind(),
            StoreErrorKind::Closed,
            "the old handle stays closed"
        );
        assert_eq!(
            stored(&store).await,
            [1, 2],
            "both handles read the same data"
        );
        assert_eq!(stored(&reopened).await, [1, 2]);
        assert!(format!("{reopened:?}").contains("messages: 2"));
    }
}
