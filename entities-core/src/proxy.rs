//! Typed proxies: `#[entity]` generates one proxy type per entity, generic over an
//! [`Invoker`] that decides what a method call does (signal or call, from where).

use futures::future::BoxFuture;
use serde_json::Value;

use crate::client::Client;
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

/// Signals from a client; each method's future resolves once the signal is durably stored.
pub struct ClientSignal {
    client: Client,
    id: EntityId,
    /// The idempotency key each signal claims, if any.
    key: Option<String>,
}

impl ClientSignal {
    pub(crate) fn new(client: Client, id: EntityId) -> Self {
        Self {
            client,
            id,
            key: None,
        }
    }

    pub(crate) fn keyed(client: Client, id: EntityId, key: String) -> Self {
        Self {
            client,
            id,
            key: Some(key),
        }
    }
}

impl Invoker for ClientSignal {
    type Output<R> = BoxFuture<'static, Result<(), Error>>;

    fn invoke<R: Send + 'static>(
        &self,
        operation: &'static str,
        input: Result<Option<Value>, Error>,
        _decode: Decode<R>,
    ) -> Self::Output<R> {
        let client = self.client.clone();
        let id = self.id.clone();
        let key = self.key.clone();
        Box::pin(async move {
            match key {
                None => client.send_signal(&id, operation, input?, None).await,
                Some(key) => client.signal_keyed(&key, &id, operation, input?).await,
            }
        })
    }
}

/// Calls from a client; each method's future resolves with the operation's result.
pub struct ClientCall {
    client: Client,
    id: EntityId,
    /// The idempotency key each call claims, if any.
    key: Option<String>,
}

impl ClientCall {
    pub(crate) fn new(client: Client, id: EntityId) -> Self {
        Self {
            client,
            id,
            key: None,
        }
    }

    pub(crate) fn keyed(client: Client, id: EntityId, key: String) -> Self {
        Self {
            client,
            id,
            key: Some(key),
        }
    }
}

impl Invoker for ClientCall {
    type Output<R> = BoxFuture<'static, Result<R, Error>>;

    fn invoke<R: Send + 'static>(
        &self,
        operation: &'static str,
        input: Result<Option<Value>, Error>,
        decode: Decode<R>,
    ) -> Self::Output<R> {
        let client = self.client.clone();
        let id = self.id.clone();
        let key = self.key.clone();
        Box::pin(async move {
            let value = match key {
                None => client.send_call(&id, operation, input?).await?,
                Some(key) => client.call_keyed(&key, &id, operation, input?).await?,
            };
            decode_with(value, decode)
        })
    }
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
pub type Decode<R> = fn(&Value) -> Result<R, serde_json::Error>;

/// Decodes an operation result (`None` for an operation that set none) with `decode`.
pub(crate) fn decode_with<R>(value: Option<Value>, decode: Decode<R>) -> Result<R, Error> {
    decode(value.as_ref().unwrap_or(&Value::Null)).map_err(|err| {
        Error::Serialization(format!("the operation result does not deserialize: {err}"))
    })
}
