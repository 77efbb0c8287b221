//! [`EntityContext`]: what an entity operation sees and does.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::entity::Entity;
use crate::error::{Error, MissingService, OperationError};
use crate::id::EntityId;
use crate::proxy::EntitySignal;
use crate::registry::Registry;

/// A message an operation sends; it leaves only if the operation succeeds and commits.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Signal {
        target: EntityId,
        operation: String,
        input: Option<Value>,
        at: Option<SystemTime>,
    },
    StartOrchestration {
        name: String,
        instance: String,
        input: Value,
    },
}

/// The context of one entity operation: its id, operation, input and state, and the signals
/// and orchestrations it starts. Changes take effect only if the operation succeeds.
pub struct EntityContext {
    id: EntityId,
    operation: String,
    input: Option<Value>,
    original: Option<Value>,
    written: Option<Option<Value>>,
    /// The version of the state's shape: as loaded, or as set by `set_state_version`.
    state_version: u32,
    original_version: u32,
    result: Option<Value>,
    outbox: Mutex<Vec<Outgoing>>,
    failure: Mutex<Option<OperationError>>,
    registry: Arc<Registry>,
}

impl EntityContext {
    pub(crate) fn new(
        id: EntityId,
        operation: String,
        input: Option<Value>,
        state: Option<Value>,
        state_version: u32,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            id,
            operation,
            input,
            original: state,
            written: None,
            state_version,
            original_version: state_version,
            result: None,
            outbox: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            registry,
        }
    }

    /// The entity's id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// The name of the operation being run.
    pub fn operation_name(&self) -> &str {
        &self.operation
    }

    /// Whether the operation has an input.
    pub fn has_input(&self) -> bool {
        self.input.is_some()
    }

    /// The operation's input. An operation without input reads as JSON `null`, which
    /// deserializes into `()` or `None`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, OperationError> {
        let value = self.input.as_ref().unwrap_or(&Value::Null);
        T::deserialize(value).map_err(|err| {
            OperationError::new(format!(
                "the input of operation `{}` on {} does not deserialize: {err}",
                self.operation, self.id
            ))
        })
    }

    /// The raw input, if any.
    pub fn input_raw(&self) -> Option<&Value> {
        self.input.as_ref()
    }

    fn current(&self) -> Option<&Value> {
        match &self.written {
            Some(written) => written.as_ref(),
            None => self.original.as_ref(),
        }
    }

    /// Whether the entity has a state.
    pub fn has_state(&self) -> bool {
        self.current().is_some()
    }

    /// The entity's state, or `None` if it has none. A state that does not deserialize into
    /// `T` reads as `None` and fails the operation, so that it is never overwritten by mistake.
    pub fn state<T: DeserializeOwned>(&self) -> Option<T> {
        match self.try_state() {
            Ok(state) => state,
            Err(err) => {
                let mut failure = self
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                failure.get_or_insert(err);
                None
            }
        }
    }

    /// The entity's state, or an error if it does not deserialize into `T`.
    pub fn try_state<T: DeserializeOwned>(&self) -> Result<Option<T>, OperationError> {
        match self.current() {
            None => Ok(None),
            Some(value) => T::deserialize(value).map(Some).map_err(|err| {
                OperationError::new(format!(
                    "the state of {} does not deserialize: {err}",
                    self.id
                ))
            }),
        }
    }

    /// The entity's state, or `T::default()` if it has none.
    pub fn state_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, OperationError> {
        Ok(self.try_state()?.unwrap_or_default())
    }

    /// The raw state, if any.
    pub fn state_raw(&self) -> Option<&Value> {
        self.current()
    }

    /// The version of the shape of the entity's state. For a class-based entity this is the
    /// `version` of its `#[entity]` (older stored states were migrated before the operation
    /// ran). For a function-based entity it is the version stored with its state: 1 for a
    /// state stored before versions existed or by a function that never set one, and for an
    /// entity without a state. A function entity upgrades an old state itself and records the
    /// new shape with [`set_state_version`](Self::set_state_version).
    pub fn state_version(&self) -> u32 {
        self.state_version
    }

    /// Sets the version stored with the state when this operation commits, for function-based
    /// entities. It is ignored for entities whose versions the runtime keeps (class-based
    /// entities, whose version is their `#[entity(version = N)]`, and any
    /// [`EntityFunction::versioning`](crate::EntityFunction::versioning)). Versions start at
    /// 1: 0 is taken as 1.
    pub fn set_state_version(&mut self, version: u32) {
        self.state_version = version.max(1);
    }

    /// Replaces the entity's state. A state that could not be read back (a non-finite float, or
    /// more than 100 levels of nesting; see [`Error::Serialization`]) is an error, and the
    /// state stays as it was.
    pub fn set_state<T: Serialize + ?Sized>(&mut self, state: &T) -> Result<(), OperationError> {
        let value = crate::json::to_value(state).map_err(|err| {
            OperationError::new(format!(
                "the new state of {} does not serialize: {err}",
                self.id
            ))
        })?;
        self.written = Some(Some(value));
        Ok(())
    }

    /// Replaces the entity's state with a JSON value.
    pub fn set_state_raw(&mut self, state: Value) {
        self.written = Some(Some(state));
    }

    /// Sets the operation's result as a JSON value.
    pub fn set_result_raw(&mut self, result: Value) {
        self.result = Some(result);
    }

    /// Removes the entity's state.
    pub fn delete_state(&mut self) {
        self.written = Some(None);
    }

    /// Sets the operation's result, returned to a caller.
    pub fn set_result<T: Serialize + ?Sized>(&mut self, result: &T) -> Result<(), OperationError> {
        self.result = Some(crate::json::to_value(result).map_err(|err| {
            OperationError::new(format!(
                "the result of operation `{}` does not serialize: {err}",
                self.operation
            ))
        })?);
        Ok(())
    }

    /// The service of type `T` registered with `Runtime::builder().service(value)`, or an
    /// error naming `T` if none was.
    pub fn service<T: Send + Sync + 'static>(&self) -> Result<&T, MissingService> {
        self.registry.services.get::<T>()
    }

    /// Signals an entity: the message is sent when this operation commits.
    pub fn signal_entity<I: Serialize + ?Sized>(
        &self,
        target: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<(), Error> {
        self.push_signal(target, operation, Some(crate::json::to_value(input)?), None)
    }

    /// Signals an entity, delivered at or after `at`.
    pub fn signal_entity_at<I: Serialize + ?Sized>(
        &self,
        target: &EntityId,
        operation: &str,
        input: &I,
        at: SystemTime,
    ) -> Result<(), Error> {
        self.push_signal(
            target,
            operation,
            Some(crate::json::to_value(input)?),
            Some(at),
        )
    }

    /// A typed proxy signalling the entity of type `E` with `key`: `ctx.signal::<E>(key).op(..)?`.
    pub fn signal<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<EntitySignal<'_>> {
        E::proxy(EntitySignal::new(self, EntityId::of::<E>(key)))
    }

    /// Starts an orchestration when this operation commits; returns its instance id.
    pub fn start_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
    ) -> Result<String, Error> {
        if !self.registry.has_orchestration(name) {
            return Err(Error::UnknownFunction {
                kind: "orchestration",
                name: name.to_string(),
            });
        }
        let instance = uuid::Uuid::new_v4().to_string();
        let input = crate::json::to_value(input)?;
        self.outbox().push(Outgoing::StartOrchestration {
            name: name.to_string(),
            instance: instance.clone(),
            input,
        });
        Ok(instance)
    }

    pub(crate) fn push_signal(
        &self,
        target: &EntityId,
        operation: &str,
        input: Option<Value>,
        at: Option<SystemTime>,
    ) -> Result<(), Error> {
        self.registry.check_entity(target)?;
        self.outbox().push(Outgoing::Signal {
            target: target.clone(),
            operation: operation.to_string(),
            input,
            at,
        });
        Ok(())
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Vec<Outgoing>> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Splits the finished context into what the runtime needs: on success the new state (if
    /// written), the result and the outgoing messages; the original state otherwise.
    pub(crate) fn finish(self, outcome: Result<(), OperationError>) -> Finished {
        let failure = self
            .failure
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state_written = self.written.is_some();
        match (outcome, failure) {
            (Ok(()), None) => Finished {
                state: match self.written {
                    Some(written) => written,
                    None => self.original,
                },
                state_written: state_written || self.state_version != self.original_version,
                state_version: self.state_version,
                result: Ok(self.result),
                outgoing: self
                    .outbox
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                operation: self.operation,
            },
            (Err(err), _) | (Ok(()), Some(err)) => Finished {
                state: self.original,
                state_written: false,
                state_version: self.original_version,
                result: Err(err),
                outgoing: Vec::new(),
                operation: self.operation,
            },
        }
    }
}

/// What an operation left behind.
pub(crate) struct Finished {
    pub state: Option<Value>,
    pub state_written: bool,
    /// The version of `state`'s shape.
    pub state_version: u32,
    pub result: Result<Option<Value>, OperationError>,
    pub outgoing: Vec<Outgoing>,
    /// The operation's name (for the record of recent failures).
    pub operation: String,
}

impl std::fmt::Debug for EntityContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityContext")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
