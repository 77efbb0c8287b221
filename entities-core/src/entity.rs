//! What an entity is to the runtime: an [`EntityFunction`] run once per operation, and for
//! class-based entities (`#[entity]`) the [`Entity`] trait.

use async_trait::async_trait;
use futures::future::BoxFuture;

use serde_json::Value;

use crate::context::EntityContext;
use crate::error::{OperationError, StateVersionError};
use crate::id::EntityId;
use crate::proxy::Invoker;

/// An entity implemented as a function that dispatches on `ctx.operation_name()`.
///
/// Plain functions `fn(&mut EntityContext) -> Result<(), OperationError>` implement it through a
/// blanket impl; implement it by hand for an `async` entity function.
#[async_trait]
pub trait EntityFunction: Send + Sync + 'static {
    /// Runs one operation. An `Err` rolls back the operation's state change and signals.
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError>;

    /// Runs the operation to its end without suspending, if it can be run that way; `None`
    /// (the default) means it must go through [`run`](Self::run), and `ctx` is untouched. The
    /// runtime tries this first: a synchronous operation then costs no future.
    fn run_now(&self, ctx: &mut EntityContext) -> Option<Result<(), OperationError>> {
        let _ = ctx;
        None
    }

    /// How this entity's stored states are versioned: the version this code reads and writes,
    /// and how older stored states are migrated to it when they are loaded. `None` (the
    /// default) leaves versions to the function: it reads the stored version with
    /// [`EntityContext::state_version`] and records a new one with
    /// [`EntityContext::set_state_version`].
    fn versioning(&self) -> Option<StateVersioning> {
        None
    }
}

/// The state versions of an entity (see [`EntityFunction::versioning`]).
#[derive(Clone, Copy, Debug)]
pub struct StateVersioning {
    /// The version of the state's shape this code reads and writes (at least 1).
    pub current: u32,
    /// Turns a stored state of an older version (the first argument) into a state of version
    /// `current`; an `Err` fails the entity's operations with its message and leaves the
    /// stored state untouched.
    pub migrate: fn(u32, Value) -> Result<Value, String>,
}

/// Brings a stored state of version `stored` to the version `function` reads: returns it with
/// its version. Costs a comparison when the state has the current version already.
pub(crate) fn upgrade_state(
    function: &dyn EntityFunction,
    id: &EntityId,
    state: Option<Value>,
    stored: u32,
) -> Result<(Option<Value>, u32), StateVersionError> {
    let Some(versioning) = function.versioning() else {
        return Ok((state, stored.max(1)));
    };
    match state {
        None => Ok((None, versioning.current)),
        Some(state) if stored == versioning.current => Ok((Some(state), stored)),
        Some(_) if stored > versioning.current => Err(StateVersionError::Newer {
            id: id.to_string(),
            stored,
            current: versioning.current,
        }),
        Some(old) => {
            // A panic in the user's migration fails this entity only.
            let migrated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (versioning.migrate)(stored, old)
            }))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "the migration panicked: {}",
                    crate::error::panic_message(&panic)
                ))
            });
            match migrated {
                Ok(new) => Ok((Some(new), versioning.current)),
                Err(message) => Err(StateVersionError::Migration {
                    id: id.to_string(),
                    from: stored,
                    to: versioning.current,
                    message,
                }),
            }
        }
    }
}

/// The version a new state of an entity of `function` gets.
pub(crate) fn initial_version(function: &dyn EntityFunction) -> u32 {
    function.versioning().map_or(1, |v| v.current)
}

#[async_trait]
impl<F> EntityFunction for F
where
    F: Fn(&mut EntityContext) -> Result<(), OperationError> + Send + Sync + 'static,
{
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        self(ctx)
    }

    fn run_now(&self, ctx: &mut EntityContext) -> Option<Result<(), OperationError>> {
        Some(self(ctx))
    }
}

/// A class-based entity: a state type whose `impl` carries `#[entity]`. Implemented by the
/// macro; not meant to be implemented by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entity",
    label = "not an entity",
    note = "put `#[entity]` on an `impl {Self}` block that defines its operations"
)]
pub trait Entity: Send + 'static {
    /// The entity name (the type name unless `#[entity(name = "...")]` says otherwise).
    const NAME: &'static str;

    /// The typed proxy generated for this entity, over an invoker that decides whether its
    /// methods signal or call, from a client, an entity or an orchestration.
    type Proxy<I: Invoker>;

    /// Wraps an invoker into the typed proxy.
    fn proxy<I: Invoker>(invoker: I) -> Self::Proxy<I>;

    /// Runs the operation named by `ctx.operation_name()` on the state in `ctx`.
    fn dispatch(ctx: &mut EntityContext) -> BoxFuture<'_, Result<(), OperationError>>;

    /// Runs the operation at once if it is not `async` (and answers unknown operations);
    /// `None` for an `async` operation, which must go through [`dispatch`](Self::dispatch).
    fn dispatch_now(ctx: &mut EntityContext) -> Option<Result<(), OperationError>>;

    /// The version of the state's shape this code reads and writes:
    /// `#[entity(version = N)]`, 1 by default.
    const VERSION: u32 = 1;

    /// Turns a stored state of an older version `from` into a state of
    /// [`VERSION`](Self::VERSION), as JSON: `#[entity(migrate = path)]` generates it from the
    /// user's `fn(u32, serde_json::Value) -> Result<Self, String>`. The default refuses.
    fn migrate_state(from: u32, old: Value) -> Result<Value, String> {
        let _ = old;
        Err(format!(
            "entity `{}` of version {} has no `migrate` function for a state of version {from}",
            Self::NAME,
            Self::VERSION
        ))
    }
}

/// Adapts a class-based entity to [`EntityFunction`].
pub(crate) struct ClassEntity<E>(std::marker::PhantomData<fn() -> E>);

impl<E> ClassEntity<E> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

#[async_trait]
impl<E: Entity> EntityFunction for ClassEntity<E> {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        E::dispatch(ctx).await
    }

    fn run_now(&self, ctx: &mut EntityContext) -> Option<Result<(), OperationError>> {
        E::dispatch_now(ctx)
    }

    fn versioning(&self) -> Option<StateVersioning> {
        Some(StateVersioning {
            current: E::VERSION,
            migrate: E::migrate_state,
        })
    }
}

impl EntityId {
    /// The id of the entity of class-based type `E` with this key.
    pub fn of<E: Entity>(key: impl Into<String>) -> Self {
        Self::new(E::NAME, key)
    }
}
