//! The versioned schema and its migrations (tracked in `PRAGMA user_version`).

use entities_core::StoreError;
use rusqlite::Connection;

use crate::sqlite_error;

/// The schema version this crate writes.
pub(crate) const CURRENT_VERSION: i64 = 6;

/// Migrations, in order: `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 0 -> 1: entities, messages, orchestration instances and their histories. Instances and
    // histories are keyed by a sequential number, so that the rows written together (recent
    // instances) share pages; only entity messages are indexed by target (for their counts).
    "CREATE TABLE entities (
        name TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT,
        lock_owner TEXT,
        last_modified INTEGER NOT NULL,
        PRIMARY KEY (name, key)
     ) WITHOUT ROWID;
     CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        deliver_at INTEGER,
        body TEXT NOT NULL
     );
     CREATE INDEX messages_by_entity ON messages (target) WHERE substr(target, 1, 1) = '@';
     CREATE TABLE instances (
        num INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        output TEXT,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
     );
     CREATE INDEX instances_by_status ON instances (status);
     CREATE TABLE history (
        instance INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (instance, seq)
     ) WITHOUT ROWID;",
    // 1 -> 2: messages that cannot be decoded are moved to `set_aside_messages` (as stored,
    // with the reason), so that one bad row stops nothing. Two partial indexes let recovery
    // and the paging of scheduled messages read only the rows they return: one over scheduled
    // messages by time, one over unscheduled messages (by id, the rowid every index ends
    // with). Each message has an entry in exactly one of them.
    "CREATE TABLE set_aside_messages (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        deliver_at INTEGER,
        body TEXT NOT NULL,
        error TEXT NOT NULL,
        set_aside_at INTEGER NOT NULL
     );
     CREATE INDEX messages_scheduled ON messages (deliver_at) WHERE deliver_at IS NOT NULL;
     CREATE INDEX messages_unscheduled ON messages (deliver_at) WHERE deliver_at IS NULL;",
    // 2 -> 3: the locked entities are listed and counted by operators and the metrics; a
    // partial index holds only them (few, and written only when a lock changes).
    "CREATE INDEX entities_locked ON entities (lock_owner) WHERE lock_owner IS NOT NULL;",
    // 3 -> 4: the version of each state's shape (`#[entity(version = N)]`); the states stored
    // before versions existed are version 1.
    "ALTER TABLE entities ADD COLUMN state_version INTEGER NOT NULL DEFAULT 1;",
    // 4 -> 5: idempotency keys of client sends, with what came of each; old ones are deleted
    // by creation time.
    "CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        created INTEGER NOT NULL,
        outcome TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created);",
    // 5 -> 6: why a running instance is held (its code departed from its history); null for
    // the others.
    "ALTER TABLE instances ADD COLUMN held TEXT;",
];

/// The schema version of the database.
fn version(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| sqlite_error("cannot read the schema version", e))
}

/// The error for a database written by a newer version of this crate.
fn newer(version: i64) -> StoreError {
    StoreError::new(format!(
        "the database has schema version {version}, newer than this build understands \
         ({CURRENT_VERSION}); upgrade `entities-sqlite`"
    ))
}

/// Brings the database to [`CURRENT_VERSION`], refusing one written by a newer version.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version = version(conn)?;
    if version > CURRENT_VERSION {
        return Err(newer(version));
    }
    let failed = |e| sqlite_error("cannot migrate the schema", e);
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", (from + 1) as i64)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

/// Checks, without changing anything, that the database has [`CURRENT_VERSION`].
pub(crate) fn check(conn: &Connection) -> Result<(), StoreError> {
    match version(conn)? {
        CURRENT_VERSION => Ok(()),
        version if version > CURRENT_VERSION => Err(newer(version)),
        version => Err(StoreError::new(format!(
            "the database has schema version {version}, older than this build's \
             ({CURRENT_VERSION}); open it once with `SqliteStore::open` to migrate it"
        ))),
    }
}
