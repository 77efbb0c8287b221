//! [`OrchestrationContext`]: what orchestration code uses for every step, so that a replay
//! from history takes the same path.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::history::Action;
use crate::entity::Entity;
use crate::error::{Error, OperationError};
use crate::id::EntityId;
use crate::message::{from_millis, to_millis_ceil, FailureKind, Outcome};
use crate::proxy::{decode_with, Decode, Invoker};
use crate::registry::Registry;

/// The replay state of one instance, shared by its context handles and step futures.
pub(crate) struct OrchState {
    pub instance: String,
    pub registry: Arc<Registry>,
    /// Steps recorded in the history that the code has not re-scheduled yet.
    pub recorded: HashMap<u64, Action>,
    pub replaying: bool,
    pub next_seq: u64,
    pub completions: HashMap<u64, Outcome>,
    pub events: HashMap<String, VecDeque<Value>>,
    /// Steps scheduled in this turn that the history does not have: to record and execute.
    pub new_actions: Vec<(u64, Action)>,
    /// Set when the code departs from its history.
    pub nondeterminism: Option<String>,
    pub now: u64,
    uuid_count: u64,
    /// The entities of the current critical section (held or being acquired).
    pub section: Option<Vec<EntityId>>,
    /// Entities with a call under way inside the section.
    calls_in_flight: HashSet<EntityId>,
    /// Set while the instance is being torn down: guards dropping then release nothing.
    pub closed: bool,
    /// The step of the current section's lock.
    section_seq: Option<u64>,
    /// Whether the current section's lock was granted and taken by the code.
    section_granted: bool,
    /// The first step number of this run: 0 for the first run, above every step of the
    /// previous run after a continue-as-new (older completions are stale).
    pub first_seq: u64,
    /// The input of the next run, once the code called `continue_as_new`.
    pub continue_with: Option<Value>,
    /// What `patched` answered for each patch id in this run.
    patches: HashMap<String, bool>,
}

impl OrchState {
    pub(crate) fn new(instance: String, registry: Arc<Registry>) -> Self {
        Self {
            instance,
            registry,
            recorded: HashMap::new(),
            replaying: false,
            next_seq: 0,
            completions: HashMap::new(),
            events: HashMap::new(),
            new_actions: Vec::new(),
            nondeterminism: None,
            now: 0,
            uuid_count: 0,
            section: None,
            calls_in_flight: HashSet::new(),
            closed: false,
            section_seq: None,
            section_granted: false,
            first_seq: 0,
            continue_with: None,
            patches: HashMap::new(),
        }
    }

    /// Drops the patch markers recorded at the next step: code that no longer asks for a
    /// patch replays its marker as if it asked (and took the new path).
    fn skip_patch_markers(&mut self) {
        if self.recorded.is_empty() {
            return; // not replaying: the common case costs no lookup
        }
        while let Some(Action::Patch { .. }) = self.recorded.get(&self.next_seq) {
            self.recorded.remove(&self.next_seq);
            self.next_seq += 1;
        }
    }

    /// Whether patch `id` is on (see [`OrchestrationContext::patched`]).
    fn patched(&mut self, id: &str) -> bool {
        if let Some(&on) = self.patches.get(id) {
            return on;
        }
        let seq = self.next_seq;
        let on = match self.recorded.get(&seq) {
            Some(Action::Patch { id: recorded }) if recorded == id => {
                self.recorded.remove(&seq);
                self.next_seq += 1;
                true
            }
            Some(Action::Patch { .. }) => {
                // The marker of a patch the code no longer asks for: taken as asked, then
                // this patch is looked for at the step after it.
                self.skip_patch_markers();
                return self.patched(id);
            }
            // The history went past this point without the patch: the old path.
            Some(_) => false,
            None if self.replaying => false,
            None => {
                self.next_seq += 1;
                self.new_actions
                    .push((seq, Action::Patch { id: id.to_string() }));
                true
            }
        };
        self.patches.insert(id.to_string(), on);
        on
    }

    /// Schedules a step: matched against the history when replaying, recorded as new otherwise.
    fn schedule(&mut self, action: Action) -> u64 {
        self.skip_patch_markers();
        let seq = self.next_seq;
        self.next_seq += 1;
        match self.recorded.remove(&seq) {
            Some(recorded) => {
                if recorded.describe() != action.describe() {
                    self.nondeterminism.get_or_insert(format!(
                        "step {seq}: the history has a {}, but the code now schedules a {}",
                        recorded.describe(),
                        action.describe()
                    ));
                }
            }
            None if self.replaying => {
                self.nondeterminism.get_or_insert(format!(
                    "step {seq}: the code schedules a {} that the history does not have",
                    action.describe()
                ));
            }
            None => self.new_actions.push((seq, action)),
        }
        seq
    }
}

/// The context an orchestration runs with: cheap to clone. Every source of time, randomness,
/// waiting and side effects goes through it, so that replays are deterministic.
#[derive(Clone)]
pub struct OrchestrationContext {
    state: Arc<Mutex<OrchState>>,
}

impl OrchestrationContext {
    pub(crate) fn new(state: Arc<Mutex<OrchState>>) -> Self {
        Self { state }
    }

    fn lock_state(&self) -> MutexGuard<'_, OrchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.lock_state().instance.clone()
    }

    /// The current time, as recorded in the history (the same on every replay).
    pub fn current_time(&self) -> SystemTime {
        from_millis(self.lock_state().now)
    }

    /// A new UUID, the same on every replay (and different in each run of a continue-as-new).
    pub fn new_uuid(&self) -> uuid::Uuid {
        let mut state = self.lock_state();
        state.uuid_count += 1;
        let name = match state.first_seq {
            0 => format!("{}/{}", state.instance, state.uuid_count),
            run => format!("{}/{run}/{}", state.instance, state.uuid_count),
        };
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
    }

    /// Whether this instance takes the new path of patch `id`, for changing the code of an
    /// orchestration while instances of it run:
    ///
    /// ```ignore
    /// if ctx.patched("transfer-fee") {
    ///     ctx.call::<Account>(&t.from).add(-1).await?; // the new step
    /// }
    /// ```
    ///
    /// `true` when the instance reaches this point running code that has the patch: the
    /// choice is recorded in its history as an event of its own (one step number). `false`
    /// when it replays a history that went past this point without the patch (it ran on older
    /// code), so that its replay takes the path it took. Asked again for the same `id` in the
    /// same run, it answers the same. Once no instance that started before the patch remains,
    /// the old path and the `if` can go; a history that has the marker of a patch the code no
    /// longer asks for replays as if the code asked (and took the new path).
    pub fn patched(&self, id: &str) -> bool {
        self.lock_state().patched(id)
    }

    /// Whether the code is being replayed from history (for logging only).
    pub fn is_replaying(&self) -> bool {
        self.lock_state().replaying
    }

    /// Waits for `duration` (durably: the wait survives restarts).
    pub fn timer(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.lock_state();
        let fire_at = to_millis_ceil(from_millis(state.now) + duration);
        let seq = state.schedule(Action::Timer { fire_at });
        drop(state);
        let step = Step::new(self.state.clone(), seq);
        async move {
            let _ = step.await;
        }
    }

    /// Runs an activity and returns its output.
    pub fn call_activity<R: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        input: &(impl Serialize + ?Sized),
    ) -> BoxFuture<'static, Result<R, Error>> {
        let input = crate::json::to_value(input).map_err(Error::from);
        self.run_step(|state| {
            if !state.registry.has_activity(name) {
                return Err(Error::UnknownFunction {
                    kind: "activity",
                    name: name.to_string(),
                });
            }
            Ok(Action::Activity {
                name: name.to_string(),
                input: input?,
            })
        })
    }

    /// Runs a sub-orchestration and returns its output.
    pub fn call_orchestration<R: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        input: &(impl Serialize + ?Sized),
    ) -> BoxFuture<'static, Result<R, Error>> {
        let input = crate::json::to_value(input).map_err(Error::from);
        self.run_step(|state| {
            if state.section.is_some() {
                return Err(Error::LockingRulesViolation(
                    "critical sections cannot create sub-orchestrations".into(),
                ));
            }
            if !state.registry.has_orchestration(name) {
                return Err(Error::UnknownFunction {
                    kind: "orchestration",
                    name: name.to_string(),
                });
            }
            Ok(Action::SubOrchestration {
                name: name.to_string(),
                instance: format!("{}:{}", state.instance, state.next_seq),
                input: input?,
            })
        })
    }

    /// Schedules the step `prepare` describes (or fails at once with its error) and resolves
    /// with the step's outcome.
    fn run_step<R: DeserializeOwned + Send + 'static>(
        &self,
        prepare: impl FnOnce(&OrchState) -> Result<Action, Error>,
    ) -> BoxFuture<'static, Result<R, Error>> {
        let mut state = self.lock_state();
        let action = match prepare(&state) {
            Ok(action) => action,
            Err(err) => return ready(Err(err)),
        };
        let seq = state.schedule(action);
        drop(state);
        let step = Step::new(self.state.clone(), seq);
        Box::pin(async move { outcome_into(step.await) })
    }

    /// Waits for the next external event named `name` and returns its data.
    pub fn wait_for_event<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'static {
        let wait = EventWait {
            state: self.state.clone(),
            name: name.to_string(),
        };
        async move {
            let data = wait.await;
            T::deserialize(&data).map_err(|err| {
                Error::Serialization(format!("the event data does not deserialize: {err}"))
            })
        }
    }

    /// A typed proxy whose methods call the entity `E` with `key` and resolve with the result.
    pub fn call<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<OrchestrationCall> {
        E::proxy(OrchestrationCall {
            ctx: self.clone(),
            id: EntityId::of::<E>(key),
        })
    }

    /// A typed proxy whose methods signal the entity `E` with `key`.
    pub fn signal<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<OrchestrationSignal> {
        E::proxy(OrchestrationSignal {
            ctx: self.clone(),
            id: EntityId::of::<E>(key),
        })
    }

    /// Calls an entity operation and returns its result.
    pub fn call_entity<R: DeserializeOwned + Send + 'static>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &(impl Serialize + ?Sized),
    ) -> BoxFuture<'static, Result<R, Error>> {
        let input = crate::json::to_value(input).map(Some).map_err(Error::from);
        self.call_raw(id.clone(), operation, input, |v| R::deserialize(v))
    }

    /// Signals an entity (sent when this step commits).
    pub fn signal_entity(
        &self,
        id: &EntityId,
        operation: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<(), Error> {
        let input = crate::json::to_value(input)?;
        self.signal_raw(id.clone(), operation, Some(input), None)
    }

    /// Signals an entity, delivered at or after `at`.
    pub fn signal_entity_at(
        &self,
        id: &EntityId,
        operation: &str,
        input: &(impl Serialize + ?Sized),
        at: SystemTime,
    ) -> Result<(), Error> {
        let input = crate::json::to_value(input)?;
        self.signal_raw(id.clone(), operation, Some(input), Some(to_millis_ceil(at)))
    }

    /// Starts a critical section over `ids`: resolves once all are locked, in one global order
    /// (so sections never deadlock). The section ends when the guard is dropped, or when the
    /// orchestration ends.
    pub fn lock(
        &self,
        ids: &[EntityId],
    ) -> impl Future<Output = Result<CriticalSection, Error>> + Send + 'static {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let prepared = (|| {
            let mut state = self.lock_state();
            if state.section.is_some() {
                return Err(Error::LockingRulesViolation(
                    "critical sections cannot be nested".into(),
                ));
            }
            if ids.is_empty() {
                return Err(Error::LockingRulesViolation(
                    "a critical section needs at least one entity".into(),
                ));
            }
            for id in &ids {
                state.registry.check_entity(id)?;
            }
            state.section = Some(ids.clone());
            let seq = state.schedule(Action::Lock { ids });
            state.section_seq = Some(seq);
            state.section_granted = false;
            Ok(seq)
        })();
        let state = self.state.clone();
        async move {
            let seq = prepared?;
            Step::new(state.clone(), seq).await;
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .section_granted = true;
            Ok(CriticalSection { state })
        }
    }

    /// Restarts this instance as a new run with `input`, keeping its id: the history starts
    /// again empty, so that an eternal orchestration (one that loops forever, e.g. waking up
    /// once an hour) does not grow its history without bound. Return the future this gives
    /// from the orchestration function, as its last step:
    ///
    /// ```ignore
    /// async fn eternal(ctx: OrchestrationContext, n: u64) -> Result<(), entities::Error> {
    ///     ctx.timer(Duration::from_secs(3600)).await;
    ///     ctx.signal::<Counter>("ticks").add(1)?;
    ///     ctx.continue_as_new(&(n + 1)).await
    /// }
    /// ```
    ///
    /// The future never resolves once the restart is accepted: the current run goes no
    /// further, and when its turn commits the new run starts, in the same commit (a crash
    /// leaves either the old run or the new one, never a mix). Steps scheduled before it in
    /// the same turn are carried out (a signal is sent); results that the old run still
    /// awaited are dropped. The critical section the run holds, if any, is released first.
    /// External events raised and not yet received by the old run are not lost: the new run
    /// receives them, in the order raised. The output of an instance that continues as new is
    /// that of its last run; a parent orchestration waiting for it waits for that.
    ///
    /// It resolves with an error, and nothing restarts, if `input` does not serialize, or
    /// (`Error::LockingRulesViolation`) if a critical section is still being acquired: await
    /// the lock first.
    pub fn continue_as_new<T: Send + 'static>(
        &self,
        input: &(impl Serialize + ?Sized),
    ) -> BoxFuture<'static, Result<T, Error>> {
        let input = match crate::json::to_value(input) {
            Ok(input) => input,
            Err(err) => return ready(Err(err.into())),
        };
        let mut state = self.lock_state();
        if let (Some(_), Some(seq)) = (&state.section, state.section_seq) {
            if !state.section_granted && !state.completions.contains_key(&seq) {
                return ready(Err(Error::LockingRulesViolation(
                    "an orchestration cannot continue as new while a critical section is \
                     still being acquired; await the lock first"
                        .into(),
                )));
            }
        }
        state.continue_with = Some(input);
        Box::pin(futures::future::pending())
    }

    fn call_raw<R: Send + 'static>(
        &self,
        id: EntityId,
        operation: &str,
        input: Result<Option<Value>, Error>,
        decode: Decode<R>,
    ) -> BoxFuture<'static, Result<R, Error>> {
        let mut state = self.lock_state();
        let input = match input.and_then(|i| state.registry.check_entity(&id).map(|()| i)) {
            Ok(input) => input,
            Err(err) => return ready(Err(err)),
        };
        let in_section = if let Some(section) = &state.section {
            if !section.contains(&id) {
                return ready(Err(Error::LockingRulesViolation(format!(
                    "critical sections can call only entities they have locked; {id} is not locked"
                ))));
            }
            if !state.calls_in_flight.insert(id.clone()) {
                return ready(Err(Error::LockingRulesViolation(format!(
                    "critical sections cannot call the same entity ({id}) with parallel calls"
                ))));
            }
            true
        } else {
            false
        };
        let seq = state.schedule(Action::CallEntity {
            id: id.clone(),
            operation: operation.to_string(),
            input,
        });
        drop(state);
        let step = Step::new(self.state.clone(), seq);
        let shared = self.state.clone();
        Box::pin(async move {
            let outcome = step.await;
            if in_section {
                let mut state = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.calls_in_flight.remove(&id);
            }
            match outcome {
                Outcome::Ok(value) => decode_with(Some(value), decode),
                Outcome::Err(_, message) => Err(Error::Operation(OperationError::new(message))),
            }
        })
    }

    fn signal_raw(
        &self,
        id: EntityId,
        operation: &str,
        input: Option<Value>,
        at: Option<u64>,
    ) -> Result<(), Error> {
        let mut state = self.lock_state();
        state.registry.check_entity(&id)?;
        if state.section.as_ref().is_some_and(|s| s.contains(&id)) {
            return Err(Error::LockingRulesViolation(format!(
                "critical sections can signal only entities they have not locked; {id} is locked"
            )));
        }
        state.schedule(Action::SignalEntity {
            id,
            operation: operation.to_string(),
            input,
            at,
        });
        Ok(())
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(futures::future::ready(value))
}

fn outcome_into<R: DeserializeOwned>(outcome: Outcome) -> Result<R, Error> {
    match outcome {
        Outcome::Ok(value) => R::deserialize(&value).map_err(|err| {
            Error::Serialization(format!("the step's result does not deserialize: {err}"))
        }),
        Outcome::Err(FailureKind::Activity, message) => Err(Error::ActivityFailed(message)),
        Outcome::Err(FailureKind::Orchestration, message) => {
            Err(Error::OrchestrationFailed(message))
        }
        Outcome::Err(FailureKind::Operation, message) => {
            Err(Error::Operation(OperationError::new(message)))
        }
    }
}

/// A critical section: while it lives, only this orchestration's operations run on its
/// entities. Dropping it ends the section.
#[must_use = "the critical section ends when this guard is dropped"]
pub struct CriticalSection {
    state: Arc<Mutex<OrchState>>,
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.closed {
            return;
        }
        if let Some(ids) = state.section.take() {
            state.calls_in_flight.clear();
            state.section_seq = None;
            state.section_granted = false;
            state.schedule(Action::Release { ids });
        }
    }
}

/// A step awaiting its completion.
struct Step {
    state: Arc<Mutex<OrchState>>,
    seq: u64,
}

impl Step {
    fn new(state: Arc<Mutex<OrchState>>, seq: u64) -> Self {
        Self { state, seq }
    }
}

impl Future for Step {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.nondeterminism.is_some() {
            // The code has left its history: it goes no further.
            return Poll::Pending;
        }
        match state.completions.remove(&self.seq) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

/// Waits for an external event.
struct EventWait {
    state: Arc<Mutex<OrchState>>,
    name: String,
}

impl Future for EventWait {
    type Output = Value;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Value> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.nondeterminism.is_some() {
            return Poll::Pending;
        }
        match state
            .events
            .get_mut(&self.name)
            .and_then(VecDeque::pop_front)
        {
            Some(data) => Poll::Ready(data),
            None => Poll::Pending,
        }
    }
}

/// Calls from an orchestration (typed proxy invoker).
pub struct OrchestrationCall {
    ctx: OrchestrationContext,
    id: EntityId,
}

impl Invoker for OrchestrationCall {
    type Output<R> = BoxFuture<'static, Result<R, Error>>;

    fn invoke<R: Send + 'static>(
        &self,
        operation: &'static str,
        input: Result<Option<Value>, Error>,
        decode: Decode<R>,
    ) -> Self::Output<R> {
        self.ctx.call_raw(self.id.clone(), operation, input, decode)
    }
}

/// Signals from an orchestration (typed proxy invoker).
pub struct OrchestrationSignal {
    ctx: OrchestrationContext,
    id: EntityId,
}

impl Invoker for OrchestrationSignal {
    type Output<R> = Result<(), Error>;

    fn invoke<R: Send + 'static>(
        &self,
        operation: &'static str,
        input: Result<Option<Value>, Error>,
        _decode: Decode<R>,
    ) -> Self::Output<R> {
        self.ctx
            .signal_raw(self.id.clone(), operation, input?, None)
    }
}

impl std::fmt::Debug for OrchestrationContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestrationContext")
            .field("instance_id", &self.instance_id())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CriticalSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriticalSection").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OrchestrationCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestrationCall")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OrchestrationSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestrationSignal")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
