//! An entity in memory: its state, its queue, and what its lock holds back.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::Value;

use crate::inspect::WaitingOperation;
use crate::message::{Body, Message, MessageId};

/// How many of the messages held back by one lock [`Slot::held_back`] lists.
pub(super) const HELD_BACK_SHOWN: usize = 100;

/// An entity in memory.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) loaded: bool,
    pub(super) state: Option<Value>,
    /// The version of `state`'s shape (see `EntityFunction::versioning`).
    pub(super) state_version: u32,
    pub(super) lock: Option<String>,
    pub(super) last_modified: u64,
    pub(super) queue: VecDeque<Message>,
    /// When the messages queued while the entity was locked (or not loaded yet) arrived, by
    /// message id; empty on the hot path of an unlocked entity in memory.
    pub(super) waits: HashMap<MessageId, Instant>,
    pub(super) in_ready: bool,
    /// The last batch that wrote this entity; it may be unloaded once that batch committed.
    pub(super) last_write: u64,
    /// One of its operations runs on a task of its own; its later messages wait.
    pub(super) busy: bool,
    /// Its stored state cannot be decoded: its operations fail with this error, and the
    /// stored value is never overwritten.
    pub(super) poisoned: Option<String>,
    /// Reads of its row that failed in a row (see [`MAX_LOAD_TRIES`]).
    pub(super) load_failures: u32,
}

impl Slot {
    /// The index of the next message that may run: the first one, or while locked the first
    /// one from the lock holder. None while an operation is under way.
    pub(super) fn runnable(&self) -> Option<usize> {
        if self.busy {
            return None;
        }
        let index = match &self.lock {
            None => (!self.queue.is_empty()).then_some(0),
            Some(owner) => self.queue.iter().position(|m| from_holder(m, owner)),
        }?;
        // A poisoned entity cannot record a lock: its lock messages wait for a repair.
        let lock_message = matches!(
            self.queue[index].body,
            Body::LockRequest { .. } | Body::Release { .. }
        );
        (!(lock_message && self.poisoned.is_some())).then_some(index)
    }

    /// The first [`HELD_BACK_SHOWN`] queued messages the lock holds back, with how long each
    /// has waited.
    pub(super) fn held_back(&self) -> Vec<WaitingOperation> {
        let Some(owner) = &self.lock else {
            return Vec::new();
        };
        let now = Instant::now();
        self.queue
            .iter()
            .filter(|m| !from_holder(m, owner))
            .filter_map(|m| {
                let waited = self
                    .waits
                    .get(&m.id)
                    .map(|since| now.saturating_duration_since(*since));
                let (operation, sender, call) = match &m.body {
                    Body::Operation {
                        name,
                        reply,
                        sender,
                        ..
                    } => (Some(name.clone()), sender.clone(), reply.is_some()),
                    Body::LockRequest { owner, .. } => (None, Some(owner.clone()), true),
                    _ => return None,
                };
                Some(WaitingOperation {
                    operation,
                    sender,
                    call,
                    waited,
                })
            })
            .take(HELD_BACK_SHOWN)
            .collect()
    }

    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty() && !self.in_ready && !self.busy
    }
}

/// Whether `message` comes from the critical section of `owner`, so that its lock lets it
/// through.
pub(super) fn from_holder(message: &Message, owner: &str) -> bool {
    match &message.body {
        Body::Operation { sender, .. } => sender.as_deref() == Some(owner),
        Body::Release { owner: o } => o == owner,
        Body::LockRequest { owner: o, .. } => o == owner,
        _ => false,
    }
}
