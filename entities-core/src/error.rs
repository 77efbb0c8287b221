//! The error types of the public API.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `Result` with the framework's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one error type of the public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An entity operation failed; carries the operation's error message.
    #[error("operation failed: {0}")]
    Operation(#[from] OperationError),
    /// A critical-section rule was broken; the message names the rule.
    #[error("locking rules violation: {0}")]
    LockingRulesViolation(String),
    /// An id that is not of the form `@name@key`, or a name that is empty or contains `@`.
    #[error("invalid entity id: {0}")]
    InvalidEntityId(String),
    /// A message addressed an entity name that no runtime registered.
    #[error("no entity named `{0}` is registered; register it with `Runtime::builder().entity::<T>()` or `.entity_fn(name, f)`")]
    UnknownEntity(String),
    /// An orchestration or activity name that no runtime registered.
    #[error("no {kind} named `{name}` is registered with the runtime")]
    UnknownFunction {
        /// `orchestration` or `activity`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A value could not be serialized or deserialized. A value to be stored (a state, an
    /// input, a result, an output, event data) is refused, and nothing is stored, when it could
    /// not be read back: when it holds a non-finite `f32` or `f64` (NaN or an infinity, which
    /// JSON cannot express), or nests arrays and objects more than 100 levels deep.
    #[error("serialization error: {0}")]
    Serialization(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// An orchestration instance does not exist.
    #[error("orchestration instance `{0}` not found")]
    InstanceNotFound(String),
    /// An orchestration instance with this id exists already.
    #[error("orchestration instance `{0}` exists already")]
    InstanceExists(String),
    /// The operation needs an ended instance, but it is running.
    #[error("orchestration instance `{0}` is running; terminate it or wait for it to end first")]
    InstanceRunning(String),
    /// An orchestration failed; carries its error message.
    #[error("orchestration failed: {0}")]
    OrchestrationFailed(String),
    /// An orchestration replay took a different path from its history (from
    /// [`testing::replay`](crate::testing::replay); a runtime holds such an instance instead,
    /// see `OrchestrationStatus::held`).
    #[error("non-deterministic orchestration: {0}")]
    NonDeterminism(String),
    /// An activity failed; carries its error message.
    #[error("activity failed: {0}")]
    ActivityFailed(String),
    /// The orchestration instance was terminated.
    #[error("orchestration terminated: {0}")]
    Terminated(String),
    /// Waiting took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The runtime has shut down (or stopped after a store failure). A send under way when a
    /// runtime was dropped without `shutdown` may still have been stored.
    #[error("the runtime is shut down")]
    Shutdown,
    /// An operation name starting with `$`: those are reserved for the runtime (use
    /// `Client::set_entity_state` to replace a state).
    #[error("the operation name `{0}` is reserved: names starting with `$` belong to the runtime")]
    ReservedOperation(String),
    /// The runtime was configured wrongly.
    #[error("configuration error: {0}")]
    Config(String),
    /// A recurring schedule that cannot be used (a cron expression that does not parse or
    /// never fires).
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// The entity belongs to a partition another process runs; this request is only served
    /// by the runtime that runs it.
    #[error("{0} belongs to a partition another process runs; ask a client of that process")]
    NotRunHere(String),
    /// An idempotency key that cannot be used: empty, longer than 255 bytes, or its first
    /// call's answer was forgotten before it was read.
    #[error("idempotency key `{key}`: {reason}")]
    IdempotencyKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An idempotency key reused, within its retention window, for another request than the
    /// one that claimed it: another kind of send, target, operation, orchestration or input.
    /// Nothing was sent; a key belongs to one request.
    #[error("idempotency key `{key}` was claimed by another request ({first}); a key belongs to one request")]
    IdempotencyMismatch {
        /// The key.
        key: String,
        /// The request that claimed it, as the runtime describes it.
        first: String,
    },
    /// An entity operation or an activity asked for a service that was not registered.
    #[error(transparent)]
    MissingService(#[from] MissingService),
    /// A stored entity state could not be brought to the version its code reads.
    #[error(transparent)]
    StateVersion(#[from] StateVersionError),
}

/// The error of `ctx.service::<T>()` when no service of type `T` was registered with
/// `Runtime::builder().service(value)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no service of type `{type_name}` is registered; register one with \
     `Runtime::builder().service(value)`"
)]
pub struct MissingService {
    type_name: &'static str,
}

impl MissingService {
    /// The error for the service type `T`.
    pub fn of<T: ?Sized>() -> Self {
        Self {
            type_name: std::any::type_name::<T>(),
        }
    }

    /// The name of the type asked for (as `std::any::type_name` gives it).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl From<MissingService> for OperationError {
    fn from(err: MissingService) -> Self {
        OperationError::new(err)
    }
}

/// Why a stored entity state cannot be brought to the version its code reads (see
/// `#[entity(version = N, migrate = ..)]`). The stored state is left untouched, and the
/// entity's operations fail with this error until code that can read it runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateVersionError {
    /// The entity's `migrate` function refused the stored state.
    #[error(
        "the stored state of {id} has version {from} and its migration to version {to} \
         failed: {message}; the stored state is left untouched"
    )]
    Migration {
        /// The entity.
        id: String,
        /// The stored version.
        from: u32,
        /// The version of the code.
        to: u32,
        /// The message of the migration's error.
        message: String,
    },
    /// The stored state was written by newer code (a higher version) than the code running.
    #[error(
        "the stored state of {id} has version {stored}, newer than version {current} of the \
         code running; it is left untouched (run code of version {stored} or later for this \
         entity)"
    )]
    Newer {
        /// The entity.
        id: String,
        /// The stored version.
        stored: u32,
        /// The version of the code.
        current: u32,
    },
}

impl Error {
    /// Wraps a serde error.
    pub fn serialization(err: impl fmt::Display) -> Self {
        Error::Serialization(err.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::serialization(err)
    }
}

/// The error of one entity operation: seen by callers, logged for signals. The operation's state
/// changes and outgoing messages are rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OperationError {
    message: String,
}

impl OperationError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The error for an operation the entity does not define.
    pub fn unknown_operation(name: &str) -> Self {
        Self::new(format!("unknown operation `{name}`"))
    }

    /// The error message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for OperationError {
    fn from(err: Error) -> Self {
        match err {
            Error::Operation(op) => op,
            other => OperationError::new(other),
        }
    }
}

impl From<serde_json::Error> for OperationError {
    fn from(err: serde_json::Error) -> Self {
        OperationError::new(format!("serialization error: {err}"))
    }
}

/// What kind of failure a [`StoreError`] is, so that callers can act on it without parsing
/// messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Any other failure (see the message and the source).
    Other,
    /// A batch created something that exists already; none of it was applied.
    Conflict,
    /// A stored value cannot be decoded; [`StoreError::raw_value`] holds it as stored.
    Corrupt,
    /// Another runtime owns the database.
    InUse,
    /// The disk (or the database's size limit) is full.
    DiskFull,
    /// The database cannot be written: read-only file, directory or mount.
    ReadOnly,
    /// An I/O error of the operating system.
    Io,
    /// The store has been closed (its runtime stopped) or its writer is gone.
    Closed,
    /// This process no longer owns a partition the batch writes (another process took it
    /// over); none of the batch was applied.
    Fenced,
    /// The database could not be reached for longer than the store waits for it
    /// (`unavailable_timeout`); nothing of the send or batch was applied, so a retry is safe.
    Unavailable,
    /// The database file was deleted, or replaced by another file, while the store had it
    /// open: what it would write now could not be found again, so it writes nothing more. The
    /// commit that noticed it is not acknowledged, nor is any after it; this lasts until the
    /// runtime is started again on a database file.
    Gone,
}

/// An error of the store (database I/O, corruption, a schema from a newer version). Cheap to
/// clone: the cause is shared, so every sender of a failed commit gets it.
#[derive(Clone, Debug)]
pub struct StoreError {
    message: String,
    kind: StoreErrorKind,
    raw: Option<String>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    /// The cause itself (not the `Arc` sharing it), so that it can be downcast.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl StoreError {
    /// An error with a message only.
    pub fn new(message: impl fmt::Display) -> Self {
        Self::of_kind(StoreErrorKind::Other, message)
    }

    /// An error of this kind with a message only.
    pub fn of_kind(kind: StoreErrorKind, message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            kind,
            raw: None,
            source: None,
        }
    }

    /// The error of a batch that creates something that exists already.
    pub fn conflict(message: impl fmt::Display) -> Self {
        Self::of_kind(StoreErrorKind::Conflict, message)
    }

    /// The error of a batch whose exclusive claim of idempotency key `key` (see
    /// [`Batch::keys_binding_since`](crate::store::Batch::keys_binding_since)) found it
    /// claimed by another send within its retention window: a conflict.
    pub fn key_claimed(key: &str) -> Self {
        Self::conflict(format!(
            "idempotency key `{key}` was claimed by another send within its retention window"
        ))
    }

    /// A stored value that cannot be decoded: `what` names it (the entity, message or
    /// instance), `raw` is the value as stored.
    pub fn corrupt(
        what: impl fmt::Display,
        raw: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            raw: Some(raw.into()),
            ..Self::with_kind(StoreErrorKind::Corrupt, what, source)
        }
    }

    /// Whether the batch failed because it creates something that exists already.
    pub fn is_conflict(&self) -> bool {
        self.kind == StoreErrorKind::Conflict
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// For a [`StoreErrorKind::Corrupt`] error, the stored value that cannot be decoded.
    pub fn raw_value(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// An error with a message and the underlying cause.
    pub fn with_source(
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::with_kind(StoreErrorKind::Other, message, source)
    }

    /// An error of this kind with a message and the underlying cause.
    pub fn with_kind(
        kind: StoreErrorKind,
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: format!("{message}: {source}"),
            kind,
            raw: None,
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// The same error with `context` put before its message (kind, raw value and cause kept).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
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
