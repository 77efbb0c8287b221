//! The engine: one task that owns the in-memory queues and cached states of the active
//! entities and orchestration instances of the partitions this runtime owns, runs their
//! operations batch by batch, and hands each batch to the store as one commit.
//!
//! Data flows one way: commands come in (`protocol`), messages are routed to timers
//! (`timers`), entities (`entities`) or instances (`orchestrations`), a batch runs them
//! (`batch`) and goes to the commit pipeline (`commits`), whose finished commits release the
//! batch's effects. Messages the engine sends are built in one place (`messages`).
//!
//! A client's message is stored by the engine's next batch, together with what that batch
//! does with it, and its sender hears back after that commit. A stored message is deleted in
//! the commit that records its effect; the store applies commits in queue order, so a crash
//! at any moment loses nothing acknowledged and applies nothing twice. An `async` operation
//! is polled once in the batch; one that suspends goes on on a task of its own: only its own
//! entity waits for it.
//!
//! A failed commit or read is a fault: the engine answers the senders it holds with the
//! cause, drops everything in memory, waits until the store accepts writes again, and
//! recovers from it as at a start.

mod batch;
mod commits;
mod entities;
mod messages;
pub(crate) mod orchestrations;
pub(crate) mod partition;
mod poller;
mod protocol;
mod recovery;
mod shared;
mod timers;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use self::commits::{Commits, Done};
use self::entities::Entities;
pub(crate) use self::entities::Timeouts;
use self::orchestrations::Orchestrations;
use self::partition::Ownership;
use self::poller::{Polled, Poller};
pub(crate) use self::protocol::resendable;
use self::protocol::{answer_stored, Resend};
pub(crate) use self::protocol::{Command, Stored};
pub(crate) use self::shared::Shared;
use self::timers::Timers;
use crate::error::{StoreError, StoreErrorKind};
use crate::message::{CallReply, Message, MessageId, Target};
use crate::store::{OwnershipEvent, Partitioned};

/// Tuning of the engine.
#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    /// Most messages processed in one batch (one commit).
    pub max_batch: usize,
    /// Most batches committing at once.
    pub max_inflight_commits: usize,
    /// Entities kept in memory while idle; past this, idle ones are unloaded.
    pub cache_capacity: usize,
    /// How long an operation may take, per entity name.
    pub timeouts: Timeouts,
    /// How long `shutdown` waits for operations under way.
    pub shutdown_grace: Duration,
    /// Scheduled messages due within this time are held in memory; later ones stay stored.
    pub schedule_horizon: Duration,
    /// Most client messages held in memory before they are stored.
    pub intake_bound: usize,
}

impl EngineConfig {
    /// How far a recovery at `now` reads scheduled messages: the rest is paged in later.
    pub(crate) fn recovery_horizon(&self, now: u64) -> u64 {
        now.saturating_add(self.schedule_horizon.as_millis() as u64)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 8192,
            max_inflight_commits: 2,
            cache_capacity: 20_000,
            timeouts: Timeouts {
                default: Duration::from_secs(300),
                by_name: HashMap::new(),
            },
            shutdown_grace: Duration::from_secs(30),
            schedule_horizon: Duration::from_secs(60),
            intake_bound: 65_536,
        }
    }
}

/// The engine task.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    config: EngineConfig,
    rx: mpsc::UnboundedReceiver<Command>,
    ownership: Ownership,
    entities: Entities,
    orchestrations: Orchestrations,
    timers: Timers,
    commits: Commits,
    waiters: HashMap<u64, oneshot::Sender<CallReply>>,
    /// The size of `waiters` at which closed ones are swept out.
    waiters_sweep_at: usize,
    /// The clock read at the start of this turn of the loop: when the client sends handled
    /// in it were taken in.
    turn_began: tokio::time::Instant,
    /// Client messages delivered but not stored yet: the next batch stores them.
    ingested: Vec<Message>,
    ingested_acks: Vec<Stored>,
    /// Clients waiting for the deletion of the messages of `cancelled`.
    cancel_acks: Vec<Stored>,
    /// Client sends to make again after a recovery (see [`protocol::Resend`]).
    resend: Vec<Resend>,
    /// Answers to cancels sent from other processes, released with the next batch's commit.
    cancel_replies: Vec<(u64, CallReply)>,
    /// Idempotency keys claimed by the client messages of `ingested`.
    ingested_keys: Vec<crate::store::IdempotencyKey>,
    /// Stored scheduled messages cancelled by clients: the next batch deletes them.
    cancelled: Vec<MessageId>,
    batch_no: u64,
    committed_no: u64,
    shutdown: Option<oneshot::Sender<()>>,
    /// The partition side of a shared store, if the store is one.
    partitioned: Option<SharedStore>,
    /// What the batch under way counts for the metrics.
    counts: crate::metrics::BatchCounts,
    /// A manual clock's moves (see [`crate::clock::ManualClock`]); `None` with the system's clock.
    clock_moves: Option<tokio::sync::watch::Receiver<()>>,
    /// A manual clock waiting for the engine to be idle (see [`Command::Settle`]).
    settlers: Vec<oneshot::Sender<Option<u64>>>,
}

/// What the engine holds of a shared store's partition side.
struct SharedStore {
    store: Arc<dyn Partitioned>,
    events: Option<mpsc::UnboundedReceiver<OwnershipEvent>>,
    /// Takes arrivals and replies, off the engine task.
    poller: Poller,
    /// The poller's generation since the last reload: arrivals of older polls are dropped.
    generation: u64,
}

impl Engine {
    /// An engine whose store was recovered up to `loaded_until` (see [`Timers`]).
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: EngineConfig,
        rx: mpsc::UnboundedReceiver<Command>,
        loaded_until: u64,
        partitions: Option<Vec<u32>>,
    ) -> Self {
        let partitioned = shared.store.partitioned().map(|store| SharedStore {
            events: store.take_events(),
            poller: Poller::start(store.clone(), partitions.clone().unwrap_or_default()),
            generation: 0,
            store,
        });
        let count = partitioned.as_ref().map_or(1, |p| p.store.count());
        let clock_moves = shared
            .clock
            .as_manual()
            .map(crate::clock::ManualClock::moves);
        let ownership = match &partitioned {
            Some(_) => Ownership::new(count, Some(partitions.as_deref().unwrap_or(&[]))),
            None => Ownership::All,
        };
        Self {
            partitioned,
            entities: Entities::new(shared.clone(), config.timeouts.clone()),
            orchestrations: Orchestrations::new(shared.clone()),
            timers: Timers::new(config.schedule_horizon, loaded_until, shared.clock.clone()),
            commits: Commits::new(shared.store.clone()),
            ownership,
            shared,
            config,
            rx,
            waiters: HashMap::new(),
            waiters_sweep_at: 1024,
            turn_began: tokio::time::Instant::now(),
            ingested: Vec::new(),
            ingested_acks: Vec::new(),
            cancel_acks: Vec::new(),
            resend: Vec::new(),
            cancel_replies: Vec::new(),
            cancelled: Vec::new(),
            ingested_keys: Vec::new(),
            batch_no: 0,
            committed_no: 0,
            shutdown: None,
            counts: Default::default(),
            clock_moves,
            settlers: Vec::new(),
        }
    }

    /// Delivers recovered messages, then runs until shut down.
    pub(crate) async fn run(mut self, recovered: Vec<Message>) {
        for message in recovered {
            self.deliver(message);
        }
        loop {
            let step = match self.shutdown {
                None => self.step().await,
                Some(_) => self.stop().await.map(|()| false),
            };
            match step {
                Ok(true) => {}
                Ok(false) => break,
                Err(fault) => {
                    if !self.recover(fault).await {
                        break;
                    }
                }
            }
        }
        // Commits still queued may land: their senders hear how they ended.
        while !self.commits.is_empty() {
            let (result, effects) = self.commits.next().await;
            let failure = result.as_ref().err();
            answer_stored(&self.shared.intake, effects.stored, failure);
            answer_stored(&self.shared.intake, effects.sends, failure);
        }
        let unsent = StoreError::of_kind(
            StoreErrorKind::Closed,
            "the runtime stopped before the database could be reached again",
        );
        for resend in std::mem::take(&mut self.resend) {
            answer_stored(&self.shared.intake, resend.acks, Some(&unsent));
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
        debug!("engine stopped");
    }

    fn has_work(&self) -> bool {
        self.entities.has_work()
            || !self.ingested.is_empty()
            || !self.cancelled.is_empty()
            || !self.cancel_replies.is_empty()
            || self.orchestrations.has_work()
    }

    /// One turn of the loop: waits for something to do if nothing is ready, takes in what
    /// arrived, and runs a batch if the pipeline has room. Returns false to stop.
    async fn step(&mut self) -> Result<bool, StoreError> {
        self.turn_began = tokio::time::Instant::now();
        if !self.settlers.is_empty() && self.idle() {
            let next = self.next_due().await?;
            for done in self.settlers.drain(..) {
                let _ = done.send(next);
            }
        }
        if let Some(p) = &self.partitioned {
            p.poller.calls_waiting(!self.waiters.is_empty());
        }
        let page = self.timers.page_due();
        let room = self.commits.len() < self.config.max_inflight_commits;
        // Something to do at once: read the next page of scheduled messages (once no commit
        // is under way), or run a batch.
        let ready = match page {
            Some(_) => self.commits.is_empty(),
            None => room && self.has_work(),
        };
        if !ready {
            // A manual clock's time moves only when it is moved: the engine waits for that
            // instead of for the next timer.
            let mut deadline = tokio::time::Instant::now()
                + match self.clock_moves {
                    Some(_) => Duration::from_secs(3600),
                    None => self.timers.next_deadline(),
                };
            if let Some(retry) = self.entities.next_retry() {
                deadline = deadline.min(retry);
            }
            let (polls, event) = match &mut self.partitioned {
                Some(p) => (Some(&mut p.poller.polls), p.events.as_mut()),
                None => (None, None),
            };
            let has_events = event.is_some();
            let next_event = async move {
                match event {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let next_poll = async move {
                match polls {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let moves = self.clock_moves.as_mut();
            let manual = moves.is_some();
            let clock_moved = async move {
                match moves {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = next_event, if has_events => match event {
                    Some(event) => self.ownership_changed(event).await?,
                    None => {
                        if let Some(p) = &mut self.partitioned {
                            p.events = None;
                        }
                    }
                },
                Some(polled) = next_poll => self.polled(polled)?,
                command = self.rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return Ok(false),
                },
                done = self.commits.next(), if !self.commits.is_empty() => self.committed(done)?,
                () = self.entities.next_finished(), if self.entities.running() > 0 => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = clock_moved, if manual => {}
            }
        }
        while let Ok(command) = self.rx.try_recv() {
            self.handle(command);
        }
        while let Some(done) = self.commits.try_next() {
            self.committed(done)?;
        }
        if self.shutdown.is_some() {
            return Ok(true);
        }
        while let Some(event) = self
            .partitioned
            .as_mut()
            .and_then(|p| p.events.as_mut())
            .and_then(|rx| rx.try_recv().ok())
        {
            self.ownership_changed(event).await?;
        }
        while let Some(polled) = self
            .partitioned
            .as_mut()
            .and_then(|p| p.poller.polls.try_recv().ok())
        {
            self.polled(polled)?;
        }
        self.entities.poll_finished();
        self.entities.wake_retries();
        for message in self.timers.take_due() {
            self.route(message);
        }
        if let Some(request) = self.timers.page_due() {
            if !self.commits.is_empty() {
                return Ok(true); // every commit that may hold a scheduled message lands first
            }
            let page = match (&self.partitioned, self.ownership.partitions()) {
                (Some(p), Some(parts)) => {
                    p.store
                        .scheduled_in(&parts, request.after, request.until, request.limit)
                        .await?
                }
                _ => {
                    self.shared
                        .store
                        .scheduled_messages(request.after, request.until, request.limit)
                        .await?
                }
            };
            debug!(messages = page.len(), "paged in scheduled messages");
            for message in self.timers.paged(&request, page) {
                self.route(message);
            }
        }
        if self.has_work() && self.commits.len() < self.config.max_inflight_commits {
            self.run_batch(false).await?;
        }
        Ok(true)
    }

    /// Stops: waits for the operations under way (at most the grace period), commits what
    /// they did and the client messages taken in, and waits for the commits under way.
    async fn stop(&mut self) -> Result<(), StoreError> {
        self.entities.settle(self.config.shutdown_grace).await;
        self.run_batch(true).await?;
        while !self.commits.is_empty() {
            let done = self.commits.next().await;
            self.committed(done)?;
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Deliver {
                messages,
                waiter,
                stored,
                keys,
            } => {
                if let Some((id, tx)) = waiter {
                    self.add_waiter(id, tx);
                }
                for message in &messages {
                    if let crate::message::Body::Operation { reply, .. } = &message.body {
                        match reply {
                            None => self.counts.signals += 1,
                            Some(_) => self.counts.calls += 1,
                        }
                    }
                }
                if let Some(mut stored) = stored {
                    stored.taken_in(self.turn_began);
                    self.ingested.extend(messages.iter().cloned());
                    self.ingested_acks.push(stored);
                    self.ingested_keys.extend(keys);
                }
                for message in messages {
                    // A message for a partition run elsewhere is only stored, for its owner.
                    if self.ownership.owns(&message) {
                        self.deliver(message);
                    }
                }
            }
            Command::ActivityDone(done) => self.orchestrations.activity_done(done),
            Command::WatchInstance { id, done } => self.orchestrations.watch(id, done),
            Command::HeldBack { ids, reply } => {
                let _ = reply.send(ids.iter().map(|id| self.entities.held_back(id)).collect());
            }
            Command::Cancel {
                message,
                found,
                stored,
            } => {
                let _ = found.send(self.cancel(&message, stored));
            }
            Command::Shutdown(done) => self.shutdown = Some(done),
            Command::Settle(done) => self.settlers.push(done),
        }
    }

    /// Whether nothing is to run, due, or under way: no message ready, no commit, operation,
    /// activity or page read under way, no send waiting for the store.
    fn idle(&self) -> bool {
        !self.has_work()
            && self.commits.is_empty()
            && self.entities.running() == 0
            && self.entities.next_retry().is_none()
            && !self.orchestrations.activities_running()
            && self.timers.page_due().is_none()
            && self.resend.is_empty()
    }

    /// When the next scheduled message is due: the first held in memory or, if earlier, the
    /// first stored beyond what was read in.
    fn next_due(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<u64>, StoreError>> + Send + 'static {
        let cursor = self.timers.cursor();
        let held = self.timers.next_due();
        let partitioned = self.partitioned.as_ref().map(|p| p.store.clone());
        let parts = self.ownership.partitions();
        let store = self.shared.store.clone();
        async move {
            let stored = match (partitioned, parts) {
                (Some(p), Some(parts)) => p.scheduled_in(&parts, cursor, u64::MAX, 1).await?,
                _ => store.scheduled_messages(cursor, u64::MAX, 1).await?,
            };
            let stored = stored.first().and_then(|m| m.deliver_at);
            Ok([held, stored].into_iter().flatten().min())
        }
    }

    /// Records a client waiting for the reply to its call `id`. Waiters whose client gave up
    /// (a send that failed after its waiter was recorded) are dropped once the map has grown
    /// to twice its size after the last sweep.
    fn add_waiter(&mut self, id: u64, tx: oneshot::Sender<CallReply>) {
        self.waiters.insert(id, tx);
        if let Some(p) = &self.partitioned {
            p.poller.calls_waiting(true);
        }
        if self.waiters.len() >= self.waiters_sweep_at {
            self.waiters.retain(|_, tx| !tx.is_closed());
            self.waiters_sweep_at = (self.waiters.len() * 2).max(1024);
        }
    }

    /// Drops the stored scheduled message `message` from memory if it has not run yet and has
    /// the next batch delete it (`stored` hears once it is deleted). Returns whether it had
    /// not run, or `None` if its partition is run by another process.
    fn cancel(&mut self, message: &Message, stored: Stored) -> Option<bool> {
        if !self.ownership.owns(message) {
            answer_stored(&self.shared.intake, vec![stored], None);
            return None;
        }
        let at = message.deliver_at.unwrap_or(0);
        let waiting = self.timers.cancel(at, message.id)
            || match &message.target {
                Target::Entity(id) => self.entities.cancel_queued(id, message.id),
                _ => false,
            };
        if waiting {
            self.cancelled.push(message.id);
            self.cancel_acks.push(stored);
        } else {
            answer_stored(&self.shared.intake, vec![stored], None);
        }
        Some(waiting)
    }

    /// Applies a cancel sent by a client of another process (see
    /// [`Body::Cancel`](crate::message::Body::Cancel)): drops the scheduled message if it has
    /// not run, has the next batch delete it and the cancel, and answers with that commit.
    fn cancel_from_elsewhere(&mut self, cancel: Message) {
        let crate::message::Body::Cancel { message, at, reply } = cancel.body else {
            return;
        };
        let waiting = self.timers.cancel(at, message)
            || match &cancel.target {
                Target::Entity(id) => self.entities.cancel_queued(id, message),
                _ => false,
            };
        if waiting {
            self.cancelled.push(message);
        }
        // A cancel taken in here and not stored yet is never stored; a stored one is deleted.
        match self.ingested.iter().position(|m| m.id == cancel.id) {
            Some(at) => {
                self.ingested.remove(at);
            }
            None => self.cancelled.push(cancel.id),
        }
        let waiter = match reply {
            crate::message::ReplyTo::Client(waiter)
            | crate::message::ReplyTo::Keyed { waiter, .. } => waiter,
            crate::message::ReplyTo::Instance { .. } => return,
        };
        self.cancel_replies
            .push((waiter, Ok(Some(serde_json::Value::Bool(waiting)))));
    }

    /// Routes one stored message: to the timers if it is not due, else to its receiver.
    fn deliver(&mut self, message: Message) {
        if let Some(message) = self.timers.schedule(message) {
            self.route(message);
        }
    }

    /// Hands a due message to its entity or instance.
    fn route(&mut self, message: Message) {
        if let crate::message::Body::Cancel { .. } = &message.body {
            self.cancel_from_elsewhere(message);
            return;
        }
        match &message.target {
            Target::Entity(id) => {
                let id = id.clone();
                self.entities.deliver(id, message);
            }
            Target::Instance(_) | Target::Activity => self.orchestrations.deliver(message),
        }
    }

    /// Applies a finished commit: delivers what it produced and answers waiting clients. A
    /// failed commit is a fault.
    fn committed(&mut self, (result, effects): Done) -> Result<(), StoreError> {
        if let Err(err) = result {
            self.failed_effects(effects, &err);
            return Err(err);
        }
        self.committed_no += 1;
        answer_stored(&self.shared.intake, effects.stored, None);
        answer_stored(&self.shared.intake, effects.sends, None);
        for message in effects.deferred {
            self.deliver(message);
        }
        for (waiter, reply) in effects.replies {
            if let Some(tx) = self.waiters.remove(&waiter) {
                let _ = tx.send(reply);
            }
        }
        self.orchestrations.finished(effects.finished_instances);
        if self.entities.len() > self.config.cache_capacity {
            self.entities
                .unload_idle(self.config.cache_capacity, self.committed_no);
            self.orchestrations.unload_idle();
        }
        Ok(())
    }

    /// Resumes the store and reads what a start reads.
    async fn reload(&mut self) -> Result<Vec<Message>, StoreError> {
        self.shared.store.resume().await?;
        let loaded_until = self.config.recovery_horizon(self.shared.now_millis());
        let held = self.hold_polls().await;
        let recovery = self.shared.store.recover(loaded_until).await?;
        self.shared.ids_above(recovery.max_message_id);
        self.timers = Timers::new(
            self.config.schedule_horizon,
            loaded_until,
            self.shared.clock.clone(),
        );
        if let Some(p) = &self.partitioned {
            self.ownership = Ownership::new(
                p.store.count(),
                Some(recovery.partitions.as_deref().unwrap_or(&[])),
            );
            info!(partitions = ?recovery.partitions, "running partitions");
        }
        self.release_polls(held, true);
        Ok(recovery.messages)
    }

    /// Holds the poller off while the engine reloads from the store (see [`poller`]).
    async fn hold_polls(&mut self) -> Option<tokio::sync::OwnedMutexGuard<u64>> {
        let gate = self.partitioned.as_ref().map(|p| p.poller.hold());
        match gate {
            Some(gate) => Some(gate.await),
            None => None,
        }
    }

    /// Lets the poller go on, for the partitions owned now. After a reload (`reloaded`),
    /// arrivals it took before are dropped when they come in: the reload read them.
    fn release_polls(&mut self, held: Option<tokio::sync::OwnedMutexGuard<u64>>, reloaded: bool) {
        let parts = self.ownership.partitions().unwrap_or_default();
        if let (Some(p), Some(held)) = (&mut self.partitioned, held) {
            p.generation = p.poller.release(held, parts, reloaded);
        }
    }

    /// Takes in what a poll took: replies always, arrivals unless a reload since read them.
    /// A failed read of arrivals is a fault (the store's cursor may have passed them).
    fn polled(&mut self, polled: Polled) -> Result<(), StoreError> {
        match polled.replies {
            Ok(replies) => {
                for reply in replies {
                    let Some(tx) = self.waiters.remove(&reply.waiter) else {
                        continue;
                    };
                    let decoded =
                        serde_json::from_value::<CallReply>(reply.reply).unwrap_or_else(|err| {
                            Err(crate::error::OperationError::new(format!(
                                "the reply to this call could not be decoded: {err}"
                            )))
                        });
                    let _ = tx.send(decoded);
                }
            }
            // Nothing was taken: the next poll looks again. An unreachable database is
            // reported by the commits and the recovery; here it would repeat at every poll.
            Err(err) if err.kind() == StoreErrorKind::Unavailable => {
                debug!(error = %err, "looking for replies failed; the next poll retries");
            }
            Err(err) => warn!(error = %err, "looking for replies failed; the next poll retries"),
        }
        let current = self
            .partitioned
            .as_ref()
            .is_some_and(|p| p.generation == polled.generation);
        if !current {
            return Ok(());
        }
        for message in polled.arrivals? {
            if self.ownership.owns(&message) {
                self.deliver(message);
            }
        }
        Ok(())
    }

    /// Applies a change of the partitions this process owns. New partitions: first the
    /// arrivals already stored are taken (a sender that moved here sent them before its
    /// messages to come), then their pending work is recovered. Partitions handed over: what
    /// the engine holds is stored, the commits under way land, then everything in memory is
    /// dropped and the partitions still owned are reloaded. A lost partition is a fault.
    async fn ownership_changed(&mut self, event: OwnershipEvent) -> Result<(), StoreError> {
        let Some(p) = &self.partitioned else {
            return Ok(());
        };
        let store = p.store.clone();
        match event {
            OwnershipEvent::Acquired(parts) => {
                let mut probe = self.ownership.clone();
                let new = probe.add(&parts);
                if new.is_empty() {
                    return Ok(());
                }
                // Messages this process sent to the new partitions as another's are stored
                // first (client messages taken in included: they were not delivered here), so
                // that the recovery below returns them before any sent from now on.
                self.run_batch(true).await?;
                while !self.commits.is_empty() {
                    let done = self.commits.next().await;
                    self.committed(done)?;
                }
                // No poll of the other partitions between the claim and the first poll of the new
                // ones: it could move the store's arrival cursor past rows of the new ones that
                // a transaction running during the claim stores.
                let held = self.hold_polls().await;
                let recovery = store.recover_partitions(&new, self.timers.cursor()).await?;
                self.ownership.add(&new);
                self.release_polls(held, false);
                self.shared.ids_above(recovery.max_message_id);
                info!(partitions = ?new, messages = recovery.messages.len(), "took over partitions");
                for message in recovery.messages {
                    if self.ownership.owns(&message) {
                        self.deliver(message);
                    }
                }
            }
            OwnershipEvent::Release(parts, done) => {
                let mut probe = self.ownership.clone();
                if !probe.remove(&parts).is_empty() {
                    self.run_batch(true).await?;
                    while !self.commits.is_empty() {
                        let done = self.commits.next().await;
                        self.committed(done)?;
                    }
                    self.ownership.remove(&parts);
                    self.entities.reset().await;
                    self.orchestrations.reset();
                    let owned = self.ownership.partitions().unwrap_or_default();
                    let until = (
                        self.config.recovery_horizon(self.shared.now_millis()),
                        crate::message::MessageId::MAX,
                    );
                    let held = self.hold_polls().await;
                    let recovery = store.recover_partitions(&owned, until).await?;
                    self.release_polls(held, true);
                    self.timers = Timers::new(
                        self.config.schedule_horizon,
                        until.0,
                        self.shared.clock.clone(),
                    );
                    info!(partitions = ?parts, "handed partitions over");
                    for message in recovery.messages {
                        if self.ownership.owns(&message) {
                            self.deliver(message);
                        }
                    }
                }
                let _ = done.send(());
            }
            OwnershipEvent::Lost(parts) => {
                let mut probe = self.ownership.clone();
                if !probe.remove(&parts).is_empty() {
                    return Err(StoreError::of_kind(
                        StoreErrorKind::Fenced,
                        format!("this process lost partitions {parts:?} to another process"),
                    ));
                }
            }
        }
        Ok(())
    }
}
