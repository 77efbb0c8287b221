//! The group-commit contract: what several batches committed in one transaction write.
//!
//! A store may commit a group of batches together (one transaction, one sync). What lands
//! must be what committing them one by one, in order, would leave:
//!
//! - a message produced by one batch of the group and consumed by a later one is never
//!   written (the transaction that would insert it also deletes it);
//! - a message consumed that was not produced in the group is deleted;
//! - an entity written by several batches is written once, with its last record;
//! - instance creations go first (a conflict fails the group before anything else is
//!   written), then the deletions, the inserts, the entity rows, and the other instance
//!   writes in the order of their batches.
//!
//! [`Group`] holds that rule for every store: the engine's own batches obey it too (a message
//! produced and consumed within one batch is never stored).

use std::collections::HashMap;

use crate::id::EntityId;
use crate::message::MessageId;
use crate::store::Batch;

/// Where a row of a group comes from: the batch (its position in the group) and the row's
/// position in that batch's `produced` or `entities`.
pub type RowSource = (usize, usize);

/// The rows a group holds back until it is complete: the messages produced in it and not
/// consumed in it (yet), and each entity's last record. Batches are added in commit order.
#[derive(Debug, Default)]
pub struct Group {
    /// The messages held, by id.
    messages: HashMap<MessageId, RowSource>,
    /// The ids of the messages held, in the order they were produced (with ids consumed
    /// since: they are skipped).
    order: Vec<MessageId>,
    entities: HashMap<EntityId, RowSource>,
}

/// A message id produced twice within one group: the group fails, as the second insert
/// would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message {0} is produced twice in one commit")]
pub struct DuplicateMessage(pub MessageId);

/// The rows a complete group writes, by where they come from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeldRows {
    /// The messages to insert, in the order they were produced: a store shared by several
    /// processes keeps each sender's order by it.
    pub messages: Vec<RowSource>,
    /// Each entity's last record, in id order (neighbouring rows share pages).
    pub entities: Vec<RowSource>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `batch`, at position `index` of the group. Returns the consumed messages that
    /// were not produced in the group: the store deletes those now. The others are dropped
    /// from the rows held back.
    pub fn add(&mut self, index: usize, batch: &Batch) -> Result<Vec<MessageId>, DuplicateMessage> {
        let mut deletes = Vec::new();
        for id in &batch.consumed {
            if self.messages.remove(id).is_none() {
                deletes.push(*id);
            }
        }
        for (i, message) in batch.produced.iter().enumerate() {
            if self.messages.insert(message.id, (index, i)).is_some() {
                return Err(DuplicateMessage(message.id));
            }
            self.order.push(message.id);
        }
        for (i, entity) in batch.entities.iter().enumerate() {
            self.entities.insert(entity.id.clone(), (index, i));
        }
        Ok(deletes)
    }

    /// Takes the rows held back so far (before an isolated write, or once the group is
    /// complete); the group goes on empty of rows.
    pub fn take(&mut self) -> HeldRows {
        let mut messages = Vec::with_capacity(self.messages.len());
        for id in self.order.drain(..) {
            if let Some(source) = self.messages.remove(&id) {
                messages.push(source);
            }
        }
        let mut entities: Vec<_> = self.entities.drain().collect();
        entities.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        HeldRows {
            messages,
            entities: entities.into_iter().map(|(_, source)| source).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Message, Target};
    use crate::store::EntityRecord;

    fn message(id: MessageId) -> Message {
        Message {
            id,
            target: Target::Entity(EntityId::new("counter", "a")),
            deliver_at: None,
            body: Body::Operation {
                name: "add".into(),
                input: None,
                reply: None,
                sender: None,
            },
        }
    }

    fn entity(key: &str, state: i64) -> EntityRecord {
        EntityRecord {
            id: EntityId::new("counter", key),
            state: Some(state.into()),
            state_version: 1,
            lock_owner: None,
            last_modified: 0,
            pending_messages: 0,
        }
    }

    #[test]
    fn messages_produced_and_consumed_in_the_group_are_never_written() {
        let mut group = Group::new();
        let first = Batch {
            consumed: vec![100],
            produced: vec![message(9), message(2), message(1)],
            entities: vec![entity("b", 1), entity("a", 1)],
            ..Batch::default()
        };
        let second = Batch {
            consumed: vec![2, 101],
            produced: vec![message(3)],
            entities: vec![entity("b", 2)],
            ..Batch::default()
        };
        assert_eq!(group.add(0, &first), Ok(vec![100]));
        assert_eq!(group.add(1, &second), Ok(vec![101]));
        assert_eq!(
            group.take(),
            HeldRows {
                // In the order produced, not by id.
                messages: vec![(0, 0), (0, 2), (1, 0)],
                // a from the first batch, b's last record from the second.
                entities: vec![(0, 1), (1, 0)],
            }
        );
        assert_eq!(group.take(), HeldRows::default());
    }

    #[test]
    fn a_message_produced_twice_fails_the_group() {
        let mut group = Group::new();
        let batch = Batch {
            produced: vec![message(7)],
            ..Batch::default()
        };
        group.add(0, &batch).unwrap();
        assert_eq!(group.add(1, &batch), Err(DuplicateMessage(7)));
    }
}
