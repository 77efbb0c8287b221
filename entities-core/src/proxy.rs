//! Typed proxies: `#[entity]` generates one proxy type per entity, generic over an
//! [`Invoker`] that decides what a method call does (signal or call, from where).

use serde_json::Value;

use crate::context::EntityContext;
use crate::error::Error;
use crate::id::EntityId;

/// Delivers the operations of a typed proxy.
pub trait Invoker {
    /// What a proxy method returns for an operation whose result type is `R`.
    type Output<R>;

    /// Sends operation `operation` with the already encoded `input`; `decode` turns the
    /// operation's JSON result into `R`.
    fn invoke<R: Send + 'static>(
        &self,
        operation: &'static str,
        input: Result<Option<Value>, Error>,
        decode: Decode<R>,
    ) -> Self::Output<R>;
}

/// Signals from inside an entity operation: sent when the operation commits.
pub struct EntitySignal<'a> {
    ctx: &'a EntityContext,
    id: EntityId,
}

impl<'a> EntitySignal<'a> {
    pub(crate) fn new(ctx: &'a EntityContext, id: EntityId) -> Self {
        Self { ctx, id }
    }
}

impl Invoker for EntitySignal<'_> {
    type Output<R> = Result<(), Error>;

    fn invoke<R: Send + 'static>(
        &self,
        operation: &'static str,
        input: Result<Option<Value>, Error>,
        _decode: Decode<R>,
    ) -> Self::Output<R> {
        self.ctx.push_signal(&self.id, operation, input?, None)
    }
}

/// Decodes an operation's JSON result.
pub(crate) type Decode<R> = fn(&Value) -> Result<R, serde_json::Error>;

/// Decodes an operation result (`None` for an operation that set none) with `decode`.
pub(crate) fn decode_with<R>(value: Option<Value>, decode: Decode<R>) -> Result<R, Error> {
    decode(value.as_ref().unwrap_or(&Value::Null)).map_err(|err| {
        Error::Serialization(format!("the operation result does not deserialize: {err}"))
    })
}

impl std::fmt::Debug for EntitySignal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntitySignal")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
