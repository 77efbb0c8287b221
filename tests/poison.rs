//! Poison data: a stored state, message or history event that cannot be decoded (written
//! straight into the database here, as bit rot or a manual edit would) fails only its own
//! entity, message or instance; start-up works and everything else runs.

use std::time::Duration;

use entities::prelude::*;
use entities::{Error, SqliteStore, StoreErrorKind};

mod support;
use support::counter;

async fn waiter(ctx: OrchestrationContext, _: ()) -> Result<String, Error> {
    ctx.wait_for_event::<String>("go").await
}

async fn start(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Counter", counter)
        .orchestration("waiter", waiter)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_rows_fail_only_their_own_entity_message_or_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poison.db");
    let good = EntityId::new("Counter", "good");
    let bad = EntityId::new("Counter", "bad");
    {
        let runtime = start(&path).await;
        let client = runtime.client();
        client.signal_entity(&good, "add", &1).await.unwrap();
        client.signal_entity(&bad, "add", &1).await.unwrap();
        for id in ["i-good", "i-bad"] {
            client
                .start_orchestration_with_id("waiter", id, &())
                .await
                .unwrap();
        }
        // Let both instances record their first turn.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let reader = SqliteStore::open_read_only(&path).unwrap();
        while entities::Store::read_history(&reader, "i-bad")
            .await
            .unwrap()
            .is_empty()
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _: i64 = client.call_entity(&bad, "get", &()).await.unwrap();
        runtime.shutdown().await.unwrap();
    }
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute("UPDATE entities SET state = '{oops' WHERE key = 'bad'", [])
            .unwrap();
        db.execute(
            "UPDATE history SET event = 'not an event' \
             WHERE instance = (SELECT num FROM instances WHERE id = 'i-bad') AND seq = 0",
            [],
        )
        .unwrap();
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        db.execute(
            "INSERT INTO messages (id, target, deliver_at, body) VALUES \
             (1000001, '@counter@good', 1, ?1), (1000002, '@counter@good', NULL, 'garbage')",
            [deep],
        )
        .unwrap();
    }
    // Start-up works; only the poisoned entity, message and instance fail.
    let runtime = start(&path).await;
    let client = runtime.client();
    client.signal_entity(&good, "add", &1).await.unwrap();
    let value: i64 = client.call_entity(&good, "get", &()).await.unwrap();
    assert_eq!(value, 2);
    let err = client
        .call_entity::<i64, _>(&bad, "get", &())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Operation(_)) && err.to_string().contains("@counter@bad"),
        "{err}"
    );
    // The stored raw value stays readable for an operator.
    match client.get_entity_raw(&bad).await {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind(), StoreErrorKind::Corrupt);
            assert_eq!(e.raw_value(), Some("{oops"));
        }
        other => panic!("expected a corrupt-state error, got {other:?}"),
    }
    let set_aside = client.set_aside_messages().await.unwrap();
    let ids: Vec<u64> = set_aside.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1000001, 1000002]);
    assert_eq!(set_aside[1].body, "garbage");
    // The healthy instance runs; the one whose history cannot be read does not, and says so.
    client.raise_event("i-good", "go", &"yes").await.unwrap();
    client.raise_event("i-bad", "go", &"yes").await.unwrap();
    let done = client
        .wait_for_orchestration("i-good", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(done.output::<String>().unwrap(), "yes");
    let stuck = client.orchestration_status("i-bad").await.unwrap().unwrap();
    assert_eq!(stuck.status, RuntimeStatus::Running);
    runtime.shutdown().await.unwrap();
    // A second start does not see the set-aside messages again.
    let runtime = start(&path).await;
    let value: i64 = runtime
        .client()
        .call_entity(&good, "get", &())
        .await
        .unwrap();
    assert_eq!(value, 2);
    assert_eq!(
        runtime.client().set_aside_messages().await.unwrap().len(),
        2
    );
    runtime.shutdown().await.unwrap();
}

/// A read that keeps failing (a damaged page of the entities' table) fails the operations
/// waiting on its entity with the store error after a bounded number of tries: a call is
/// answered, not left waiting, and entities whose rows can be read go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_keeps_failing_fails_the_waiting_operations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    {
        let runtime = start(&path).await;
        let client = runtime.client();
        // Enough rows for the table to have interior pages.
        for k in 0..2000 {
            client
                .signal_entity(&EntityId::new("Counter", format!("k{k}")), "add", &1)
                .await
                .unwrap();
        }
        let _: i64 = client
            .call_entity(&EntityId::new("Counter", "k1999"), "get", &())
            .await
            .unwrap();
        runtime.shutdown().await.unwrap();
    }
    // Damage the root page of the entities' table (an interior page: every lookup reads it).
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        // Every page in the main file, so that the damage is what a read finds.
        let busy: i64 = db
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(busy, 0, "the checkpoint could not finish");
        let page_size: u64 = db
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        let root: u64 = db
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'entities'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        drop(db);
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start((root - 1) * page_size)).unwrap();
        file.write_all(&vec![0xA5; page_size as usize]).unwrap();
        file.sync_all().unwrap();
    }
    let runtime = start(&path).await;
    let client = runtime.client();
    let new = EntityId::new("Counter", "new");
    let call = client.call_entity::<i64, _>(&new, "get", &());
    let err = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("a call to an entity that cannot be read was left waiting")
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot be read"),
        "the call fails with the read's error: {err}"
    );
    runtime.shutdown().await.unwrap();
}
