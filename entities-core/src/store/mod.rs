//! The storage seam: everything the runtime persists goes through [`Store`]. A store commits
//! whole [`Batch`]es atomically; a good implementation also merges batches that arrive together
//! into one transaction (group commit).

mod group;

pub use self::group::{DuplicateMessage, Group, HeldRows, RowSource};

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::StoreError;
use crate::id::EntityId;
use crate::message::{Message, MessageId, Target};

/// What a store holds for one entity.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityRecord {
    /// The entity.
    pub id: EntityId,
    /// Its state, `None` when it has none (deleted or never set).
    pub state: Option<Value>,
    /// The version of the state's shape (see `#[entity(version = N)]`), at least 1. Rows
    /// stored before versions existed read as 1. Stores keep it with the state.
    pub state_version: u32,
    /// The orchestration instance holding its lock.
    pub lock_owner: Option<String>,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub last_modified: u64,
    /// How many stored messages target it (filled in by reads, ignored by writes).
    pub pending_messages: u64,
}

/// The status of an orchestration instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Started, not finished.
    Running,
    /// Finished with an output.
    Completed,
    /// Finished with an error.
    Failed,
    /// Ended by `terminate`.
    Terminated,
}

impl RuntimeStatus {
    /// Whether the instance has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RuntimeStatus::Running)
    }
}

/// What a store holds for one orchestration instance, without its history.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRecord {
    /// Instance id.
    pub id: String,
    /// Orchestration name.
    pub name: String,
    /// Status.
    pub status: RuntimeStatus,
    /// Input.
    pub input: Value,
    /// Output (completed) or error message (failed, terminated).
    pub output: Option<Value>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created: u64,
    /// Last update, milliseconds since the Unix epoch.
    pub updated: u64,
    /// Why a running instance is held: its code departed from its history here (see
    /// `OrchestrationStatus::held`). `None` for an instance that runs or has ended.
    pub held: Option<String>,
}

/// A write of an orchestration instance: its record and the history events appended by a step.
#[derive(Clone, Debug)]
pub struct InstanceWrite {
    /// The new record.
    pub record: InstanceRecord,
    /// Index of the first appended event in the history.
    pub first_event: u64,
    /// History events appended, as JSON.
    pub events: Vec<Value>,
    /// The instance must not exist yet: if it does, the commit fails with a conflict
    /// ([`StoreError::is_conflict`]) and none of the batch is applied.
    pub create: bool,
    /// The instance starts again (continue-as-new): its stored history is deleted and
    /// `events` (from `first_event` 0) become the whole history, and its stored input is
    /// replaced by the record's. Without it, a write of an existing instance keeps its input
    /// and appends to its history.
    pub restart: bool,
}

/// Everything one commit changes, applied atomically.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Entity rows to write (state and lock), keyed by id.
    pub entities: Vec<EntityRecord>,
    /// Messages consumed: deleted.
    pub consumed: Vec<MessageId>,
    /// Messages produced: inserted. A message whose id is stored already (and not consumed
    /// by this batch) fails the commit; unless the batch creates an instance, this is a
    /// failure that refuses later batches until [`Store::resume`].
    pub produced: Vec<Message>,
    /// Orchestration instances written.
    pub instances: Vec<InstanceWrite>,
    /// Ids of `produced` messages for partitions this runtime does not run: their owner picks
    /// them up from the store. Stores without partitions ignore it.
    pub remote: HashSet<MessageId>,
    /// Replies to calls made from other processes (see [`Partitioned::take_replies`]).
    /// Stores without partitions never receive any.
    pub replies: Vec<RemoteReply>,
    /// Idempotency keys claimed by the sends of this batch: inserted, replacing a row of the
    /// same key (one past its retention). Applied before `key_outcomes`.
    pub keys: Vec<IdempotencyKey>,
    /// Makes the claims of `keys` exclusive: a stored key created at or after this time
    /// (milliseconds since the Unix epoch) still binds, so the commit fails with
    /// [`StoreErrorKind::Conflict`](crate::StoreErrorKind::Conflict) and applies nothing. A
    /// store shared by several processes decides this in the commit itself, so two processes
    /// claiming one key at once apply it once. Such a batch commits alone.
    pub keys_binding_since: Option<u64>,
    /// New outcomes of stored idempotency keys (the answer to a call), by key: only the
    /// outcome of an existing row changes.
    pub key_outcomes: Vec<(String, Value)>,
    /// Deletes the idempotency keys created before this time (milliseconds since the Unix
    /// epoch).
    pub forget_keys_before: Option<u64>,
}

/// A stored idempotency key (see `Client::idempotent`): the send that claimed it and what
/// came of it, as JSON the runtime reads back.
#[derive(Clone, Debug, PartialEq)]
pub struct IdempotencyKey {
    /// The key, as the client gave it.
    pub key: String,
    /// When the key was claimed, in milliseconds since the Unix epoch.
    pub created: u64,
    /// What came of the send.
    pub outcome: Value,
}

/// The reply to a call made by a client of another process, stored for that process.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteReply {
    /// The waiting call (the id of its message).
    pub waiter: u64,
    /// The reply, as JSON.
    pub reply: Value,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
            && self.consumed.is_empty()
            && self.produced.is_empty()
            && self.instances.is_empty()
            && self.replies.is_empty()
            && self.keys.is_empty()
            && self.key_outcomes.is_empty()
            && self.forget_keys_before.is_none()
    }
}

/// A page of an entity query.
#[derive(Clone, Debug)]
pub struct EntityRecordPage {
    /// The entities of this page, ordered by name then key.
    pub entities: Vec<EntityRecord>,
    /// Token for the next page, `None` on the last page.
    pub continuation: Option<String>,
}

/// A query over stored entities (see `Client::query_entities`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityQuery {
    /// Only entities of this name (case-insensitive).
    pub name: Option<String>,
    /// Only keys starting with this prefix.
    pub key_prefix: Option<String>,
    /// Whether to load the states.
    pub include_state: bool,
    /// Whether to list entities that have no state (they may still hold a lock or have
    /// messages waiting).
    pub include_stateless: bool,
    /// Entities per page (at least 1; a store takes 0 as 1).
    pub page_size: usize,
    /// The `continuation` of the previous page.
    pub continuation: Option<String>,
}

impl Default for EntityQuery {
    fn default() -> Self {
        Self {
            name: None,
            key_prefix: None,
            include_state: true,
            include_stateless: false,
            page_size: 100,
            continuation: None,
        }
    }
}

/// A query over stored orchestration instances (see `Client::query_orchestrations`). Times are
/// in milliseconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// Only instances of this orchestration name (exact match).
    pub name: Option<String>,
    /// Only instances with this status.
    pub status: Option<RuntimeStatus>,
    /// Only held instances (`Some(true)`) or only instances not held (`Some(false)`).
    pub held: Option<bool>,
    /// Only instances created at or after this time.
    pub created_from: Option<u64>,
    /// Only instances created strictly before this time.
    pub created_to: Option<u64>,
    /// Only instances that have ended (completed, failed or terminated) with their last
    /// update strictly before this time; running instances never match.
    pub ended_before: Option<u64>,
    /// Instances per page (at least 1).
    pub page_size: usize,
    /// The `continuation` of the previous page.
    pub continuation: Option<String>,
}

impl InstanceQuery {
    /// Whether `record` passes the query's filters (name, status, creation and end times;
    /// not the paging).
    pub fn selects(&self, record: &InstanceRecord) -> bool {
        self.name.as_ref().is_none_or(|name| &record.name == name)
            && self.status.is_none_or(|status| record.status == status)
            && self.held.is_none_or(|held| record.held.is_some() == held)
            && self.created_from.is_none_or(|from| record.created >= from)
            && self.created_to.is_none_or(|to| record.created < to)
            && self
                .ended_before
                .is_none_or(|before| record.status.is_terminal() && record.updated < before)
    }
}

/// A page of an instance query, in creation order.
#[derive(Clone, Debug)]
pub struct InstanceRecordPage {
    /// The instances of this page.
    pub instances: Vec<InstanceRecord>,
    /// Token for the next page, `None` on the last page.
    pub continuation: Option<String>,
}

/// An entity locked by a critical section, and the orchestration instance holding its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    /// The locked entity.
    pub id: EntityId,
    /// The orchestration instance holding the lock.
    pub owner: String,
}

/// Counts a store keeps, for the metrics (see [`Store::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored orchestration instances by status (statuses with none may be left out).
    pub instances_by_status: Vec<(RuntimeStatus, u64)>,
    /// Running instances that are held (see [`InstanceRecord::held`]).
    pub instances_held: u64,
    /// Entities whose lock is held.
    pub locked_entities: u64,
    /// Stored messages scheduled for later (`deliver_at` set).
    pub scheduled_messages: u64,
    /// Every stored message.
    pub messages: u64,
}

/// What a store recovers at start-up (see [`Store::recover`]).
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every stored message that is unscheduled or due by the horizon, in id order.
    pub messages: Vec<Message>,
    /// The highest id of the stored messages (0 if none), counting messages set aside and
    /// messages scheduled after the horizon. Ids of messages consumed since may be missing
    /// from it: the runtime numbers new messages above it.
    pub max_message_id: MessageId,
    /// How many stored messages this recovery set aside because they cannot be decoded (see
    /// [`Store::set_aside_messages`]).
    pub set_aside: usize,
    /// The partitions this recovery covers, which the runtime now owns; `None` for all (a
    /// store owned by one process).
    pub partitions: Option<Vec<u32>>,
}

/// A stored message that could not be decoded, moved out of the way so that it stops nothing
/// (see [`Store::set_aside_messages`]). Its fields are the stored text, not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAsideMessage {
    /// The message number.
    pub id: MessageId,
    /// The receiver, as stored (the `Display` form of a [`Target`]).
    pub target: String,
    /// The delivery time as stored (milliseconds since the Unix epoch), `None` if unscheduled.
    pub deliver_at: Option<u64>,
    /// The body, as stored (JSON, unless that is what went wrong).
    pub body: String,
    /// Why it could not be decoded.
    pub error: String,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub set_aside_at: u64,
}

/// The storage backend of a runtime. One runtime process owns a store at a time.
///
/// Reads must see committed data only, each read whole batches: a read that returns several
/// records (even [`Store::load_entities`]) sees a batch that commits meanwhile whole or not at
/// all. `commit` must apply a batch atomically and durably, and
/// apply batches in the order `commit` was called (the runtime queues a batch that consumes a
/// message as soon as the batch storing it is queued, before either has committed);
/// implementations should merge batches that are queued together into one transaction. Once a
/// commit has failed, every batch queued after it must fail too, until [`Store::resume`]: the
/// runtime may already have acted on the messages of a batch whose failure it only learns later.
/// A conflict ([`InstanceWrite::create`] of an instance that exists) is not such a failure: it
/// fails only its own batch (the client that sent it learns of it before anything acts on its
/// messages), and later batches need no `resume`.
///
/// A stored value that cannot be decoded (bit rot, a manual edit, a value nested too deep to
/// read back) must stop as little as possible. A message that cannot be decoded is set aside
/// by the reads that return messages ([`Store::recover`], [`Store::scheduled_messages`]): left
/// out of their result, kept with its stored text (see [`Store::set_aside_messages`]) and never
/// returned again. The other reads fail with an error of kind
/// [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt) that names the entity or
/// instance and holds the stored text ([`StoreError::raw_value`]), so that the runtime can fail
/// only that entity or instance.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Loads what the runtime needs to resume: every stored message that is unscheduled
    /// (`deliver_at` is `None`) or due at or before `horizon` (milliseconds since the Unix
    /// epoch), in id order (a [`Partitioned`] store: in the order stored, since ids come from
    /// several processes), and the highest message id ever used. Messages scheduled after
    /// `horizon` stay in the store: read them with [`Store::scheduled_messages`].
    ///
    /// A message that cannot be decoded is set aside (atomically moved out of the stored
    /// messages, kept for [`Store::set_aside_messages`]), logged, left out and counted in
    /// [`Recovery::set_aside`]; the next recovery does not see it again.
    async fn recover(&self, horizon: u64) -> Result<Recovery, StoreError>;

    /// Stored messages scheduled strictly after the cursor `after` (a `(deliver_at, id)` pair,
    /// compared as a pair) and at or before `until` (milliseconds since the Unix epoch),
    /// ordered by `(deliver_at, id)`, at most `limit` of them. The next page starts after the
    /// last message's `(deliver_at, id)`. Messages that cannot be decoded are set aside as by
    /// [`Store::recover`] and do not count against `limit`.
    async fn scheduled_messages(
        &self,
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// The stored scheduled messages (those with a delivery time, due or not) for `target`,
    /// ordered by `(deliver_at, id)`. The default pages through
    /// [`Store::scheduled_messages`]; a store with an index on targets does better.
    async fn scheduled_for(&self, target: &Target) -> Result<Vec<Message>, StoreError> {
        const PAGE: usize = 10_000;
        let mut after = (0, 0);
        let mut found = Vec::new();
        loop {
            let page = self.scheduled_messages(after, u64::MAX, PAGE).await?;
            let full = page.len() >= PAGE;
            if let Some(last) = page.last() {
                after = (last.deliver_at.unwrap_or(0), last.id);
            }
            found.extend(page.into_iter().filter(|m| &m.target == target));
            if !full {
                return Ok(found);
            }
        }
    }

    /// Up to `limit` entities named `name` (case-sensitive) that have a state, hold no lock,
    /// have no stored message and were last written before `before` (milliseconds since the
    /// Unix epoch): the candidates of expiry. The default pages through
    /// [`Store::query_entities`].
    async fn idle_entities(
        &self,
        name: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<EntityId>, StoreError> {
        let mut query = EntityQuery {
            name: Some(name.to_string()),
            include_state: false,
            page_size: 1000,
            ..EntityQuery::default()
        };
        let mut found = Vec::new();
        loop {
            let page = self.query_entities(&query).await?;
            found.extend(
                page.entities
                    .into_iter()
                    .filter(|e| {
                        e.id.name() == name
                            && e.lock_owner.is_none()
                            && e.pending_messages == 0
                            && e.last_modified < before
                    })
                    .map(|e| e.id),
            );
            if found.len() >= limit || page.continuation.is_none() {
                found.truncate(limit);
                return Ok(found);
            }
            query.continuation = page.continuation;
        }
    }

    /// The stored idempotency key `key`, if it is stored. A store that cannot keep keys
    /// (the default) fails, so that no send counts on one it would not keep.
    async fn idempotency_key(&self, key: &str) -> Result<Option<IdempotencyKey>, StoreError> {
        let _ = key;
        Err(StoreError::new(
            "this store does not keep idempotency keys; `Client::idempotent` needs one that does",
        ))
    }

    /// Lists the messages set aside because they could not be decoded, by id, with their
    /// stored text. A store that never sets messages aside returns none (the default).
    async fn set_aside_messages(&self) -> Result<Vec<SetAsideMessage>, StoreError> {
        Ok(Vec::new())
    }

    /// Queues a batch for commit and returns a future that resolves, with the batch, once it
    /// is committed atomically and durably. The batch is queued when this returns, before the
    /// future is polled: batches apply in the order of these calls.
    fn commit(&self, batch: Batch) -> BoxFuture<'static, Result<Batch, StoreError>>;

    /// Reads several entities, in the order of `ids` (missing ones are left out), in one
    /// snapshot; their `pending_messages` may be left at 0. A state that cannot be decoded
    /// fails the read with kind [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt),
    /// naming the entity.
    async fn load_entities(&self, ids: Vec<EntityId>) -> Result<Vec<EntityRecord>, StoreError>;

    /// Reads one entity with its count of pending messages. A state that cannot be decoded
    /// fails the read with kind [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt),
    /// naming the entity.
    async fn read_entity(&self, id: &EntityId) -> Result<Option<EntityRecord>, StoreError>;

    /// Lists entities, page by page. A loaded state that cannot be decoded fails the page with
    /// kind [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt), naming the entity.
    async fn query_entities(&self, query: &EntityQuery) -> Result<EntityRecordPage, StoreError>;

    /// Lists orchestration instances, page by page, in creation order. The default refuses:
    /// a store that can list its instances overrides it.
    async fn query_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<InstanceRecordPage, StoreError> {
        let _ = query;
        Err(StoreError::new(
            "this store cannot list orchestration instances (`Store::query_instances` is not \
             implemented)",
        ))
    }

    /// Counts for the metrics: instances by status, locked entities, stored messages. The
    /// default refuses: a store that can count cheaply overrides it.
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Err(StoreError::new(
            "this store keeps no statistics (`Store::stats` is not implemented)",
        ))
    }

    /// How many entities of each name have a state, ordered by name. The default pages through
    /// [`Store::query_entities`]; a store that can count in one query overrides it.
    async fn count_entities(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut query = EntityQuery {
            include_state: false,
            page_size: 1000,
            ..EntityQuery::default()
        };
        let mut counts: Vec<(String, u64)> = Vec::new();
        loop {
            let page = self.query_entities(&query).await?;
            for record in page.entities {
                match counts.last_mut() {
                    Some((name, count)) if name == record.id.name() => *count += 1,
                    _ => counts.push((record.id.name().to_string(), 1)),
                }
            }
            match page.continuation {
                Some(next) => query.continuation = Some(next),
                None => return Ok(counts),
            }
        }
    }

    /// Lists the entities whose lock is held, with the instance holding each, ordered by
    /// name then key. The default pages through [`Store::query_entities`]; a store that can
    /// read the locked rows alone overrides it.
    async fn locked_entities(&self) -> Result<Vec<LockRecord>, StoreError> {
        let mut query = EntityQuery {
            include_state: false,
            include_stateless: true,
            page_size: 1000,
            ..EntityQuery::default()
        };
        let mut locks = Vec::new();
        loop {
            let page = self.query_entities(&query).await?;
            locks.extend(page.entities.into_iter().filter_map(|record| {
                record.lock_owner.map(|owner| LockRecord {
                    id: record.id,
                    owner,
                })
            }));
            match page.continuation {
                Some(next) => query.continuation = Some(next),
                None => return Ok(locks),
            }
        }
    }

    /// Deletes entity rows that have no state, no lock and no pending message; returns how
    /// many it removed.
    async fn delete_empty_entities(&self) -> Result<u64, StoreError>;

    /// Reads an orchestration instance. An input or output that cannot be decoded fails the
    /// read with kind [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt), naming the
    /// instance.
    async fn read_instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError>;

    /// Reads an instance's history events, in order. An event that cannot be decoded fails
    /// the read with kind [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt), naming
    /// the instance and the event's sequence number.
    async fn read_history(&self, id: &str) -> Result<Vec<Value>, StoreError>;

    /// Deletes an instance and its history; returns whether it existed.
    async fn purge_instance(&self, id: &str) -> Result<bool, StoreError>;

    /// Deletes, with their histories, up to `query.page_size` (at least 1) of the ended
    /// instances (completed, failed or terminated) that `query` selects, the oldest first, and
    /// returns how many it deleted: fewer than `page_size` only once no ended instance the
    /// query selects is left. A running instance is never deleted, whatever the query's
    /// status; `query.continuation` is ignored. The default pages through
    /// [`Store::query_instances`] and calls [`Store::purge_instance`] for each; a store that
    /// can delete by query in one transaction overrides it.
    async fn purge_instances(&self, query: &InstanceQuery) -> Result<u64, StoreError> {
        let limit = query.page_size.max(1) as u64;
        if query.status == Some(RuntimeStatus::Running) {
            return Ok(0);
        }
        let mut page_query = InstanceQuery {
            continuation: None,
            page_size: 1000,
            ..query.clone()
        };
        let mut purged = 0;
        loop {
            let page = self.query_instances(&page_query).await?;
            for record in page.instances {
                if purged == limit {
                    return Ok(purged);
                }
                if record.status.is_terminal() && self.purge_instance(&record.id).await? {
                    purged += 1;
                }
            }
            match page.continuation {
                Some(next) => page_query.continuation = Some(next),
                None => return Ok(purged),
            }
        }
    }

    /// Lists instances that have not ended (for recovery). An input or output that cannot be
    /// decoded fails the list with kind
    /// [`StoreErrorKind::Corrupt`](crate::StoreErrorKind::Corrupt), naming the instance.
    async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;

    /// Stops accepting writes and waits for the write under way, if any. Called by the runtime
    /// when it stops, so that no write of a stopped runtime can land after another runtime has
    /// recovered from the same database.
    fn close(&self) {}

    /// After a failed commit, the store refuses every batch queued until `resume` is called;
    /// `resume` waits until no batch queued before it is pending, then accepts new batches
    /// again and checks that the database accepts writes (returns the error otherwise, and
    /// stays refusing). The default does nothing and returns `Ok`.
    fn resume(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Stops as [`Store::close`] does, then lets go of what the process holds in a shared
    /// database (partitions, membership) so that other processes take over at once. The
    /// default calls `close`.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.close();
        Box::pin(std::future::ready(()))
    }

    /// The partition side of a store shared by several processes, `None` (the default) for a
    /// store that one process owns whole.
    fn partitioned(&self) -> Option<Arc<dyn Partitioned>> {
        None
    }

    /// Checks, cheaply, that the database answers (for readiness probes). The default
    /// answers `Ok`.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// How long a send waits while the database cannot be reached before it fails with
    /// [`StoreErrorKind::Unavailable`](crate::StoreErrorKind::Unavailable). Default 30 s.
    fn unavailable_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }
}

/// A change of the partitions a process owns, told by a [`Partitioned`] store to its runtime.
#[derive(Debug)]
pub enum OwnershipEvent {
    /// The process now owns these partitions: the runtime recovers their pending work.
    Acquired(Vec<u32>),
    /// The store wants to hand these partitions to another process: the runtime stops running
    /// them, waits for its commits under way, and answers; the store then gives them up.
    Release(Vec<u32>, oneshot::Sender<()>),
    /// The process lost these partitions (its lease was taken over): the runtime drops what
    /// it holds of them at once.
    Lost(Vec<u32>),
}

/// A store shared by several processes: targets hash to partitions (see
/// [`partition_of_message`](crate::partition_of_message)), each owned by one process at a
/// time under a fenced lease. `commit` must fail (kind
/// [`StoreErrorKind::Fenced`](crate::StoreErrorKind::Fenced)) a batch that writes an entity,
/// updates an instance or consumes a message of a partition this process does not hold, and
/// must store each produced message so that its partition's owner finds it: a message in
/// [`Batch::remote`], or one whose partition this process does not hold at commit time, is
/// returned by the owner's next [`Partitioned::arrivals`].
#[async_trait]
pub trait Partitioned: Send + Sync + 'static {
    /// The number of partitions.
    fn count(&self) -> u32;

    /// The ownership changes, for the runtime; `None` after the first call.
    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<OwnershipEvent>>;

    /// Notified (a hint only) when arrivals or replies may be waiting.
    fn hint(&self) -> Arc<Notify>;

    /// Claims the pending work of `parts` after they were acquired: every stored message of
    /// those partitions that is unscheduled or scheduled at or before `until` (a
    /// `(deliver_at, id)` pair), in the order stored; later ones are read by
    /// [`Partitioned::scheduled_in`]. Messages returned are no longer arrivals. Fails with
    /// kind `Fenced` if the process does not hold them.
    async fn recover_partitions(
        &self,
        parts: &[u32],
        until: (u64, MessageId),
    ) -> Result<Recovery, StoreError>;

    /// Claims messages stored for `parts` by other processes (or by this one for partitions it
    /// did not run), in the order stored, at most `limit`. Each message is returned once.
    async fn arrivals(&self, parts: &[u32], limit: usize) -> Result<Vec<Message>, StoreError>;

    /// [`Store::scheduled_messages`] restricted to `parts`, leaving out unclaimed arrivals.
    async fn scheduled_in(
        &self,
        parts: &[u32],
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Takes the replies stored for calls made from this process.
    async fn take_replies(&self) -> Result<Vec<RemoteReply>, StoreError>;

    /// The first message id this process uses (ids of different processes never meet).
    fn id_base(&self) -> MessageId;
}
