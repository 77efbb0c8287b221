//! State shared by the engine, its clients and the runtime handle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::protocol::Command;
use crate::inspect::Failures;
use crate::message::MessageId;
use crate::registry::Registry;
use crate::store::Store;

/// State shared by the engine, the clients and the runtime handle.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub commands: mpsc::UnboundedSender<Command>,
    /// Client messages the engine holds that are not stored yet, bounded: a client takes a
    /// permit per message before handing it over and gives it back once it is stored, so
    /// past the bound senders wait instead of memory growing.
    pub intake: Arc<Semaphore>,
    /// Permits of `intake`.
    pub intake_bound: usize,
    next_id: AtomicU64,
    pub stopped: AtomicBool,
    /// The operations that failed lately, for operators.
    pub failures: Failures,
    /// Idempotent sends of one key wait for each other.
    pub key_locks: crate::keys::KeyLocks,
    /// How long idempotency keys bind.
    pub key_retention: std::time::Duration,
    /// Where the runtime reads the time.
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        commands: mpsc::UnboundedSender<Command>,
        first_id: MessageId,
        intake_bound: usize,
        key_retention: std::time::Duration,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Self {
        Self {
            store,
            registry,
            commands,
            intake: Arc::new(Semaphore::new(intake_bound)),
            intake_bound,
            next_id: AtomicU64::new(first_id),
            stopped: AtomicBool::new(false),
            failures: Failures::default(),
            key_locks: Default::default(),
            key_retention,
            clock,
        }
    }

    /// The current time of the runtime's clock, in milliseconds since the Unix epoch.
    pub(crate) fn now_millis(&self) -> u64 {
        crate::clock::now_millis(&*self.clock)
    }

    /// A fresh message id.
    pub(crate) fn next_message_id(&self) -> MessageId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure ids handed out from now on are above `max` (after a recovery).
    pub(crate) fn ids_above(&self, max: MessageId) {
        self.next_id.fetch_max(max + 1, Ordering::Relaxed);
    }
}
