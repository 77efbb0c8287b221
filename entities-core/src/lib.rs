//! The runtime of `entities`, independent of any database: entity ids, messages, entity
//! execution, orchestrations, critical sections, the client, and the [`Store`] trait that
//! storage backends implement. Users depend on the facade crate `entities`.

#![warn(missing_docs)]

mod client;
mod clock;
mod context;
mod engine;
mod entity;
mod error;
mod expiry;
mod id;
mod inspect;
mod json;
mod keys;
mod memory_store;
pub mod message;
pub mod metrics;
mod orchestration;
mod proxy;
mod readiness;
mod registry;
mod runtime;
mod schedule;
mod services;
pub mod store;
pub mod testing;
mod time;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use client::Idempotent;
pub use client::{
    CleanResult, Client, EntityLock, EntityMetadata, EntityPage, OrchestrationPage,
    OrchestrationQuery,
};
pub use client::{ClientCall, ClientSignal};
pub use clock::{Clock, SystemClock};
pub use context::EntityContext;
pub use engine::partition::{partition_of, partition_of_instance, partition_of_message};
pub use entity::{Entity, EntityFunction, StateVersioning};
pub use error::{
    Error, MissingService, OperationError, Result, StateVersionError, StoreError, StoreErrorKind,
};
pub use id::EntityId;
pub use inspect::{RecentFailure, WaitingOperation};
pub use memory_store::MemoryStore;
pub use message::PendingSignal;
pub use orchestration::{
    ActivityFn, CriticalSection, OrchestrationCall, OrchestrationContext, OrchestrationFn,
    OrchestrationSignal, OrchestrationStatus,
};
pub use proxy::{EntitySignal, Invoker};
pub use runtime::{Runtime, RuntimeBuilder};
pub use schedule::{Schedule, ScheduleId, ScheduleInfo};
pub use services::ActivityContext;
pub use store::RuntimeStatus;
pub use store::{EntityQuery, Store};
pub use uuid::Uuid;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
