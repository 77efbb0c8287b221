//! The client's invokers of typed proxies: `Client::signal` and `Client::call` (and their
//! idempotent forms) hand a generated proxy one of these.

use futures::future::BoxFuture;
use serde_json::Value;

use super::Client;
use crate::error::Error;
use crate::id::EntityId;
use crate::proxy::{decode_with, Decode, Invoker};

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

impl std::fmt::Debug for ClientSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSignal")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCall")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
