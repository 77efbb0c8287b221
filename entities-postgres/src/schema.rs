//! The versioned schema, created and migrated on connect. Several processes may connect at
//! once: the migration runs under a transaction-level advisory lock, so one of them creates
//! the schema and the others find it done.

use tokio_postgres::Client;

use crate::{pg_error, StoreError};

/// The schema version this crate writes.
pub(crate) const VERSION: i64 = 5;

/// The class of this crate's advisory locks (the first key of the two-key form); the second
/// key is a partition number, or -1 for the schema.
pub(crate) const LOCK_CLASS: i32 = 0x656e_7469;

/// Migrations, in order: `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`. Keys,
/// instance ids and message targets are stored as bytes (`bytea`), since PostgreSQL text
/// cannot hold a NUL character and compares by locale; entity names use the "C" collation.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE entities_entities (
        name TEXT COLLATE \"C\" NOT NULL,
        key BYTEA NOT NULL,
        part INT NOT NULL,
        state TEXT,
        lock_owner BYTEA,
        last_modified BIGINT NOT NULL,
        PRIMARY KEY (name, key)
     );
     CREATE TABLE entities_messages (
        id BIGINT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        part INT NOT NULL,
        target BYTEA NOT NULL,
        deliver_at BIGINT,
        body TEXT NOT NULL,
        fresh BOOLEAN NOT NULL
     );
     CREATE INDEX entities_messages_by_part ON entities_messages (part, seq);
     CREATE INDEX entities_messages_fresh ON entities_messages (part, seq) WHERE fresh;
     CREATE INDEX entities_messages_scheduled ON entities_messages (part, deliver_at, id)
        WHERE deliver_at IS NOT NULL;
     CREATE INDEX entities_messages_by_target ON entities_messages (target);
     CREATE TABLE entities_instances (
        id BYTEA PRIMARY KEY,
        part INT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        output TEXT,
        created BIGINT NOT NULL,
        updated BIGINT NOT NULL
     );
     CREATE INDEX entities_instances_by_status ON entities_instances (status);
     CREATE TABLE entities_history (
        instance BYTEA NOT NULL,
        seq BIGINT NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (instance, seq)
     );
     CREATE TABLE entities_set_aside (
        id BIGINT PRIMARY KEY,
        target BYTEA NOT NULL,
        deliver_at BIGINT,
        body TEXT NOT NULL,
        error TEXT NOT NULL,
        set_aside_at BIGINT NOT NULL
     );
     CREATE TABLE entities_leases (
        part INT PRIMARY KEY,
        owner BIGINT,
        epoch BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE entities_members (
        node BIGINT PRIMARY KEY,
        expires_at TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE entities_replies (
        waiter BIGINT PRIMARY KEY,
        node BIGINT NOT NULL,
        reply TEXT NOT NULL,
        created TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE INDEX entities_replies_by_node ON entities_replies (node);
     CREATE SEQUENCE entities_nodes;",
    // 1 -> 2: the version of each state's shape (`#[entity(version = N)]`); the states stored
    // before versions existed are version 1.
    "ALTER TABLE entities_entities ADD COLUMN state_version BIGINT NOT NULL DEFAULT 1;",
    // 2 -> 3: idempotency keys of client sends, with what came of each; old ones are deleted
    // by creation time.
    "CREATE TABLE entities_keys (
        key TEXT COLLATE \"C\" PRIMARY KEY,
        created BIGINT NOT NULL,
        outcome TEXT NOT NULL
     );
     CREATE INDEX entities_keys_by_created ON entities_keys (created);",
    // 3 -> 4: each arrival records the transaction that stored it, so that the owner of a
    // partition takes arrivals by a cursor over transaction ids (see `crate::arrivals`)
    // instead of marking each one taken. Other messages leave it null. Arrivals stored
    // before have 0, where every cursor starts. One index by partition and target serves
    // both a partition's recovery and a target's messages (its partition is known), one
    // index fewer for every message stored.
    "ALTER TABLE entities_messages ADD COLUMN xid BIGINT;
     UPDATE entities_messages SET xid = 0 WHERE fresh;
     DROP INDEX entities_messages_fresh;
     CREATE INDEX entities_messages_arrivals ON entities_messages (part, xid, seq) WHERE fresh;
     DROP INDEX entities_messages_by_part;
     DROP INDEX entities_messages_by_target;
     CREATE INDEX entities_messages_by_part_target ON entities_messages (part, target);",
    // 4 -> 5: why a running instance is held (its code departed from its history); null for
    // the others.
    "ALTER TABLE entities_instances ADD COLUMN held TEXT;",
];

/// Creates or migrates the schema; returns the partition count (fixed when the schema was
/// created, from `partitions`).
pub(crate) async fn migrate(client: &mut Client, partitions: u32) -> Result<u32, StoreError> {
    let failed = |e| pg_error("cannot create or migrate the schema", e);
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1, -1)", &[&LOCK_CLASS])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS entities_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    )
    .await
    .map_err(failed)?;
    let version: i64 = tx
        .query_opt("SELECT value FROM entities_meta WHERE key = 'version'", &[])
        .await
        .map_err(failed)?
        .map_or(0, |row| row.get(0));
    if version > VERSION {
        return Err(StoreError::new(format!(
            "the database has schema version {version}, newer than this build understands \
             ({VERSION}); upgrade `entities-postgres`"
        )));
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.batch_execute(sql).await.map_err(failed)?;
    }
    if version == 0 {
        tx.execute(
            "INSERT INTO entities_meta (key, value) VALUES ('partitions', $1)",
            &[&i64::from(partitions)],
        )
        .await
        .map_err(failed)?;
        tx.execute(
            "INSERT INTO entities_leases (part, owner, epoch, expires_at) \
             SELECT p, NULL, 0, '-infinity' FROM generate_series(0, $1 - 1) p",
            &[&(partitions as i32)],
        )
        .await
        .map_err(failed)?;
    }
    tx.execute(
        "INSERT INTO entities_meta (key, value) VALUES ('version', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&VERSION],
    )
    .await
    .map_err(failed)?;
    let count: i64 = tx
        .query_one(
            "SELECT value FROM entities_meta WHERE key = 'partitions'",
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    tx.commit().await.map_err(failed)?;
    Ok(count as u32)
}
