//! The engine: one task that owns the in-memory queues and cached states of active entities,
//! runs their operations batch by batch, and hands each batch to the store as one commit.
//!
//! A client's message is stored by the engine's next batch, together with what that batch does
//! with it (if the batch consumes it, only its effect is written), and its sender hears back
//! after that commit; a batch about to wait on `async` operations first stores the client
//! messages it holds in a commit of its own. A stored message is deleted in the commit that
//! records its effect; the store applies commits in queue order, so a crash at any moment
//! loses nothing acknowledged and applies nothing twice. Messages the engine produces are delivered at
//! once: they commit in the batch that produced them, and whatever consumes them commits in
//! the same or a later batch. Commits are
//! pipelined and complete in batch order; a failed commit stops the engine, and the store
//! refuses the writes queued after it, so no batch built on a lost one can land. Effects seen
//! outside (replies to clients, ended instances, activities) wait for their commit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::context::{EntityContext, Outgoing};
use crate::entity::EntityFunction;
use crate::error::{OperationError, StoreError};
use crate::id::EntityId;
use crate::message::{
    now_millis, to_millis_ceil, Body, FailureKind, Message, MessageId, Outcome, ReplyTo, Target,
};
use crate::orchestration::engine::Orchestrations;
use crate::registry::Registry;
use crate::store::{Batch, EntityRecord, Store};

/// Most rounds in one batch (a round runs what the previous round made ready).
const MAX_ROUNDS: usize = 32;

/// Tuning of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most messages processed in one batch (one commit).
    pub max_batch: usize,
    /// Most batches committing at once.
    pub max_inflight_commits: usize,
    /// Entities kept in memory while idle; past this, idle ones are unloaded.
    pub cache_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 8192,
            max_inflight_commits: 2,
            cache_capacity: 20_000,
        }
    }
}

/// The reply to a client's call.
pub(crate) type CallReply = Result<Option<Value>, OperationError>;

/// Tells a client that the messages it handed to the engine are stored (or their effects
/// committed).
pub(crate) type Stored = oneshot::Sender<Result<(), StoreError>>;

/// What clients ask of the engine.
pub(crate) enum Command {
    /// Messages to deliver, with a waiter for a call's reply. With `stored`, the messages are
    /// not stored yet: the engine's next batch stores them (or, if it consumes them, only
    /// their effects) and answers `stored` once it has committed. Without, they are stored.
    Deliver {
        messages: Vec<Message>,
        waiter: Option<(u64, oneshot::Sender<CallReply>)>,
        stored: Option<Stored>,
    },
    /// An activity finished.
    ActivityDone(crate::orchestration::engine::ActivityDone),
    /// Register a waiter for the end of an orchestration instance.
    WatchInstance {
        id: String,
        done: oneshot::Sender<crate::store::InstanceRecord>,
    },
    /// Stop after the commits under way.
    Shutdown(oneshot::Sender<()>),
}

/// State shared by the engine, the clients and the runtime handle.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
    pub stopped: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        commands: mpsc::UnboundedSender<Command>,
        first_id: MessageId,
    ) -> Self {
        Self {
            store,
            registry,
            commands,
            next_id: AtomicU64::new(first_id),
            stopped: AtomicBool::new(false),
        }
    }

    /// A fresh message id.
    pub(crate) fn next_message_id(&self) -> MessageId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Builds the message for a signal or orchestration start sent by an entity operation.
    pub(crate) fn outgoing_message(&self, out: Outgoing) -> Message {
        match out {
            Outgoing::Signal {
                target,
                operation,
                input,
                at,
            } => Message {
                id: self.next_message_id(),
                target: Target::Entity(target),
                deliver_at: at.map(to_millis_ceil),
                body: Body::Operation {
                    name: operation,
                    input,
                    reply: None,
                    sender: None,
                },
            },
            Outgoing::StartOrchestration {
                name,
                instance,
                input,
            } => Message {
                id: self.next_message_id(),
                target: Target::Instance(instance),
                deliver_at: None,
                body: Body::Start {
                    name,
                    input,
                    parent: None,
                },
            },
        }
    }
}

/// An active entity.
#[derive(Default)]
struct Slot {
    loaded: bool,
    state: Option<Value>,
    lock: Option<String>,
    last_modified: u64,
    queue: VecDeque<Message>,
    in_ready: bool,
    /// The last batch that wrote this entity; it may be unloaded once that batch committed.
    last_write: u64,
}

impl Slot {
    /// The index of the next message that may run: the first one, or while locked the first
    /// one from the lock holder.
    fn runnable(&self) -> Option<usize> {
        match &self.lock {
            None => (!self.queue.is_empty()).then_some(0),
            Some(owner) => self.queue.iter().position(|m| match &m.body {
                Body::Operation { sender, .. } => sender.as_deref() == Some(owner),
                Body::Release { owner: o } => o == owner,
                Body::LockRequest { owner: o, .. } => o == owner,
                _ => false,
            }),
        }
    }
}

/// A scheduled message waiting for its time.
struct Timer {
    at: u64,
    message: Message,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.message.id) == (other.at, other.message.id)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.message.id).cmp(&(other.at, other.message.id))
    }
}

/// What one entity's share of a batch produced.
#[derive(Default)]
struct Part {
    consumed: Vec<MessageId>,
    produced: Vec<Message>,
    replies: Vec<(u64, CallReply)>,
    /// Whether its state or lock changed, so that its row must be written.
    written: bool,
}

/// Effects released once a batch has committed.
#[derive(Default)]
pub(crate) struct Effects {
    /// Clients whose messages the batch stores.
    pub stored: Vec<Stored>,
    pub replies: Vec<(u64, CallReply)>,
    /// Messages delivered only after the commit (activities: side effects outside).
    pub deferred: Vec<Message>,
    pub finished_instances: Vec<crate::store::InstanceRecord>,
}

type Commit = BoxFuture<'static, (Result<Batch, StoreError>, Effects)>;

/// The engine task.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    config: EngineConfig,
    rx: mpsc::UnboundedReceiver<Command>,
    slots: HashMap<EntityId, Slot>,
    ready: VecDeque<EntityId>,
    timers: BinaryHeap<Reverse<Timer>>,
    waiters: HashMap<u64, oneshot::Sender<CallReply>>,
    /// Client messages delivered but not stored yet: the next batch stores them.
    ingested: Vec<Message>,
    ingested_acks: Vec<Stored>,
    /// Commands received while a batch waited on `async` operations, handled after it.
    postponed: VecDeque<Command>,
    inflight: FuturesOrdered<Commit>,
    batch_no: u64,
    committed_no: u64,
    orchestrations: Orchestrations,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Engine {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: EngineConfig,
        rx: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let orchestrations = Orchestrations::new(shared.clone());
        Self {
            shared,
            config,
            rx,
            slots: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            waiters: HashMap::new(),
            ingested: Vec::new(),
            ingested_acks: Vec::new(),
            postponed: VecDeque::new(),
            inflight: FuturesOrdered::new(),
            batch_no: 0,
            committed_no: 0,
            orchestrations,
            shutdown: None,
        }
    }

    /// Delivers recovered messages, then runs until shut down.
    pub(crate) async fn run(mut self, recovered: Vec<Message>) {
        for message in recovered {
            self.deliver(message);
        }
        loop {
            while let Some(command) = self.postponed.pop_front() {
                self.handle(command);
            }
            let can_run = self.has_work() && self.inflight.len() < self.config.max_inflight_commits;
            if self.shutdown.is_some() && self.inflight.is_empty() {
                break;
            }
            if !can_run || self.shutdown.is_some() {
                let deadline = self.next_timer_deadline();
                tokio::select! {
                    command = self.rx.recv() => match command {
                        Some(command) => self.handle(command),
                        None => {
                            if self.inflight.is_empty() { break; }
                        }
                    },
                    Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                        if !self.committed(done) { break; }
                    }
                    _ = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(3600))), if deadline.is_some() => {}
                }
            }
            while let Ok(command) = self.rx.try_recv() {
                self.handle(command);
            }
            let mut failed = false;
            while let Some(Some(done)) = self.inflight.next().now_or_never() {
                if !self.committed(done) {
                    failed = true;
                    break;
                }
            }
            if failed {
                break;
            }
            self.fire_timers();
            if self.shutdown.is_some() && !self.ingested.is_empty() {
                self.store_ingested_alone();
            }
            if self.shutdown.is_none()
                && self.has_work()
                && self.inflight.len() < self.config.max_inflight_commits
            {
                if let Err(err) = self.run_batch().await {
                    self.fail(err);
                    break;
                }
            }
        }
        // Commits still queued may land (a failed read stops the engine, not the store): their
        // senders hear how they ended, not that the runtime stopped.
        while let Some((result, effects)) = self.inflight.next().await {
            answer_stored(effects.stored, result.as_ref().err());
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
        debug!("engine stopped");
    }

    fn has_work(&self) -> bool {
        !self.ready.is_empty() || !self.ingested.is_empty() || self.orchestrations.has_work()
    }

    /// Stores the client messages taken in since the last batch in a commit of their own (when
    /// stopping: they are recovered at the next start).
    fn store_ingested_alone(&mut self) {
        let effects = Effects {
            stored: std::mem::take(&mut self.ingested_acks),
            ..Effects::default()
        };
        let batch = Batch {
            produced: std::mem::take(&mut self.ingested),
            ..Batch::default()
        };
        let commit = self.shared.store.commit(batch);
        self.inflight
            .push_back(Box::pin(async move { (commit.await, effects) }));
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Deliver {
                messages,
                waiter,
                stored,
            } => {
                if let Some((id, tx)) = waiter {
                    self.waiters.insert(id, tx);
                }
                if let Some(stored) = stored {
                    self.ingested.extend(messages.iter().cloned());
                    self.ingested_acks.push(stored);
                }
                for message in messages {
                    self.deliver(message);
                }
            }
            Command::ActivityDone(done) => self.orchestrations.activity_done(done),
            Command::WatchInstance { id, done } => self.orchestrations.watch(id, done),
            Command::Shutdown(done) => self.shutdown = Some(done),
        }
    }

    /// Routes one stored message: to a timer if it is not due, else to its receiver's queue.
    fn deliver(&mut self, message: Message) {
        if let Some(at) = message.deliver_at {
            if at > now_millis() {
                self.timers.push(Reverse(Timer { at, message }));
                return;
            }
        }
        match &message.target {
            Target::Entity(id) => {
                if self.shared.registry.entity(id.name()).is_none() {
                    warn!(
                        entity = %id,
                        message = message.id,
                        "message for an entity name this runtime does not register; it stays stored"
                    );
                    return;
                }
                let id = id.clone();
                let slot = self.slots.entry(id.clone()).or_default();
                slot.queue.push_back(message);
                if !slot.in_ready {
                    slot.in_ready = true;
                    self.ready.push_back(id);
                }
            }
            Target::Instance(_) | Target::Activity => self.orchestrations.deliver(message),
        }
    }

    fn next_timer_deadline(&self) -> Option<Duration> {
        self.timers.peek().map(|Reverse(timer)| {
            Duration::from_millis(timer.at.saturating_sub(now_millis()).max(1))
        })
    }

    fn fire_timers(&mut self) {
        let now = now_millis();
        while self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Reverse(timer) = self.timers.pop().expect("peeked");
            self.deliver(timer.message);
        }
    }

    /// Runs one batch, then queues its commit. A batch runs in rounds: the ready operations of
    /// entities and turns of orchestrations, then those made ready by the messages the round
    /// produced, and so on. A message produced and consumed in one batch commits (or is lost)
    /// with its producer, so it never needs storing; only effects seen outside (client replies,
    /// ended instances, activities) wait for the commit. Client messages taken in since the
    /// last batch count as produced by this one: their senders hear back after its commit.
    async fn run_batch(&mut self) -> Result<(), StoreError> {
        self.batch_no += 1;
        let mut b = Building {
            local: self.ingested.iter().map(|m| m.id).collect(),
            ingested: self.ingested.len(),
            batch: Batch {
                produced: std::mem::take(&mut self.ingested),
                ..Batch::default()
            },
            effects: Effects {
                stored: std::mem::take(&mut self.ingested_acks),
                ..Effects::default()
            },
            ..Building::default()
        };
        let mut ops = 0;
        for _ in 0..MAX_ROUNDS {
            if ops >= self.config.max_batch || !self.has_work() {
                break;
            }
            let mut round = Batch::default();
            self.run_entities(&mut round, &mut b).await?;
            let ended = self.orchestrations.run_steps(&mut round).await?;
            b.effects.finished_instances.extend(ended);
            if round.is_empty() {
                break; // only entities waiting for a lock were ready
            }
            ops += round.consumed.len();
            for id in round.consumed {
                if b.local.remove(&id) {
                    b.dropped.insert(id);
                } else {
                    b.batch.consumed.push(id);
                }
            }
            for message in round.produced {
                if matches!(message.target, Target::Activity) {
                    b.effects.deferred.push(message.clone());
                } else {
                    b.local.insert(message.id);
                    self.deliver(message.clone());
                }
                b.batch.produced.push(message);
            }
            b.batch.instances.extend(round.instances);
        }
        let Building {
            mut batch,
            dropped,
            writes,
            effects,
            ..
        } = b;
        batch.produced.retain(|m| !dropped.contains(&m.id));
        batch.entities = writes.into_values().collect();
        if batch.is_empty()
            && effects.stored.is_empty()
            && effects.replies.is_empty()
            && effects.finished_instances.is_empty()
        {
            return Ok(());
        }
        // Queued now, so batches commit in order.
        let commit = self.shared.store.commit(batch);
        self.inflight
            .push_back(Box::pin(async move { (commit.await, effects) }));
        Ok(())
    }

    /// Keeps a command for after the round under way; stores client messages now, answering
    /// their senders when that commit lands.
    fn postpone(&mut self, command: Command) {
        let command = match command {
            Command::Deliver {
                messages,
                waiter,
                stored: Some(ack),
            } => {
                self.store_now(messages.clone(), vec![ack]);
                Command::Deliver {
                    messages,
                    waiter,
                    stored: None,
                }
            }
            other => other,
        };
        self.postponed.push_back(command);
    }

    /// Queues a commit of these messages alone and answers `acks` when it lands.
    fn store_now(&self, messages: Vec<Message>, acks: Vec<Stored>) {
        let commit = self.shared.store.commit(Batch {
            produced: messages,
            ..Batch::default()
        });
        tokio::spawn(async move { answer_stored(acks, commit.await.err().as_ref()) });
    }

    /// Before the batch waits on `async` operations, which may take long: stores the client
    /// messages it took in, in a commit of their own queued ahead of the batch, and answers
    /// their senders when that lands. The batch then deletes those it consumes.
    fn store_ingested_now(&self, b: &mut Building) {
        if b.ingested == 0 {
            return;
        }
        // The client messages open `produced`: nothing is removed from it before the end.
        let messages: Vec<Message> = b.batch.produced.drain(..b.ingested).collect();
        b.ingested = 0;
        for id in messages.iter().map(|m| m.id) {
            // Still unconsumed (or consumed in this round, not yet counted): a later consumption
            // goes to `consumed` now that it is no longer local. Consumed by an earlier round:
            // its effect is in this batch, so this batch deletes it.
            if !b.local.remove(&id) && b.dropped.remove(&id) {
                b.batch.consumed.push(id);
            }
        }
        self.store_now(messages, std::mem::take(&mut b.effects.stored));
    }

    /// Runs the ready entities' operations once, into `round`.
    async fn run_entities(
        &mut self,
        round: &mut Batch,
        b: &mut Building,
    ) -> Result<(), StoreError> {
        let mut ids = Vec::new();
        let mut budget = 0usize;
        while let Some(id) = self.ready.pop_front() {
            let slot = self.slots.get_mut(&id).expect("ready entity has a slot");
            slot.in_ready = false;
            budget += slot.queue.len();
            ids.push(id);
            if budget >= self.config.max_batch {
                break;
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        self.load(&ids).await?;
        let mut work: Vec<(EntityId, Slot)> = ids
            .into_iter()
            .map(|id| {
                let slot = self.slots.remove(&id).expect("slot");
                (id, slot)
            })
            .collect();
        let shared = self.shared.clone();
        let cap = self.config.max_batch;
        // Operations that finish without suspending run here, one entity after the other; an
        // entity reaching an `async` operation goes on below, concurrently with the others.
        let mut parts = Vec::with_capacity(work.len());
        let mut suspended = Vec::new();
        for (i, (id, slot)) in work.iter_mut().enumerate() {
            let mut part = Part::default();
            if let Some(function) = shared.registry.entity(id.name()) {
                if let Some(op) = run_entity_now(&shared, function, id, slot, cap, &mut part) {
                    suspended.push((i, op));
                }
            }
            parts.push(part);
        }
        if !suspended.is_empty() {
            self.store_ingested_now(b);
            let mut suspended = suspended.into_iter().peekable();
            let mut resumed = Vec::new();
            for (i, ((id, slot), part)) in work.iter_mut().zip(parts.iter_mut()).enumerate() {
                if let Some((_, op)) = suspended.next_if(|(j, _)| *j == i) {
                    resumed.push(run_entity_async(&shared, id, slot, cap, part, op));
                }
            }
            // Commands go on arriving while the operations run: client messages are stored at
            // once (their senders must not wait on these operations), everything is handled
            // after the round, in order.
            let mut resumed = join_all(resumed);
            loop {
                tokio::select! {
                    _ = &mut resumed => break,
                    Some(command) = self.rx.recv() => self.postpone(command),
                }
            }
        }
        for ((id, mut slot), part) in work.into_iter().zip(parts) {
            round.consumed.extend(part.consumed);
            round.produced.extend(part.produced);
            b.effects.replies.extend(part.replies);
            if part.written {
                slot.last_write = self.batch_no;
                let record = EntityRecord {
                    id: id.clone(),
                    state: slot.state.clone(),
                    lock_owner: slot.lock.clone(),
                    last_modified: slot.last_modified,
                    pending_messages: 0,
                };
                b.writes.insert(id.clone(), record);
            }
            if slot.runnable().is_some() {
                slot.in_ready = true;
                self.ready.push_back(id.clone());
            } else if slot.queue.is_empty() {
                slot.queue = VecDeque::new(); // an idle entity keeps no queue memory
            }
            self.slots.insert(id, slot);
        }
        Ok(())
    }

    /// Loads the states of entities not in memory yet.
    async fn load(&mut self, ids: &[EntityId]) -> Result<(), StoreError> {
        let missing: Vec<EntityId> = ids
            .iter()
            .filter(|id| !self.slots[*id].loaded)
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for record in self.shared.store.load_entities(missing.clone()).await? {
            if let Some(slot) = self.slots.get_mut(&record.id) {
                slot.state = record.state;
                slot.lock = record.lock_owner;
                slot.last_modified = record.last_modified;
            }
        }
        for id in missing {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.loaded = true;
            }
        }
        Ok(())
    }

    /// Applies a finished commit: delivers what it produced and answers waiting clients.
    /// Returns false if the commit failed, which stops the engine.
    fn committed(&mut self, (result, effects): (Result<Batch, StoreError>, Effects)) -> bool {
        match result {
            Ok(_) => {
                self.committed_no += 1;
                answer_stored(effects.stored, None);
                for message in effects.deferred {
                    self.deliver(message);
                }
                for (waiter, reply) in effects.replies {
                    if let Some(tx) = self.waiters.remove(&waiter) {
                        let _ = tx.send(reply);
                    }
                }
                self.orchestrations.finished(effects.finished_instances);
                self.unload_idle();
                true
            }
            Err(err) => {
                answer_stored(effects.stored, Some(&err));
                self.fail(err);
                false
            }
        }
    }

    /// Unloads idle entities whose writes have all committed, once the cache is over capacity.
    fn unload_idle(&mut self) {
        if self.slots.len() <= self.config.cache_capacity {
            return;
        }
        let committed = self.committed_no;
        self.slots.retain(|_, slot| {
            !(slot.queue.is_empty() && !slot.in_ready && slot.last_write <= committed)
        });
        self.orchestrations.unload_idle();
    }

    fn fail(&mut self, err: StoreError) {
        error!(error = %err, "store commit failed; the runtime stops (stored messages are kept)");
        self.waiters.clear();
        answer_stored(std::mem::take(&mut self.ingested_acks), Some(&err));
    }
}

/// Tells clients that the commit storing their messages landed, or why it did not.
fn answer_stored(acks: Vec<Stored>, failure: Option<&StoreError>) {
    for ack in acks {
        let _ = ack.send(match failure {
            None => Ok(()),
            Some(err) => Err(StoreError::new(format!(
                "storing the messages failed: {err}"
            ))),
        });
    }
}

/// A batch being built: what it will commit, and what waits for the commit.
#[derive(Default)]
struct Building {
    batch: Batch,
    /// Messages produced in this batch (and client messages it took in): stored with it
    /// unless consumed in it.
    local: HashSet<MessageId>,
    /// Messages of `local` consumed in the batch: never stored.
    dropped: HashSet<MessageId>,
    /// The last record of each entity the batch changed.
    writes: HashMap<EntityId, EntityRecord>,
    effects: Effects,
    /// How many client messages open `batch.produced`: taken in by this batch, while their
    /// senders wait for it.
    ingested: usize,
}

/// An operation that suspended: it goes on in the asynchronous pass of its round.
struct Suspended {
    function: Arc<dyn EntityFunction>,
    ctx: EntityContext,
    reply: Option<ReplyTo>,
}

/// Runs the runnable messages of one entity, in order, as long as they finish without
/// suspending. Returns the operation that suspended, if one did; the entity's later messages
/// wait for it.
fn run_entity_now(
    shared: &Arc<Shared>,
    function: &Arc<dyn EntityFunction>,
    id: &EntityId,
    slot: &mut Slot,
    cap: usize,
    part: &mut Part,
) -> Option<Suspended> {
    while part.consumed.len() < cap {
        let Some(index) = slot.runnable() else { break };
        let message = slot.queue.remove(index).expect("runnable index");
        part.consumed.push(message.id);
        match message.body {
            Body::Operation {
                name,
                input,
                reply,
                sender: _,
            } => {
                let mut ctx = EntityContext::new(
                    id.clone(),
                    name,
                    input,
                    slot.state.take(),
                    shared.registry.clone(),
                );
                let outcome =
                    match std::panic::catch_unwind(AssertUnwindSafe(|| function.run_now(&mut ctx)))
                    {
                        Ok(Some(outcome)) => outcome,
                        Ok(None) => {
                            return Some(Suspended {
                                function: function.clone(),
                                ctx,
                                reply,
                            })
                        }
                        Err(panic) => Err(panicked(&ctx, &panic)),
                    };
                finish_operation(shared, id, slot, ctx, outcome, reply, part);
            }
            Body::LockRequest {
                owner,
                ids,
                position,
                seq,
            } => {
                slot.lock = Some(owner.clone());
                part.written = true;
                let next = if position + 1 < ids.len() {
                    Message {
                        id: shared.next_message_id(),
                        target: Target::Entity(ids[position + 1].clone()),
                        deliver_at: None,
                        body: Body::LockRequest {
                            owner,
                            ids,
                            position: position + 1,
                            seq,
                        },
                    }
                } else {
                    Message {
                        id: shared.next_message_id(),
                        target: Target::Instance(owner),
                        deliver_at: None,
                        body: Body::LockGranted { seq, ids },
                    }
                };
                part.produced.push(next);
            }
            Body::Release { owner } => {
                if slot.lock.as_deref() == Some(owner.as_str()) {
                    slot.lock = None;
                    part.written = true;
                }
            }
            other => {
                warn!(entity = %id, message = ?other, "message kind not meant for an entity; dropped")
            }
        }
    }
    None
}

/// Awaits an operation that suspended, then runs the entity's next messages, suspending again
/// as often as they do.
async fn run_entity_async(
    shared: &Arc<Shared>,
    id: &EntityId,
    slot: &mut Slot,
    cap: usize,
    part: &mut Part,
    mut op: Suspended,
) {
    loop {
        let outcome = AssertUnwindSafe(op.function.run(&mut op.ctx))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(&op.ctx, &panic)));
        finish_operation(shared, id, slot, op.ctx, outcome, op.reply, part);
        match run_entity_now(shared, &op.function, id, slot, cap, part) {
            Some(next) => op = next,
            None => return,
        }
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
    slot.state = finished.state;
    if finished.state_written {
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
        Some(ReplyTo::Instance { id: instance, seq }) => {
            let result = match finished.result {
                Ok(value) => Outcome::Ok(value.unwrap_or(Value::Null)),
                Err(err) => Outcome::Err(FailureKind::Operation, err.message().to_string()),
            };
            part.produced.push(Message {
                id: shared.next_message_id(),
                target: Target::Instance(instance),
                deliver_at: None,
                body: Body::Completion { seq, result },
            });
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
