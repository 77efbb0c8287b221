//! Messages for the tests of the PostgreSQL store, and two ways of storing them as arrivals.

// Each test file uses some of these.
#![allow(dead_code)]

use entities_core::message::{Body, Message, MessageId, Target};
use entities_core::store::Batch;
use entities_core::{partition_of_message, EntityId, Store};
use entities_postgres::PostgresStore;
use serde_json::json;

/// A signal `add(1)` to the counter `key`.
pub(crate) fn add_one(id: MessageId, key: &str) -> Message {
    Message {
        id,
        target: Target::Entity(EntityId::new("Counter", key)),
        deliver_at: None,
        body: Body::Operation {
            name: "add".into(),
            input: Some(json!(1)),
            reply: None,
            sender: None,
        },
    }
}

/// Commits `messages` through the store as arrivals (for the owner to pick up), in one
/// transaction.
pub(crate) async fn store_arrivals(store: &PostgresStore, messages: Vec<Message>) {
    let mut batch = Batch::default();
    for message in messages {
        batch.remote.insert(message.id);
        batch.produced.push(message);
    }
    store.commit(batch).await.expect("arrivals stored");
}

/// Inserts `message` as an arrival in `client`'s transaction, as another process's commit
/// stores it (`partitions`: the store's partition count).
pub(crate) async fn insert_arrival(
    client: &impl tokio_postgres::GenericClient,
    message: &Message,
    partitions: u32,
) {
    client
        .execute(
            "INSERT INTO entities_messages (id, part, target, body, fresh, xid) \
             VALUES ($1, $2, $3, $4, true, pg_current_xact_id()::text::bigint)",
            &[
                &(message.id as i64),
                &(partition_of_message(message, partitions) as i32),
                &message.target.to_string().into_bytes(),
                &serde_json::to_string(&message.body).unwrap(),
            ],
        )
        .await
        .expect("an arrival inserted");
}
