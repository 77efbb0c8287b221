//! What an entity is to the runtime: an [`EntityFunction`] run once per operation, and for
//! class-based entities (`#[entity]`) the [`Entity`] trait.

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::context::EntityContext;
use crate::error::OperationError;
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
}
