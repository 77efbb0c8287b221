//! Idempotent sends (see [`Client::idempotent`]): a send that claims a key is applied once per
//! key within the retention window, however often it is retried. What a key stores is in
//! [`crate::keys`].
//!
//! The key is stored in the commit that stores the send (or, for a signal or call consumed in
//! the batch that takes it in, its effects), so a process killed after the send was stored but
//! before it heard back finds the key after its restart and does not send again. A call's
//! answer becomes the key's outcome in the commit of the operation, so a retried call returns
//! the first call's result. Within one process, sends of one key wait for each other; a
//! retry that finds the key of a call not answered yet waits for the answer.
//!
//! On a store shared by several processes the claim is exclusive
//! ([`Batch::keys_binding_since`]): the send commits on its own, and the store refuses it if
//! another process claimed the key first. The refused send then answers what the first one
//! did, as a retry would.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::proxy::{ClientCall, ClientSignal};
use super::{operation_message, Client};
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::id::EntityId;
use crate::keys::{claim, other_kind, request_of, Bound, KeyOutcome, Stored, MAX_KEY_LEN};
use crate::message::{CallReply, ReplyTo};
use crate::store::Batch;

/// How often a retried call looks for the answer of the first one.
const ANSWER_POLL: Duration = Duration::from_millis(10);

/// A client whose sends claim one idempotency key: the first send is applied, and a second
/// one with the same key within the retention window
/// ([`RuntimeBuilder::idempotency_retention`](crate::RuntimeBuilder::idempotency_retention),
/// default 24 hours) is not. A second signal returns `Ok`, a second call the first call's
/// result, a second start the first instance's id. From [`Client::idempotent`].
///
/// A key belongs to one send: reusing it for another kind of send (a call after a signal) is
/// an [`Error::IdempotencyKey`]; reusing it for another entity or operation returns what the
/// first send returned.
#[derive(Clone)]
pub struct Idempotent {
    client: Client,
    key: String,
}

impl Client {
    /// A client whose sends are applied once per `key` (see [`Idempotent`]).
    pub fn idempotent(&self, key: impl Into<String>) -> Idempotent {
        Idempotent {
            client: self.clone(),
            key: key.into(),
        }
    }
}

impl Idempotent {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A typed proxy whose methods signal the entity `E` with `key`, once per idempotency key.
    pub fn signal<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<ClientSignal> {
        E::proxy(ClientSignal::keyed(
            self.client.clone(),
            EntityId::of::<E>(key),
            self.key.clone(),
        ))
    }

    /// A typed proxy whose methods call the entity `E` with `key`, once per idempotency key.
    pub fn call<E: Entity>(&self, key: impl Into<String>) -> E::Proxy<ClientCall> {
        E::proxy(ClientCall::keyed(
            self.client.clone(),
            EntityId::of::<E>(key),
            self.key.clone(),
        ))
    }

    /// Signals an entity, once per key; resolves once the signal (or the key of an earlier
    /// one) is durably stored.
    pub async fn signal_entity<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<()> {
        let input = crate::json::to_value(input)?;
        self.client
            .signal_keyed(&self.key, id, operation, Some(input))
            .await
    }

    /// Signals an entity with a JSON input (or none), once per key.
    pub async fn signal_entity_raw(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<()> {
        let input = input.map(|v| crate::json::to_value(&v)).transpose()?;
        self.client
            .signal_keyed(&self.key, id, operation, input)
            .await
    }

    /// Calls an entity operation, once per key: a retry returns the first call's result.
    pub async fn call_entity<R: DeserializeOwned, I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<R> {
        let input = crate::json::to_value(input)?;
        let value = self
            .client
            .call_keyed(&self.key, id, operation, Some(input))
            .await?;
        crate::proxy::decode_with(value, |v| R::deserialize(v))
    }

    /// Calls an entity operation with a JSON input (or none), once per key; returns its JSON
    /// result.
    pub async fn call_entity_raw(
        &self,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<Option<Value>> {
        let input = input.map(|v| crate::json::to_value(&v)).transpose()?;
        self.client
            .call_keyed(&self.key, id, operation, input)
            .await
    }

    /// Starts an orchestration with a new instance id, once per key: a retry returns the
    /// first instance's id.
    pub async fn start_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
    ) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.start_orchestration_with_id(name, &id, input).await
    }

    /// Starts an orchestration under a chosen instance id, once per key: a retry returns the
    /// first instance's id (an id in use by another start is an error, as without a key).
    pub async fn start_orchestration_with_id<I: Serialize + ?Sized>(
        &self,
        name: &str,
        instance_id: &str,
        input: &I,
    ) -> Result<String> {
        let input = crate::json::to_value(input)?;
        let client = &self.client;
        client.check_start(name, instance_id)?;
        let _held = client.shared.key_locks.lock(&self.key).await;
        let request = request_of("start of", &format!("orchestration `{name}`"), Some(&input));
        match client.retained(&self.key, &request).await? {
            Some(KeyOutcome::Started(first)) => return Ok(first),
            Some(_) => return Err(other_kind(&self.key)),
            None => {}
        }
        let claim = claim(
            &self.key,
            &request,
            KeyOutcome::Started(instance_id.to_string()),
            client.shared.now_millis(),
        );
        let binding = client.keys_binding_since();
        match client
            .start_with_keys(name, instance_id, input, vec![claim], binding)
            .await
        {
            // Another process may have claimed the key meanwhile: its instance is the answer.
            Err(Error::InstanceExists(id)) if binding.is_some() => {
                match client.retained(&self.key, &request).await? {
                    Some(KeyOutcome::Started(first)) => Ok(first),
                    _ => Err(Error::InstanceExists(id)),
                }
            }
            other => other,
        }
    }
}

impl Client {
    /// On a store shared by several processes, the time from which a stored key still binds:
    /// claims are then decided by the store, in the commit that stores the send. `None` on a
    /// store of one process, where the key locks of this process decide.
    fn keys_binding_since(&self) -> Option<u64> {
        self.shared.store.partitioned()?;
        let retention = u64::try_from(self.shared.key_retention.as_millis()).unwrap_or(u64::MAX);
        Some(self.shared.now_millis().saturating_sub(retention))
    }

    /// Commits a send that claims `key` (its batch), or, if another process claimed the key
    /// first, returns what came of that send. `Ok(None)`: this send was stored.
    async fn claim_and_send(
        &self,
        key: &str,
        request: &str,
        mut batch: Batch,
        waiter: Option<(u64, oneshot::Sender<CallReply>)>,
    ) -> Result<Option<KeyOutcome>> {
        batch.keys_binding_since = self.keys_binding_since();
        let shared = batch.keys_binding_since.is_some();
        match self.commit_and_deliver(batch, waiter).await {
            Ok(()) => Ok(None),
            Err(Error::Store(err)) if shared && err.is_conflict() => {
                match self.retained(key, request).await? {
                    Some(first) => Ok(Some(first)),
                    // Forgotten at once: the claim found a key that is gone now.
                    None => Err(Error::Store(err)),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// What came of the send that claimed `key` within the retention window, if one did; an
    /// [`Error::IdempotencyMismatch`] if that send was another request than `request`.
    async fn retained(&self, key: &str, request: &str) -> Result<Option<KeyOutcome>> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Error::IdempotencyKey {
                key: key.chars().take(64).collect(),
                reason: format!("a key has 1 to {MAX_KEY_LEN} bytes"),
            });
        }
        let Some(stored) = self.shared.store.idempotency_key(key).await? else {
            return Ok(None);
        };
        let retention = u64::try_from(self.shared.key_retention.as_millis()).unwrap_or(u64::MAX);
        if stored.created.saturating_add(retention) <= self.shared.now_millis() {
            return Ok(None); // past its window: not forgotten yet, but no longer binding
        }
        let stored: Stored = serde_json::from_value(stored.outcome).map_err(|err| {
            Error::Store(crate::error::StoreError::new(format!(
                "the stored outcome of idempotency key `{key}` cannot be decoded: {err}"
            )))
        })?;
        let (first, outcome) = match stored {
            Stored::Bound(Bound { request, outcome }) => (Some(request), outcome),
            Stored::Unbound(outcome) => (None, outcome),
        };
        // Keys stored before they were bound to requests are checked by kind only.
        let same = match &first {
            Some(first) => first == request,
            None => request.split(' ').next() == Some(outcome.send()),
        };
        if !same {
            return Err(Error::IdempotencyMismatch {
                key: key.to_string(),
                first: first.unwrap_or_else(|| outcome.kind().into()),
            });
        }
        Ok(Some(outcome))
    }

    /// Signals `operation` to `id` unless `key` was claimed already.
    pub(crate) async fn signal_keyed(
        &self,
        key: &str,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<()> {
        self.check_send(id, operation)?;
        let request = request_of("signal", &format!("{id} `{operation}`"), input.as_ref());
        let _held = self.shared.key_locks.lock(key).await;
        if self.retained(key, &request).await?.is_some() {
            return Ok(());
        }
        let message_id = self.shared.next_message_id();
        let message = operation_message(message_id, id, operation, input, None, None);
        let batch = Batch {
            produced: vec![message],
            keys: vec![claim(
                key,
                &request,
                KeyOutcome::Signalled,
                self.shared.now_millis(),
            )],
            ..Batch::default()
        };
        self.claim_and_send(key, &request, batch, None).await?;
        Ok(())
    }

    /// Calls `operation` on `id` unless `key` was claimed already; then returns the first
    /// call's answer (waiting for it if the operation has not run yet).
    pub(crate) async fn call_keyed(
        &self,
        key: &str,
        id: &EntityId,
        operation: &str,
        input: Option<Value>,
    ) -> Result<Option<Value>> {
        self.check_send(id, operation)?;
        let request = request_of("call", &format!("{id} `{operation}`"), input.as_ref());
        let held = self.shared.key_locks.lock(key).await;
        match self.retained(key, &request).await? {
            Some(KeyOutcome::Called(answer)) => {
                drop(held);
                return self.answer_of(key, &request, answer).await;
            }
            Some(_) => return Err(other_kind(key)),
            None => {}
        }
        let message_id = self.shared.next_message_id();
        let reply = Some(ReplyTo::Keyed {
            waiter: message_id,
            key: key.to_string(),
            request: Some(request.clone()),
        });
        let message = operation_message(message_id, id, operation, input, reply, None);
        let batch = Batch {
            produced: vec![message],
            keys: vec![claim(
                key,
                &request,
                KeyOutcome::Called(None),
                self.shared.now_millis(),
            )],
            ..Batch::default()
        };
        let (tx, rx) = oneshot::channel();
        match self
            .claim_and_send(key, &request, batch, Some((message_id, tx)))
            .await?
        {
            None => {}
            Some(KeyOutcome::Called(answer)) => {
                drop(held);
                return self.answer_of(key, &request, answer).await;
            }
            Some(_) => return Err(other_kind(key)),
        }
        drop(held);
        match rx.await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::Shutdown),
        }
    }

    /// The answer of the call that claimed `key`: `answer` if it is known, else once the
    /// operation has run (it is stored, so a runtime runs it).
    async fn answer_of(
        &self,
        key: &str,
        request: &str,
        mut answer: Option<CallReply>,
    ) -> Result<Option<Value>> {
        loop {
            if let Some(reply) = answer {
                return Ok(reply?);
            }
            if self.is_shut_down() {
                return Err(Error::Shutdown);
            }
            tokio::time::sleep(ANSWER_POLL).await;
            answer = match self.retained(key, request).await? {
                Some(KeyOutcome::Called(answer)) => answer,
                Some(_) => return Err(other_kind(key)),
                // Forgotten meanwhile (a retention shorter than the call took).
                None => {
                    return Err(Error::IdempotencyKey {
                        key: key.to_string(),
                        reason: "its call's answer was forgotten before it was read".into(),
                    })
                }
            };
        }
    }
}

/// Deletes the keys past their retention window, every quarter of it (between 50 ms and one
/// minute), until the runtime stops.
pub(crate) async fn forget_old_keys(client: Client) {
    let every =
        (client.shared.key_retention / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        if client.is_shut_down() {
            return;
        }
        forget_keys_once(&client).await;
    }
}

/// Deletes the keys past their retention window at the clock's time.
pub(crate) async fn forget_keys_once(client: &Client) {
    let retention_ms = u64::try_from(client.shared.key_retention.as_millis()).unwrap_or(u64::MAX);
    let batch = Batch {
        forget_keys_before: Some(client.shared.now_millis().saturating_sub(retention_ms)),
        ..Batch::default()
    };
    if let Err(err) = client.shared.store.commit(batch).await {
        tracing::warn!(error = %err, "forgetting old idempotency keys failed; it runs again later");
    }
}

impl std::fmt::Debug for Idempotent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotent")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
