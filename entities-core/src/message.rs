//! Messages: everything that travels between clients, entities and orchestrations is a message.
//! A message is stored in the same transaction as the operation that sends it (or, from a
//! client, before the send returns) and deleted in the same transaction that records its
//! effect; when both happen in one transaction, it is never written at all.

pub use crate::time::{from_millis, now_millis, to_millis, to_millis_ceil};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::EntityId;

/// A store-wide unique, increasing message number. Messages from one sender are numbered in the
/// order sent, so recovery in number order keeps each sender's order.
pub type MessageId = u64;

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// An entity.
    Entity(EntityId),
    /// An orchestration instance, by instance id.
    Instance(String),
    /// The activity workers.
    Activity,
}

impl Target {
    /// The target whose `Display` form (its key in the store) is `key`.
    pub fn from_key(key: &str) -> Result<Self, crate::error::Error> {
        if let Some(id) = key.strip_prefix('!') {
            Ok(Target::Instance(id.to_string()))
        } else if key == "~activity" {
            Ok(Target::Activity)
        } else {
            key.parse().map(Target::Entity)
        }
    }
}

/// The text the store indexes messages by: `@name@key` for entities, `!id` for instances,
/// `~activity` for the activity workers.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Entity(id) => write!(f, "{id}"),
            Target::Instance(id) => write!(f, "!{id}"),
            Target::Activity => f.write_str("~activity"),
        }
    }
}

/// Where the result of an entity operation, activity or sub-orchestration goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyTo {
    /// An orchestration instance waiting on its step `seq`.
    Instance {
        /// The instance id.
        id: String,
        /// The step waiting for the reply.
        seq: u64,
    },
    /// A client awaiting in this process (not durable: the reply is dropped after a restart).
    Client(u64),
    /// A client awaiting in this process, whose call claimed an idempotency key: the reply
    /// also becomes the key's outcome, in the commit of the operation (durable).
    Keyed {
        /// The waiting call (the id of its message).
        waiter: u64,
        /// The idempotency key.
        key: String,
        /// The request the key is bound to (see `Client::idempotent`), stored with the
        /// answer. Absent in messages stored before keys were bound to requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
}

/// One stored message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    /// The message number.
    pub id: MessageId,
    /// The receiver.
    pub target: Target,
    /// Not delivered before this time (milliseconds since the Unix epoch).
    pub deliver_at: Option<u64>,
    /// What the message says.
    pub body: Body,
}

/// The name of the reserved operation that replaces an entity's state (see
/// [`Client::set_entity_state`](crate::Client::set_entity_state)). Clients cannot send it
/// under this name themselves.
pub(crate) const SET_STATE_OPERATION: &str = "$set_state";

/// Operation names starting with this are reserved for the runtime.
pub(crate) const RESERVED_PREFIX: char = '$';

/// The reply to a call: the operation's result, or why it failed.
pub(crate) type CallReply = Result<Option<Value>, crate::error::OperationError>;

/// The content of a message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Body {
    /// Run an operation on an entity.
    Operation {
        /// Operation name.
        name: String,
        /// Operation input, if any.
        input: Option<Value>,
        /// Where the result goes (a call), or `None` (a signal).
        reply: Option<ReplyTo>,
        /// The orchestration instance that sent it, if any (lets a lock holder's calls through).
        sender: Option<String>,
    },
    /// Lock request of a critical section: lock this entity, then pass the request on to
    /// `ids[position + 1]`, or grant the lock to `owner` after the last one.
    LockRequest {
        /// The orchestration instance asking.
        owner: String,
        /// All entities of the section, in lock order.
        ids: Vec<EntityId>,
        /// Index of the receiving entity in `ids`.
        position: usize,
        /// The owner's step waiting for the grant.
        seq: u64,
    },
    /// Ends `owner`'s lock on the receiving entity.
    Release {
        /// The orchestration instance that held the lock.
        owner: String,
    },
    /// Starts an orchestration instance.
    Start {
        /// Orchestration name.
        name: String,
        /// Its input.
        input: Value,
        /// The parent waiting for the output, for a sub-orchestration.
        parent: Option<ReplyTo>,
    },
    /// The result of step `seq` of an orchestration.
    Completion {
        /// The step.
        seq: u64,
        /// Its value, or an error message.
        result: Outcome,
    },
    /// All entities of a critical section are locked for step `seq` of the receiving instance.
    LockGranted {
        /// The step waiting for the grant.
        seq: u64,
        /// The locked entities (released again if the instance has ended meanwhile).
        ids: Vec<EntityId>,
    },
    /// An external event raised on an orchestration.
    Event {
        /// Event name.
        name: String,
        /// Event data.
        data: Value,
    },
    /// Cancels the stored scheduled message `message` (due at `at`) of the receiving entity
    /// if it has not run yet; sent by a client of a process that does not run the entity's
    /// partition, to the one that does. The answer (`true` if it was cancelled) goes to
    /// `reply`.
    Cancel {
        /// The scheduled message.
        message: MessageId,
        /// When it is due.
        at: u64,
        /// The client waiting for the answer.
        reply: ReplyTo,
    },
    /// Ends an orchestration instance.
    Terminate {
        /// Why.
        reason: String,
    },
    /// Runs an activity for step `seq` of `instance`.
    Activity {
        /// The orchestration instance.
        instance: String,
        /// The step.
        seq: u64,
        /// Activity name.
        name: String,
        /// Its input.
        input: Value,
    },
    /// The next fire of a recurring schedule: when due, the entity signals itself `name` and
    /// stores the fire after it, in one commit.
    Recurring {
        /// The schedule's id (the id of its first fire).
        schedule: u64,
        /// Operation name.
        name: String,
        /// Operation input, if any.
        input: Option<Value>,
        /// When it fires.
        every: crate::schedule::Schedule,
    },
    /// Deletes the receiving entity's state if it has been idle for `ttl_ms` milliseconds
    /// and holds no lock and no waiting message (sent by the expiry sweeper).
    Expire {
        /// The entity name's time to live, in milliseconds.
        ttl_ms: u64,
    },
}

/// The outcome of an operation, activity, sub-orchestration, lock or timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// It succeeded with this value.
    Ok(Value),
    /// It failed with this error.
    Err(FailureKind, String),
}

/// What kind of step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// An entity operation.
    Operation,
    /// An activity.
    Activity,
    /// A sub-orchestration.
    Orchestration,
}

/// A scheduled one-off signal waiting for an entity (see [`Client::pending_signals`](crate::Client::pending_signals)).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingSignal {
    /// The signal's id, for [`Client::cancel_signal`](crate::Client::cancel_signal).
    pub id: MessageId,
    /// The operation it runs.
    pub operation: String,
    /// Its input, if any.
    pub input: Option<Value>,
    /// When it is due.
    pub due: SystemTime,
}
