//! The orchestration side of the engine: instances in memory, their turns, and activities.
//!
//! An instance runs in turns: the messages that arrived for it (completions, events) are
//! recorded as history events, applied, and the orchestration's future is polled once; the
//! steps it schedules become messages. The turn's events, the instance's new status, the
//! consumed and the produced messages commit in the engine's batch. A live instance keeps its
//! future in memory and resumes without replay; after a restart it is rebuilt by replaying its
//! history turn by turn, which must schedule the same steps.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use super::{Command, Shared};
use crate::error::{panic_message, Error, StoreError, StoreErrorKind};
use crate::id::EntityId;
use crate::message::{now_millis, Body, FailureKind, Message, MessageId, Outcome, ReplyTo, Target};
use crate::orchestration::context::{OrchState, OrchestrationContext};
use crate::orchestration::history::{Action, Event};
use crate::store::{Batch, InstanceRecord, InstanceWrite, RuntimeStatus};

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
    /// The orchestration's name is not registered here: its messages stay stored.
    unrunnable: bool,
    queue: VecDeque<Message>,
    in_ready: bool,
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
    fn run_activity(&self, message: Message) {
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

    pub(crate) fn activity_done(&mut self, done: ActivityDone) {
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
                let ended_now = span.in_scope(|| self.run_turn(&id, &mut slot, messages, batch));
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
        let mut ended = false;
        let mut unrunnable = false;
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
                    match self.replay(record, history) {
                        Ok(l) => live = Some(l),
                        Err(err) => {
                            warn!(instance = id, error = %err, "instance cannot run here; its messages stay stored");
                            unrunnable = true;
                        }
                    }
                }
            }
        }
        let slot = self.slots.get_mut(id).expect("slot");
        slot.loaded = true;
        slot.live = live;
        slot.ended = ended;
        slot.end_committed = ended;
        slot.awaiting_start = awaiting_start;
        slot.unrunnable = unrunnable;
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

    /// Rebuilds a running instance from its history, turn by turn.
    fn replay(&self, record: InstanceRecord, history: Vec<Value>) -> Result<Live, String> {
        let events: Vec<Event> = history
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|err| format!("its history does not parse: {err}"))?;
        let (parent, first_seq) = events
            .iter()
            .find_map(|e| match e {
                Event::Started {
                    parent, first_seq, ..
                } => Some((parent.clone(), *first_seq)),
                _ => None,
            })
            .map_or((None, 0), |(parent, first_seq)| (Some(parent), first_seq));
        let recorded = events
            .iter()
            .filter_map(|e| match e {
                Event::Scheduled { seq, action } => Some((*seq, action.clone())),
                _ => None,
            })
            .collect();
        let mut live = self.create(record, parent.flatten(), Some(recorded))?;
        live.history_len = events.len() as u64;
        live.set_first_seq(first_seq);
        for event in &events {
            track_locks(&mut live.locks, event);
        }
        let mut turns: Vec<Vec<&Event>> = Vec::new();
        for event in &events {
            match event {
                Event::Turn { .. } => turns.push(vec![event]),
                _ => match turns.last_mut() {
                    Some(turn) => turn.push(event),
                    None => return Err("its history does not start with a turn".into()),
                },
            }
        }
        for turn in turns {
            apply(&live.state, turn.into_iter().cloned());
            let result = poll(&mut live);
            if live
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .nondeterminism
                .is_some()
            {
                break;
            }
            if let Some(result) = result {
                // The code finished during replay, though its record says it runs: this is the
                // result the interrupted turn computed; the next turn records it.
                live.future = Some(Box::pin(futures::future::ready(result)));
                break;
            }
        }
        let mut state = live
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.replaying = false;
        if state.nondeterminism.is_none() {
            if let Some(seq) = state.recorded.keys().min().copied() {
                let action = state.recorded[&seq].describe();
                state.nondeterminism = Some(format!(
                    "step {seq}: the history has a {action} that the code no longer schedules"
                ));
            }
        }
        drop(state);
        Ok(live)
    }

    /// A new in-memory instance with its future, not yet polled; with the steps of its
    /// history when it is to be replayed.
    fn create(
        &self,
        record: InstanceRecord,
        parent: Option<ReplyTo>,
        recorded: Option<HashMap<u64, Action>>,
    ) -> Result<Live, String> {
        let function = self
            .shared
            .registry
            .orchestrations
            .get(&record.name)
            .cloned()
            .ok_or_else(|| format!("no orchestration named `{}` is registered", record.name))?;
        let mut state = OrchState::new(record.id.clone(), self.shared.registry.clone());
        if let Some(recorded) = recorded {
            state.replaying = true;
            state.recorded = recorded;
        }
        let state = Arc::new(Mutex::new(state));
        let ctx = OrchestrationContext::new(state.clone());
        let input = record.input.clone();
        let future = std::panic::catch_unwind(AssertUnwindSafe(|| function.start(ctx, input)))
            .map_err(|panic| {
                format!(
                    "orchestration `{}` panicked when started: {}",
                    record.name,
                    panic_message(&panic)
                )
            })?;
        Ok(Live {
            record,
            parent,
            history_len: 0,
            locks: None,
            first_seq: 0,
            state,
            future: Some(future),
        })
    }

    /// Runs one turn of an instance with the messages that arrived; returns whether it ended.
    fn run_turn(
        &self,
        id: &str,
        slot: &mut Slot,
        messages: Vec<Message>,
        batch: &mut Batch,
    ) -> bool {
        let now = now_millis();
        let mut events = vec![Event::Turn { time: now }];
        let mut terminate = None;
        let mut messages = messages;
        if slot.awaiting_start {
            match messages
                .iter()
                .position(|m| matches!(m.body, Body::Start { .. }))
            {
                // The start runs first; the rest of the turn follows it.
                Some(i) => {
                    let start = messages.remove(i);
                    messages.insert(0, start);
                }
                // Not here yet: everything waits for it, stored and queued.
                None => {
                    slot.queue.extend(messages);
                    return false;
                }
            }
        }
        let mut ended_now = false;
        for message in messages {
            batch.consumed.push(message.id);
            if slot.ended || (slot.live.is_none() && !matches!(message.body, Body::Start { .. })) {
                self.to_ended_instance(id, message, batch);
                continue;
            }
            match message.body {
                Body::Start {
                    name,
                    input,
                    parent,
                } => {
                    if slot.live.is_some() {
                        warn!(
                            instance = id,
                            "instance started twice; the second start is ignored"
                        );
                        continue;
                    }
                    let record = InstanceRecord {
                        id: id.to_string(),
                        name: name.clone(),
                        status: RuntimeStatus::Running,
                        input: input.clone(),
                        output: None,
                        created: now,
                        updated: now,
                    };
                    slot.awaiting_start = false;
                    match self.create(record.clone(), parent.clone(), None) {
                        Ok(live) => slot.live = Some(live),
                        Err(err) => {
                            // Unknown name (or a panic): the instance fails at once.
                            if let Some(ReplyTo::Instance { id: parent, seq }) = parent {
                                batch.produced.push(self.shared.completion(
                                    parent,
                                    seq,
                                    Outcome::Err(FailureKind::Orchestration, err.clone()),
                                ));
                            }
                            let mut record = record;
                            record.status = RuntimeStatus::Failed;
                            record.output = Some(Value::String(err));
                            batch.instances.push(InstanceWrite {
                                record,
                                first_event: 0,
                                events: Vec::new(),
                                create: false,
                                restart: false,
                            });
                            slot.ended = true;
                            ended_now = true;
                            continue;
                        }
                    }
                    events.push(Event::Started {
                        name,
                        input,
                        parent,
                        first_seq: 0,
                    });
                }
                Body::Completion { seq, .. }
                    if slot.live.as_ref().is_some_and(|l| seq < l.first_seq) =>
                {
                    debug!(
                        instance = id,
                        seq, "result of a step of a run that continued as new dropped"
                    );
                }
                Body::LockGranted { seq, ids }
                    if slot.live.as_ref().is_some_and(|l| seq < l.first_seq) =>
                {
                    // Not expected (a run cannot continue as new while acquiring a lock), but
                    // a lock must never stay held by nobody.
                    let live = slot.live.as_ref().expect("live");
                    let section = live
                        .state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .section
                        .clone();
                    for entity in ids {
                        let kept = section.as_ref().is_some_and(|s| s.contains(&entity))
                            || live.locks.as_ref().is_some_and(|l| l.contains(&entity));
                        if !kept {
                            batch.produced.push(self.shared.release(id, entity));
                        }
                    }
                }
                Body::Completion { seq, result } => events.push(Event::Completed { seq, result }),
                Body::LockGranted { seq, .. } => events.push(Event::Completed {
                    seq,
                    result: Outcome::Ok(Value::Null),
                }),
                Body::Event { name, data } => events.push(Event::Raised { name, data }),
                Body::Terminate { reason } => terminate = Some(reason),
                other => {
                    warn!(instance = id, message = ?other, "message kind not meant for an instance; dropped");
                }
            }
        }
        let Some(live) = slot.live.as_mut() else {
            return ended_now;
        };
        let result = match terminate {
            Some(reason) => Some(Err(Error::Terminated(reason))),
            None => {
                apply(&live.state, events.iter().cloned());
                let departed = live
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .nondeterminism
                    .is_some();
                let result = if departed { None } else { poll(live) };
                let mut state = live
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match state.nondeterminism.take() {
                    Some(problem) => {
                        // Nothing the departed code scheduled is carried out.
                        state.new_actions.clear();
                        Some(Err(Error::NonDeterminism(problem)))
                    }
                    None => {
                        for (seq, action) in state.new_actions.drain(..) {
                            batch
                                .produced
                                .extend(self.shared.action_messages(id, seq, &action));
                            let event = Event::Scheduled { seq, action };
                            track_locks(&mut live.locks, &event);
                            events.push(event);
                        }
                        result
                    }
                }
            }
        };
        let mut result = result;
        let mut restarted = false;
        let continued = live
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .continue_with
            .take();
        if let Some(input) = continued {
            // An error (a termination, a departure from the history) wins over the restart.
            if !matches!(result, Some(Err(_))) {
                match self.restart(id, live, input, now, batch) {
                    Ok((new_events, new_result)) => {
                        events = new_events;
                        result = new_result;
                        restarted = true;
                    }
                    Err(message) => result = Some(Err(Error::OrchestrationFailed(message))),
                }
            }
        }
        live.record.updated = now;
        let finished = result.is_some();
        if let Some(result) = result {
            self.finish(id, live, result, batch);
        }
        if restarted {
            live.history_len = 0;
        }
        batch.instances.push(InstanceWrite {
            record: live.record.clone(),
            first_event: live.history_len,
            create: false,
            restart: restarted,
            events: events
                .iter()
                .map(|e| serde_json::to_value(e).expect("history events serialize"))
                .collect(),
        });
        live.history_len += events.len() as u64;
        if finished {
            slot.live = None;
            slot.ended = true;
        }
        finished
    }

    /// Continues `live` as new: releases the locks of its run, drops the run, and starts a new
    /// run with `input` and the events the old run had not received, polling it once, all in
    /// this turn. Returns the new run's history (to replace the stored one) and its result if
    /// it finished at once. A new run that continues as new again at once is restarted by the
    /// next turn, which a message to itself brings about (so that a run that continues without
    /// waiting for anything cannot hold the engine in a loop).
    fn restart(
        &self,
        id: &str,
        live: &mut Live,
        input: Value,
        now: u64,
        batch: &mut Batch,
    ) -> Result<(Vec<Event>, Option<RunResult>), String> {
        let (carried, first_seq, mut held) = {
            let mut state = live
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.closed = true;
            let mut carried: Vec<(String, VecDeque<Value>)> = state.events.drain().collect();
            carried.sort_by(|a, b| a.0.cmp(&b.0));
            // One step number stays unused between the runs: the wake-up message's.
            (
                carried,
                state.next_seq + 1,
                state.section.take().unwrap_or_default(),
            )
        };
        held.extend(live.locks.take().unwrap_or_default());
        held.sort();
        held.dedup();
        live.future = None; // drops the old run's guards: `closed` keeps them quiet
        for entity in held {
            batch.produced.push(self.shared.release(id, entity));
        }
        live.record.input = input.clone();
        live.record.updated = now;
        let mut new = self.create(live.record.clone(), live.parent.clone(), None)?;
        new.set_first_seq(first_seq);
        let mut events = vec![
            Event::Turn { time: now },
            Event::Started {
                name: live.record.name.clone(),
                input,
                parent: live.parent.clone(),
                first_seq,
            },
        ];
        for (name, data) in carried {
            events.extend(data.into_iter().map(|data| Event::Raised {
                name: name.clone(),
                data,
            }));
        }
        apply(&new.state, events.iter().cloned());
        let result = poll(&mut new);
        let mut state = new
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (seq, action) in state.new_actions.drain(..) {
            batch
                .produced
                .extend(self.shared.action_messages(id, seq, &action));
            let event = Event::Scheduled { seq, action };
            track_locks(&mut new.locks, &event);
            events.push(event);
        }
        if state.continue_with.is_some() && !matches!(result, Some(Err(_))) {
            // Its step number is below the new run's first: the next turn drops it.
            batch.produced.push(self.shared.completion(
                id.to_string(),
                first_seq - 1,
                Outcome::Ok(Value::Null),
            ));
        }
        let continues = state.continue_with.is_some();
        drop(state);
        let result = match result {
            // It returned after asking to continue as new: the restart wins, next turn.
            Some(Ok(_)) if continues => {
                new.future = None;
                None
            }
            other => other,
        };
        *live = new;
        Ok((events, result))
    }

    /// Ends an instance: records its status, releases its locks, answers its parent.
    fn finish(&self, id: &str, live: &mut Live, result: Result<Value, Error>, batch: &mut Batch) {
        // Release every entity of the open section, granted or not: a release from a
        // non-holder does nothing, and a grant that arrives after the end is released then.
        let mut held = {
            let mut state = live
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.closed = true;
            state.section.take().unwrap_or_default()
        };
        held.extend(live.locks.take().unwrap_or_default());
        held.sort();
        held.dedup();
        live.future = None; // drops guards: `closed` keeps them from scheduling anything
        for entity in held {
            batch.produced.push(self.shared.release(id, entity));
        }
        let (status, output, reply) = match result {
            Ok(value) => (RuntimeStatus::Completed, value.clone(), Outcome::Ok(value)),
            Err(Error::Terminated(reason)) => (
                RuntimeStatus::Terminated,
                Value::String(reason.clone()),
                Outcome::Err(FailureKind::Orchestration, format!("terminated: {reason}")),
            ),
            Err(err) => {
                let message = err.to_string();
                (
                    RuntimeStatus::Failed,
                    Value::String(message.clone()),
                    Outcome::Err(FailureKind::Orchestration, message),
                )
            }
        };
        debug!(instance = id, ?status, "orchestration ended");
        crate::metrics::orchestration_ended(status);
        live.record.status = status;
        live.record.output = Some(output);
        if let Some(ReplyTo::Instance { id: parent, seq }) = &live.parent {
            batch
                .produced
                .push(self.shared.completion(parent.clone(), *seq, reply));
        }
    }

    /// A message for an instance that has ended or never existed: dropped, except that a lock
    /// granted after the end is released at once.
    fn to_ended_instance(&self, id: &str, message: Message, batch: &mut Batch) {
        match message.body {
            Body::LockGranted { ids, .. } => {
                for entity in ids {
                    batch.produced.push(self.shared.release(id, entity));
                }
            }
            // A sub-orchestration whose id is taken by an ended instance: its parent must not
            // wait forever.
            Body::Start {
                parent: Some(ReplyTo::Instance { id: parent, seq }),
                ..
            } => batch.produced.push(self.shared.completion(
                parent,
                seq,
                Outcome::Err(
                    FailureKind::Orchestration,
                    format!("instance `{id}` exists already and has ended"),
                ),
            )),
            body => {
                debug!(instance = id, message = ?body, "message for an ended or unknown instance dropped");
            }
        }
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

impl Live {
    /// Starts the step numbers of this run at `first_seq`.
    fn set_first_seq(&mut self, first_seq: u64) {
        self.first_seq = first_seq;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.first_seq = first_seq;
        state.next_seq = first_seq;
    }
}

/// Applies a turn's events to the replay state.
fn apply(state: &Mutex<OrchState>, events: impl Iterator<Item = Event>) {
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for event in events {
        match event {
            Event::Turn { time } => state.now = time,
            Event::Completed { seq, result } => {
                state.completions.insert(seq, result);
            }
            Event::Raised { name, data } => {
                state.events.entry(name).or_default().push_back(data);
            }
            Event::Started { .. } | Event::Scheduled { .. } => {}
        }
    }
}

/// Polls the instance's future once; `Some` when it finished.
fn poll(live: &mut Live) -> Option<Result<Value, Error>> {
    let future = live.future.as_mut()?;
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(result)) => Some(result),
        Ok(Poll::Pending) => None,
        Err(panic) => Some(Err(Error::OrchestrationFailed(format!(
            "the orchestration panicked: {}",
            panic_message(&panic)
        )))),
    }
}

/// Follows the lock steps of a history: the entities locked by the last lock step that no
/// release step followed.
fn track_locks(locks: &mut Option<Vec<EntityId>>, event: &Event) {
    match event {
        Event::Scheduled {
            action: Action::Lock { ids },
            ..
        } => *locks = Some(ids.clone()),
        Event::Scheduled {
            action: Action::Release { .. },
            ..
        } => *locks = None,
        _ => {}
    }
}
