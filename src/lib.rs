//! # entities: durable entities for Rust
//!
//! An entity is a small piece of durable state with an address ([`EntityId`]) whose
//! operations run one at a time. Entities are reached by one-way signals and two-way calls,
//! keep their state in an embedded SQLite database ([`SqliteStore`]), and can be coordinated by
//! durable orchestrations with deadlock-free critical sections. For tests and examples,
//! [`MemoryStore`] keeps everything in memory instead, with the same semantics and no
//! durability.
//!
//! ```no_run
//! use entities::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct Counter {
//!     value: i64,
//! }
//!
//! #[entity]
//! impl Counter {
//!     pub fn add(&mut self, amount: i64) {
//!         self.value += amount;
//!     }
//!     pub fn get(&self) -> i64 {
//!         self.value
//!     }
//! }
//!
//! # async fn run() -> entities::Result<()> {
//! let runtime = Runtime::builder()
//!     .store(SqliteStore::open("counter.db")?)
//!     .entity::<Counter>()
//!     .start()
//!     .await?;
//! let client = runtime.client();
//! client.signal::<Counter>("game1").add(5).await?;
//! assert_eq!(client.call::<Counter>("game1").get().await?, 5);
//! runtime.shutdown().await
//! # }
//! ```
//!
//! See the crate README for the semantics and guarantees.

pub use entities_core::{
    message, partition_of, store, ActivityContext, CleanResult, Client, ClientCall, ClientSignal,
    CriticalSection, Entity, EntityContext, EntityFunction, EntityId, EntityLock, EntityMetadata,
    EntityPage, EntityQuery, EntitySignal, Error, Idempotent, Invoker, MemoryStore, MissingService,
    OperationError, OrchestrationCall, OrchestrationContext, OrchestrationPage, OrchestrationQuery,
    OrchestrationSignal, OrchestrationStatus, PendingSignal, Result, Runtime, RuntimeBuilder,
    RuntimeStatus, Schedule, ScheduleId, ScheduleInfo, StateVersionError, StateVersioning, Store,
    StoreError, StoreErrorKind, Uuid,
};
pub use entities_macros::entity;
pub use entities_sqlite::{SqliteOptions, SqliteStore, Synchronous, WriteStats};

/// Several processes sharing one PostgreSQL database (cargo feature `postgres`): see
/// [`PostgresStore`](entities_postgres::PostgresStore).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use entities_postgres::{Error, PostgresOptions, PostgresStore};

    /// A private throwaway PostgreSQL server for tests and examples (cargo feature
    /// `postgres-test-server`).
    #[cfg(feature = "postgres-test-server")]
    pub use entities_postgres::test_server;
}

/// The HTTP API: [`http::router`] to mount in an axum app, [`http::serve`] to run it alone
/// (cargo feature `http`).
#[cfg(feature = "http")]
pub use entities_http as http;

/// Helpers for tests: [`testing::replay`] checks orchestration code against recorded
/// histories.
pub use entities_core::testing;

/// What most programs need: `use entities::prelude::*;`.
pub mod prelude {
    pub use crate::{
        entity, ActivityContext, Client, Entity, EntityContext, EntityFunction, EntityId,
        EntityMetadata, EntityQuery, MemoryStore, OperationError, OrchestrationContext,
        OrchestrationStatus, Runtime, RuntimeStatus, Schedule, SqliteStore,
    };
}

/// Support for the code `#[entity]` generates. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use entities_core::__private::*;
    pub use futures::future::BoxFuture;
    pub use serde;
    pub use serde_json;
}

/// The README's Rust examples, compiled as doc tests so that they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
