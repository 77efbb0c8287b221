//! [`Runtime`] and its builder.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;

use crate::client::Client;
use crate::engine::{Command, Engine, EngineConfig, Shared};
use crate::entity::{ClassEntity, Entity, EntityFunction};
use crate::error::{Error, Result};
use crate::orchestration::{ActivityAdapter, OrchestrationAdapter, OrchestrationContext};
use crate::registry::Registry;
use crate::store::Store;

/// Configures and starts a [`Runtime`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct RuntimeBuilder {
    store: Option<Arc<dyn Store>>,
    registry: Registry,
    config: EngineConfig,
    errors: Vec<String>,
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

    /// Registers an activity: `async fn(I) -> Result<O, E>` with `E: Display`.
    pub fn activity<F, Fut, I, O, E>(mut self, name: &str, function: F) -> Self
    where
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let adapter = Arc::new(ActivityAdapter::new(function));
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

    /// Most messages processed per batch (per commit). Default 8192.
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max.max(1);
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

    /// Recovers stored messages and starts processing. Must be called inside a Tokio runtime.
    pub async fn start(self) -> Result<Runtime> {
        if !self.errors.is_empty() {
            return Err(Error::Config(self.errors.join("; ")));
        }
        let store = self.store.ok_or_else(|| {
            Error::Config("no store: call `.store(SqliteStore::open(path)?)`".into())
        })?;
        let recovery = store.recover(u64::MAX).await?;
        info!(
            messages = recovery.messages.len(),
            "runtime starting with stored messages"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            store,
            Arc::new(self.registry),
            tx,
            recovery.max_message_id + 1,
        ));
        let engine = Engine::new(shared.clone(), self.config, rx);
        let task = tokio::spawn(engine.run(recovery.messages));
        Ok(Runtime {
            shared,
            task: Some(task),
        })
    }
}

/// A running runtime. Dropping it without [`Runtime::shutdown`] stops it abruptly, which is
/// safe: everything acknowledged is stored. A stopped runtime closes its store.
pub struct Runtime {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Runtime {
    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            store: None,
            registry: Registry::default(),
            config: EngineConfig::default(),
            errors: Vec::new(),
        }
    }

    /// A client of this runtime.
    pub fn client(&self) -> Client {
        Client::new(self.shared.clone())
    }

    /// Finishes the commits under way and stops. Messages not yet processed stay stored and
    /// are processed by the next runtime on the same store.
    pub async fn shutdown(mut self) -> Result<()> {
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
        self.shared.store.close();
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
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
