//! The runtime on `MemoryStore`, through the facade: entities, an orchestration with a critical
//! section, an activity and a timer, a restart on the same data, and recovery from a commit
//! failure injected with `fail_next_commit`.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use entities::prelude::*;
use entities::{Error, Store, StoreError, StoreErrorKind};
use serde::{Deserialize, Serialize};

use entities_test_support::Counter;

#[derive(Serialize, Deserialize)]
pub struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

/// Moves `amount` between two counters inside a critical section, if `from` has enough;
/// notes it through an activity after a short timer.
async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<String, Error> {
    let from = EntityId::of::<Counter>(&t.from);
    let to = EntityId::of::<Counter>(&t.to);
    let section = ctx.lock(&[from, to]).await?;
    let balance = ctx.call::<Counter>(&t.from).get().await?;
    if balance < t.amount {
        return Ok("refused".into());
    }
    ctx.call::<Counter>(&t.from).add(-t.amount).await?;
    ctx.call::<Counter>(&t.to).add(t.amount).await?;
    drop(section);
    ctx.timer(Duration::from_millis(20)).await;
    ctx.call_activity::<String>("note", &format!("moved {}", t.amount))
        .await
}

async fn note(text: String) -> Result<String, String> {
    Ok(format!("noted: {text}"))
}

async fn start(store: MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store)
        .entity::<Counter>()
        .orchestration("transfer", transfer)
        .activity("note", note)
        .start()
        .await
        .expect("the runtime starts on a memory store")
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_counter_and_an_orchestration_run_on_a_memory_store() {
    let store = MemoryStore::new();
    let runtime = start(store.clone()).await;
    let client = runtime.client();

    for _ in 0..10 {
        client.signal::<Counter>("alice").add(5).await.unwrap();
    }
    assert_eq!(client.call::<Counter>("alice").get().await.unwrap(), 50);
    client.signal::<Counter>("bob").add(1).await.unwrap();

    let t = Transfer {
        from: "alice".into(),
        to: "bob".into(),
        amount: 20,
    };
    let id = client
        .start_orchestration_with_id("transfer", "t1", &t)
        .await
        .unwrap();
    let err = client
        .start_orchestration_with_id("transfer", "t1", &t)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InstanceExists(_)), "{err:?}");
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed);
    assert_eq!(done.output::<String>().unwrap(), "noted: moved 20");
    let too_much = Transfer {
        from: "bob".into(),
        to: "alice".into(),
        amount: 1_000,
    };
    let refused = client
        .start_orchestration("transfer", &too_much)
        .await
        .unwrap();
    let refused = client.wait_for_orchestration(&refused, WAIT).await.unwrap();
    assert_eq!(refused.output::<String>().unwrap(), "refused");
    assert_eq!(client.call::<Counter>("alice").get().await.unwrap(), 30);
    assert_eq!(client.call::<Counter>("bob").get().await.unwrap(), 21);

    let page = client
        .query_entities(EntityQuery {
            name: Some("COUNTER".into()),
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    let keys: Vec<&str> = page.entities.iter().map(|e| e.id.key()).collect();
    assert_eq!(keys, ["alice", "bob"]);
    runtime.shutdown().await.unwrap();

    // The stopped runtime closed its store; a new runtime on the same data goes on from it.
    let closed = store
        .commit(entities::store::Batch::default())
        .await
        .unwrap_err();
    assert_eq!(closed.kind(), StoreErrorKind::Closed);
    let runtime = start(store.reopen()).await;
    let client = runtime.client();
    assert_eq!(client.call::<Counter>("alice").get().await.unwrap(), 30);
    let status = client.orchestration_status("t1").await.unwrap().unwrap();
    assert_eq!(status.status, RuntimeStatus::Completed);
    client.signal::<Counter>("bob").add(9).await.unwrap();
    assert_eq!(client.call::<Counter>("bob").get().await.unwrap(), 30);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_runtime_recovers_by_itself_from_an_injected_commit_failure() {
    let store = MemoryStore::new();
    let runtime = start(store.clone()).await;
    let client = runtime.client();
    client.signal::<Counter>("c").add(1).await.unwrap();
    assert_eq!(client.call::<Counter>("c").get().await.unwrap(), 1);

    store.fail_next_commit(StoreError::of_kind(
        StoreErrorKind::DiskFull,
        "injected: no space left",
    ));
    let err = client.signal::<Counter>("c").add(10).await.unwrap_err();
    let Error::Store(cause) = &err else {
        panic!("the failed send says why: {err:?}")
    };
    assert_eq!(cause.kind(), StoreErrorKind::DiskFull, "{cause}");

    // The runtime resumes the store and recovers from it by itself.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.signal::<Counter>("c").add(100).await {
            Ok(()) => break,
            Err(err) => assert!(
                tokio::time::Instant::now() < deadline,
                "the runtime did not recover: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        client.call::<Counter>("c").get().await.unwrap(),
        101,
        "the refused signal was not applied, the later one was"
    );
    runtime.shutdown().await.unwrap();
}
