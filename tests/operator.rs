//! The client API operators use: `set_entity_state` (serialized with the entity's operations
//! and behind locks), `locks`, `query_orchestrations` and `orchestration_history`.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use entities::prelude::*;
use entities::{Error, OrchestrationQuery};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A tally whose `add` suspends between reading and writing its state, so that anything
/// racing it would overwrite (or be overwritten by) its write.
#[derive(Default, Serialize, Deserialize)]
struct Tally {
    value: i64,
    adds: u64,
}

struct SlowTally;

#[async_trait]
impl EntityFunction for SlowTally {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        let tally: Tally = ctx.state_or_default()?;
        match ctx.operation_name() {
            "add" => {
                let amount: i64 = ctx.input()?;
                tokio::time::sleep(Duration::from_micros(200)).await;
                ctx.set_state(&Tally {
                    value: tally.value + amount,
                    adds: tally.adds + 1,
                })?;
            }
            "get" => ctx.set_result(&tally)?,
            other => return Err(OperationError::unknown_operation(other)),
        }
        Ok(())
    }
}

/// Locks the tally `key`, waits for the event "go" inside the section, then reads it.
async fn hold(ctx: OrchestrationContext, key: String) -> Result<i64, entities::Error> {
    let id = EntityId::new("Tally", &key);
    let _section = ctx.lock(std::slice::from_ref(&id)).await?;
    let _: () = ctx.wait_for_event("go").await?;
    let tally: Tally = ctx.call_entity(&id, "get", &()).await?;
    Ok(tally.value)
}

async fn noop(_ctx: OrchestrationContext, n: u64) -> Result<u64, entities::Error> {
    Ok(n)
}

async fn runtime() -> Runtime {
    Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Tally", SlowTally)
        .orchestration("hold", hold)
        .orchestration("noop", noop)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_entity_state_loses_no_update_among_concurrent_operations() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = EntityId::new("Tally", "t");
    // Four senders, fifty sequential adds each: operations keep arriving while the
    // replacement waits in the queue.
    let mut adds = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let id = id.clone();
        adds.push(tokio::spawn(async move {
            for _ in 0..50 {
                client.call_entity::<(), _>(&id, "add", &1).await?;
            }
            Ok::<(), Error>(())
        }));
    }
    // Replace the state once some adds have committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let adds = client
            .get_entity_raw(&id)
            .await
            .unwrap()
            .map_or(0, |m| m.state["adds"].as_u64().unwrap());
        if adds >= 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the adds do not run"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    client
        .set_entity_state(
            &id,
            &Tally {
                value: 1_000_000,
                adds: 0,
            },
        )
        .await
        .unwrap();
    for add in adds {
        add.await.unwrap().unwrap();
    }
    let tally: Tally = client.call_entity(&id, "get", &()).await.unwrap();
    // Every add after the replacement counts in both fields; an add that raced it would have
    // written a value computed from the state before it (or had its write lost).
    assert_eq!(tally.value, 1_000_000 + tally.adds as i64);
    assert!(tally.adds < 200, "the replacement ran before every add");
    assert!(tally.adds > 0, "the replacement ran after every add");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn set_entity_state_waits_for_a_lock_held_by_an_orchestration() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = EntityId::new("Tally", "locked");
    client
        .set_entity_state(&id, &json!({"value": 5, "adds": 0}))
        .await
        .unwrap();
    let instance = client
        .start_orchestration_with_id("hold", "holder", &"locked")
        .await
        .unwrap();
    // Wait until the lock is held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let locks = client.locks().await.unwrap();
        if locks.iter().any(|l| l.id == id && l.owner == instance) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock was never taken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let setter = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            client
                .set_entity_state(&id, &json!({"value": 99, "adds": 0}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!setter.is_finished(), "set_entity_state ran through a lock");
    assert_eq!(
        client.get_entity_raw(&id).await.unwrap().unwrap().state["value"],
        5
    );
    client.raise_event(&instance, "go", &()).await.unwrap();
    let done = client
        .wait_for_orchestration(&instance, Duration::from_secs(10))
        .await
        .unwrap();
    // The holder read the state before the replacement: it ran only after the section.
    assert_eq!(done.output::<i64>().unwrap(), 5);
    setter.await.unwrap().unwrap();
    assert_eq!(
        client.get_entity_raw(&id).await.unwrap().unwrap().state["value"],
        99
    );
    assert!(client.locks().await.unwrap().is_empty());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn reserved_operation_names_are_refused_and_unknown_entities_too() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = EntityId::new("Tally", "r");
    let err = client
        .signal_entity(&id, "$set_state", &json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReservedOperation(_)), "{err}");
    let err = client
        .call_entity::<(), _>(&id, "$set_state", &json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReservedOperation(_)), "{err}");
    assert!(client.get_entity_raw(&id).await.unwrap().is_none());
    let err = client
        .set_entity_state(&EntityId::new("Nope", "x"), &1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownEntity(_)), "{err}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn query_orchestrations_filters_and_pages() {
    let runtime = runtime().await;
    let client = runtime.client();
    let before = SystemTime::now() - Duration::from_secs(1);
    let mut ids = Vec::new();
    for n in 0..5u64 {
        let id = client
            .start_orchestration_with_id("noop", &format!("noop-{n}"), &n)
            .await
            .unwrap();
        client
            .wait_for_orchestration(&id, Duration::from_secs(10))
            .await
            .unwrap();
        ids.push(id);
    }
    let held = client
        .start_orchestration_with_id("hold", "holding", &"q")
        .await
        .unwrap();

    // Paging through every instance, two at a time, in creation order.
    let mut seen = Vec::new();
    let mut query = OrchestrationQuery {
        page_size: 2,
        ..OrchestrationQuery::default()
    };
    loop {
        let page = client.query_orchestrations(query.clone()).await.unwrap();
        assert!(page.instances.len() <= 2);
        seen.extend(page.instances.into_iter().map(|s| s.instance_id));
        match page.continuation {
            Some(next) => query.continuation = Some(next),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.push(held.clone());
    assert_eq!(seen, expected);

    let by = |q: OrchestrationQuery| {
        let client = client.clone();
        async move {
            client
                .query_orchestrations(q)
                .await
                .unwrap()
                .instances
                .into_iter()
                .map(|s| s.instance_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(OrchestrationQuery {
            status: Some(RuntimeStatus::Running),
            ..Default::default()
        })
        .await,
        vec![held.clone()]
    );
    assert_eq!(
        by(OrchestrationQuery {
            name: Some("noop".into()),
            status: Some(RuntimeStatus::Completed),
            ..Default::default()
        })
        .await,
        ids
    );
    assert_eq!(
        by(OrchestrationQuery {
            created_from: Some(before),
            created_to: Some(before + Duration::from_millis(1)),
            ..Default::default()
        })
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        by(OrchestrationQuery {
            created_from: Some(before),
            ..Default::default()
        })
        .await
        .len(),
        6
    );

    let history = client
        .orchestration_history("noop-0")
        .await
        .unwrap()
        .unwrap();
    assert!(!history.is_empty());
    assert!(client
        .orchestration_history("missing")
        .await
        .unwrap()
        .is_none());
    client.terminate(&held, "done").await.unwrap();
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn locks_list_the_first_hundred_operations_waiting_behind_a_lock() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = EntityId::new("Tally", "backlog");
    let instance = client
        .start_orchestration_with_id("hold", "backlog-holder", &"backlog")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.locks().await.unwrap().iter().any(|l| l.id == id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock was never taken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..150 {
        client.signal_entity(&id, "add", &1).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let locks = client.locks().await.unwrap();
        let lock = locks
            .into_iter()
            .find(|l| l.id == id)
            .expect("still locked");
        if lock.waiting.len() == 100 {
            break lock.waiting;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the signals never queued behind the lock: {} seen",
            lock.waiting.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(waiting
        .iter()
        .all(|w| w.operation.as_deref() == Some("add") && !w.call && w.waited.is_some()));
    client.raise_event(&instance, "go", &()).await.unwrap();
    client
        .wait_for_orchestration(&instance, Duration::from_secs(10))
        .await
        .unwrap();
    let tally: Tally = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!((tally.value, tally.adds), (150, 150));
    runtime.shutdown().await.unwrap();
}
