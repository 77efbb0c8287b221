//! [`Client`]: signals, calls and reads from outside the runtime.

mod housekeeping;
mod idempotent;
mod orchestrations;
mod proxy;
mod reads;
mod schedules;

pub use self::housekeeping::CleanResult;
pub use self::orchestrations::{OrchestrationPage, OrchestrationQuery};
pub use self::reads::{EntityLock, EntityMetadata, EntityPage};

pub use self::idempotent::Idempotent;
pub(crate) use self::idempotent::{forget_keys_once, forget_old_keys};
pub use self::proxy::{ClientCall, ClientSignal};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::engine::{Command, Shared};
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::id::EntityId;
use crate::message::{to_millis_ceil, Body, Message, ReplyTo, Target, RESERVED_PREFIX};
use crate::store::Batch;

/// The client of a runtime: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
}

impl Client {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A typed proxy whose methods signal the entity `E` with `key`; each resolves once the
    /// signal is durably stored.
    pub fn signal<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<ClientSignal> {
        E::proxy(ClientSignal::new(self.clone(), EntityId::of::<E>(key)))
    }

    /// A typed proxy whose methods call the entity `E` with `key` and resolve with the result.
    pub fn call<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<ClientCall> {
        E::proxy(ClientCall::new(self.clone(), EntityId::of::<E>(key)))
    }

    /// Signals an entity; resolves once the signal is durably stored.
    pub async fn signal_entity<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<()> {
        let input = crate::json::to_value(input)?;
        self.send_signal(id, operation, Some(input), None).await
    }

    /// Signals an entity, delivered at or after `at`; resolves once durably stored.
    pub async fn signal_entity_at<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
        at: SystemTime,
    ) -> Result<()> {
        let input = crate::json::to_value(input)?;
        self.send_signal(id, operation, Some(input), Some(at)).await
    }

    /// Calls an entity operation and waits for its result.
    pub async fn call_entity<R: DeserializeOwned, I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<R> {
        let input = crate::json::to_value(input)?;
        let value = self.send_call(id, operation, Some(input)).await?;
        crate::proxy::decode_with(value, |v| R::deserialize(v))
    }

    /// Signals an entity with an input given as JSON, or with no input (`None`); resolves
    /// once the signal is durably stored. For bridges such as the HTTP API.
    pub async fn signal_entity_raw(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<()> {
        let input = input.map(|v| crate::json::to_value(&v)).transpose()?;
        self.send_signal(id, operation, input, None).await
    }

    /// Calls an entity operation with an input given as JSON, or with no input (`None`), and
    /// returns its result as JSON (`None` when the operation sets none). For bridges such as
    /// the HTTP API.
    pub async fn call_entity_raw(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<Option<Value>> {
        let input = input.map(|v| crate::json::to_value(&v)).transpose()?;
        self.send_call(id, operation, input).await
    }

    /// Whether the runtime has stopped: every send then fails with [`Error::Shutdown`].
    pub fn is_shut_down(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst) || self.shared.commands.is_closed()
    }

    /// Refuses a send to an unregistered entity name or of a reserved operation.
    pub(crate) fn check_send(&self, id: &EntityId, operation: &str) -> Result<()> {
        self.shared.registry.check_entity(id)?;
        check_operation_name(operation)
    }

    pub(crate) async fn send_signal(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
        at: Option<SystemTime>,
    ) -> Result<()> {
        self.check_send(id, operation)?;
        let message = operation_message(
            self.shared.next_message_id(),
            id,
            operation,
            input,
            None,
            at.map(to_millis_ceil),
        );
        self.store_and_deliver(vec![message], None).await
    }

    pub(crate) async fn send_call(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<Option<Value>> {
        self.check_send(id, operation)?;
        self.send_call_unchecked(id, operation, input).await
    }

    /// Calls an operation, reserved names included.
    async fn send_call_unchecked(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<Option<Value>> {
        let message_id = self.shared.next_message_id();
        let reply = Some(ReplyTo::Client(message_id));
        let message = operation_message(message_id, id, operation, input, reply, None);
        let (tx, rx) = oneshot::channel();
        self.store_and_deliver(vec![message], Some((message_id, tx)))
            .await?;
        match rx.await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::Shutdown),
        }
    }

    /// Stores messages durably and hands them to the engine; resolves once they are stored.
    pub(crate) async fn store_and_deliver(
        &self,
        messages: Vec<Message>,
        waiter: Option<(u64, oneshot::Sender<crate::message::CallReply>)>,
    ) -> Result<()> {
        let batch = Batch {
            produced: messages,
            ..Batch::default()
        };
        self.commit_and_deliver(batch, waiter).await
    }

    /// Has a batch committed durably and its messages delivered; resolves once it is
    /// committed.
    ///
    /// A batch of messages only goes to the engine, whose next batch stores the messages
    /// together with whatever it does with them: a message consumed in that batch is never
    /// written, only its effects are. A batch creating an instance is committed first, since
    /// it alone may fail by itself (the id is taken); its messages are delivered after.
    pub(crate) async fn commit_and_deliver(
        &self,
        batch: Batch,
        waiter: Option<(u64, oneshot::Sender<crate::message::CallReply>)>,
    ) -> Result<()> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        let send = |command| {
            self.shared
                .commands
                .send(command)
                .map_err(|_| Error::Shutdown)
        };
        if !batch.instances.is_empty()
            || !batch.consumed.is_empty()
            || !batch.entities.is_empty()
            || batch.keys_binding_since.is_some()
        {
            // The waiter first: a reply may come from another process as soon as it commits.
            if waiter.is_some() {
                send(Command::Deliver {
                    messages: Vec::new(),
                    waiter,
                    stored: None,
                    keys: Vec::new(),
                })?;
            }
            // Boxed: every pending send holds this future, and this rare path is large.
            let batch = Box::pin(self.commit_waiting_out(batch)).await?;
            return send(Command::Deliver {
                messages: batch.produced,
                waiter: None,
                stored: None,
                keys: Vec::new(),
            });
        }
        // Messages held by the engine until stored are bounded: past the bound, wait here. The
        // engine gives the permits back once they are stored (or failed).
        let permits = batch.produced.len().clamp(1, self.shared.intake_bound) as u32;
        let permit = self
            .shared
            .intake
            .acquire_many(permits)
            .await
            .map_err(|_| Error::Shutdown)?;
        let (tx, done) = oneshot::channel();
        send(Command::Deliver {
            messages: batch.produced,
            waiter,
            stored: Some(crate::engine::Stored::new(tx, permits)),
            keys: batch.keys,
        })?;
        permit.forget();
        match done.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Error::Shutdown),
        }
    }
}

impl Client {
    /// Commits `batch` directly, making it again while the store fails without applying it
    /// (its partition moved, the database cannot be reached), for at most the store's
    /// `unavailable_timeout`.
    async fn commit_waiting_out(&self, batch: Batch) -> Result<Batch> {
        let deadline = tokio::time::Instant::now() + self.shared.store.unavailable_timeout();
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.shared.store.commit(batch.clone()).await {
                Err(err)
                    if crate::engine::resendable(&err)
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(error = %err, "a client commit is made again");
                }
                other => return Ok(other?),
            }
            if self.is_shut_down() {
                return Err(Error::Shutdown);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }
}

/// The message of a client's operation `operation` on `id`: a signal without `reply`, a call
/// with one.
pub(crate) fn operation_message(
    message_id: crate::message::MessageId,
    id: &EntityId,
    operation: &str,
    input: Option<Value>,
    reply: Option<ReplyTo>,
    deliver_at: Option<u64>,
) -> Message {
    Message {
        id: message_id,
        target: Target::Entity(id.clone()),
        deliver_at,
        body: Body::Operation {
            name: operation.to_string(),
            input,
            reply,
            sender: None,
        },
    }
}

/// Refuses the operation names reserved for the runtime.
fn check_operation_name(operation: &str) -> Result<()> {
    if operation.starts_with(RESERVED_PREFIX) {
        return Err(Error::ReservedOperation(operation.to_string()));
    }
    Ok(())
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}
