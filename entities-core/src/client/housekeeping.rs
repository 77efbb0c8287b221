//! The client's housekeeping: replacing a state by hand, the messages set aside, and cleaning
//! up empty entities and orphaned locks.

use serde::Serialize;

use super::Client;
use crate::error::Result;
use crate::id::EntityId;
use crate::message::{Body, Message, Target, SET_STATE_OPERATION};
use crate::store::EntityQuery;

/// What [`Client::clean_entity_storage`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanResult {
    /// Entity rows removed (no state, no lock, no pending message).
    pub removed_entities: u64,
    /// Locks released because their orchestration had ended.
    pub released_locks: u64,
}

impl Client {
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
}
