//! Schema migrations of `PostgresStore` on a database written by an earlier version of this
//! crate: its rows are kept, and the entity states stored before state versions existed read
//! as version 1, and messages stored before transaction ids were recorded are found.

mod common;

use common::{add_one, store_arrivals};
use entities_core::message::{MessageId, Target};
use entities_core::{partition_of, EntityId, Store};
use entities_postgres::test_server::TestServer;
use entities_postgres::PostgresStore;
use serde_json::json;

#[tokio::test]
async fn a_schema_1_database_keeps_its_entities_at_state_version_1() {
    let Some(server) = TestServer::start_or_skip("the PostgreSQL schema migration test") else {
        return;
    };
    let url = server.create_database().await.expect("a new database");
    let store = PostgresStore::connect(&url).await.expect("connecting");
    let partitions = store.partitions();
    let id = EntityId::new("Counter", "k");
    let old_message = add_one(store.partitioned().unwrap().id_base(), id.key());
    store.recover(0).await.expect("recovery");
    store_arrivals(&store, vec![old_message.clone()]).await;
    Store::shutdown(&store).await;
    drop(store);

    // Back to schema 1 (before state versions, idempotency keys and held instances), with an
    // entity stored by it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a plain connection");
    let connection = tokio::spawn(connection);
    let part = partition_of(&Target::Entity(id.clone()), partitions) as i32;
    client
        .batch_execute(
            "ALTER TABLE entities_entities DROP COLUMN state_version; \
             ALTER TABLE entities_instances DROP COLUMN held; \
             DROP TABLE entities_keys; \
             DROP INDEX entities_messages_arrivals; \
             ALTER TABLE entities_messages DROP COLUMN xid; \
             CREATE INDEX entities_messages_fresh ON entities_messages (part, seq) WHERE fresh; \
             DROP INDEX entities_messages_by_part_target; \
             CREATE INDEX entities_messages_by_part ON entities_messages (part, seq); \
             CREATE INDEX entities_messages_by_target ON entities_messages (target); \
             UPDATE entities_meta SET value = 1 WHERE key = 'version';",
        )
        .await
        .expect("downgrading the schema");
    client
        .execute(
            "INSERT INTO entities_entities (name, key, part, state, lock_owner, last_modified) \
             VALUES ('counter', $1, $2, '7', NULL, 1)",
            &[&id.key().as_bytes(), &part],
        )
        .await
        .expect("a schema 1 row");

    let store = PostgresStore::connect(&url).await.expect("migrating");
    let record = store
        .read_entity(&id)
        .await
        .expect("read_entity")
        .expect("the row is kept");
    assert_eq!(record.state, Some(json!(7)));
    assert_eq!(record.state_version, 1);
    let version: i64 = client
        .query_one("SELECT value FROM entities_meta WHERE key = 'version'", &[])
        .await
        .expect("the schema version")
        .get(0);
    assert_eq!(version, 5);

    // The message stored under schema 1 is pending work of its partition, once.
    let recovery = store.recover(0).await.expect("recovery");
    let ids: Vec<MessageId> = recovery.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [old_message.id]);
    let new_message = add_one(store.partitioned().unwrap().id_base(), id.key());
    store_arrivals(&store, vec![new_message.clone()]).await;
    let arrivals = store
        .partitioned()
        .unwrap()
        .arrivals(&(0..partitions).collect::<Vec<_>>(), 100)
        .await
        .expect("arrivals");
    let ids: Vec<MessageId> = arrivals.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [new_message.id],
        "only the message stored since recovery"
    );
    Store::shutdown(&store).await;
    drop(client);
    let _ = connection.await;
}
