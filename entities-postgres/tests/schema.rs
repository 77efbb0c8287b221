//! Schema migrations of `PostgresStore` on a database written by an earlier version of this
//! crate: its rows are kept, and the entity states stored before state versions existed read
//! as version 1.

use entities_core::message::Target;
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
    Store::shutdown(&store).await;
    drop(store);

    // Back to schema 1 (before state versions and idempotency keys), with an entity stored
    // by it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a plain connection");
    let connection = tokio::spawn(connection);
    let id = EntityId::new("Counter", "k");
    let part = partition_of(&Target::Entity(id.clone()), partitions) as i32;
    client
        .batch_execute(
            "ALTER TABLE entities_entities DROP COLUMN state_version; \
             DROP TABLE entities_keys; \
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
    assert_eq!(version, 3);
    Store::shutdown(&store).await;
    drop(client);
    let _ = connection.await;
}
