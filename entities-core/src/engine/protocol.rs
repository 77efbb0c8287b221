//! What clients and tasks tell the engine, and how the engine answers them.

use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::{OperationError, StoreError};
use crate::message::Message;
use crate::orchestration::engine::ActivityDone;
use crate::store::InstanceRecord;

/// The reply to a client's call.
pub(crate) type CallReply = Result<Option<Value>, OperationError>;

/// Tells a client that the messages it handed to the engine are stored (or their effects
/// committed), or why they are not.
pub(crate) type Stored = oneshot::Sender<Result<(), StoreError>>;

/// What clients and tasks ask of the engine.
pub(crate) enum Command {
    /// Messages to deliver, with a waiter for a call's reply. With `stored`, the messages are
    /// not stored yet: the engine's next batch stores them (or, if it consumes them, only
    /// their effects) and answers `stored` once it has committed. Without, they are stored.
    Deliver {
        messages: Vec<Message>,
        waiter: Option<(u64, oneshot::Sender<CallReply>)>,
        stored: Option<Stored>,
    },
    /// An activity finished.
    ActivityDone(ActivityDone),
    /// Register a waiter for the end of an orchestration instance.
    WatchInstance {
        id: String,
        done: oneshot::Sender<InstanceRecord>,
    },
    /// Stop: wait for operations under way (at most the grace period) and the commits.
    Shutdown(oneshot::Sender<()>),
}

/// Tells clients that the commit storing their messages landed, or why it did not.
pub(crate) fn answer_stored(acks: Vec<Stored>, failure: Option<&StoreError>) {
    for ack in acks {
        let _ = ack.send(match failure {
            None => Ok(()),
            Some(err) => Err(err.clone()),
        });
    }
}
