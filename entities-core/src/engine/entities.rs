//! The entity side of the engine: active entities in memory, running their operations, and
//! the entity side of critical sections.
//!
//! Operations run inline, one entity after the other: a sync operation to its end, an `async`
//! one polled once. An operation that suspends (an `async` operation that awaits and is not
//! ready) goes on on a task of its own, under its entity's timeout, while its entity's later
//! messages wait behind it; every other entity keeps running. When it finishes, the next batch
//! records it: its consumed message, new state, sent messages and reply commit together, as
//! for any operation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use super::shared::Shared;
use crate::context::EntityContext;
use crate::entity::EntityFunction;
use crate::error::{panic_message, OperationError, StoreErrorKind};
use crate::id::EntityId;
use crate::inspect::WaitingOperation;
use crate::message::{
    now_millis, Body, CallReply, Message, MessageId, ReplyTo, Target, SET_STATE_OPERATION,
};
use crate::store::{Batch, EntityRecord};

/// How many of the messages held back by one lock [`Slot::held_back`] lists.
const HELD_BACK_SHOWN: usize = 100;

/// How long an entity whose read failed waits before it is read again.
const LOAD_RETRY: Duration = Duration::from_millis(200);

/// Reads of an entity's row that may fail in a row before the operations waiting on it fail
/// with the read's error (about two seconds at [`LOAD_RETRY`]).
const MAX_LOAD_TRIES: u32 = 10;

/// An entity in memory.
#[derive(Default)]
struct Slot {
    loaded: bool,
    state: Option<Value>,
    /// The version of `state`'s shape (see `EntityFunction::versioning`).
    state_version: u32,
    lock: Option<String>,
    last_modified: u64,
    queue: VecDeque<Message>,
    /// When the messages queued while the entity was locked (or not loaded yet) arrived, by
    /// message id; empty on the hot path of an unlocked entity in memory.
    waits: HashMap<MessageId, Instant>,
    in_ready: bool,
    /// The last batch that wrote this entity; it may be unloaded once that batch committed.
    last_write: u64,
    /// One of its operations runs on a task of its own; its later messages wait.
    busy: bool,
    /// Its stored state cannot be decoded: its operations fail with this error, and the
    /// stored value is never overwritten.
    poisoned: Option<String>,
    /// Reads of its row that failed in a row (see [`MAX_LOAD_TRIES`]).
    load_failures: u32,
}

impl Slot {
    /// The index of the next message that may run: the first one, or while locked the first
    /// one from the lock holder. None while an operation is under way.
    fn runnable(&self) -> Option<usize> {
        if self.busy {
            return None;
        }
        let index = match &self.lock {
            None => (!self.queue.is_empty()).then_some(0),
            Some(owner) => self.queue.iter().position(|m| from_holder(m, owner)),
        }?;
        // A poisoned entity cannot record a lock: its lock messages wait for a repair.
        let lock_message = matches!(
            self.queue[index].body,
            Body::LockRequest { .. } | Body::Release { .. }
        );
        (!(lock_message && self.poisoned.is_some())).then_some(index)
    }

    /// The first [`HELD_BACK_SHOWN`] queued messages the lock holds back, with how long each
    /// has waited.
    fn held_back(&self) -> Vec<WaitingOperation> {
        let Some(owner) = &self.lock else {
            return Vec::new();
        };
        let now = Instant::now();
        self.queue
            .iter()
            .filter(|m| !from_holder(m, owner))
            .filter_map(|m| {
                let waited = self
                    .waits
                    .get(&m.id)
                    .map(|since| now.saturating_duration_since(*since));
                let (operation, sender, call) = match &m.body {
                    Body::Operation {
                        name,
                        reply,
                        sender,
                        ..
                    } => (Some(name.clone()), sender.clone(), reply.is_some()),
                    Body::LockRequest { owner, .. } => (None, Some(owner.clone()), true),
                    _ => return None,
                };
                Some(WaitingOperation {
                    operation,
                    sender,
                    call,
                    waited,
                })
            })
            .take(HELD_BACK_SHOWN)
            .collect()
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.in_ready && !self.busy
    }
}

/// Whether `message` comes from the critical section of `owner`, so that its lock lets it
/// through.
fn from_holder(message: &Message, owner: &str) -> bool {
    match &message.body {
        Body::Operation { sender, .. } => sender.as_deref() == Some(owner),
        Body::Release { owner: o } => o == owner,
        Body::LockRequest { owner: o, .. } => o == owner,
        _ => false,
    }
}

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

/// An `async` operation's future. It owns the operation's context and gives it back with the
/// outcome, so that it can be polled in the batch and, if it suspends, moved to a task.
type OperationFuture = BoxFuture<'static, (EntityContext, Result<(), OperationError>)>;

/// An operation that suspended: it goes on on a task of its own.
struct Suspended {
    span: tracing::Span,
    message: MessageId,
    future: OperationFuture,
    reply: Option<ReplyTo>,
}

/// An operation that finished on its own task.
pub(crate) struct OperationDone {
    id: EntityId,
    message: MessageId,
    ctx: EntityContext,
    outcome: Result<(), OperationError>,
    reply: Option<ReplyTo>,
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

/// Runs the runnable messages of one entity, in order, as long as they finish without
/// suspending. Returns the operation that suspended, if one did (to go on under its entity's
/// timeout); the entity's later messages wait for it.
fn run_entity_now(
    shared: &Arc<Shared>,
    function: &Arc<dyn EntityFunction>,
    id: &EntityId,
    slot: &mut Slot,
    cap: usize,
    timeouts: &Timeouts,
    part: &mut Part,
) -> Option<Suspended> {
    while part.consumed.len() < cap {
        let Some(index) = slot.runnable() else { break };
        let message = slot.queue.remove(index).expect("runnable index");
        if !slot.waits.is_empty() {
            slot.waits.remove(&message.id);
        }
        match message.body {
            Body::Operation {
                name,
                input,
                reply,
                sender: _,
            } if name == SET_STATE_OPERATION => {
                part.consumed.push(message.id);
                set_state(id, slot, input, reply, shared, part);
            }
            Body::Operation {
                name,
                input,
                reply,
                sender: _,
            } => {
                let span = tracing::debug_span!("operation", entity = %id, operation = %name);
                let entered = span.enter();
                let ctx = EntityContext::new(
                    id.clone(),
                    name,
                    input,
                    slot.state.take(),
                    slot.state_version,
                    shared.registry.clone(),
                );
                let mut ctx = ctx;
                let outcome = if let Some(poison) = &slot.poisoned {
                    Err(OperationError::new(poison))
                } else {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| function.run_now(&mut ctx)))
                    {
                        Ok(Some(outcome)) => outcome,
                        Ok(None) => {
                            // An `async` operation. The operation takes the state; if earlier
                            // operations of this round changed it, the batch writes it, so
                            // the slot keeps a copy of it as it was before this operation.
                            let before = if part.written {
                                ctx.state_raw().cloned()
                            } else {
                                None
                            };
                            let mut future =
                                operation_future(function.clone(), ctx, timeouts.of(id));
                            match future
                                .as_mut()
                                .poll(&mut Context::from_waker(Waker::noop()))
                            {
                                Poll::Ready((done, outcome)) => {
                                    ctx = done;
                                    outcome
                                }
                                Poll::Pending => {
                                    // It goes on on a task, whose first poll gives it the
                                    // task's waker. Until it finishes, the state stays what it
                                    // was.
                                    slot.state = before;
                                    drop(entered);
                                    return Some(Suspended {
                                        span,
                                        message: message.id,
                                        future,
                                        reply,
                                    });
                                }
                            }
                        }
                        Err(panic) => Err(panicked(&ctx, &panic)),
                    }
                };
                part.consumed.push(message.id);
                finish_operation(shared, id, slot, ctx, outcome, reply, part);
                drop(entered);
            }
            Body::LockRequest {
                owner,
                ids,
                position,
                seq,
            } => {
                part.consumed.push(message.id);
                slot.lock = Some(owner.clone());
                // What is queued already waits from now on (it arrived while unlocked).
                let now = Instant::now();
                for queued in &slot.queue {
                    slot.waits.entry(queued.id).or_insert(now);
                }
                part.written = true;
                part.produced
                    .push(shared.next_lock_step(owner, ids, position, seq));
            }
            Body::Release { owner } => {
                part.consumed.push(message.id);
                if slot.lock.as_deref() == Some(owner.as_str()) {
                    slot.lock = None;
                    part.written = true;
                }
            }
            Body::Recurring {
                schedule,
                name,
                input,
                every,
            } => {
                part.consumed.push(message.id);
                fire_schedule(shared, id, schedule, name, input, every, part);
            }
            Body::Expire { ttl_ms } => {
                part.consumed.push(message.id);
                let idle = slot.lock.is_none()
                    && slot.queue.is_empty()
                    && slot.poisoned.is_none()
                    && slot.state.is_some()
                    && slot.last_modified.saturating_add(ttl_ms) <= now_millis();
                if idle {
                    debug!(entity = %id, ttl_ms, "idle entity expired; its state is deleted");
                    slot.state = None;
                    slot.last_modified = now_millis();
                    part.written = true;
                }
            }
            other => {
                part.consumed.push(message.id);
                warn!(entity = %id, message = ?other, "message kind not meant for an entity; dropped");
            }
        }
    }
    None
}

/// Runs one fire of a recurring schedule: signals its operation to the entity (it runs next,
/// in this batch) and stores the fire after it, counted from now, so that fires missed while
/// no runtime ran come out as one.
fn fire_schedule(
    shared: &Arc<Shared>,
    id: &EntityId,
    schedule: u64,
    name: String,
    input: Option<Value>,
    every: crate::schedule::Schedule,
    part: &mut Part,
) {
    match every.next_after(now_millis()) {
        Ok(Some(at)) => part.produced.push(shared.message(
            Target::Entity(id.clone()),
            Some(at),
            Body::Recurring {
                schedule,
                name: name.clone(),
                input: input.clone(),
                every,
            },
        )),
        Ok(None) => debug!(entity = %id, schedule, "schedule has no fire left; it ends"),
        Err(err) => {
            warn!(entity = %id, schedule, error = %err, "schedule cannot compute its next fire; it ends");
        }
    }
    part.produced.push(shared.message(
        Target::Entity(id.clone()),
        None,
        Body::Operation {
            name,
            input,
            reply: None,
            sender: None,
        },
    ));
}

/// Runs the reserved operation of `Client::set_entity_state`: the input becomes the state,
/// and the caller hears back.
fn set_state(
    id: &EntityId,
    slot: &mut Slot,
    input: Option<Value>,
    reply: Option<ReplyTo>,
    shared: &Arc<Shared>,
    part: &mut Part,
) {
    let result = match input {
        // Its stored row could not be read, lock included: writing it would drop a lock.
        Some(_) if slot.poisoned.is_some() => {
            let poison = slot.poisoned.as_deref().unwrap_or_default();
            warn!(entity = %id, reason = poison, "set_entity_state refused: the stored state cannot be read");
            Err(OperationError::new(format!(
                "set_entity_state of {id} is refused, so that its stored row (lock included) is \
                 not overwritten: {poison}"
            )))
        }
        Some(state) => {
            slot.state = Some(state);
            // A class entity's raw state is taken as of its code's version; a function
            // entity's keeps its version.
            if let Some(versioning) = shared
                .registry
                .entity(id.name())
                .and_then(|f| f.versioning())
            {
                slot.state_version = versioning.current;
            }
            slot.last_modified = now_millis();
            part.written = true;
            Ok(None)
        }
        None => Err(OperationError::new("set_entity_state needs a state")),
    };
    match &result {
        Ok(_) => part.ok += 1,
        Err(err) => {
            part.failed += 1;
            shared
                .failures
                .record(id, SET_STATE_OPERATION, err.to_string());
        }
    }
    match reply {
        None => {}
        Some(ReplyTo::Client(waiter)) => part.replies.push((waiter, result)),
        Some(ReplyTo::Keyed {
            waiter,
            key,
            request,
        }) => {
            let outcome = crate::keys::KeyOutcome::answer(&result, request.as_deref());
            part.key_outcomes.push((key, outcome));
            part.replies.push((waiter, result));
        }
        Some(ReplyTo::Instance { id: instance, seq }) => part
            .produced
            .push(shared.operation_completion(instance, seq, result)),
    }
}

/// The future of an `async` operation of `function` on `ctx`: a panic becomes the operation's
/// error, and so does running longer than `timeout` after its first suspension.
fn operation_future(
    function: Arc<dyn EntityFunction>,
    mut ctx: EntityContext,
    timeout: Duration,
) -> OperationFuture {
    Box::pin(async move {
        let run = AssertUnwindSafe(async {
            Deadline {
                future: function.run(&mut ctx),
                limit: timeout,
                timer: None,
            }
            .await
        })
        .catch_unwind()
        .await;
        let outcome = match run {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                let id = ctx.id();
                warn!(entity = %id, operation = ctx.operation_name(), ?timeout, "operation timed out; its changes are rolled back");
                Err(OperationError::new(format!(
                    "operation `{}` of entity `{id}` timed out after {timeout:?}; its changes \
                     are rolled back",
                    ctx.operation_name()
                )))
            }
            Err(panic) => Err(panicked(&ctx, &panic)),
        };
        (ctx, outcome)
    })
}

/// A future limited to `limit` from its first suspension (`None` once over it). The timer is
/// made only then, so that an operation that finishes without suspending costs none.
struct Deadline<F> {
    future: F,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F: Future + Unpin> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = this.future.poll_unpin(cx) {
            return Poll::Ready(Some(output));
        }
        let limit = this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    }
}

/// The error of an operation that panicked.
fn panicked(ctx: &EntityContext, panic: &Box<dyn std::any::Any + Send>) -> OperationError {
    OperationError::new(format!(
        "operation `{}` panicked: {}",
        ctx.operation_name(),
        panic_message(panic)
    ))
}

/// Applies a finished operation to its entity: the new state, the messages it sends and the
/// reply to its caller.
fn finish_operation(
    shared: &Arc<Shared>,
    id: &EntityId,
    slot: &mut Slot,
    ctx: EntityContext,
    outcome: Result<(), OperationError>,
    reply: Option<ReplyTo>,
    part: &mut Part,
) {
    let finished = ctx.finish(outcome);
    match &finished.result {
        Ok(_) => part.ok += 1,
        Err(err) => {
            part.failed += 1;
            shared
                .failures
                .record(id, &finished.operation, err.to_string());
        }
    }
    slot.state = finished.state;
    if finished.state_version != slot.state_version {
        // Only a function entity without versioning picks its state's version.
        match shared
            .registry
            .entity(id.name())
            .and_then(|f| f.versioning())
        {
            Some(versioning) => warn!(
                entity = %id,
                asked = finished.state_version,
                version = versioning.current,
                "set_state_version ignored: this entity's version is its code's"
            ),
            None => slot.state_version = finished.state_version,
        }
    }
    // An entity that expires counts its time from its last operation, whatever it did.
    if finished.state_written || (slot.state.is_some() && shared.registry.expires(id.name())) {
        part.written = true;
        slot.last_modified = now_millis();
    }
    for out in finished.outgoing {
        part.produced.push(shared.outgoing_message(out));
    }
    match reply {
        None => {
            if let Err(err) = &finished.result {
                warn!(entity = %id, error = %err, "signalled operation failed");
            }
        }
        Some(ReplyTo::Client(waiter)) => part.replies.push((waiter, finished.result)),
        Some(ReplyTo::Keyed {
            waiter,
            key,
            request,
        }) => {
            let outcome = crate::keys::KeyOutcome::answer(&finished.result, request.as_deref());
            part.key_outcomes.push((key, outcome));
            part.replies.push((waiter, finished.result));
        }
        Some(ReplyTo::Instance { id: instance, seq }) => part
            .produced
            .push(shared.operation_completion(instance, seq, finished.result)),
    }
}
