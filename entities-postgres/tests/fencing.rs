//! Fencing, deterministically: a process whose leases were taken over cannot commit for the
//! partitions it lost, nor claim their messages, and learns that it lost them.

use std::time::Duration;

use entities_core::message::{Body, Message, Target};
use entities_core::store::{Batch, EntityRecord, OwnershipEvent};
use entities_core::{EntityId, Store, StoreErrorKind};
use entities_postgres::test_server::TestServer;
use entities_postgres::{PostgresOptions, PostgresStore};

fn options() -> PostgresOptions {
    PostgresOptions {
        partitions: 4,
        lease: Duration::from_secs(2),
        ..Default::default()
    }
}

fn record(key: &str, value: i64) -> EntityRecord {
    EntityRecord {
        id: EntityId::new("Counter", key),
        state: Some(serde_json::json!(value)),
        state_version: 1,
        lock_owner: None,
        last_modified: 1,
        pending_messages: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_lost_its_partitions_commits_nothing_for_them() {
    let Some(server) = TestServer::start_or_skip("fencing") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let old = PostgresStore::connect_with(&url, options()).await.unwrap();
    let mut events = old.partitioned().unwrap().take_events().unwrap();
    old.recover(0).await.unwrap();
    assert_eq!(old.held_partitions(), [0, 1, 2, 3]);
    old.commit(Batch {
        entities: vec![record("a", 1)],
        ..Batch::default()
    })
    .await
    .expect("the owner commits");

    // The old owner stops renewing (as if paused): its leases expire, a new process takes
    // every partition.
    old.pause_lease_rounds();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .execute(
            "UPDATE entities_leases SET expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE entities_members SET expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    let new = PostgresStore::connect_with(&url, options()).await.unwrap();
    new.recover(0).await.unwrap();
    // An expired lease is taken once the new process has seen it unrenewed for a whole lease
    // period of its own lease rounds.
    let deadline = std::time::Instant::now() + options().lease * 4;
    while new.held_partitions() != [0, 1, 2, 3] {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired leases were never taken: {:?}",
            new.held_partitions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The old owner still believes it holds them: its writes are refused as fenced.
    let err = old
        .commit(Batch {
            entities: vec![record("a", 2)],
            ..Batch::default()
        })
        .await
        .expect_err("a fenced process cannot write an entity");
    assert_eq!(err.kind(), StoreErrorKind::Fenced, "{err}");
    let state = new
        .read_entity(&EntityId::new("Counter", "a"))
        .await
        .unwrap();
    assert_eq!(state.unwrap().state, Some(serde_json::json!(1)));

    // A message stored for the partition is claimed by the new owner only.
    let message = Message {
        id: new.partitioned().unwrap().id_base(),
        target: Target::Entity(EntityId::new("Counter", "a")),
        deliver_at: None,
        body: Body::Operation {
            name: "add".into(),
            input: Some(serde_json::json!(1)),
            reply: None,
            sender: None,
        },
    };
    let mut batch = Batch {
        produced: vec![message.clone()],
        ..Batch::default()
    };
    batch.remote.insert(message.id);
    new.commit(batch).await.unwrap();
    old.resume().await.unwrap();
    let stale = old
        .partitioned()
        .unwrap()
        .arrivals(&[0, 1, 2, 3], 100)
        .await
        .unwrap();
    assert!(
        stale.is_empty(),
        "a fenced process claims nothing: {stale:?}"
    );
    let fresh = new
        .partitioned()
        .unwrap()
        .arrivals(&[0, 1, 2, 3], 100)
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].id, message.id);

    // Consuming it from the old owner's stale memory is refused too.
    let err = old
        .commit(Batch {
            consumed: vec![message.id],
            ..Batch::default()
        })
        .await
        .expect_err("a fenced process cannot consume");
    assert_eq!(err.kind(), StoreErrorKind::Fenced, "{err}");

    // Its next lease round tells the old owner's runtime what it lost.
    old.recover(0).await.unwrap();
    let mut lost = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let OwnershipEvent::Lost(parts) = event {
            lost.extend(parts);
        }
    }
    lost.sort_unstable();
    assert_eq!(lost, [0, 1, 2, 3]);
    assert!(old.held_partitions().is_empty());
}
