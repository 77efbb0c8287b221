//! Partitions: entities and orchestration instances hash to one of a fixed number of
//! partitions, the unit of ownership. A runtime runs in memory only the targets of the
//! partitions it owns; a message to a partition owned elsewhere is only stored, in its
//! producer's commit, and picked up by its owner. An SQLite store's one process owns them all.

use crate::message::Target;

/// The partition a target belongs to, out of `count`: a stable hash (FNV-1a over the target's
/// store key), the same in every process and build. Activities belong to partition 0.
pub fn partition_of(target: &Target, count: u32) -> u32 {
    let key = match target {
        Target::Entity(id) => id.to_string(),
        Target::Instance(id) => id.clone(),
        Target::Activity => return 0,
    };
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
}

impl Ownership {
    /// Whether messages to `target` are run here.
    pub(crate) fn owns(&self, _target: &Target) -> bool {
        match self {
            Ownership::All => true,
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
}
