//! Reads, run on the read connections. A stored value that cannot be decoded fails only what
//! needs it: a message is returned as [`Undecodable`] (for the caller to set aside), an entity
//! state, instance input or output, or history event gives an error of kind `Corrupt` naming
//! its owner.

use entities_core::message::{Body, Message, MessageId, Target};
use entities_core::store::{
    EntityQuery, EntityRecord, EntityRecordPage, IdempotencyKey, InstanceQuery, InstanceRecord,
    InstanceRecordPage, LockRecord, RuntimeStatus, SetAsideMessage, StoreStats,
};
use entities_core::{EntityId, StoreError};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Params, Row};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) fn status_text(status: RuntimeStatus) -> &'static str {
    match status {
        RuntimeStatus::Running => "Running",
        RuntimeStatus::Completed => "Completed",
        RuntimeStatus::Failed => "Failed",
        RuntimeStatus::Terminated => "Terminated",
    }
}

fn parse_status(text: &str) -> RuntimeStatus {
    match text {
        "Completed" => RuntimeStatus::Completed,
        "Failed" => RuntimeStatus::Failed,
        "Terminated" => RuntimeStatus::Terminated,
        _ => RuntimeStatus::Running,
    }
}

/// The error of a read: SQLite's, or a stored value that cannot be decoded.
pub(crate) enum ReadError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for ReadError {
    fn from(err: rusqlite::Error) -> Self {
        ReadError::Sqlite(err)
    }
}

impl From<StoreError> for ReadError {
    fn from(err: StoreError) -> Self {
        ReadError::Store(err)
    }
}

impl From<ReadError> for StoreError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Sqlite(err) => crate::sqlite_error("sqlite read failed", err),
            ReadError::Store(err) => err,
        }
    }
}

type ReadResult<T> = Result<T, ReadError>;

/// A stored value as text, whatever its type (lossily if it is not UTF-8).
fn lossy(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

/// Parses a stored JSON value.
fn parse<T: DeserializeOwned>(value: ValueRef<'_>) -> serde_json::Result<T> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => serde_json::from_slice(bytes),
        other => serde_json::from_str(&lossy(other)),
    }
}

/// Parses a stored JSON value; `what` names it in the `Corrupt` error if it cannot be decoded.
fn json<T: DeserializeOwned>(
    value: ValueRef<'_>,
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    parse(value).map_err(|err| StoreError::corrupt(what(), lossy(value), err))
}

/// [`json`] for a nullable column.
fn optional_json<T: DeserializeOwned>(
    value: ValueRef<'_>,
    what: impl FnOnce() -> String,
) -> Result<Option<T>, StoreError> {
    match value {
        ValueRef::Null => Ok(None),
        value => json(value, what).map(Some),
    }
}

/// A millisecond time or message id as SQLite stores it (past `i64::MAX`, `i64::MAX`).
fn sql_int(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

/// A stored message that cannot be decoded, to be set aside.
pub(crate) struct Undecodable {
    /// The message id.
    pub(crate) id: MessageId,
    /// Its stored target, as text.
    pub(crate) target: String,
    /// Why it cannot be decoded.
    pub(crate) error: String,
}

/// Messages read: those decoded and those that cannot be.
#[derive(Default)]
pub(crate) struct MessageRows {
    pub(crate) messages: Vec<Message>,
    pub(crate) undecodable: Vec<Undecodable>,
}

/// Every unscheduled message, by id (through the partial index `messages_unscheduled`).
const UNSCHEDULED: &str =
    "SELECT id, target, deliver_at, body FROM messages WHERE deliver_at IS NULL ORDER BY id";

/// Messages due by `?1` (through `messages_scheduled`; sorted by id afterwards).
const DUE: &str = "SELECT id, target, deliver_at, body FROM messages \
                   WHERE deliver_at <= ?1 ORDER BY deliver_at, id";

/// Messages scheduled at `?1` with an id above `?2`: the rest of the cursor's time.
const SCHEDULED_AT: &str = "SELECT id, target, deliver_at, body FROM messages \
                            WHERE deliver_at = ?1 AND id > ?2 ORDER BY id";

/// Messages scheduled after `?1` and by `?2`, by time then id.
const SCHEDULED_AFTER: &str = "SELECT id, target, deliver_at, body FROM messages \
                               WHERE deliver_at > ?1 AND deliver_at <= ?2 ORDER BY deliver_at, id";

/// The highest message id in either table.
const MAX_MESSAGE_ID: &str = "SELECT MAX(m) FROM (SELECT MAX(id) AS m FROM messages \
                              UNION ALL SELECT MAX(id) FROM set_aside_messages)";

/// The queries on `messages` of recovery and paging, for the query plan test.
#[cfg(test)]
pub(crate) const MESSAGE_QUERIES: [&str; 5] = [
    UNSCHEDULED,
    DUE,
    SCHEDULED_AT,
    SCHEDULED_AFTER,
    MAX_MESSAGE_ID,
];

/// Decodes a message row (`id, target, deliver_at, body`).
fn decode_message(row: &Row<'_>) -> rusqlite::Result<Result<Message, Undecodable>> {
    let id = row.get::<_, i64>(0)? as u64;
    let (target, deliver_at, body) = (row.get_ref(1)?, row.get_ref(2)?, row.get_ref(3)?);
    let decoded = (|| {
        let key = match target {
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map_err(|e| format!("the target is not valid UTF-8: {e}"))?,
            other => return Err(format!("the target is a {}, not text", other.data_type())),
        };
        let target = Target::from_key(key).map_err(|e| format!("bad target: {e}"))?;
        let deliver_at = match deliver_at {
            ValueRef::Null => None,
            ValueRef::Integer(at) if at >= 0 => Some(at as u64),
            other => return Err(format!("bad delivery time `{}`", lossy(other))),
        };
        let body: Body = parse(body).map_err(|e| format!("the body cannot be decoded: {e}"))?;
        Ok(Message {
            id,
            target,
            deliver_at,
            body,
        })
    })();
    Ok(decoded.map_err(|error| Undecodable {
        id,
        target: lossy(target),
        error,
    }))
}

/// Reads the messages of `sql` into `rows`, until `rows` holds `limit` decoded messages.
fn read_messages(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    limit: usize,
    rows: &mut MessageRows,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut cursor = stmt.query(params)?;
    while rows.messages.len() < limit {
        let Some(row) = cursor.next()? else {
            break;
        };
        match decode_message(row)? {
            Ok(message) => rows.messages.push(message),
            Err(bad) => rows.undecodable.push(bad),
        }
    }
    Ok(())
}

/// The stored messages that are unscheduled or due by `horizon`, in id order, and the highest
/// message id of either table, read in one snapshot.
pub(crate) fn recover(conn: &Connection, horizon: u64) -> ReadResult<(MessageRows, MessageId)> {
    let tx = conn.unchecked_transaction()?;
    let mut rows = MessageRows::default();
    read_messages(&tx, UNSCHEDULED, [], usize::MAX, &mut rows)?;
    read_messages(&tx, DUE, [sql_int(horizon)], usize::MAX, &mut rows)?;
    // Both parts are in id order already: a merge.
    rows.messages.sort_by_key(|m| m.id);
    let max: Option<i64> = tx.query_row(MAX_MESSAGE_ID, [], |row| row.get(0))?;
    Ok((rows, max.unwrap_or(0) as u64))
}

/// Stored messages scheduled after the `(deliver_at, id)` cursor `after` and by `until`, by
/// time then id, until `limit` of them decode.
pub(crate) fn scheduled_messages(
    conn: &Connection,
    after: (u64, MessageId),
    until: u64,
    limit: usize,
) -> ReadResult<MessageRows> {
    let (at, id, until) = (sql_int(after.0), sql_int(after.1), sql_int(until));
    let tx = conn.unchecked_transaction()?;
    let mut rows = MessageRows::default();
    // Two ranges rather than one row-value comparison: SQLite would seek on the time only and
    // step over every message of the cursor's time already read.
    if at <= until {
        read_messages(&tx, SCHEDULED_AT, [at, id], limit, &mut rows)?;
    }
    read_messages(&tx, SCHEDULED_AFTER, [at, until], limit, &mut rows)?;
    Ok(rows)
}

/// The scheduled messages of one target (of an entity through the index of entity messages
/// by target), by time then id.
pub(crate) fn scheduled_for(conn: &Connection, target: &Target) -> ReadResult<MessageRows> {
    let sql = match target {
        Target::Entity(_) => {
            "SELECT id, target, deliver_at, body FROM messages \
             WHERE target = ?1 AND substr(target, 1, 1) = '@' AND deliver_at IS NOT NULL \
             ORDER BY deliver_at, id"
        }
        _ => {
            "SELECT id, target, deliver_at, body FROM messages \
             WHERE target = ?1 AND deliver_at IS NOT NULL ORDER BY deliver_at, id"
        }
    };
    let mut rows = MessageRows::default();
    read_messages(conn, sql, [target.to_string()], usize::MAX, &mut rows)?;
    Ok(rows)
}

/// Up to `limit` entities named `name` with a state, no lock and no stored message, last
/// written before `before`.
pub(crate) fn idle_entities(
    conn: &Connection,
    name: &str,
    before: u64,
    limit: usize,
) -> ReadResult<Vec<EntityId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key FROM entities e WHERE name = ?1 AND last_modified < ?2 \
         AND state IS NOT NULL AND lock_owner IS NULL AND NOT EXISTS \
         (SELECT 1 FROM messages WHERE target = '@' || e.name || '@' || e.key \
          AND substr(target, 1, 1) = '@') \
         LIMIT ?3",
    )?;
    let keys = stmt.query_map(
        params![name, sql_int(before), limit.min(i64::MAX as usize) as i64],
        |row| row.get::<_, String>(0),
    )?;
    let mut ids = Vec::new();
    for key in keys {
        let key = key?;
        match EntityId::try_new(name, key.clone()) {
            Ok(id) => ids.push(id),
            Err(err) => {
                return Err(StoreError::corrupt(
                    format!("the stored entity id `@{name}@{key}` is not valid"),
                    format!("@{name}@{key}"),
                    err,
                )
                .into())
            }
        }
    }
    Ok(ids)
}

/// The messages set aside, by id.
pub(crate) fn set_aside_messages(conn: &Connection) -> ReadResult<Vec<SetAsideMessage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, target, deliver_at, body, error, set_aside_at FROM set_aside_messages \
         ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(SetAsideMessage {
            id: row.get::<_, i64>(0)? as u64,
            target: lossy(row.get_ref(1)?),
            deliver_at: match row.get_ref(2)? {
                ValueRef::Null => None,
                ValueRef::Integer(at) => Some(at.max(0) as u64),
                other => lossy(other).parse().ok(),
            },
            body: lossy(row.get_ref(3)?),
            error: lossy(row.get_ref(4)?),
            set_aside_at: row.get::<_, i64>(5)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The record of entity `id` from the columns `state, lock_owner, last_modified,
/// state_version` starting at `first`, with its count of pending messages from column `pending`, if given.
fn entity_record(
    id: EntityId,
    row: &Row<'_>,
    first: usize,
    pending: Option<usize>,
) -> rusqlite::Result<Result<EntityRecord, StoreError>> {
    let state = optional_json(row.get_ref(first)?, || {
        format!("the stored state of entity `{id}` cannot be decoded")
    });
    let state = match state {
        Ok(state) => state,
        Err(err) => return Ok(Err(err)),
    };
    Ok(Ok(EntityRecord {
        id,
        state,
        lock_owner: row.get(first + 1)?,
        last_modified: row.get::<_, i64>(first + 2)? as u64,
        state_version: u32::try_from(row.get::<_, i64>(first + 3)?)
            .unwrap_or(1)
            .max(1),
        pending_messages: match pending {
            Some(column) => row.get::<_, i64>(column)? as u64,
            None => 0,
        },
    }))
}

/// The entities of `ids` that exist, in that order, read in one snapshot: a batch that commits
/// meanwhile is seen whole or not at all.
pub(crate) fn load_entities(conn: &Connection, ids: &[EntityId]) -> ReadResult<Vec<EntityRecord>> {
    let tx = conn.unchecked_transaction()?;
    let mut stmt = tx.prepare_cached(
        "SELECT state, lock_owner, last_modified, state_version FROM entities \
         WHERE name = ?1 AND key = ?2",
    )?;
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        let record = stmt
            .query_row(params![id.name(), id.key()], |row| {
                entity_record(id.clone(), row, 0, None)
            })
            .optional()?;
        if let Some(record) = record {
            records.push(record?);
        }
    }
    Ok(records)
}

/// The stored idempotency key `key`.
pub(crate) fn idempotency_key(conn: &Connection, key: &str) -> ReadResult<Option<IdempotencyKey>> {
    let mut stmt =
        conn.prepare_cached("SELECT created, outcome FROM idempotency_keys WHERE key = ?1")?;
    let row = stmt
        .query_row([key], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .optional()?;
    let Some((created, outcome)) = row else {
        return Ok(None);
    };
    let outcome = serde_json::from_str(&outcome).map_err(|err| {
        StoreError::corrupt(
            format!("the stored outcome of idempotency key `{key}` is not JSON"),
            outcome.clone(),
            err,
        )
    })?;
    Ok(Some(IdempotencyKey {
        key: key.to_string(),
        created: created.max(0) as u64,
        outcome,
    }))
}

pub(crate) fn read_entity(conn: &Connection, id: &EntityId) -> ReadResult<Option<EntityRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, lock_owner, last_modified, state_version, \
         (SELECT COUNT(*) FROM messages WHERE target = ?3 AND substr(target, 1, 1) = '@') \
         FROM entities WHERE name = ?1 AND key = ?2",
    )?;
    let record = stmt
        .query_row(params![id.name(), id.key(), id.to_string()], |row| {
            entity_record(id.clone(), row, 0, Some(4))
        })
        .optional()?;
    Ok(record.transpose()?)
}

/// An entity row of a query page (`name, key, state, lock_owner, last_modified,
/// state_version, pending`).
fn queried_entity(row: &Row<'_>) -> rusqlite::Result<Result<EntityRecord, StoreError>> {
    let name: String = row.get(0)?;
    let key: String = row.get(1)?;
    let id = match EntityId::try_new(&name, key.clone()) {
        Ok(id) => id,
        Err(err) => {
            let what = format!("the stored entity id `@{name}@{key}` is not valid");
            return Ok(Err(StoreError::corrupt(
                what,
                format!("@{name}@{key}"),
                err,
            )));
        }
    };
    entity_record(id, row, 2, Some(6))
}

/// A page of entities. The name is compared case-insensitively (names are stored lower-cased),
/// the key prefix as bytes: on text, SQLite's `length` and `substr` stop at a NUL character.
/// `key >= ?3` starts the range scan of the primary key. A page size of 0 counts as 1.
pub(crate) fn query_entities(
    conn: &Connection,
    query: &EntityQuery,
) -> ReadResult<EntityRecordPage> {
    let (after_name, after_key) = match &query.continuation {
        Some(token) => serde_json::from_str::<(String, String)>(token)
            .map_err(|e| StoreError::with_source("invalid continuation token", e))?,
        None => (String::new(), String::new()),
    };
    let first_page = query.continuation.is_none();
    let name = query.name.as_ref().map(|name| name.to_lowercase());
    let page_size = query.page_size.max(1);
    let mut stmt = conn.prepare_cached(
        "SELECT name, key, CASE WHEN ?1 THEN state END, lock_owner, last_modified, state_version, \
           (SELECT COUNT(*) FROM messages m \
            WHERE m.target = '@' || e.name || '@' || e.key AND substr(m.target, 1, 1) = '@') \
         FROM entities e \
         WHERE (?2 IS NULL OR name = ?2) \
           AND (?3 IS NULL OR (key >= ?3 \
                AND substr(CAST(key AS BLOB), 1, length(CAST(?3 AS BLOB))) = CAST(?3 AS BLOB))) \
           AND (?4 OR state IS NOT NULL) \
           AND (?5 OR (name, key) > (?6, ?7)) \
         ORDER BY name, key LIMIT ?8",
    )?;
    let limit = page_size as i64 + 1;
    let mut entities = stmt
        .query_map(
            params![
                query.include_state,
                name,
                query.key_prefix,
                query.include_stateless,
                first_page,
                after_name,
                after_key,
                limit
            ],
            queried_entity,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .collect::<Result<Vec<_>, StoreError>>()?;
    let continuation = if entities.len() > page_size {
        entities.truncate(page_size);
        let last = entities.last().expect("page is not empty");
        Some(serde_json::Value::from(vec![last.id.name(), last.id.key()]).to_string())
    } else {
        None
    };
    Ok(EntityRecordPage {
        entities,
        continuation,
    })
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<Result<InstanceRecord, StoreError>> {
    let id: String = row.get(0)?;
    let what = |part: &str| {
        format!("the stored {part} of orchestration instance `{id}` cannot be decoded")
    };
    let input = json(row.get_ref(3)?, || what("input"));
    let output = optional_json(row.get_ref(4)?, || what("output"));
    let (input, output) = match (input, output) {
        (Ok(input), Ok(output)) => (input, output),
        (Err(err), _) | (_, Err(err)) => return Ok(Err(err)),
    };
    Ok(Ok(InstanceRecord {
        name: row.get(1)?,
        status: parse_status(&row.get::<_, String>(2)?),
        input,
        output,
        created: row.get::<_, i64>(5)? as u64,
        updated: row.get::<_, i64>(6)? as u64,
        held: row.get(7)?,
        id,
    }))
}

const INSTANCE_COLUMNS: &str = "id, name, status, input, output, created, updated, held";

pub(crate) fn read_instance(conn: &Connection, id: &str) -> ReadResult<Option<InstanceRecord>> {
    let record = conn
        .prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
        ))?
        .query_row([id], instance_from_row)
        .optional()?;
    Ok(record.transpose()?)
}

pub(crate) fn running_instances(conn: &Connection) -> ReadResult<Vec<InstanceRecord>> {
    let records = conn
        .prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE status = 'Running'"
        ))?
        .query_map([], instance_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(records.into_iter().collect::<Result<_, StoreError>>()?)
}

/// A page of instances in creation order (`num`, the sequential row number). The
/// continuation is the `num` of the page's last instance.
pub(crate) fn query_instances(
    conn: &Connection,
    query: &InstanceQuery,
) -> ReadResult<InstanceRecordPage> {
    let after: i64 = match &query.continuation {
        Some(token) => token.parse().map_err(|e| {
            StoreError::with_source(format!("invalid continuation token `{token}`"), e)
        })?,
        None => 0,
    };
    let page_size = query.page_size.max(1);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS}, num FROM instances \
         WHERE num > ?1 AND (?2 IS NULL OR name = ?2) AND (?3 IS NULL OR status = ?3) \
           AND (?4 IS NULL OR created >= ?4) AND (?5 IS NULL OR created < ?5) \
           AND (?7 IS NULL OR (status <> 'Running' AND updated < ?7)) \
           AND (?8 IS NULL OR (held IS NOT NULL) = ?8) \
         ORDER BY num LIMIT ?6"
    ))?;
    let rows = stmt
        .query_map(
            params![
                after,
                query.name,
                query.status.map(status_text),
                query.created_from.map(sql_int),
                query.created_to.map(sql_int),
                page_size as i64 + 1,
                query.ended_before.map(sql_int),
                query.held
            ],
            |row| Ok((instance_from_row(row)?, row.get::<_, i64>(8)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = rows.len() > page_size;
    let mut instances = Vec::with_capacity(rows.len().min(page_size));
    let mut last = None;
    for (record, num) in rows.into_iter().take(page_size) {
        instances.push(record?);
        last = Some(num);
    }
    Ok(InstanceRecordPage {
        instances,
        continuation: if more {
            last.map(|n| n.to_string())
        } else {
            None
        },
    })
}

/// Deletes up to `query.page_size` ended instances that `query` selects, oldest first, with
/// their histories (see `Store::purge_instances`); returns how many. Runs in the writer's
/// transaction.
pub(crate) fn purge_instances(conn: &Connection, query: &InstanceQuery) -> rusqlite::Result<u64> {
    let nums = conn
        .prepare_cached(
            "SELECT num FROM instances WHERE status <> 'Running' \
               AND (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR status = ?2) \
               AND (?3 IS NULL OR created >= ?3) AND (?4 IS NULL OR created < ?4) \
               AND (?5 IS NULL OR updated < ?5) \
               AND (?7 IS NULL OR (held IS NOT NULL) = ?7) \
             ORDER BY num LIMIT ?6",
        )?
        .query_map(
            params![
                query.name,
                query.status.map(status_text),
                query.created_from.map(sql_int),
                query.created_to.map(sql_int),
                query.ended_before.map(sql_int),
                query.page_size.max(1) as i64,
                query.held
            ],
            |row| row.get::<_, i64>(0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut history = conn.prepare_cached("DELETE FROM history WHERE instance = ?1")?;
    let mut instance = conn.prepare_cached("DELETE FROM instances WHERE num = ?1")?;
    for num in &nums {
        history.execute([num])?;
        instance.execute([num])?;
    }
    Ok(nums.len() as u64)
}

/// The counts of the metrics.
pub(crate) fn stats(conn: &Connection) -> ReadResult<StoreStats> {
    let instances_by_status = conn
        .prepare_cached("SELECT status, COUNT(*) FROM instances GROUP BY status")?
        .query_map([], |row| {
            Ok((
                parse_status(&row.get::<_, String>(0)?),
                row.get::<_, i64>(1)? as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let count = |sql: &str| -> rusqlite::Result<u64> {
        conn.prepare_cached(sql)?
            .query_row([], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
    };
    Ok(StoreStats {
        instances_by_status,
        instances_held: count("SELECT COUNT(*) FROM instances WHERE held IS NOT NULL")?,
        locked_entities: count("SELECT COUNT(*) FROM entities WHERE lock_owner IS NOT NULL")?,
        scheduled_messages: count("SELECT COUNT(*) FROM messages WHERE deliver_at IS NOT NULL")?,
        messages: count("SELECT COUNT(*) FROM messages")?,
    })
}

/// How many entities of each name have a state, by name.
pub(crate) fn count_entities(conn: &Connection) -> ReadResult<Vec<(String, u64)>> {
    let counts = conn
        .prepare_cached(
            "SELECT name, count(*) FROM entities WHERE state IS NOT NULL \
             GROUP BY name ORDER BY name",
        )?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(counts)
}

/// The locked entities with their lock holders, by name then key.
pub(crate) fn locked_entities(conn: &Connection) -> ReadResult<Vec<LockRecord>> {
    let rows = conn
        .prepare_cached(
            "SELECT name, key, lock_owner FROM entities WHERE lock_owner IS NOT NULL \
             ORDER BY name, key",
        )?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut locks = Vec::with_capacity(rows.len());
    for (name, key, owner) in rows {
        let id = EntityId::try_new(&name, key.clone()).map_err(|err| {
            StoreError::corrupt(
                format!("the stored entity id `@{name}@{key}` is not valid"),
                format!("@{name}@{key}"),
                err,
            )
        })?;
        locks.push(LockRecord { id, owner });
    }
    Ok(locks)
}

pub(crate) fn read_history(conn: &Connection, id: &str) -> ReadResult<Vec<Value>> {
    let events = conn
        .prepare_cached(
            "SELECT seq, event FROM history \
             WHERE instance = (SELECT num FROM instances WHERE id = ?1) ORDER BY seq",
        )?
        .query_map([id], |row| {
            let seq: i64 = row.get(0)?;
            Ok(json(row.get_ref(1)?, || {
                format!(
                    "event {seq} of the history of orchestration instance `{id}` cannot be \
                     decoded"
                )
            }))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(events.into_iter().collect::<Result<_, StoreError>>()?)
}
