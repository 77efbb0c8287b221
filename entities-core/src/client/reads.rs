//! The client's reads: an entity's state and metadata, entity queries, locks, counts and
//! what the runtime saw fail.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Client;
use crate::engine::Command;
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::id::EntityId;
use crate::inspect::{RecentFailure, WaitingOperation};
use crate::message::from_millis;
use crate::store::{EntityQuery, EntityRecord};

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

impl Client {
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
}
