//! The orchestration side of the engine: instances in memory, their turns, and activities.
//!
//! An instance runs in turns: the messages that arrived for it (completions, events) are
//! recorded as history events, applied, and the orchestration's future is polled once; the
//! steps it schedules become messages. The turn's events, the instance's new status, the
//! consumed and the produced messages commit in the engine's batch. A live instance keeps its
//! future in memory and resumes without replay; after a restart it is rebuilt by replaying its
//! history turn by turn, which must schedule the same steps.

mod turn;

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::{Command, Shared};
use crate::error::{panic_message, Error, StoreError, StoreErrorKind};
use crate::id::EntityId;
use crate::message::{Body, FailureKind, Message, MessageId, Outcome, ReplyTo, Target};
use crate::orchestration::context::OrchState;
use crate::orchestration::history::Event;
use crate::store::{Batch, InstanceRecord};

/// Most instances run in one batch.
const MAX_INSTANCES_PER_BATCH: usize = 4096;

/// What an orchestration's code returned.
type RunResult = Result<Value, Error>;

/// A running instance in memory.
struct Live {
    record: InstanceRecord,
    parent: Option<ReplyTo>,
    history_len: u64,
    /// The entities of the last lock step with no release after it, from the history: what
    /// to release when the instance ends, whatever its code did.
    locks: Option<Vec<EntityId>>,
    /// The first step number of this run (see [`OrchState::first_seq`]): completions of
    /// older steps belong to a run that continued as new, and are dropped.
    first_seq: u64,
    state: Arc<Mutex<OrchState>>,
    future: Option<BoxFuture<'static, Result<Value, Error>>>,
}

#[derive(Default)]
struct Slot {
    loaded: bool,
    live: Option<Live>,
    /// The instance has ended (its record says so, or a turn just ended it).
    ended: bool,
    /// The end is committed: once its queue is empty the slot is dropped.
    end_committed: bool,
    /// The client recorded the instance, and its start message has not run yet: other
    /// messages wait for it.
    awaiting_start: bool,
    /// The instance's stored record or history cannot be decoded: its messages stay stored.
    unrunnable: bool,
    /// The instance's code cannot run its history here: its messages stay stored, and only a
    /// termination is carried out (see `Orchestrations::run_held`).
    held: Option<Held>,
    queue: VecDeque<Message>,
    in_ready: bool,
}

/// An instance held because its code cannot run its history here: it departed from it (a
/// code change without a patch), or its orchestration is not registered, or its history is
/// of a form this code does not read. A runtime with compatible code resumes it when it
/// loads it again (at its start, or when it takes the partition over), since its messages
/// stay stored.
struct Held {
    reason: String,
    record: InstanceRecord,
    parent: Option<ReplyTo>,
    /// The entities of the last lock step with no release after it (see [`Live::locks`]).
    locks: Option<Vec<EntityId>>,
    history_len: u64,
    /// The reason is in the stored record.
    stored: bool,
}

/// An activity that finished, to be recorded.
pub(crate) struct ActivityDone {
    /// The engine generation the activity started in: results from before a recovery are
    /// dropped (the recovered activity message runs again).
    pub generation: u64,
    pub message: MessageId,
    pub instance: String,
    pub seq: u64,
    pub outcome: Outcome,
}

/// Active orchestration instances and activity work.
pub(crate) struct Orchestrations {
    shared: Arc<Shared>,
    slots: HashMap<String, Slot>,
    ready: VecDeque<String>,
    watchers: HashMap<String, Vec<oneshot::Sender<InstanceRecord>>>,
    activities_done: Vec<ActivityDone>,
    /// Counts recoveries (see [`ActivityDone::generation`]).
    generation: u64,
    /// Activities started and not reported done yet, of every generation.
    activities_running: usize,
}

impl Orchestrations {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            slots: HashMap::new(),
            ready: VecDeque::new(),
            watchers: HashMap::new(),
            activities_done: Vec::new(),
            generation: 0,
            activities_running: 0,
        }
    }

    /// Drops every instance in memory (after a store fault); watchers stay.
    pub(crate) fn reset(&mut self) {
        self.slots.clear();
        self.ready.clear();
        self.activities_done.clear();
        self.generation += 1;
    }

    pub(crate) fn has_work(&self) -> bool {
        !self.ready.is_empty() || !self.activities_done.is_empty()
    }

    /// Takes a stored message for an instance or for the activity workers.
    pub(crate) fn deliver(&mut self, message: Message) {
        match &message.target {
            Target::Activity => self.run_activity(message),
            Target::Instance(id) => {
                let id = id.clone();
                let slot = self.slots.entry(id.clone()).or_default();
                slot.queue.push_back(message);
                if !slot.in_ready && !slot.unrunnable {
                    slot.in_ready = true;
                    self.ready.push_back(id);
                }
            }
            Target::Entity(_) => unreachable!("entity messages go to entity slots"),
        }
    }

    /// Runs an activity on its own task; its result comes back as [`Command::ActivityDone`].
    fn run_activity(&mut self, message: Message) {
        let Body::Activity {
            instance,
            seq,
            name,
            input,
        } = message.body
        else {
            warn!(message = message.id, "malformed activity message dropped");
            return;
        };
        let function = self.shared.registry.activities.get(&name).cloned();
        let ctx =
            crate::ActivityContext::new(&name, &instance, self.shared.registry.services.clone());
        let commands = self.shared.commands.clone();
        let generation = self.generation;
        self.activities_running += 1;
        tokio::spawn(async move {
            let outcome = match function {
                None => Outcome::Err(
                    FailureKind::Activity,
                    format!("no activity named `{name}` is registered"),
                ),
                Some(function) => {
                    match AssertUnwindSafe(function.run(ctx, input))
                        .catch_unwind()
                        .await
                    {
                        Ok(Ok(value)) => Outcome::Ok(value),
                        Ok(Err(err)) => Outcome::Err(FailureKind::Activity, err),
                        Err(panic) => Outcome::Err(
                            FailureKind::Activity,
                            format!("activity `{name}` panicked: {}", panic_message(&panic)),
                        ),
                    }
                }
            };
            let _ = commands.send(Command::ActivityDone(ActivityDone {
                generation,
                message: message.id,
                instance,
                seq,
                outcome,
            }));
        });
    }

    /// Whether an activity is under way.
    pub(crate) fn activities_running(&self) -> bool {
        self.activities_running > 0
    }

    pub(crate) fn activity_done(&mut self, done: ActivityDone) {
        self.activities_running = self.activities_running.saturating_sub(1);
        if done.generation == self.generation {
            self.activities_done.push(done);
        }
    }

    pub(crate) fn watch(&mut self, id: String, done: oneshot::Sender<InstanceRecord>) {
        let watchers = self.watchers.entry(id).or_default();
        watchers.retain(|tx| !tx.is_closed());
        watchers.push(done);
    }

    /// Runs a turn of every ready instance into `batch`; returns the final records of the
    /// instances that ended.
    pub(crate) async fn run_steps(
        &mut self,
        batch: &mut Batch,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        for done in self.activities_done.drain(..) {
            batch.consumed.push(done.message);
            batch.produced.push(
                self.shared
                    .completion(done.instance, done.seq, done.outcome),
            );
        }
        let mut ids = Vec::new();
        while ids.len() < MAX_INSTANCES_PER_BATCH {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.in_ready = false;
                ids.push(id);
            }
        }
        let mut ended = Vec::new();
        for id in ids {
            self.load(&id).await?;
            let mut slot = self.slots.remove(&id).expect("loaded slot");
            if !slot.unrunnable {
                let messages: Vec<Message> = slot.queue.drain(..).collect();
                let span = tracing::debug_span!("orchestration_turn", instance = %id);
                let ended_now = span.in_scope(|| match slot.held {
                    Some(_) => self.run_held(&id, &mut slot, messages, batch),
                    None => self.run_turn(&id, &mut slot, messages, batch),
                });
                if ended_now {
                    // The turn's last write is the instance's final record.
                    let last = batch
                        .instances
                        .last()
                        .expect("an ended turn writes its record");
                    ended.push(last.record.clone());
                }
            }
            // An instance that has ended (committed) or never existed keeps no slot.
            let gone = slot.live.is_none()
                && slot.held.is_none()
                && !slot.awaiting_start
                && !slot.unrunnable
                && slot.queue.is_empty()
                && (!slot.ended || slot.end_committed);
            if !gone {
                self.slots.insert(id, slot);
            }
        }
        Ok(ended)
    }

    /// Loads an instance from the store and rebuilds it by replaying its history.
    async fn load(&mut self, id: &str) -> Result<(), StoreError> {
        if self.slots.get(id).is_none_or(|s| s.loaded) {
            return Ok(());
        }
        let record = match self.shared.store.read_instance(id).await {
            Err(err) if err.kind() == StoreErrorKind::Corrupt => {
                self.unrunnable(id, &err);
                return Ok(());
            }
            other => other?,
        };
        let mut live = None;
        let mut held = None;
        let mut ended = false;
        let mut awaiting_start = false;
        match record {
            None => {}
            Some(record) if record.status.is_terminal() => ended = true,
            Some(record) => {
                let history = match self.shared.store.read_history(id).await {
                    Err(err) if err.kind() == StoreErrorKind::Corrupt => {
                        self.unrunnable(id, &err);
                        return Ok(());
                    }
                    other => other?,
                };
                if history.is_empty() {
                    // Recorded by the client with its start message, which has not run yet.
                    awaiting_start = true;
                } else {
                    match self.replay(record.clone(), &history) {
                        Ok(l) => match l.departure() {
                            None => {
                                let mut l = l;
                                l.record.held = None;
                                live = Some(l);
                            }
                            Some(reason) => held = Some(Held::of(l, reason)),
                        },
                        Err(reason) => held = Some(Held::unreadable(record, &history, reason)),
                    }
                }
            }
        }
        if let Some(held) = &held {
            warn!(instance = id, reason = %held.reason, "instance held: its code cannot run its history here; its messages stay stored until code that can runs it");
        }
        let slot = self.slots.get_mut(id).expect("slot");
        slot.loaded = true;
        slot.live = live;
        slot.held = held;
        slot.ended = ended;
        slot.end_committed = ended;
        slot.awaiting_start = awaiting_start;
        Ok(())
    }

    /// Marks an instance whose stored record or history cannot be decoded: its messages stay
    /// stored and it does not run; every other instance goes on.
    fn unrunnable(&mut self, id: &str, err: &StoreError) {
        error!(instance = id, error = %err, "the instance's stored record or history cannot be decoded; it does not run until repaired, its messages stay stored");
        let slot = self.slots.get_mut(id).expect("slot");
        slot.loaded = true;
        slot.unrunnable = true;
    }

    /// Called once a batch has committed, with the final records of the instances it ended.
    pub(crate) fn finished(&mut self, instances: Vec<InstanceRecord>) {
        for record in instances {
            let id = record.id.clone();
            match self.slots.get_mut(&id) {
                Some(slot) if slot.queue.is_empty() && !slot.in_ready => {
                    self.slots.remove(&id);
                }
                Some(slot) => slot.end_committed = true,
                None => {}
            }
            for done in self.watchers.remove(&id).unwrap_or_default() {
                let _ = done.send(record.clone());
            }
        }
    }

    pub(crate) fn unload_idle(&mut self) {
        self.watchers.retain(|_, w| {
            w.retain(|tx| !tx.is_closed());
            !w.is_empty()
        });
    }
}

/// Replays a recorded history of instance `instance` against `function`, outside any
/// runtime: `Err` with the reason when the code departs from the history (or the history
/// cannot be read). Every entity, activity and orchestration name is taken as registered.
pub(crate) fn check_replay(
    function: Arc<dyn crate::orchestration::OrchestrationFn>,
    instance: &str,
    history: Vec<Value>,
) -> Result<(), Error> {
    let started = history
        .iter()
        .find_map(|e| match serde_json::from_value::<Event>(e.clone()) {
            Ok(Event::Started { name, input, .. }) => Some((name, input)),
            _ => None,
        });
    let Some((name, input)) = started else {
        return Err(Error::Serialization(
            "the history has no start event: it is not an orchestration history".into(),
        ));
    };
    let record = InstanceRecord {
        id: instance.to_string(),
        name,
        status: crate::store::RuntimeStatus::Running,
        input,
        output: None,
        created: 0,
        updated: 0,
        held: None,
    };
    let registry = Arc::new(crate::registry::Registry {
        open: true,
        ..Default::default()
    });
    let live = turn::rebuild(function, registry, record, &history).map_err(|reason| {
        Error::Serialization(format!("the history cannot be replayed: {reason}"))
    })?;
    match live.departure() {
        Some(reason) => Err(Error::NonDeterminism(reason)),
        None => Ok(()),
    }
}

impl Held {
    /// An instance whose replay departed from its history, for `reason`.
    fn of(live: Live, reason: String) -> Self {
        let stored = live.record.held.as_ref() == Some(&reason);
        Self {
            reason,
            record: live.record,
            parent: live.parent,
            locks: live.locks,
            history_len: live.history_len,
            stored,
        }
    }

    /// An instance whose history cannot be replayed here at all, for `reason`: what can be
    /// read of its history (its parent, its locks) is kept for a termination.
    fn unreadable(record: InstanceRecord, history: &[Value], reason: String) -> Self {
        let events: Vec<Event> = history
            .iter()
            .filter_map(|e| Event::deserialize(e).ok())
            .collect();
        let parent = events.iter().find_map(|e| match e {
            Event::Started { parent, .. } => parent.clone(),
            _ => None,
        });
        let mut locks = None;
        for event in &events {
            turn::track_locks(&mut locks, event);
        }
        let stored = record.held.as_ref() == Some(&reason);
        Self {
            reason,
            record,
            parent,
            locks,
            history_len: history.len() as u64,
            stored,
        }
    }
}
