//! What operators see of a running runtime beyond the store: the operations waiting behind a
//! held lock and the operations that failed lately (for the HTTP API and its dashboard).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::id::EntityId;

/// A message queued for a locked entity that cannot run until the lock is released (see
/// [`Client::locks`](crate::Client::locks)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingOperation {
    /// The operation's name; `None` for another critical section's lock request.
    pub operation: Option<String>,
    /// The orchestration instance that sent it; `None` for a client.
    pub sender: Option<String>,
    /// Whether the sender waits for a result (a call) rather than only signalling.
    pub call: bool,
    /// How long it has waited in this process: since it arrived here, or since the lock was
    /// taken if it was queued before. `None` when this process cannot tell.
    pub waited: Option<Duration>,
}

/// An entity operation that failed (see [`Client::recent_failures`](crate::Client::recent_failures)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentFailure {
    /// When it failed.
    pub at: SystemTime,
    /// The entity.
    pub entity: EntityId,
    /// The operation's name.
    pub operation: String,
    /// The operation's error.
    pub message: String,
}

/// How many failures [`Failures`] keeps.
const KEPT: usize = 100;

/// The last [`KEPT`] operation failures of this process, newest last. Only failures take the
/// lock, so the operations that succeed pay nothing.
#[derive(Default)]
pub(crate) struct Failures {
    recent: Mutex<VecDeque<RecentFailure>>,
}

impl Failures {
    /// Records a failure, forgetting the oldest past [`KEPT`].
    pub(crate) fn record(
        &self,
        entity: &EntityId,
        operation: &str,
        message: String,
        at: SystemTime,
    ) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(RecentFailure {
            at,
            entity: entity.clone(),
            operation: operation.to_string(),
            message,
        });
    }

    /// The failures kept, newest first.
    pub(crate) fn newest_first(&self) -> Vec<RecentFailure> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_failures_newest_first() {
        let failures = Failures::default();
        let id = EntityId::new("Counter", "a");
        for n in 0..KEPT + 5 {
            failures.record(&id, "add", format!("failure {n}"), SystemTime::now());
        }
        let recent = failures.newest_first();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].message, format!("failure {}", KEPT + 4));
        assert_eq!(recent[KEPT - 1].message, "failure 5");
    }
}
