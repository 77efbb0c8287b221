//! [`OrchestrationStatus`]: what a client sees of an instance.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::message::from_millis;
use crate::store::{InstanceRecord, RuntimeStatus};

/// The status of an orchestration instance.
#[derive(Clone, Debug, PartialEq)]
pub struct OrchestrationStatus {
    /// Instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Running, completed, failed or terminated.
    pub status: RuntimeStatus,
    /// Its input.
    pub input: Value,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Its error (failed) or the reason given (terminated).
    pub error: Option<String>,
    /// Why a running instance is held, `None` if it is not: its code cannot run its history
    /// (a replay took another path than the history records, naming the step and the
    /// difference; or its orchestration is not registered where it ran). A held instance
    /// keeps its history, its pending events and its locks, and resumes when a runtime with
    /// compatible code loads it (at its start, or when it takes the partition over).
    /// `terminate` ends it.
    pub held: Option<String>,
    /// When it was created.
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
}

impl OrchestrationStatus {
    pub(crate) fn from_record(record: InstanceRecord) -> Self {
        let (output, error) = match record.status {
            RuntimeStatus::Completed => (record.output, None),
            RuntimeStatus::Running => (None, None),
            RuntimeStatus::Failed | RuntimeStatus::Terminated => (
                None,
                record.output.map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                }),
            ),
        };
        Self {
            instance_id: record.id,
            name: record.name,
            status: record.status,
            input: record.input,
            output,
            error,
            held: record.held,
            created: from_millis(record.created),
            updated: from_millis(record.updated),
        }
    }

    /// The output as `T` if the instance completed; its error otherwise.
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match self.status {
            RuntimeStatus::Completed => {
                let value = self.output.clone().unwrap_or(Value::Null);
                T::deserialize(&value).map_err(|err| {
                    Error::Serialization(format!(
                        "the orchestration output does not deserialize: {err}"
                    ))
                })
            }
            RuntimeStatus::Failed => Err(Error::OrchestrationFailed(
                self.error.clone().unwrap_or_default(),
            )),
            RuntimeStatus::Terminated => {
                Err(Error::Terminated(self.error.clone().unwrap_or_default()))
            }
            RuntimeStatus::Running => Err(Error::OrchestrationFailed(format!(
                "instance `{}` is still running",
                self.instance_id
            ))),
        }
    }
}
