//! Partitions: entities and orchestration instances hash to one of a fixed number of
//! partitions, the unit of ownership. A runtime runs in memory only the targets of the
//! partitions it owns; a message to a partition owned elsewhere is only stored, in its
//! producer's commit, and picked up by its owner. An SQLite store's one process owns them all.

use std::collections::BTreeSet;

use crate::message::{Body, Message, Target};

/// The partition a target belongs to, out of `count`: a stable hash (FNV-1a over the target's
/// store key), the same in every process and build. The activity workers' target belongs to
/// partition 0; an activity message belongs to its instance's partition (see
/// [`partition_of_message`]).
pub fn partition_of(target: &Target, count: u32) -> u32 {
    match target {
        Target::Entity(id) => hash_key(&id.to_string(), count),
        Target::Instance(id) => hash_key(id, count),
        Target::Activity => 0,
    }
}

/// The partition of an orchestration instance, out of `count`.
pub fn partition_of_instance(instance: &str, count: u32) -> u32 {
    hash_key(instance, count)
}

/// The partition a message belongs to: its target's, except that an activity message belongs
/// to the partition of the instance that runs the activity (which records its result).
pub fn partition_of_message(message: &Message, count: u32) -> u32 {
    match (&message.target, &message.body) {
        (Target::Activity, Body::Activity { instance, .. }) => hash_key(instance, count),
        (target, _) => partition_of(target, count),
    }
}

fn hash_key(key: &str, count: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % count.max(1)
}

/// Which partitions this runtime owns.
#[derive(Clone, Debug)]
pub(crate) enum Ownership {
    /// Every partition (one process owns the whole store).
    All,
    /// These partitions out of `count`.
    Some { count: u32, owned: BTreeSet<u32> },
}

impl Ownership {
    /// Ownership of `partitions` out of `count`, or of all when `partitions` is `None`.
    pub(crate) fn new(count: u32, partitions: Option<&[u32]>) -> Self {
        match partitions {
            None => Ownership::All,
            Some(parts) => Ownership::Some {
                count,
                owned: parts.iter().copied().collect(),
            },
        }
    }

    /// Whether `message` is run here.
    pub(crate) fn owns(&self, message: &Message) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Some { count, owned } => {
                owned.contains(&partition_of_message(message, *count))
            }
        }
    }

    /// The partitions owned, `None` for all.
    pub(crate) fn partitions(&self) -> Option<Vec<u32>> {
        match self {
            Ownership::All => None,
            Ownership::Some { owned, .. } => Some(owned.iter().copied().collect()),
        }
    }

    /// Adds partitions; returns those that were not owned yet.
    pub(crate) fn add(&mut self, parts: &[u32]) -> Vec<u32> {
        match self {
            Ownership::All => Vec::new(),
            Ownership::Some { owned, .. } => {
                parts.iter().copied().filter(|p| owned.insert(*p)).collect()
            }
        }
    }

    /// Removes partitions; returns those that were owned.
    pub(crate) fn remove(&mut self, parts: &[u32]) -> Vec<u32> {
        match self {
            Ownership::All => Vec::new(),
            Ownership::Some { owned, .. } => {
                parts.iter().copied().filter(|p| owned.remove(p)).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::EntityId;

    #[test]
    fn partitions_are_stable_and_in_range() {
        let target = Target::Entity(EntityId::new("Counter", "k1"));
        // The value is part of the stored layout: it must never change between builds.
        assert_eq!(
            partition_of(&target, 1 << 16),
            partition_of(&target, 1 << 16)
        );
        assert_eq!(
            partition_of(&Target::Instance("abc".into()), u32::MAX),
            0x1a47_e90b
        );
        for key in 0..1000 {
            let t = Target::Entity(EntityId::new("Counter", format!("k{key}")));
            assert!(partition_of(&t, 7) < 7);
        }
        assert_eq!(partition_of(&target, 0), 0);
    }

    #[test]
    fn activity_messages_belong_to_their_instance() {
        let message = Message {
            id: 1,
            target: Target::Activity,
            deliver_at: None,
            body: Body::Activity {
                instance: "abc".into(),
                seq: 0,
                name: "a".into(),
                input: serde_json::Value::Null,
            },
        };
        assert_eq!(
            partition_of_message(&message, 64),
            partition_of_instance("abc", 64)
        );
        let mut ownership = Ownership::new(64, Some(&[]));
        assert!(!ownership.owns(&message));
        assert_eq!(ownership.add(&[partition_of_instance("abc", 64)]).len(), 1);
        assert!(ownership.owns(&message));
    }
}
