//! One instance's turns: replaying its history, creating and restarting it, running a turn
//! of its future, and ending it.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};

use super::{Live, Orchestrations, RunResult, Slot};
use crate::error::{panic_message, Error};
use crate::id::EntityId;
use crate::message::{Body, FailureKind, Message, Outcome, ReplyTo};
use crate::orchestration::context::{OrchState, OrchestrationContext};
use crate::orchestration::history::{Action, Event};
use crate::orchestration::OrchestrationFn;
use crate::registry::Registry;
use crate::store::{Batch, InstanceRecord, InstanceWrite, RuntimeStatus};

impl Orchestrations {
    /// Rebuilds a running instance from its history, turn by turn.
    pub(super) fn replay(&self, record: InstanceRecord, history: &[Value]) -> Result<Live, String> {
        let function = self.function(&record.name)?;
        rebuild(function, self.shared.registry.clone(), record, history)
    }

    /// A new in-memory instance with its future, not yet polled.
    pub(super) fn create(
        &self,
        record: InstanceRecord,
        parent: Option<ReplyTo>,
    ) -> Result<Live, String> {
        let function = self.function(&record.name)?;
        start(function, self.shared.registry.clone(), record, parent, None)
    }

    /// The registered function of an orchestration name.
    fn function(&self, name: &str) -> Result<Arc<dyn OrchestrationFn>, String> {
        self.shared
            .registry
            .orchestrations
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no orchestration named `{name}` is registered"))
    }

    /// Runs one turn of an instance with the messages that arrived; returns whether it ended.
    pub(super) fn run_turn(
        &self,
        id: &str,
        slot: &mut Slot,
        messages: Vec<Message>,
        batch: &mut Batch,
    ) -> bool {
        let now = self.shared.now_millis();
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
                        held: None,
                    };
                    slot.awaiting_start = false;
                    match self.create(record.clone(), parent.clone()) {
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
                            batch.instances.push(record_only(record, 0));
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
                // A live instance runs on the code that replayed (or started) it: only a
                // replay can depart from the history, and a departed replay is held instead
                // of running (see `Orchestrations::load`).
                apply(&live.state, events.iter().cloned());
                let result = poll(live);
                let mut state = live
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.carry_out(id, &mut state, &mut live.locks, &mut events, batch);
                result
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

    /// A turn of a held instance (see [`Held`]): a termination ends it (releasing its locks
    /// and answering its parent); any other message stays stored and queued for code that can
    /// run it. The first such turn stores why it is held. Returns whether it ended.
    pub(super) fn run_held(
        &self,
        id: &str,
        slot: &mut Slot,
        messages: Vec<Message>,
        batch: &mut Batch,
    ) -> bool {
        let held = slot.held.as_mut().expect("a held slot");
        let reason = messages.iter().find_map(|m| match &m.body {
            Body::Terminate { reason } => Some(reason.clone()),
            _ => None,
        });
        let Some(reason) = reason else {
            slot.queue.extend(messages);
            if !held.stored {
                held.stored = true;
                held.record.held = Some(held.reason.clone());
                held.record.updated = self.shared.now_millis();
                batch
                    .instances
                    .push(record_only(held.record.clone(), held.history_len));
            }
            return false;
        };
        let held = slot.held.take().expect("a held slot");
        for message in messages {
            batch.consumed.push(message.id);
            if !matches!(message.body, Body::Terminate { .. }) {
                self.to_ended_instance(id, message, batch);
            }
        }
        for entity in held.locks.unwrap_or_default() {
            batch.produced.push(self.shared.release(id, entity));
        }
        if let Some(ReplyTo::Instance { id: parent, seq }) = held.parent {
            batch.produced.push(self.shared.completion(
                parent,
                seq,
                Outcome::Err(FailureKind::Orchestration, format!("terminated: {reason}")),
            ));
        }
        debug!(instance = id, "held orchestration terminated");
        crate::metrics::orchestration_ended(RuntimeStatus::Terminated);
        let mut record = held.record;
        record.status = RuntimeStatus::Terminated;
        record.output = Some(Value::String(reason));
        record.held = None;
        record.updated = self.shared.now_millis();
        batch.instances.push(record_only(record, held.history_len));
        slot.ended = true;
        true
    }

    /// Continues `live` as new: releases the locks of its run, drops the run, and starts a new
    /// run with `input` and the events the old run had not received, polling it once, all in
    /// this turn. Returns the new run's history (to replace the stored one) and its result if
    /// it finished at once. A new run that continues as new again at once is restarted by the
    /// next turn, which a message to itself brings about (so that a run that continues without
    /// waiting for anything cannot hold the engine in a loop).
    pub(super) fn restart(
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
        let mut new = self.create(live.record.clone(), live.parent.clone())?;
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
        self.carry_out(id, &mut state, &mut new.locks, &mut events, batch);
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

    /// Carries out the steps the code scheduled when polled: their messages go into `batch`,
    /// their events into the turn's `events`, and lock steps into `locks`.
    fn carry_out(
        &self,
        id: &str,
        state: &mut OrchState,
        locks: &mut Option<Vec<EntityId>>,
        events: &mut Vec<Event>,
        batch: &mut Batch,
    ) {
        for (seq, action) in state.new_actions.drain(..) {
            batch
                .produced
                .extend(self.shared.action_messages(id, seq, &action));
            let event = Event::Scheduled { seq, action };
            track_locks(locks, &event);
            events.push(event);
        }
    }

    /// Ends an instance: records its status, releases its locks, answers its parent.
    pub(super) fn finish(
        &self,
        id: &str,
        live: &mut Live,
        result: Result<Value, Error>,
        batch: &mut Batch,
    ) {
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
    pub(super) fn to_ended_instance(&self, id: &str, message: Message, batch: &mut Batch) {
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
}

impl Live {
    /// Whether the code departed from its history (see `OrchState::nondeterminism`).
    pub(crate) fn departed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .nondeterminism
            .is_some()
    }

    /// Why the code departed from its history, if it did.
    pub(crate) fn departure(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .nondeterminism
            .clone()
    }

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

/// Rebuilds a running instance of `function` from its history, turn by turn. A replay that
/// departs from the history leaves the reason in the state's `nondeterminism`; a history that
/// cannot be replayed at all is an error.
pub(crate) fn rebuild(
    function: Arc<dyn OrchestrationFn>,
    registry: Arc<Registry>,
    record: InstanceRecord,
    history: &[Value],
) -> Result<Live, String> {
    let events: Vec<Event> = history
        .iter()
        .map(Event::deserialize)
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
    let mut live = start(function, registry, record, parent.flatten(), Some(recorded))?;
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
        if live.departed() {
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
        // Markers of patches the code no longer asks for are not steps to reproduce.
        let steps = state
            .recorded
            .iter()
            .filter(|(_, action)| !matches!(action, Action::Patch { .. }));
        if let Some(seq) = steps.map(|(seq, _)| *seq).min() {
            let action = state.recorded[&seq].describe();
            state.nondeterminism = Some(format!(
                "step {seq}: the history has a {action} that the code no longer schedules"
            ));
        }
    }
    drop(state);
    Ok(live)
}

/// A new in-memory instance of `function` with its future, not yet polled; with the steps of
/// its history when it is to be replayed.
fn start(
    function: Arc<dyn OrchestrationFn>,
    registry: Arc<Registry>,
    record: InstanceRecord,
    parent: Option<ReplyTo>,
    recorded: Option<HashMap<u64, Action>>,
) -> Result<Live, String> {
    let mut state = OrchState::new(record.id.clone(), registry);
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

/// A write of an instance's record alone, its history (of `history_len` events) unchanged.
fn record_only(record: InstanceRecord, history_len: u64) -> InstanceWrite {
    InstanceWrite {
        record,
        first_event: history_len,
        events: Vec::new(),
        create: false,
        restart: false,
    }
}

/// Applies a turn's events to the replay state.
pub(super) fn apply(state: &Mutex<OrchState>, events: impl Iterator<Item = Event>) {
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
pub(super) fn poll(live: &mut Live) -> Option<Result<Value, Error>> {
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
pub(super) fn track_locks(locks: &mut Option<Vec<EntityId>>, event: &Event) {
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
