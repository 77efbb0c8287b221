//! The entity side of the engine: active entities in memory, running their operations, and
//! the entity side of critical sections.
//!
//! Operations run inline, one entity after the other: a sync operation to its end, an `async`
//! one polled once. An operation that suspends (an `async` operation that awaits and is not
//! ready) goes on on a task of its own, under its entity's timeout, while its entity's later
//! messages wait behind it; every other entity keeps running. When it finishes, the next batch
//! records it: its consumed message, new state, sent messages and reply commit together, as
//! for any operation.

mod operation;
mod slot;

pub(crate) use self::operation::OperationDone;
use self::operation::{finish_operation, run_entity_now, Suspended};
use self::slot::Slot;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::{error, warn};

use super::shared::Shared;
use crate::error::StoreErrorKind;
use crate::id::EntityId;
use crate::inspect::WaitingOperation;
use crate::message::{CallReply, Message, MessageId};
use crate::store::{Batch, EntityRecord};

/// How long an entity whose read failed waits before it is read again.
const LOAD_RETRY: Duration = Duration::from_millis(200);

/// Reads of an entity's row that may fail in a row before the operations waiting on it fail
/// with the read's error (about two seconds at [`LOAD_RETRY`]).
const MAX_LOAD_TRIES: u32 = 10;

/// What one entity's share of a round produced.
#[derive(Default)]
struct Part {
    consumed: Vec<MessageId>,
    produced: Vec<Message>,
    replies: Vec<(u64, CallReply)>,
    /// Outcomes of idempotency keys (answers to keyed calls).
    key_outcomes: Vec<(String, Value)>,
    /// Whether its state or lock changed, so that its row must be written.
    written: bool,
    /// Operations that succeeded and failed (for the metrics).
    ok: u64,
    failed: u64,
}

/// What a round of entity operations adds to the batch being built.
pub(crate) struct RoundOutput<'a> {
    pub round: &'a mut Batch,
    pub writes: &'a mut HashMap<EntityId, EntityRecord>,
    pub replies: &'a mut Vec<(u64, CallReply)>,
}

/// Operation timeouts: one for all entities, overridden per entity name.
#[derive(Clone, Debug)]
pub(crate) struct Timeouts {
    pub default: Duration,
    pub by_name: HashMap<String, Duration>,
}

impl Timeouts {
    fn of(&self, id: &EntityId) -> Duration {
        self.by_name.get(id.name()).copied().unwrap_or(self.default)
    }
}

/// Active entities, their queues, and their operations under way.
pub(crate) struct Entities {
    shared: Arc<Shared>,
    slots: HashMap<EntityId, Slot>,
    ready: VecDeque<EntityId>,
    running: JoinSet<OperationDone>,
    finished: Vec<OperationDone>,
    timeouts: Timeouts,
    /// Entities whose read failed, and when to read them again.
    retries: Vec<(tokio::time::Instant, EntityId)>,
    /// Messages delivered and not consumed yet (for the metrics).
    waiting: usize,
    /// Operations that succeeded and failed since the last `take_outcomes`.
    ops_ok: u64,
    ops_failed: u64,
}

impl Entities {
    pub(crate) fn new(shared: Arc<Shared>, timeouts: Timeouts) -> Self {
        Self {
            shared,
            slots: HashMap::new(),
            ready: VecDeque::new(),
            running: JoinSet::new(),
            finished: Vec::new(),
            timeouts,
            retries: Vec::new(),
            waiting: 0,
            ops_ok: 0,
            ops_failed: 0,
        }
    }

    /// Whether a round would do something.
    pub(crate) fn has_work(&self) -> bool {
        !self.ready.is_empty() || !self.finished.is_empty()
    }

    /// Operations running on tasks of their own.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }

    /// Entities in memory.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Messages delivered to entities in memory and not consumed yet.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// The counts of operations that succeeded and failed since the last call.
    pub(crate) fn take_outcomes(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.ops_ok),
            std::mem::take(&mut self.ops_failed),
        )
    }

    /// The operations the lock of `id` holds back in this process (none if it is not locked
    /// here or not in memory).
    pub(crate) fn held_back(&self, id: &EntityId) -> Vec<WaitingOperation> {
        self.slots.get(id).map(Slot::held_back).unwrap_or_default()
    }

    /// Removes the message `message` from the queue of `id` if it waits there (not running
    /// yet); returns whether it did.
    pub(crate) fn cancel_queued(&mut self, id: &EntityId, message: MessageId) -> bool {
        let Some(slot) = self.slots.get_mut(id) else {
            return false;
        };
        let Some(index) = slot.queue.iter().position(|m| m.id == message) else {
            return false;
        };
        slot.queue.remove(index);
        slot.waits.remove(&message);
        self.waiting = self.waiting.saturating_sub(1);
        true
    }

    /// Queues a due message for its entity.
    pub(crate) fn deliver(&mut self, id: EntityId, message: Message) {
        if self.shared.registry.entity(id.name()).is_none() {
            warn!(
                entity = %id,
                message = message.id,
                "message for an entity name this runtime does not register; it stays stored"
            );
            return;
        }
        self.waiting += 1;
        let slot = self.slots.entry(id.clone()).or_default();
        if slot.lock.is_some() || !slot.loaded {
            slot.waits.insert(message.id, Instant::now());
        }
        slot.queue.push_back(message);
        if !slot.in_ready && !slot.busy {
            slot.in_ready = true;
            self.ready.push_back(id);
        }
    }

    /// The next operation that finished on its own task (pending while none runs).
    pub(crate) async fn next_finished(&mut self) {
        match self.running.join_next().await {
            Some(Ok(done)) => self.finished.push(done),
            Some(Err(err)) => error!(error = %err, "an entity operation task failed"),
            None => std::future::pending().await,
        }
    }

    /// Takes the operations that finished meanwhile, without waiting.
    pub(crate) fn poll_finished(&mut self) {
        while let Some(Some(joined)) = self.running.join_next().now_or_never() {
            match joined {
                Ok(done) => self.finished.push(done),
                Err(err) => error!(error = %err, "an entity operation task failed"),
            }
        }
    }

    /// Records finished operations, then runs the ready entities' messages once, into `out`.
    /// `only_finished` records finished operations without running anything else (when
    /// stopping).
    pub(crate) async fn run_round(
        &mut self,
        out: RoundOutput<'_>,
        batch_no: u64,
        max_batch: usize,
        only_finished: bool,
    ) {
        let mut work: Vec<(EntityId, Slot, Part)> = Vec::new();
        for done in std::mem::take(&mut self.finished) {
            let Some(mut slot) = self.slots.remove(&done.id) else {
                continue; // dropped by a recovery
            };
            slot.busy = false;
            let mut part = Part::default();
            part.consumed.push(done.message);
            let id = done.id;
            finish_operation(
                &self.shared,
                &id,
                &mut slot,
                done.ctx,
                done.outcome,
                done.reply,
                &mut part,
            );
            work.push((id, slot, part));
        }
        let mut ids = Vec::new();
        let mut budget = 0usize;
        while !only_finished && budget < max_batch {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.in_ready = false;
                budget += slot.queue.len();
                ids.push(id);
            }
        }
        for id in self.load(ids).await {
            let slot = self.slots.remove(&id).expect("ready entity has a slot");
            work.push((id, slot, Part::default()));
        }
        let shared = self.shared.clone();
        for (id, slot, part) in &mut work {
            if slot.busy || only_finished {
                continue;
            }
            let Some(function) = shared.registry.entity(id.name()) else {
                continue;
            };
            let timeouts = &self.timeouts;
            if let Some(op) = run_entity_now(&shared, function, id, slot, max_batch, timeouts, part)
            {
                slot.busy = true;
                self.spawn(id.clone(), op);
            }
        }
        for (id, mut slot, part) in work {
            self.waiting = self.waiting.saturating_sub(part.consumed.len());
            self.ops_ok += part.ok;
            self.ops_failed += part.failed;
            out.round.consumed.extend(part.consumed);
            out.round.produced.extend(part.produced);
            out.replies.extend(part.replies);
            out.round.key_outcomes.extend(part.key_outcomes);
            if part.written && slot.poisoned.is_none() {
                slot.last_write = batch_no;
                out.writes.insert(
                    id.clone(),
                    EntityRecord {
                        id: id.clone(),
                        state: slot.state.clone(),
                        state_version: slot.state_version,
                        lock_owner: slot.lock.clone(),
                        last_modified: slot.last_modified,
                        pending_messages: 0,
                    },
                );
            }
            if slot.runnable().is_some() {
                slot.in_ready = true;
                self.ready.push_back(id.clone());
            } else if slot.queue.is_empty() {
                slot.queue = VecDeque::new(); // an idle entity keeps no queue memory
                slot.waits = HashMap::new();
            }
            self.slots.insert(id, slot);
        }
    }

    /// Runs a suspended operation on to its end on a task of its own.
    fn spawn(&mut self, id: EntityId, op: Suspended) {
        let Suspended {
            span,
            message,
            future,
            reply,
        } = op;
        let task = async move {
            let (ctx, outcome) = future.await;
            OperationDone {
                id,
                message,
                ctx,
                outcome,
                reply,
            }
        };
        self.running
            .spawn(tracing::Instrument::instrument(task, span));
    }

    /// Loads the states of entities not in memory yet; returns those that can run. A state
    /// that cannot be decoded poisons its entity only; an entity whose read fails otherwise
    /// keeps its messages and is read again later, while the others run.
    async fn load(&mut self, ids: Vec<EntityId>) -> Vec<EntityId> {
        let missing: Vec<EntityId> = ids
            .iter()
            .filter(|id| !self.slots[*id].loaded)
            .cloned()
            .collect();
        if missing.is_empty() {
            return ids;
        }
        let mut unreadable = HashSet::new();
        let records = match self.shared.store.load_entities(missing.clone()).await {
            Ok(records) => records,
            Err(_) => {
                // Find the entities whose rows cannot be read, one by one.
                let mut records = Vec::new();
                for id in &missing {
                    match self.shared.store.load_entities(vec![id.clone()]).await {
                        Ok(found) => records.extend(found),
                        Err(err) if err.kind() == StoreErrorKind::Corrupt => {
                            error!(entity = %id, error = %err, "the stored state cannot be decoded; the entity's operations fail until it is repaired");
                            if let Some(slot) = self.slots.get_mut(id) {
                                slot.poisoned = Some(err.to_string());
                            }
                        }
                        Err(err) => {
                            let Some(slot) = self.slots.get_mut(id) else {
                                continue;
                            };
                            slot.load_failures += 1;
                            if slot.load_failures >= MAX_LOAD_TRIES {
                                error!(entity = %id, error = %err, tries = slot.load_failures, "the entity cannot be read; its operations fail until it is read again (once unloaded, or after a restart)");
                                slot.poisoned = Some(format!(
                                    "entity `{id}` cannot be read after {} tries: {err}",
                                    slot.load_failures
                                ));
                            } else {
                                warn!(entity = %id, error = %err, retry_in = ?LOAD_RETRY, "reading the entity failed; its messages wait and it is read again later");
                                unreadable.insert(id.clone());
                            }
                        }
                    }
                }
                records
            }
        };
        for id in &missing {
            if let (Some(slot), Some(function)) = (
                self.slots.get_mut(id),
                self.shared.registry.entity(id.name()),
            ) {
                slot.state_version = crate::entity::initial_version(&**function);
            }
        }
        for record in records {
            if let Some(slot) = self.slots.get_mut(&record.id) {
                let function = self.shared.registry.entity(record.id.name());
                let upgraded = match function {
                    Some(function) => crate::entity::upgrade_state(
                        &**function,
                        &record.id,
                        record.state,
                        record.state_version,
                    ),
                    None => Ok((record.state, record.state_version)),
                };
                match upgraded {
                    Ok((state, version)) => {
                        slot.state = state;
                        slot.state_version = version;
                    }
                    Err(err) => {
                        error!(entity = %record.id, error = %err, "the stored state cannot be brought to this code's version; the entity's operations fail and its row is not written");
                        slot.poisoned = Some(err.to_string());
                    }
                }
                slot.lock = record.lock_owner;
                slot.last_modified = record.last_modified;
            }
        }
        let retry_at = tokio::time::Instant::now() + LOAD_RETRY;
        for id in &missing {
            if unreadable.contains(id) {
                self.retries.push((retry_at, id.clone()));
            } else if let Some(slot) = self.slots.get_mut(id) {
                slot.loaded = true;
                slot.load_failures = 0;
            }
        }
        ids.into_iter()
            .filter(|id| !unreadable.contains(id))
            .collect()
    }

    /// When the next entity whose read failed is to be read again.
    pub(crate) fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.retries.iter().map(|(at, _)| *at).min()
    }

    /// Makes the entities whose read failed ready again once their time has come.
    pub(crate) fn wake_retries(&mut self) {
        let now = tokio::time::Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retries = wait;
        for (_, id) in due {
            if let Some(slot) = self.slots.get_mut(&id) {
                if !slot.in_ready && slot.runnable().is_some() {
                    slot.in_ready = true;
                    self.ready.push_back(id);
                }
            }
        }
    }

    /// Unloads idle entities whose writes have all committed, once over `capacity`.
    pub(crate) fn unload_idle(&mut self, capacity: usize, committed: u64) {
        if self.slots.len() <= capacity {
            return;
        }
        self.slots
            .retain(|_, slot| !(slot.idle() && slot.last_write <= committed));
    }

    /// Drops everything in memory and stops the operations under way (their messages are
    /// stored: they run again after the recovery).
    pub(crate) async fn reset(&mut self) {
        self.running.shutdown().await;
        self.slots.clear();
        self.ready.clear();
        self.finished.clear();
        self.retries.clear();
        self.waiting = 0;
    }

    /// Waits for the operations under way, at most `grace`; then stops those still running.
    pub(crate) async fn settle(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                Ok(Some(Ok(done))) => self.finished.push(done),
                Ok(Some(Err(err))) => error!(error = %err, "an entity operation task failed"),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        operations = self.running.len(),
                        ?grace,
                        "operations still running after the shutdown grace period are stopped; they run again at the next start"
                    );
                    self.running.shutdown().await;
                }
            }
        }
    }
}
