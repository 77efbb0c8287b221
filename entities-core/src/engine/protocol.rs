//! What clients and tasks tell the engine, and how the engine answers them.

use tokio::sync::{oneshot, Semaphore};

use super::orchestrations::ActivityDone;
use crate::error::StoreError;
use crate::message::{CallReply, Message};
use crate::store::InstanceRecord;

/// Tells a client that the messages it handed to the engine are stored (or their effects
/// committed), or why they are not; and gives back the intake permits they held (see
/// [`Shared::intake`](super::Shared)).
pub(crate) struct Stored {
    pub tx: oneshot::Sender<Result<(), StoreError>>,
    pub permits: u32,
    /// When the engine took the messages in (set by the engine, from the clock reading of
    /// its turn, so that a send costs no reading of its own): a send kept through a store
    /// outage fails once it has waited the store's `unavailable_timeout`.
    pub since: Option<tokio::time::Instant>,
}

impl Stored {
    /// An answer channel for `permits` intake permits.
    pub(crate) fn new(tx: oneshot::Sender<Result<(), StoreError>>, permits: u32) -> Self {
        Self {
            tx,
            permits,
            since: None,
        }
    }

    /// When the messages were taken in: at `now` unless earlier.
    pub(crate) fn taken_in(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
        *self.since.get_or_insert(now)
    }
}

/// Client sends whose commit failed without applying anything (the partition moved, the
/// database could not be reached): sent again once the runtime has recovered, unless they
/// have waited too long by then.
pub(crate) struct Resend {
    /// When the oldest of them was handed over.
    pub since: tokio::time::Instant,
    pub messages: Vec<Message>,
    pub keys: Vec<crate::store::IdempotencyKey>,
    pub acks: Vec<Stored>,
}

/// Whether a failure leaves a client's send to be made again: nothing of it was applied and
/// a later attempt can succeed.
pub(crate) fn resendable(err: &StoreError) -> bool {
    matches!(
        err.kind(),
        crate::error::StoreErrorKind::Fenced | crate::error::StoreErrorKind::Unavailable
    )
}

/// What clients and tasks ask of the engine.
pub(crate) enum Command {
    /// Messages to deliver, with a waiter for a call's reply. With `stored`, the messages are
    /// not stored yet: the engine's next batch stores them (or, if it consumes them, only
    /// their effects) and answers `stored` once it has committed. Without, they are stored.
    Deliver {
        messages: Vec<Message>,
        waiter: Option<(u64, oneshot::Sender<CallReply>)>,
        stored: Option<Stored>,
        /// Idempotency keys the messages claim, stored with them (only with `stored`).
        keys: Vec<crate::store::IdempotencyKey>,
    },
    /// An activity finished.
    ActivityDone(ActivityDone),
    /// Register a waiter for the end of an orchestration instance.
    WatchInstance {
        id: String,
        done: oneshot::Sender<InstanceRecord>,
    },
    /// Tell which queued operations the locks of these entities hold back, one list per id.
    HeldBack {
        ids: Vec<crate::id::EntityId>,
        reply: oneshot::Sender<Vec<Vec<crate::inspect::WaitingOperation>>>,
    },
    /// Cancel a stored scheduled message of an entity if it has not run yet: the engine drops
    /// it from memory and deletes it in its next batch. `found` hears whether it was still
    /// waiting (`None`: its partition is run by another process); `stored` hears once the
    /// deletion committed.
    Cancel {
        /// Boxed: every command moves through the channel at the size of the largest.
        message: Box<Message>,
        found: oneshot::Sender<Option<bool>>,
        stored: Stored,
    },
    /// Stop: wait for operations under way (at most the grace period) and the commits.
    Shutdown(oneshot::Sender<()>),
    /// Answer once the engine is idle (nothing to run, due or under way) with the time the
    /// next stored scheduled message is due, if any: a manual clock's step.
    Settle(oneshot::Sender<Option<u64>>),
}

/// Tells clients that the commit storing their messages landed, or why it did not, and
/// returns their intake permits to `intake` at once (one release per commit, not per sender:
/// the semaphore locks on release).
pub(crate) fn answer_stored(intake: &Semaphore, acks: Vec<Stored>, failure: Option<&StoreError>) {
    let mut permits = 0usize;
    for ack in acks {
        permits += ack.permits as usize;
        let _ = ack.tx.send(match failure {
            None => Ok(()),
            Some(err) => Err(err.clone()),
        });
    }
    if permits > 0 {
        intake.add_permits(permits);
    }
}
