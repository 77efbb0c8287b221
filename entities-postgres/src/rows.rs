//! Decoding stored rows. A stored value that cannot be decoded fails only what needs it: a
//! message is returned as [`Undecodable`] (for the caller to set aside); an entity state,
//! instance input or output, or history event gives an error of kind `Corrupt` naming its
//! owner.

use entities_core::message::{Body, Message, MessageId, Target};
use entities_core::store::{EntityRecord, InstanceRecord, RuntimeStatus};
use entities_core::{EntityId, StoreError};
use serde::de::DeserializeOwned;
use tokio_postgres::Row;

pub(crate) fn status_text(status: RuntimeStatus) -> &'static str {
    match status {
        RuntimeStatus::Running => "Running",
        RuntimeStatus::Completed => "Completed",
        RuntimeStatus::Failed => "Failed",
        RuntimeStatus::Terminated => "Terminated",
    }
}

pub(crate) fn parse_status(text: &str) -> RuntimeStatus {
    match text {
        "Completed" => RuntimeStatus::Completed,
        "Failed" => RuntimeStatus::Failed,
        "Terminated" => RuntimeStatus::Terminated,
        _ => RuntimeStatus::Running,
    }
}

/// Parses stored JSON; `what` names it in the `Corrupt` error.
fn json<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> String) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::corrupt(what(), text.to_string(), err))
}

fn optional_json<T: DeserializeOwned>(
    text: Option<&str>,
    what: impl FnOnce() -> String,
) -> Result<Option<T>, StoreError> {
    text.map(|text| json(text, what)).transpose()
}

/// Bytes stored for an id, as text (lossily if they are not UTF-8).
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A stored message that cannot be decoded, to be set aside.
pub(crate) struct Undecodable {
    pub(crate) id: MessageId,
    pub(crate) error: String,
}

/// Messages read: those decoded and those that cannot be.
#[derive(Default)]
pub(crate) struct MessageRows {
    pub(crate) messages: Vec<Message>,
    pub(crate) undecodable: Vec<Undecodable>,
}

impl MessageRows {
    /// Takes rows of `id, target, deliver_at, body`.
    pub(crate) fn extend(&mut self, rows: &[Row]) {
        for row in rows {
            let id = row.get::<_, i64>(0) as MessageId;
            match message(row) {
                Ok(message) => self.messages.push(message),
                Err(error) => self.undecodable.push(Undecodable { id, error }),
            }
        }
    }
}

fn message(row: &Row) -> Result<Message, String> {
    let target = std::str::from_utf8(row.get::<_, &[u8]>(1))
        .map_err(|e| format!("the target is not UTF-8: {e}"))?;
    let target = Target::from_key(target).map_err(|e| format!("invalid target: {e}"))?;
    let body: Body = serde_json::from_str(row.get::<_, &str>(3))
        .map_err(|e| format!("the body cannot be decoded: {e}"))?;
    Ok(Message {
        id: row.get::<_, i64>(0) as MessageId,
        target,
        deliver_at: row.get::<_, Option<i64>>(2).map(|t| t as u64),
        body,
    })
}

/// An entity record from `state, lock_owner, last_modified, state_version[, pending]` starting
/// at `first`.
pub(crate) fn entity(
    id: EntityId,
    row: &Row,
    first: usize,
    pending: Option<usize>,
) -> Result<EntityRecord, StoreError> {
    let state = optional_json(row.get::<_, Option<&str>>(first), || {
        format!("the stored state of entity `{id}` cannot be decoded")
    })?;
    Ok(EntityRecord {
        state,
        lock_owner: row.get::<_, Option<&[u8]>>(first + 1).map(text),
        last_modified: row.get::<_, i64>(first + 2) as u64,
        state_version: u32::try_from(row.get::<_, i64>(first + 3))
            .unwrap_or(1)
            .max(1),
        pending_messages: pending.map_or(0, |i| row.get::<_, i64>(i) as u64),
        id,
    })
}

/// An entity id from `name, key` columns 0 and 1.
pub(crate) fn entity_id(row: &Row) -> Result<EntityId, StoreError> {
    let name: &str = row.get(0);
    let key = text(row.get::<_, &[u8]>(1));
    EntityId::try_new(name, key.clone()).map_err(|err| {
        StoreError::corrupt(
            format!("the stored entity id `@{name}@{key}` is not valid"),
            format!("@{name}@{key}"),
            err,
        )
    })
}

/// Columns of an instance record, for [`instance`].
pub(crate) const INSTANCE_COLUMNS: &str = "id, name, status, input, output, created, updated, held";

pub(crate) fn instance(row: &Row) -> Result<InstanceRecord, StoreError> {
    let id = text(row.get::<_, &[u8]>(0));
    let what = |part: &str| {
        format!("the stored {part} of orchestration instance `{id}` cannot be decoded")
    };
    let input = json(row.get::<_, &str>(3), || what("input"))?;
    let output = optional_json(row.get::<_, Option<&str>>(4), || what("output"))?;
    Ok(InstanceRecord {
        name: row.get(1),
        status: parse_status(row.get::<_, &str>(2)),
        input,
        output,
        created: row.get::<_, i64>(5) as u64,
        updated: row.get::<_, i64>(6) as u64,
        held: row.get(7),
        id,
    })
}

/// A history event from `seq, event`.
pub(crate) fn event(instance: &str, row: &Row) -> Result<serde_json::Value, StoreError> {
    let seq: i64 = row.get(0);
    json(row.get::<_, &str>(1), || {
        format!(
            "event {seq} of the history of orchestration instance `{instance}` cannot be decoded"
        )
    })
}

/// A millisecond time or id as PostgreSQL stores it (past `i64::MAX`, `i64::MAX`).
pub(crate) fn int(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}
