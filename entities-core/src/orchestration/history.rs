//! The history of an orchestration instance: turns, the steps it scheduled and what came back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::EntityId;
use crate::message::{Outcome, ReplyTo};

/// One recorded event. A history is a sequence of turns; each starts with `Turn`, lists the
/// inputs applied in that turn, then the steps the code scheduled when polled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Event {
    /// A new turn, at this time (what `current_time` returns during it).
    Turn { time: u64 },
    /// The instance started.
    Started {
        name: String,
        input: Value,
        parent: Option<ReplyTo>,
        /// The first step number of this run (0 unless it continued as new).
        #[serde(default)]
        first_seq: u64,
    },
    /// Step `seq` was scheduled.
    Scheduled { seq: u64, action: Action },
    /// Step `seq` completed.
    Completed { seq: u64, result: Outcome },
    /// An external event was raised.
    Raised { name: String, data: Value },
}

/// A step an orchestration schedules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Action {
    Activity {
        name: String,
        input: Value,
    },
    CallEntity {
        id: EntityId,
        operation: String,
        input: Option<Value>,
    },
    SignalEntity {
        id: EntityId,
        operation: String,
        input: Option<Value>,
        at: Option<u64>,
    },
    Timer {
        fire_at: u64,
    },
    SubOrchestration {
        name: String,
        instance: String,
        input: Value,
    },
    Lock {
        ids: Vec<EntityId>,
    },
    Release {
        ids: Vec<EntityId>,
    },
    /// A marker: the code took the new path of patch `id` here (see
    /// `OrchestrationContext::patched`). Nothing is sent for it.
    Patch {
        id: String,
    },
}

impl Action {
    /// What a replay must reproduce: the kind of step and its target (not its input).
    pub(crate) fn describe(&self) -> String {
        match self {
            Action::Activity { name, .. } => format!("activity `{name}`"),
            Action::CallEntity { id, operation, .. } => format!("call of `{operation}` on {id}"),
            Action::SignalEntity { id, operation, .. } => {
                format!("signal of `{operation}` to {id}")
            }
            Action::Timer { .. } => "timer".to_string(),
            Action::SubOrchestration { name, .. } => format!("sub-orchestration `{name}`"),
            Action::Lock { ids } => format!("lock of {}", list(ids)),
            Action::Release { ids } => format!("release of {}", list(ids)),
            Action::Patch { id } => format!("patch `{id}`"),
        }
    }
}

fn list(ids: &[EntityId]) -> String {
    ids.iter()
        .map(std::string::ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
