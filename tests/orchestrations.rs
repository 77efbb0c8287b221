//! Orchestrations: entity calls and signals, critical sections, activities, timers,
//! sub-orchestrations, external events and restarts (code changes: `versioning.rs`).
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::{Duration, SystemTime};

use entities::prelude::*;
use entities::{Error, RuntimeStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

use entities_test_support::{transfer, Counter, Transfer};

/// Records every input, in order.
#[derive(Default, Serialize, Deserialize)]
pub struct Recorder {
    seen: Vec<String>,
}

#[entity]
impl Recorder {
    pub fn record(&mut self, what: String) {
        self.seen.push(what);
    }
    pub fn seen(&self) -> Vec<String> {
        self.seen.clone()
    }
}

/// Locks a recorder, records, waits for "go" inside the section, records again.
async fn hold_lock(ctx: OrchestrationContext, key: String) -> Result<(), entities::Error> {
    let id = EntityId::of::<Recorder>(&key);
    let section = ctx.lock(&[id]).await?;
    ctx.call::<Recorder>(&key).record("locked".into()).await?;
    let _: () = ctx.wait_for_event("go").await?;
    ctx.call::<Recorder>(&key).record("released".into()).await?;
    drop(section);
    Ok(())
}

/// Breaks each critical-section rule once, then checks the same thing works outside.
async fn break_rules(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, entities::Error> {
    let a = EntityId::of::<Counter>("rule-a");
    let b = EntityId::of::<Counter>("rule-b");
    let mut errors = Vec::new();
    let mut note = |r: Result<(), Error>| match r {
        Err(Error::LockingRulesViolation(message)) => errors.push(message),
        other => errors.push(format!("unexpected: {other:?}")),
    };
    {
        let _section = ctx.lock(std::slice::from_ref(&a)).await?;
        note(ctx.lock(std::slice::from_ref(&b)).await.map(drop));
        note(ctx.call_orchestration::<()>("child", &()).await);
        note(ctx.call::<Counter>("rule-b").add(1).await);
        let (first, second) = futures::join!(
            ctx.call::<Counter>("rule-a").add(1),
            ctx.call::<Counter>("rule-a").add(1)
        );
        first?;
        note(second);
        note(ctx.signal::<Counter>("rule-a").add(1));
    }
    // The same things, after the section, work.
    let section = ctx.lock(std::slice::from_ref(&b)).await?;
    drop(section);
    ctx.call_orchestration::<()>("child", &()).await?;
    ctx.call::<Counter>("rule-b").add(1).await?;
    let (x, y) = futures::join!(
        ctx.call::<Counter>("rule-a").add(1),
        ctx.call::<Counter>("rule-a").add(1)
    );
    x?;
    y?;
    ctx.signal::<Counter>("rule-a").add(1)?;
    Ok(errors)
}

async fn child(_ctx: OrchestrationContext, _: ()) -> Result<(), entities::Error> {
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Report {
    doubled: i64,
    child: String,
    event: String,
    waited_ms: u64,
    uuid: String,
    call_error: String,
    activity_error: String,
}

async fn everything(ctx: OrchestrationContext, n: i64) -> Result<Report, entities::Error> {
    let start = ctx.current_time();
    let uuid = ctx.new_uuid().to_string();
    let doubled: i64 = ctx.call_activity("double", &n).await?;
    let child: String = ctx.call_orchestration("greet", &"sub").await?;
    ctx.timer(Duration::from_millis(200)).await;
    let waited_ms = ctx
        .current_time()
        .duration_since(start)
        .unwrap()
        .as_millis() as u64;
    let event: String = ctx.wait_for_event("approval").await?;
    let call_error = ctx
        .call::<Counter>("c")
        .fail()
        .await
        .unwrap_err()
        .to_string();
    let activity_error = ctx
        .call_activity::<i64>("double", &-1)
        .await
        .unwrap_err()
        .to_string();
    Ok(Report {
        doubled,
        child,
        event,
        waited_ms,
        uuid,
        call_error,
        activity_error,
    })
}

async fn greet(ctx: OrchestrationContext, who: String) -> Result<String, entities::Error> {
    let id = ctx.instance_id();
    Ok(format!(
        "hello {who} from {}",
        id.split(':').next_back().unwrap_or_default()
    ))
}

async fn double(n: i64) -> Result<i64, String> {
    if n < 0 {
        return Err(format!("cannot double {n}"));
    }
    Ok(n * 2)
}

fn builder() -> entities::RuntimeBuilder {
    Runtime::builder()
        .entity::<Counter>()
        .entity::<Recorder>()
        .orchestration("transfer", transfer)
        .orchestration("hold_lock", hold_lock)
        .orchestration("break_rules", break_rules)
        .orchestration("child", child)
        .orchestration("everything", everything)
        .orchestration("greet", greet)
        .activity("double", double)
}

async fn runtime() -> Runtime {
    builder()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap()
}

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the recorder `key` has state and is locked by some orchestration.
async fn wait_until_locked(client: &Client, key: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .get_entity::<Recorder>(key)
        .await
        .unwrap()
        .and_then(|m| m.locked_by)
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never got locked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_api_transfer_moves_money_under_a_lock() {
    let runtime = runtime().await;
    let client = runtime.client();
    client.signal::<Counter>("alice").add(100).await.unwrap();
    let t = Transfer {
        from: "alice".into(),
        to: "bob".into(),
        amount: 30,
    };
    let id = client.start_orchestration("transfer", &t).await.unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert!(done.output::<bool>().unwrap());
    assert_eq!(done.status, RuntimeStatus::Completed);
    assert_eq!(done.name, "transfer");
    assert_eq!(client.call::<Counter>("alice").get().await.unwrap(), 70);
    assert_eq!(client.call::<Counter>("bob").get().await.unwrap(), 30);
    let t = Transfer {
        from: "bob".into(),
        to: "alice".into(),
        amount: 31,
    };
    let id = client.start_orchestration("transfer", &t).await.unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert!(!done.output::<bool>().unwrap(), "insufficient funds");
    let meta = client
        .get_entity::<Counter>("alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.locked_by, None,
        "the section ended with the orchestration"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_in_both_orders_conserve_money() {
    let runtime = runtime().await;
    let client = runtime.client();
    let accounts = ["a", "b", "c"];
    for a in accounts {
        client.signal::<Counter>(a).add(100).await.unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..60 {
        let from = accounts[i % 3];
        let to = accounts[(i + 1 + i / 3 % 2) % 3];
        let t = Transfer {
            from: from.into(),
            to: to.into(),
            amount: 7 + (i as i64 % 5) * 20,
        };
        ids.push(client.start_orchestration("transfer", &t).await.unwrap());
    }
    let mut moved = 0;
    for id in &ids {
        let done = client.wait_for_orchestration(id, WAIT).await.unwrap();
        if done.output::<bool>().unwrap() {
            moved += 1;
        }
    }
    assert!(moved > 0);
    let mut total = 0;
    for a in accounts {
        let balance = client.call::<Counter>(a).get().await.unwrap();
        assert!(balance >= 0, "{a} went negative: {balance}");
        total += balance;
        let meta = client.get_entity::<Counter>(a).await.unwrap().unwrap();
        assert_eq!(meta.locked_by, None);
    }
    assert_eq!(total, 300, "money is conserved");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_locked_entity_queues_other_callers_until_release() {
    let runtime = runtime().await;
    let client = runtime.client();
    let instance = client.start_orchestration("hold_lock", &"r").await.unwrap();
    // Wait until the orchestration holds the lock and recorded inside it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let meta = client.get_entity::<Recorder>("r").await.unwrap();
        if meta.as_ref().is_some_and(|m| m.state.seen == ["locked"]) {
            assert_eq!(meta.unwrap().locked_by.as_deref(), Some(instance.as_str()));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 1..=3 {
        client
            .signal::<Recorder>("r")
            .record(format!("signal {i}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let meta = client.get_entity::<Recorder>("r").await.unwrap().unwrap();
    assert_eq!(
        meta.state.seen,
        ["locked"],
        "other callers wait while locked"
    );
    assert_eq!(meta.pending_messages, 3);

    client.raise_event(&instance, "go", &()).await.unwrap();
    client
        .wait_for_orchestration(&instance, WAIT)
        .await
        .unwrap()
        .output::<()>()
        .unwrap();
    let seen = client.call::<Recorder>("r").seen().await.unwrap();
    assert_eq!(
        seen,
        ["locked", "released", "signal 1", "signal 2", "signal 3"]
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_locking_rule_is_enforced_and_the_same_works_outside() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = client
        .start_orchestration("break_rules", &())
        .await
        .unwrap();
    let errors: Vec<String> = client
        .wait_for_orchestration(&id, WAIT)
        .await
        .unwrap()
        .output()
        .unwrap();
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(errors[0].contains("cannot be nested"), "{errors:?}");
    assert!(
        errors[1].contains("cannot create sub-orchestrations"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("call only entities they have locked"),
        "{errors:?}"
    );
    assert!(errors[3].contains("parallel calls"), "{errors:?}");
    assert!(
        errors[4].contains("signal only entities they have not locked"),
        "{errors:?}"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn activities_sub_orchestrations_timers_events_and_errors() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = client
        .start_orchestration_with_id("everything", "every-1", &21)
        .await
        .unwrap();
    assert_eq!(id, "every-1");
    let err = client
        .start_orchestration_with_id("everything", "every-1", &1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InstanceExists(_)), "{err:?}");
    let err = client.start_orchestration("nope", &1).await.unwrap_err();
    assert!(matches!(err, Error::UnknownFunction { .. }), "{err:?}");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = client.orchestration_status(&id).await.unwrap().unwrap();
    assert_eq!(status.status, RuntimeStatus::Running, "waits for the event");
    assert_eq!(status.input, json!(21));
    client.raise_event(&id, "approval", &"yes").await.unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    let report: Report = done.output().unwrap();
    assert_eq!(report.doubled, 42);
    assert_eq!(report.child, "hello sub from 1");
    assert_eq!(report.event, "yes");
    assert!(
        report.waited_ms >= 200,
        "the timer fired early: {}",
        report.waited_ms
    );
    assert!(
        report.call_error.contains("counter says no"),
        "{}",
        report.call_error
    );
    assert!(
        report.activity_error.contains("cannot double -1"),
        "{}",
        report.activity_error
    );
    assert!(done.created <= done.updated);

    assert!(matches!(client.purge("every-1").await, Ok(true)));
    assert!(client
        .orchestration_status("every-1")
        .await
        .unwrap()
        .is_none());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn terminate_ends_the_instance_and_releases_its_locks() {
    let runtime = runtime().await;
    let client = runtime.client();
    let instance = client.start_orchestration("hold_lock", &"t").await.unwrap();
    wait_until_locked(&client, "t").await;
    client
        .signal::<Recorder>("t")
        .record("after".into())
        .await
        .unwrap();
    let err = client.purge(&instance).await.unwrap_err();
    assert!(matches!(err, Error::InstanceRunning(_)), "{err:?}");
    client.terminate(&instance, "enough").await.unwrap();
    let done = client
        .wait_for_orchestration(&instance, WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, RuntimeStatus::Terminated);
    assert_eq!(done.error.as_deref(), Some("enough"));
    assert!(matches!(done.output::<()>(), Err(Error::Terminated(_))));
    let seen = client.call::<Recorder>("t").seen().await.unwrap();
    assert_eq!(seen, ["locked", "after"]);
    let meta = client.get_entity::<Recorder>("t").await.unwrap().unwrap();
    assert_eq!(meta.locked_by, None);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_flight_orchestrations_resume_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    let (first, second);
    {
        let runtime = builder()
            .store(SqliteStore::open(&path).unwrap())
            .start()
            .await
            .unwrap();
        let client = runtime.client();
        client.signal::<Counter>("x").add(50).await.unwrap();
        first = client.start_orchestration("everything", &5).await.unwrap();
        second = client
            .start_orchestration("hold_lock", &"restart")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        runtime.shutdown().await.unwrap();
    }
    let runtime = builder()
        .store(SqliteStore::open(&path).unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    // The lock survived the restart.
    let meta = client
        .get_entity::<Recorder>("restart")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.locked_by.as_deref(), Some(second.as_str()));
    client
        .raise_event(&first, "approval", &"later")
        .await
        .unwrap();
    client.raise_event(&second, "go", &()).await.unwrap();
    let report: Report = client
        .wait_for_orchestration(&first, WAIT)
        .await
        .unwrap()
        .output()
        .unwrap();
    assert_eq!(report.doubled, 10);
    assert_eq!(report.event, "later");
    client
        .wait_for_orchestration(&second, WAIT)
        .await
        .unwrap()
        .output::<()>()
        .unwrap();
    let seen = client.call::<Recorder>("restart").seen().await.unwrap();
    assert_eq!(seen, ["locked", "released"]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn clean_releases_locks_whose_owner_has_ended() {
    use entities::store::{Batch, EntityRecord, Store};
    let store = SqliteStore::in_memory().unwrap();
    // A lock left by an instance that no longer exists.
    store
        .commit(Batch {
            entities: vec![EntityRecord {
                id: EntityId::of::<Counter>("orphan"),
                state: Some(json!({"value": 1})),
                state_version: 1,
                lock_owner: Some("ghost".into()),
                last_modified: 0,
                pending_messages: 0,
            }],
            ..Batch::default()
        })
        .await
        .unwrap();
    let runtime = builder().store(store).start().await.unwrap();
    let client = runtime.client();
    client.signal::<Counter>("orphan").add(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        client
            .get_entity::<Counter>("orphan")
            .await
            .unwrap()
            .unwrap()
            .state
            .value,
        1
    );
    let cleaned = client.clean_entity_storage().await.unwrap();
    assert_eq!(cleaned.released_locks, 1);
    assert_eq!(client.call::<Counter>("orphan").get().await.unwrap(), 2);
    runtime.shutdown().await.unwrap();
    let _ = SystemTime::now();
}

#[tokio::test]
async fn terminating_an_instance_waiting_for_a_lock_leaves_nothing_locked() {
    let runtime = runtime().await;
    let client = runtime.client();
    let holder = client
        .start_orchestration("hold_lock", &"contended")
        .await
        .unwrap();
    wait_until_locked(&client, "contended").await;
    // A second instance asks for the same lock and waits behind the first.
    let waiter = client
        .start_orchestration("hold_lock", &"contended")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.terminate(&waiter, "not needed").await.unwrap();
    let done = client.wait_for_orchestration(&waiter, WAIT).await.unwrap();
    assert_eq!(done.status, RuntimeStatus::Terminated);
    // The holder ends; the waiter's lock request reaches the entity afterwards and is granted
    // to an ended instance, which releases it at once.
    client.raise_event(&holder, "go", &()).await.unwrap();
    client
        .wait_for_orchestration(&holder, WAIT)
        .await
        .unwrap()
        .output::<()>()
        .unwrap();
    client
        .signal::<Recorder>("contended")
        .record("free".into())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let meta = client
            .get_entity::<Recorder>("contended")
            .await
            .unwrap()
            .unwrap();
        if meta.locked_by.is_none() && meta.state.seen.last().map(String::as_str) == Some("free") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left locked by {:?}",
            meta.locked_by
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown().await.unwrap();
}

async fn parent(ctx: OrchestrationContext, _: ()) -> Result<String, entities::Error> {
    ctx.call_orchestration("greet", &"child").await
}

#[tokio::test]
async fn a_sub_orchestration_whose_id_is_taken_fails_its_parent_instead_of_hanging() {
    let runtime = builder()
        .orchestration("parent", parent)
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    client
        .start_orchestration_with_id("parent", "p", &())
        .await
        .unwrap();
    let first = client.wait_for_orchestration("p", WAIT).await.unwrap();
    assert_eq!(first.output::<String>().unwrap(), "hello child from 0");
    // Purge the parent only: its child `p:0` stays, ended.
    assert!(client.purge("p").await.unwrap());
    client
        .start_orchestration_with_id("parent", "p", &())
        .await
        .unwrap();
    let second = client.wait_for_orchestration("p", WAIT).await.unwrap();
    assert_eq!(second.status, RuntimeStatus::Failed);
    assert!(second.error.unwrap().contains("exists already"));
    runtime.shutdown().await.unwrap();
}
