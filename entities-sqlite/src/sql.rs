//! Reads, run on the read connections.

use entities_core::message::{Message, Target};
use entities_core::store::{
    EntityQuery, EntityRecord, EntityRecordPage, InstanceRecord, Recovery, RuntimeStatus,
};
use entities_core::EntityId;
use rusqlite::{params, Connection, OptionalExtension, Row};
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

fn bad_data(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn parse_json(text: Option<String>) -> rusqlite::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(bad_data))
        .transpose()
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let target: String = row.get(1)?;
    let body: String = row.get(3)?;
    Ok(Message {
        id: row.get::<_, i64>(0)? as u64,
        target: Target::from_key(&target).map_err(bad_data)?,
        deliver_at: row.get::<_, Option<i64>>(2)?.map(|t| t as u64),
        body: serde_json::from_str(&body).map_err(bad_data)?,
    })
}

pub(crate) fn recover(conn: &Connection, horizon: u64) -> rusqlite::Result<Recovery> {
    let mut stmt = conn.prepare(
        "SELECT id, target, deliver_at, body FROM messages \
         WHERE deliver_at IS NULL OR deliver_at <= ?1 ORDER BY id",
    )?;
    let messages = stmt
        .query_map([horizon.min(i64::MAX as u64) as i64], message_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let max: Option<i64> = conn.query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))?;
    Ok(Recovery {
        messages,
        max_message_id: max.unwrap_or(0) as u64,
    })
}

pub(crate) fn scheduled_messages(
    conn: &Connection,
    after: (u64, u64),
    until: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Message>> {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    conn.prepare_cached(
        "SELECT id, target, deliver_at, body FROM messages \
         WHERE deliver_at IS NOT NULL AND (deliver_at, id) > (?1, ?2) AND deliver_at <= ?3 \
         ORDER BY deliver_at, id LIMIT ?4",
    )?
    .query_map(
        params![clamp(after.0), clamp(after.1), clamp(until), limit as i64],
        message_from_row,
    )?
    .collect()
}

pub(crate) fn load_entities(
    conn: &Connection,
    ids: &[EntityId],
) -> rusqlite::Result<Vec<EntityRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, lock_owner, last_modified FROM entities WHERE name = ?1 AND key = ?2",
    )?;
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        let row = stmt
            .query_row(params![id.name(), id.key()], |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        if let Some((state, lock_owner, last_modified)) = row {
            records.push(EntityRecord {
                id: id.clone(),
                state: parse_json(state)?,
                lock_owner,
                last_modified: last_modified as u64,
                pending_messages: 0,
            });
        }
    }
    Ok(records)
}

pub(crate) fn read_entity(
    conn: &Connection,
    id: &EntityId,
) -> rusqlite::Result<Option<EntityRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, lock_owner, last_modified, \
         (SELECT COUNT(*) FROM messages WHERE target = ?3 AND substr(target, 1, 1) = '@') \
         FROM entities WHERE name = ?1 AND key = ?2",
    )?;
    stmt.query_row(params![id.name(), id.key(), id.to_string()], |row| {
        Ok(EntityRecord {
            id: id.clone(),
            state: parse_json(row.get(0)?)?,
            lock_owner: row.get(1)?,
            last_modified: row.get::<_, i64>(2)? as u64,
            pending_messages: row.get::<_, i64>(3)? as u64,
        })
    })
    .optional()
}

/// A page of entities. The key prefix is compared as bytes: on text, SQLite's `length` and
/// `substr` stop at a NUL character. `key >= ?3` starts the range scan of the primary key.
pub(crate) fn query_entities(
    conn: &Connection,
    query: &EntityQuery,
) -> rusqlite::Result<EntityRecordPage> {
    let (after_name, after_key) = match &query.continuation {
        Some(token) => serde_json::from_str::<(String, String)>(token).map_err(bad_data)?,
        None => (String::new(), String::new()),
    };
    let first_page = query.continuation.is_none();
    let mut stmt = conn.prepare_cached(
        "SELECT name, key, CASE WHEN ?1 THEN state END, lock_owner, last_modified, \
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
    let limit = query.page_size as i64 + 1;
    let mut entities = stmt
        .query_map(
            params![
                query.include_state,
                query.name,
                query.key_prefix,
                query.include_stateless,
                first_page,
                after_name,
                after_key,
                limit
            ],
            |row: &Row<'_>| {
                let name: String = row.get(0)?;
                let key: String = row.get(1)?;
                Ok(EntityRecord {
                    id: EntityId::try_new(&name, key).map_err(bad_data)?,
                    state: parse_json(row.get(2)?)?,
                    lock_owner: row.get(3)?,
                    last_modified: row.get::<_, i64>(4)? as u64,
                    pending_messages: row.get::<_, i64>(5)? as u64,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let continuation = if entities.len() > query.page_size {
        entities.truncate(query.page_size);
        let last = entities.last().expect("page is not empty");
        Some(serde_json::to_string(&(last.id.name(), last.id.key())).map_err(bad_data)?)
    } else {
        None
    };
    Ok(EntityRecordPage {
        entities,
        continuation,
    })
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        status: parse_status(&row.get::<_, String>(2)?),
        input: parse_json(Some(row.get(3)?))?.unwrap_or(Value::Null),
        output: parse_json(row.get(4)?)?,
        created: row.get::<_, i64>(5)? as u64,
        updated: row.get::<_, i64>(6)? as u64,
    })
}

const INSTANCE_COLUMNS: &str = "id, name, status, input, output, created, updated";

pub(crate) fn read_instance(
    conn: &Connection,
    id: &str,
) -> rusqlite::Result<Option<InstanceRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
    ))?
    .query_row([id], instance_from_row)
    .optional()
}

pub(crate) fn running_instances(conn: &Connection) -> rusqlite::Result<Vec<InstanceRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE status = 'Running'"
    ))?
    .query_map([], instance_from_row)?
    .collect()
}

pub(crate) fn read_history(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Value>> {
    conn.prepare_cached(
        "SELECT event FROM history WHERE instance = (SELECT num FROM instances WHERE id = ?1) \
         ORDER BY seq",
    )?
    .query_map([id], |row| {
        let text: String = row.get(0)?;
        serde_json::from_str(&text).map_err(bad_data)
    })?
    .collect()
}
