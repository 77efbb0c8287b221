//! [`Client`]: signals, calls and reads from outside the runtime.

mod idempotent;
mod proxy;
mod schedules;

pub(crate) use self::idempotent::forget_old_keys;
pub use self::idempotent::Idempotent;
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
use crate::inspect::{RecentFailure, WaitingOperation};
use crate::message::{
    from_millis, now_millis, to_millis, to_millis_ceil, Body, Message, ReplyTo, Target,
    RESERVED_PREFIX, SET_STATE_OPERATION,
};
use crate::orchestration::OrchestrationStatus;
use crate::store::{
    Batch, EntityQuery, EntityRecord, InstanceQuery, InstanceRecord, InstanceWrite, RuntimeStatus,
};

/// An entity's committed state with its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityMetadata<T> {
    /// The entity.
    pub id: EntityId,
    /// Its last committed state.
    pub state: T,
    /// When its state was last written.
    pub last_modified: SystemTime,
    /// The orchestration instance holding its lock, if any.
    pub locked_by: Option<String>,
    /// How many messages wait for it in the store.
    pub pending_messages: u64,
}

impl<T> EntityMetadata<T> {
    fn from_record(record: EntityRecord, state: T) -> Self {
        Self {
            id: record.id,
            state,
            last_modified: from_millis(record.last_modified),
            locked_by: record.lock_owner,
            pending_messages: record.pending_messages,
        }
    }
}

/// One page of [`Client::query_entities`].
#[derive(Clone, Debug)]
pub struct EntityPage {
    /// The entities of this page; `state` is `None` when the query excluded states or the
    /// entity has none.
    pub entities: Vec<EntityMetadata<Option<Value>>>,
    /// Pass as `EntityQuery::continuation` for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// What [`Client::clean_entity_storage`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanResult {
    /// Entity rows removed (no state, no lock, no pending message).
    pub removed_entities: u64,
    /// Locks released because their orchestration had ended.
    pub released_locks: u64,
}

/// A query over orchestration instances (see [`Client::query_orchestrations`]). Every filter
/// left `None` matches every instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrchestrationQuery {
    /// Only instances of this orchestration name.
    pub name: Option<String>,
    /// Only instances with this status.
    pub status: Option<RuntimeStatus>,
    /// Only instances created at or after this time.
    pub created_from: Option<SystemTime>,
    /// Only instances created before this time.
    pub created_to: Option<SystemTime>,
    /// Only instances that have ended (completed, failed or terminated), last updated
    /// before this time; running instances never match.
    pub ended_before: Option<SystemTime>,
    /// Instances per page (at least 1). For [`Client::purge_orchestrations`], how many
    /// instances one store transaction deletes.
    pub page_size: usize,
    /// The `continuation` of the previous page.
    pub continuation: Option<String>,
}

impl Default for OrchestrationQuery {
    fn default() -> Self {
        Self {
            name: None,
            status: None,
            created_from: None,
            created_to: None,
            ended_before: None,
            page_size: 100,
            continuation: None,
        }
    }
}

/// One page of [`Client::query_orchestrations`], in creation order.
#[derive(Clone, Debug)]
pub struct OrchestrationPage {
    /// The instances of this page.
    pub instances: Vec<OrchestrationStatus>,
    /// Pass as `OrchestrationQuery::continuation` for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// A locked entity and the orchestration instance holding its lock (see [`Client::locks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityLock {
    /// The locked entity.
    pub id: EntityId,
    /// The orchestration instance holding the lock.
    pub owner: String,
    /// The operations and lock requests queued behind the lock in this process, oldest first (at most the first 100).
    /// With several processes, only the process that owns the entity's partition sees them.
    pub waiting: Vec<WaitingOperation>,
}

/// The store's form of a client's instance query.
fn instance_query(query: OrchestrationQuery) -> InstanceQuery {
    InstanceQuery {
        name: query.name,
        status: query.status,
        created_from: query.created_from.map(to_millis),
        created_to: query.created_to.map(to_millis_ceil),
        ended_before: query.ended_before.map(to_millis_ceil),
        page_size: query.page_size.max(1),
        continuation: query.continuation,
    }
}

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

    /// The last committed state of the entity `E` with `key`, or `None` if it has no state.
    pub async fn get_entity<E: Entity + DeserializeOwned>(
        &self,
        key: impl Into<String>,
    ) -> Result<Option<EntityMetadata<E>>> {
        let id = EntityId::of::<E>(key);
        let Some(meta) = self.get_entity_raw(&id).await? else {
            return Ok(None);
        };
        let state = E::deserialize(&meta.state).map_err(|err| {
            Error::Serialization(format!(
                "the state of {id} does not deserialize into `{}`: {err}",
                std::any::type_name::<E>()
            ))
        })?;
        Ok(Some(EntityMetadata {
            id: meta.id,
            state,
            last_modified: meta.last_modified,
            locked_by: meta.locked_by,
            pending_messages: meta.pending_messages,
        }))
    }

    /// The last committed state of an entity as JSON, with its lock holder and the number of
    /// messages waiting for it; `None` if it has no state. A state stored by an older version
    /// of a versioned entity (`#[entity(version = N, migrate = ..)]`) is returned migrated;
    /// one that cannot be migrated, or is newer than the code, is an
    /// [`Error::StateVersion`].
    pub async fn get_entity_raw(&self, id: &EntityId) -> Result<Option<EntityMetadata<Value>>> {
        let Some(mut record) = self.shared.store.read_entity(id).await? else {
            return Ok(None);
        };
        self.shared.registry.upgrade_record(&mut record)?;
        let Some(state) = record.state.take() else {
            return Ok(None);
        };
        Ok(Some(EntityMetadata::from_record(record, state)))
    }

    /// Lists stored entities by name and key prefix, one page at a time. States of versioned
    /// entities are returned migrated, as by [`get_entity_raw`](Self::get_entity_raw); a page
    /// holding a state that cannot be migrated fails with [`Error::StateVersion`].
    pub async fn query_entities(&self, query: EntityQuery) -> Result<EntityPage> {
        let mut query = query;
        query.name = query.name.map(|n| n.to_lowercase());
        query.page_size = query.page_size.max(1);
        let mut page = self.shared.store.query_entities(&query).await?;
        for record in &mut page.entities {
            self.shared.registry.upgrade_record(record)?;
        }
        Ok(EntityPage {
            entities: page
                .entities
                .into_iter()
                .map(|mut record| {
                    let state = record.state.take();
                    EntityMetadata::from_record(record, state)
                })
                .collect(),
            continuation: page.continuation,
        })
    }

    /// Lists orchestration instances by name, status and creation time, one page at a time,
    /// in creation order.
    pub async fn query_orchestrations(
        &self,
        query: OrchestrationQuery,
    ) -> Result<OrchestrationPage> {
        let query = instance_query(query);
        let page = self.shared.store.query_instances(&query).await?;
        Ok(OrchestrationPage {
            instances: page
                .instances
                .into_iter()
                .map(OrchestrationStatus::from_record)
                .collect(),
            continuation: page.continuation,
        })
    }

    /// Purges every ended instance (completed, failed or terminated) that `query` selects by
    /// name, status, creation time and end time ([`OrchestrationQuery::ended_before`]), with
    /// its history, and returns how many it purged. Running instances are never purged,
    /// whatever the query says. It deletes `page_size` instances per store transaction, so
    /// that it neither holds everything in memory nor holds back the runtime's commits;
    /// `continuation` is ignored. Purged instances are gone from every read, and their ids
    /// can be used again.
    pub async fn purge_orchestrations(&self, query: OrchestrationQuery) -> Result<u64> {
        let query = InstanceQuery {
            continuation: None,
            ..instance_query(query)
        };
        let limit = query.page_size as u64;
        let mut purged = 0;
        loop {
            let n = self.shared.store.purge_instances(&query).await?;
            purged += n;
            if n < limit {
                return Ok(purged);
            }
        }
    }

    /// The history of an orchestration instance: its recorded events as JSON, in order;
    /// `None` if the instance does not exist.
    pub async fn orchestration_history(&self, instance_id: &str) -> Result<Option<Vec<Value>>> {
        if self
            .shared
            .store
            .read_instance(instance_id)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(self.shared.store.read_history(instance_id).await?))
    }

    /// The entities whose lock is held by a critical section, with the instance holding each,
    /// by name then key.
    /// Each comes with the operations its lock holds back (see [`EntityLock::waiting`]).
    pub async fn locks(&self) -> Result<Vec<EntityLock>> {
        let locked = self.shared.store.locked_entities().await?;
        let (tx, rx) = oneshot::channel();
        let ids = locked.iter().map(|lock| lock.id.clone()).collect();
        let sent = self
            .shared
            .commands
            .send(Command::HeldBack { ids, reply: tx });
        // A runtime shut down has nothing queued: the locks are listed as stored.
        let mut waiting = match sent {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
        .into_iter();
        Ok(locked
            .into_iter()
            .map(|lock| EntityLock {
                id: lock.id,
                owner: lock.owner,
                waiting: waiting.next().unwrap_or_default(),
            })
            .collect())
    }

    /// How many entities of each name have a state, ordered by name.
    pub async fn entity_counts(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.shared.store.count_entities().await?)
    }

    /// The counts the store keeps: instances by status, locked entities, stored and scheduled
    /// messages.
    pub async fn store_stats(&self) -> Result<crate::store::StoreStats> {
        Ok(self.shared.store.stats().await?)
    }

    /// The entity operations that failed lately in this process (at most 100), newest first:
    /// signalled operations whose error nobody else saw, and failed calls.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        self.shared.failures.newest_first()
    }

    /// Reads the counts only the store knows (orchestrations by status, locked entities,
    /// scheduled backlog, stored messages) and sets their gauges (see [`crate::metrics`]).
    /// The HTTP API calls it at each scrape of `/metrics`.
    pub async fn record_store_metrics(&self) -> Result<()> {
        let stats = self.shared.store.stats().await?;
        crate::metrics::store_gauges(&stats);
        Ok(())
    }

    /// Replaces an entity's state, for operators repairing data; resolves once it is applied
    /// and committed.
    ///
    /// It runs as an operation in the entity's own queue: after the operations queued before
    /// it and before those queued after it, never at the same time as one; while an
    /// orchestration holds the entity's lock, it waits for the lock like any operation. An
    /// entity whose stored state cannot be decoded is refused (its lock could not be kept).
    pub async fn set_entity_state<S: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        state: &S,
    ) -> Result<()> {
        let state = crate::json::to_value(state)?;
        self.shared.registry.check_entity(id)?;
        self.send_call_unchecked(id, SET_STATE_OPERATION, Some(state))
            .await
            .map(drop)
    }

    /// The stored messages that could not be decoded (bit rot, a manual edit) and were set
    /// aside instead of stopping the runtime, with their stored text and the decode error.
    pub async fn set_aside_messages(&self) -> Result<Vec<crate::store::SetAsideMessage>> {
        Ok(self.shared.store.set_aside_messages().await?)
    }

    /// Removes stored entities that have no state, no lock and no pending message, and
    /// releases locks held by orchestrations that have ended.
    pub async fn clean_entity_storage(&self) -> Result<CleanResult> {
        let released_locks = self.release_orphaned_locks().await?;
        let removed_entities = self.shared.store.delete_empty_entities().await?;
        Ok(CleanResult {
            removed_entities,
            released_locks,
        })
    }

    /// Sends release messages for locks whose owner instance has ended or does not exist.
    async fn release_orphaned_locks(&self) -> Result<u64> {
        let mut released = 0;
        let mut query = EntityQuery {
            include_state: false,
            include_stateless: true,
            page_size: 1000,
            ..EntityQuery::default()
        };
        loop {
            let page = self.shared.store.query_entities(&query).await?;
            let mut messages = Vec::new();
            for record in &page.entities {
                let Some(owner) = &record.lock_owner else {
                    continue;
                };
                let ended = match self.shared.store.read_instance(owner).await? {
                    None => true,
                    Some(instance) => instance.status.is_terminal(),
                };
                if ended {
                    messages.push(Message {
                        id: self.shared.next_message_id(),
                        target: Target::Entity(record.id.clone()),
                        deliver_at: None,
                        body: Body::Release {
                            owner: owner.clone(),
                        },
                    });
                }
            }
            released += messages.len() as u64;
            if !messages.is_empty() {
                self.store_and_deliver(messages, None).await?;
            }
            match page.continuation {
                Some(next) => query.continuation = Some(next),
                None => break,
            }
        }
        Ok(released)
    }

    /// Starts an orchestration with a new instance id; returns the id.
    pub async fn start_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
    ) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.start_orchestration_with_id(name, &id, input).await
    }

    /// Starts an orchestration under a chosen instance id; an id in use is an error.
    pub async fn start_orchestration_with_id<I: Serialize + ?Sized>(
        &self,
        name: &str,
        instance_id: &str,
        input: &I,
    ) -> Result<String> {
        self.check_start(name, instance_id)?;
        let input = crate::json::to_value(input)?;
        self.start_with_keys(name, instance_id, input, Vec::new(), None)
            .await
    }

    /// Refuses a start of an unknown orchestration or with an empty instance id.
    pub(crate) fn check_start(&self, name: &str, instance_id: &str) -> Result<()> {
        if !self.shared.registry.has_orchestration(name) {
            return Err(Error::UnknownFunction {
                kind: "orchestration",
                name: name.to_string(),
            });
        }
        if instance_id.is_empty() {
            return Err(Error::Config("an instance id cannot be empty".into()));
        }
        Ok(())
    }

    /// Starts an instance (name and id checked by the caller, see [`Client::check_start`])
    /// whose commit also stores `keys`.
    pub(crate) async fn start_with_keys(
        &self,
        name: &str,
        instance_id: &str,
        input: Value,
        keys: Vec<crate::store::IdempotencyKey>,
        keys_binding_since: Option<u64>,
    ) -> Result<String> {
        let now = now_millis();
        // The record is written with the start message, so that the id is taken at once.
        let record = InstanceRecord {
            id: instance_id.to_string(),
            name: name.to_string(),
            status: RuntimeStatus::Running,
            input: input.clone(),
            output: None,
            created: now,
            updated: now,
        };
        let message = Message {
            id: self.shared.next_message_id(),
            target: Target::Instance(instance_id.to_string()),
            deliver_at: None,
            body: Body::Start {
                name: name.to_string(),
                input,
                parent: None,
            },
        };
        let batch = Batch {
            produced: vec![message],
            instances: vec![InstanceWrite {
                record,
                first_event: 0,
                events: Vec::new(),
                create: true,
                restart: false,
            }],
            keys,
            keys_binding_since,
            ..Batch::default()
        };
        match self.commit_and_deliver(batch, None).await {
            Err(Error::Store(err)) if err.is_conflict() => {
                return Err(Error::InstanceExists(instance_id.to_string()));
            }
            other => other?,
        }
        Ok(instance_id.to_string())
    }

    /// The status of an instance, or `None` if it does not exist (or has not started yet).
    pub async fn orchestration_status(
        &self,
        instance_id: &str,
    ) -> Result<Option<OrchestrationStatus>> {
        Ok(self
            .shared
            .store
            .read_instance(instance_id)
            .await?
            .map(OrchestrationStatus::from_record))
    }

    /// Waits until the instance has ended (completed, failed or terminated), at most `timeout`.
    pub async fn wait_for_orchestration(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<OrchestrationStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            self.shared
                .commands
                .send(Command::WatchInstance {
                    id: instance_id.to_string(),
                    done: tx,
                })
                .map_err(|_| Error::Shutdown)?;
            if let Some(status) = self.orchestration_status(instance_id).await? {
                if status.status.is_terminal() {
                    return Ok(status);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(timeout));
            }
            // The engine sends the final record once it is committed; the store is read again
            // now and then regardless, in case the end committed before the watch was set.
            let wait = (deadline - now).min(Duration::from_millis(200));
            if let Ok(Ok(record)) = tokio::time::timeout(wait, rx).await {
                return Ok(OrchestrationStatus::from_record(record));
            }
        }
    }

    /// Raises an external event on an instance (`ctx.wait_for_event(name)` receives it).
    pub async fn raise_event<D: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        name: &str,
        data: &D,
    ) -> Result<()> {
        let data = crate::json::to_value(data)?;
        self.send_to_instance(
            instance_id,
            Body::Event {
                name: name.to_string(),
                data,
            },
        )
        .await
    }

    /// Terminates a running instance: it ends at once with status `Terminated`, and its locks
    /// are released. Terminating an ended instance does nothing.
    pub async fn terminate(&self, instance_id: &str, reason: &str) -> Result<()> {
        self.send_to_instance(
            instance_id,
            Body::Terminate {
                reason: reason.to_string(),
            },
        )
        .await
    }

    /// Deletes an ended instance and its history; returns whether there was one.
    pub async fn purge(&self, instance_id: &str) -> Result<bool> {
        match self.shared.store.read_instance(instance_id).await? {
            None => Ok(false),
            Some(record) if !record.status.is_terminal() => {
                Err(Error::InstanceRunning(instance_id.to_string()))
            }
            Some(_) => Ok(self.shared.store.purge_instance(instance_id).await?),
        }
    }

    async fn send_to_instance(&self, instance_id: &str, body: Body) -> Result<()> {
        match self.shared.store.read_instance(instance_id).await? {
            Some(record) if record.status.is_terminal() => return Ok(()),
            _ => {}
        }
        let message = Message {
            id: self.shared.next_message_id(),
            target: Target::Instance(instance_id.to_string()),
            deliver_at: None,
            body,
        };
        self.store_and_deliver(vec![message], None).await
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
