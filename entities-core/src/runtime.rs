//! [`Runtime`] and its builder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;

use crate::client::Client;
use crate::clock::{Clock, Driven};
use crate::engine::{Command, Engine, EngineConfig, Shared};
use crate::entity::{ClassEntity, Entity, EntityFunction};
use crate::error::{Error, Result};
use crate::orchestration::{
    ActivityAdapter, ActivityFn, ContextActivityAdapter, OrchestrationAdapter, OrchestrationContext,
};
use crate::registry::Registry;
use crate::services::ActivityContext;
use crate::store::Store;

/// Configures and starts a [`Runtime`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct RuntimeBuilder {
    store: Option<Arc<dyn Store>>,
    registry: Registry,
    config: EngineConfig,
    key_retention: Duration,
    errors: Vec<String>,
    clock: Arc<dyn Clock>,
}

impl RuntimeBuilder {
    /// The store the runtime persists to (required).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The store, shared.
    pub fn store_arc(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers the class-based entity `E` (a type with an `#[entity]` impl).
    pub fn entity<E: Entity>(self) -> Self {
        self.entity_fn(E::NAME, ClassEntity::<E>::new())
    }

    /// Registers a function-based entity under `name` (case-insensitive).
    pub fn entity_fn(mut self, name: &str, function: impl EntityFunction) -> Self {
        let key = name.to_lowercase();
        if name.is_empty() || name.contains('@') {
            self.errors
                .push(format!("entity name `{name}` is empty or contains `@`"));
        } else if self
            .registry
            .entities
            .insert(key, Arc::new(function))
            .is_some()
        {
            self.errors
                .push(format!("entity name `{name}` is registered twice"));
        }
        self
    }

    /// Registers an orchestration: `async fn(OrchestrationContext, I) -> Result<O, Error>`.
    pub fn orchestration<F, Fut, I, O>(mut self, name: &str, function: F) -> Self
    where
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let adapter = Arc::new(OrchestrationAdapter::new(function));
        if self
            .registry
            .orchestrations
            .insert(name.to_string(), adapter)
            .is_some()
        {
            self.errors
                .push(format!("orchestration `{name}` is registered twice"));
        }
        self
    }

    /// Registers an activity: `async fn(I) -> Result<O, E>` with `E: Display`. An activity
    /// that needs services takes a context: see
    /// [`activity_with_context`](Self::activity_with_context).
    pub fn activity<F, Fut, I, O, E>(self, name: &str, function: F) -> Self
    where
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.activity_fn(name, Arc::new(ActivityAdapter::new(function)))
    }

    /// Registers an activity that receives an [`ActivityContext`] (its name, the calling
    /// instance, and the services of [`service`](Self::service)) besides its input:
    /// `async fn(ActivityContext, I) -> Result<O, E>` with `E: Display`.
    ///
    /// ```
    /// use entities_core::{ActivityContext, Error, MemoryStore, Runtime};
    ///
    /// struct Mailer;
    /// impl Mailer {
    ///     fn send(&self, to: &str) { /* .. */ }
    /// }
    ///
    /// # async fn run() -> entities_core::Result<()> {
    /// let runtime = Runtime::builder()
    ///     .store(MemoryStore::new())
    ///     .service(Mailer)
    ///     .activity_with_context("notify", |ctx: ActivityContext, to: String| async move {
    ///         ctx.service::<Mailer>()?.send(&to);
    ///         Ok::<_, Error>(())
    ///     })
    ///     .start()
    ///     .await?;
    /// # runtime.shutdown().await
    /// # }
    /// ```
    pub fn activity_with_context<F, Fut, I, O, E>(self, name: &str, function: F) -> Self
    where
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.activity_fn(name, Arc::new(ContextActivityAdapter::new(function)))
    }

    fn activity_fn(mut self, name: &str, adapter: Arc<dyn ActivityFn>) -> Self {
        if self
            .registry
            .activities
            .insert(name.to_string(), adapter)
            .is_some()
        {
            self.errors
                .push(format!("activity `{name}` is registered twice"));
        }
        self
    }

    /// Registers a service: a value that entity operations
    /// ([`EntityContext::service`](crate::EntityContext::service)) and activities
    /// ([`ActivityContext::service`]) reach by its type, `ctx.service::<T>()`. Services are
    /// shared read-only (use interior mutability for state they change) and are not durable.
    /// Orchestrations do not see them, as they must stay deterministic: they call activities
    /// that use services. One service per type.
    pub fn service<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.service_arc(Arc::new(value))
    }

    /// Registers a service that the caller keeps a handle on too (see
    /// [`service`](Self::service)).
    pub fn service_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        if !self.registry.services.insert(value) {
            self.errors.push(format!(
                "a service of type `{}` is registered twice",
                std::any::type_name::<T>()
            ));
        }
        self
    }

    /// Most messages processed per batch (per commit). Default 8192.
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max.max(1);
        self
    }

    /// Deletes the state of the entities named `name` once their last operation is older than
    /// `ttl`. The expiry runs as an operation in the entity's own queue, so a signal arriving
    /// meanwhile runs either before it (and keeps the entity) or after it (on a fresh state);
    /// an entity that holds a lock or has messages waiting does not expire. Idle entities cost
    /// no memory: a background sweep asks the store for the candidates, every quarter of the
    /// shortest TTL (between 50 ms and 60 s).
    pub fn entity_ttl(mut self, name: &str, ttl: Duration) -> Self {
        if ttl.is_zero() {
            self.errors
                .push(format!("the TTL of entity `{name}` must not be zero"));
        }
        self.registry.ttls.insert(name.to_lowercase(), ttl);
        self
    }

    /// How long an idempotency key binds (see [`Client::idempotent`]): a second send with
    /// the same key within this time is not applied. Keys older than this are deleted in the
    /// background. Default 24 hours.
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.key_retention = retention.max(Duration::from_millis(1));
        self
    }

    /// Most batches committing at once: the engine runs the next batch while these commit.
    /// Default 2.
    pub fn max_inflight_commits(mut self, max: usize) -> Self {
        self.config.max_inflight_commits = max.max(1);
        self
    }

    /// Entities kept in memory; past this, idle ones are unloaded. Default 20,000.
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.config.cache_capacity = capacity;
        self
    }

    /// How long an entity operation may take before it fails (its state change and signals
    /// rolled back) and its entity moves on. Default 5 minutes. Applies to operations that
    /// await, counted from their first await that is not ready at once; one that blocks its
    /// thread without awaiting cannot be stopped.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeouts.default = timeout;
        self
    }

    /// The operation timeout of the entities named `name`, overriding
    /// [`operation_timeout`](Self::operation_timeout).
    pub fn entity_operation_timeout(mut self, name: &str, timeout: Duration) -> Self {
        self.config
            .timeouts
            .by_name
            .insert(name.to_lowercase(), timeout);
        self
    }

    /// How long [`Runtime::shutdown`] waits for operations under way before it stops them
    /// (they run again at the next start). Default 30 seconds.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Scheduled messages due within this time are held in memory; later ones stay in the
    /// store and are read in as their time approaches. Default 60 seconds.
    pub fn schedule_horizon(mut self, horizon: Duration) -> Self {
        self.config.schedule_horizon = horizon.max(Duration::from_millis(2));
        self
    }

    /// Most client messages held in memory while they wait to be stored; past this, sends
    /// wait. Default 65,536.
    pub fn max_pending_client_messages(mut self, max: usize) -> Self {
        self.config.intake_bound = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// The clock the runtime reads the time from (the system's by default): the stored times,
    /// `ctx.current_time()`, timers, scheduled signals, schedules, entity TTLs and the retention
    /// of idempotency keys follow it. Tests pass a [`ManualClock`](crate::testing::ManualClock)
    /// and move it by hand; operation timeouts and the shutdown grace stay in real time.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Recovers stored messages and starts processing. Must be called inside a Tokio runtime.
    pub async fn start(self) -> Result<Runtime> {
        if !self.errors.is_empty() {
            return Err(Error::Config(self.errors.join("; ")));
        }
        let unknown: Vec<&String> = (self.registry.ttls.keys())
            .filter(|name| self.registry.entity(name).is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Config(format!(
                "`entity_ttl` for entity names not registered: {unknown:?}"
            )));
        }
        let store = self.store.ok_or_else(|| {
            Error::Config("no store: call `.store(SqliteStore::open(path)?)`".into())
        })?;
        let loaded_until = self
            .config
            .recovery_horizon(crate::clock::now_millis(&*self.clock));
        let recovery = store.recover(loaded_until).await?;
        info!(
            messages = recovery.messages.len(),
            "runtime starting with stored messages"
        );
        let first_id = (recovery.max_message_id + 1).max(store_base(&*store));
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            store,
            Arc::new(self.registry),
            tx,
            first_id,
            self.config.intake_bound,
            self.key_retention,
            self.clock.clone(),
        ));
        let engine = Engine::new(
            shared.clone(),
            self.config,
            rx,
            loaded_until,
            recovery.partitions,
        );
        let task = tokio::spawn(engine.run(recovery.messages));
        // A manual clock runs the expiry sweeps and the forgetting of old keys as it moves;
        // the system's, on tasks of their own.
        let mut driven = None;
        let background = match self.clock.as_manual() {
            Some(manual) => {
                let driver: Arc<dyn Driven> = Arc::new(Driver {
                    client: Client::new(shared.clone()),
                });
                manual.attach(&driver);
                driven = Some(driver);
                Vec::new()
            }
            None => {
                let sweeper = (!shared.registry.ttls.is_empty())
                    .then(|| tokio::spawn(crate::expiry::sweep(Client::new(shared.clone()))));
                let forgetter =
                    tokio::spawn(crate::client::forget_old_keys(Client::new(shared.clone())));
                sweeper.into_iter().chain([forgetter]).collect()
            }
        };
        Ok(Runtime {
            shared,
            task: Some(task),
            background,
            _driven: driven,
        })
    }
}

/// The first message id of this process in a store shared by several (0 otherwise).
fn store_base(store: &dyn crate::store::Store) -> crate::message::MessageId {
    store.partitioned().map_or(0, |p| p.id_base())
}

/// A running runtime. Dropping it without [`Runtime::shutdown`] stops it abruptly, which is
/// safe: everything acknowledged is stored. A stopped runtime closes its store.
pub struct Runtime {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    /// Background tasks: the expiry sweep (if any entity name has a TTL) and the forgetting
    /// of old idempotency keys.
    background: Vec<JoinHandle<()>>,
    /// What a manual clock drives while this runtime lives (it holds only a weak reference).
    _driven: Option<Arc<dyn Driven>>,
}

/// A runtime as a manual clock drives it: its expiry sweeps, idleness and key forgetting.
struct Driver {
    client: Client,
}

impl Driven for Driver {
    fn is_stopped(&self) -> bool {
        self.client.is_shut_down()
    }

    fn sweep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(err) = crate::expiry::sweep_once(&self.client).await {
                tracing::warn!(error = %err, "expiry sweep of a manual clock's step failed");
            }
        })
    }

    fn settle(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            let (done, idle) = oneshot::channel();
            self.client
                .shared
                .commands
                .send(Command::Settle(done))
                .ok()?;
            idle.await.ok().flatten()
        })
    }

    fn next_expiry(&self, now: u64, until: u64) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            crate::expiry::next_expiry(&self.client, now, until)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cannot find the next expiry");
                    None
                })
        })
    }

    fn forget_keys(&self) -> BoxFuture<'_, ()> {
        Box::pin(crate::client::forget_keys_once(&self.client))
    }
}

impl Runtime {
    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            store: None,
            registry: Registry::default(),
            config: EngineConfig::default(),
            key_retention: crate::keys::DEFAULT_RETENTION,
            errors: Vec::new(),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }

    /// A client of this runtime.
    pub fn client(&self) -> Client {
        Client::new(self.shared.clone())
    }

    /// Stops: waits for the operations under way (at most the grace period, see
    /// [`RuntimeBuilder::shutdown_grace`]) and the commits under way. Messages not yet
    /// processed, and those of operations stopped at the end of the grace period, stay
    /// stored and are processed by the next runtime on the same store.
    pub async fn shutdown(mut self) -> Result<()> {
        for task in self.background.drain(..) {
            task.abort();
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|err| Error::Config(format!("the engine task failed: {err}")))?;
        }
        self.shared.store.shutdown().await;
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
        }
        if let Some(task) = self.task.take() {
            self.shared
                .stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            task.abort();
            // Commits the aborted engine had queued must not land later.
            self.shared.store.close();
        }
    }
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}
