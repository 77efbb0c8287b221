//! Changing orchestration code while instances run: patches, held instances, replay checks.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::path::Path;
use std::time::Duration;

use entities::prelude::*;
use entities::{Error, OrchestrationQuery};
use entities_test_support::{flow_v1, flow_v2, until_held, Counter};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The third version, once no instance of the first remains: the patch is removed and the fee
/// always charged.
async fn flow_v3(ctx: OrchestrationContext, key: String) -> Result<i64, Error> {
    ctx.call::<Counter>(format!("{key}-fee")).add(100).await?;
    ctx.call::<Counter>(&key).add(1).await?;
    let _: () = ctx.wait_for_event("go").await?;
    ctx.call::<Counter>(&key).add(10).await?;
    ctx.call::<Counter>(&key).get().await
}

/// The first version of a locking flow: locks the counter, waits for `go`, adds 1.
async fn locker_v1(ctx: OrchestrationContext, key: String) -> Result<(), Error> {
    let _section = ctx.lock(&[EntityId::of::<Counter>(&key)]).await?;
    let _: () = ctx.wait_for_event("go").await?;
    ctx.call::<Counter>(&key).add(1).await?;
    Ok(())
}

/// The second version: a patch adds 5 inside the section before waiting.
async fn locker_v2(ctx: OrchestrationContext, key: String) -> Result<(), Error> {
    let _section = ctx.lock(&[EntityId::of::<Counter>(&key)]).await?;
    if ctx.patched("bonus") {
        ctx.call::<Counter>(&key).add(5).await?;
    }
    let _: () = ctx.wait_for_event("go").await?;
    ctx.call::<Counter>(&key).add(1).await?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Code {
    V1,
    V2,
}

async fn start(path: &Path, code: Code) -> Runtime {
    let builder = Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity::<Counter>();
    let builder = match code {
        Code::V1 => builder
            .orchestration("flow", flow_v1)
            .orchestration("locker", locker_v1),
        Code::V2 => builder
            .orchestration("flow", flow_v2)
            .orchestration("locker", locker_v2),
    };
    builder.start().await.unwrap()
}

/// The stored value of counter `key` (read without queueing behind a lock).
async fn counter_value(client: &Client, key: &str) -> i64 {
    let meta = client.get_entity::<Counter>(key).await.unwrap();
    meta.map_or(0, |m| m.state.value)
}

/// Waits until the counter `key` reads `value`.
async fn until_counter(client: &Client, key: &str, value: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter_value(client, key).await != value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "counter {key} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn patch_markers(history: &[Value]) -> usize {
    history
        .iter()
        .filter(|e| e["Scheduled"]["action"].get("Patch").is_some())
        .count()
}

#[tokio::test]
async fn old_instances_keep_their_path_and_new_ones_take_the_patch_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy.db");
    let runtime = start(&path, Code::V1).await;
    let client = runtime.client();
    let old = client.start_orchestration("flow", &"old").await.unwrap();
    until_counter(&client, "old", 1).await;
    runtime.shutdown().await.unwrap();

    // The deploy: new code, and a new instance on it.
    let runtime = start(&path, Code::V2).await;
    let client = runtime.client();
    let new = client.start_orchestration("flow", &"new").await.unwrap();
    until_counter(&client, "new", 1).await;
    let history = client.orchestration_history(&new).await.unwrap().unwrap();
    assert_eq!(patch_markers(&history), 1, "{history:?}");
    runtime.shutdown().await.unwrap();

    // Both replay after a restart, each on its own path.
    let runtime = start(&path, Code::V2).await;
    let client = runtime.client();
    for id in [&old, &new] {
        client.raise_event(id, "go", &()).await.unwrap();
    }
    for id in [&old, &new] {
        let done = client.wait_for_orchestration(id, WAIT).await.unwrap();
        assert_eq!(done.held, None);
        assert_eq!(done.output::<i64>().unwrap(), 11, "{id}");
    }
    assert_eq!(client.call::<Counter>("old-fee").get().await.unwrap(), 0);
    assert_eq!(client.call::<Counter>("new-fee").get().await.unwrap(), 100);
    let history = client.orchestration_history(&old).await.unwrap().unwrap();
    assert_eq!(patch_markers(&history), 0, "{history:?}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_differing_replay_holds_the_instance_and_compatible_code_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    let runtime = start(&path, Code::V2).await;
    let client = runtime.client();
    let id = client.start_orchestration("flow", &"c").await.unwrap();
    until_counter(&client, "c", 1).await;
    runtime.shutdown().await.unwrap();

    // A rollback to code without the patch: its replay takes another path.
    let runtime = start(&path, Code::V1).await;
    let client = runtime.client();
    client.raise_event(&id, "go", &()).await.unwrap();
    let status = until_held(&client, &id).await;
    assert_eq!(status.status, RuntimeStatus::Running);
    let reason = status.held.unwrap();
    assert!(
        reason.contains("step 1") && reason.contains("@counter@c-fee"),
        "{reason}"
    );
    // Listed and counted as held; nothing after the departure ran.
    let held = client
        .query_orchestrations(OrchestrationQuery {
            held: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(held.instances.len(), 1);
    assert_eq!(held.instances[0].instance_id, id);
    assert_eq!(client.store_stats().await.unwrap().instances_held, 1);
    assert_eq!(client.call::<Counter>("c").get().await.unwrap(), 1);
    // Events raised while it is held wait with it.
    client.raise_event(&id, "ignored", &1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = client.orchestration_status(&id).await.unwrap().unwrap();
    assert_eq!(status.status, RuntimeStatus::Running);
    assert!(status.held.is_some());
    runtime.shutdown().await.unwrap();

    // Held across a restart of the same code too.
    let runtime = start(&path, Code::V1).await;
    let client = runtime.client();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(client
        .orchestration_status(&id)
        .await
        .unwrap()
        .unwrap()
        .held
        .is_some());
    runtime.shutdown().await.unwrap();

    // Code that has the patch again resumes it, with the event raised while it was held.
    let runtime = start(&path, Code::V2).await;
    let client = runtime.client();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.held, None);
    assert_eq!(done.output::<i64>().unwrap(), 11);
    assert_eq!(client.store_stats().await.unwrap().instances_held, 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_held_instance_keeps_its_locks_until_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let runtime = start(&path, Code::V2).await;
    let client = runtime.client();
    let id = client.start_orchestration("locker", &"l").await.unwrap();
    until_counter(&client, "l", 5).await;
    runtime.shutdown().await.unwrap();

    let runtime = start(&path, Code::V1).await;
    let client = runtime.client();
    client.raise_event(&id, "go", &()).await.unwrap();
    let reason = until_held(&client, &id).await.held.unwrap();
    assert!(reason.contains("no longer schedules"), "{reason}");
    let meta = client.get_entity::<Counter>("l").await.unwrap().unwrap();
    assert_eq!(meta.locked_by.as_deref(), Some(id.as_str()));

    client.terminate(&id, "old code").await.unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.status, RuntimeStatus::Terminated);
    assert_eq!(done.held, None);
    assert_eq!(done.error.as_deref(), Some("old code"));
    // The lock is released: the counter takes operations again.
    tokio::time::timeout(WAIT, client.call::<Counter>("l").add(1))
        .await
        .expect("the counter stayed locked")
        .unwrap();
    assert_eq!(client.call::<Counter>("l").get().await.unwrap(), 6);
    let meta = client.get_entity::<Counter>("l").await.unwrap().unwrap();
    assert_eq!(meta.locked_by, None);
    runtime.shutdown().await.unwrap();
}

/// A completed history of `function` with input `key`.
async fn recorded(function: Code, key: &str) -> Vec<Value> {
    let builder = Runtime::builder()
        .store(MemoryStore::new())
        .entity::<Counter>();
    let builder = match function {
        Code::V1 => builder.orchestration("flow", flow_v1),
        Code::V2 => builder.orchestration("flow", flow_v2),
    };
    let runtime = builder.start().await.unwrap();
    let client = runtime.client();
    let id = client.start_orchestration("flow", &key).await.unwrap();
    client.raise_event(&id, "go", &()).await.unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 11);
    let history = client.orchestration_history(&id).await.unwrap().unwrap();
    runtime.shutdown().await.unwrap();
    history
}

#[tokio::test]
async fn replay_accepts_compatible_code_and_names_the_step_of_differing_code() {
    use entities::testing::replay;
    let v1 = recorded(Code::V1, "r1").await;
    let v2 = recorded(Code::V2, "r2").await;

    // Each version replays its own history; the patched code replays the old one too.
    replay(flow_v1, &v1).unwrap();
    replay(flow_v2, &v2).unwrap();
    replay(flow_v2, &v1).unwrap();
    // With the patch removed, histories that took the new path replay (their marker counts
    // as asked); histories from before the patch do not.
    replay(flow_v3, &v2).unwrap();
    match replay(flow_v3, &v1) {
        Err(Error::NonDeterminism(reason)) => {
            assert!(reason.contains("step 0"), "{reason}");
            assert!(reason.contains("@counter@r1-fee"), "{reason}");
        }
        other => panic!("expected a departure, got {other:?}"),
    }
    // Code without the patch departs from a history that took it.
    match replay(flow_v1, &v2) {
        Err(Error::NonDeterminism(reason)) => {
            assert!(reason.contains("step 1"), "{reason}");
            assert!(
                reason.contains("the history has a call of `add` on @counter@r2-fee"),
                "{reason}"
            );
        }
        other => panic!("expected a departure, got {other:?}"),
    }
    // The forms the CLI and the HTTP API print are read as well.
    replay(
        flow_v2,
        &json!({ "id": "x", "status": "Completed", "history": v2 }),
    )
    .unwrap();
    replay(flow_v2, &json!({ "id": "x", "events": v2 })).unwrap();
    replay(flow_v2, &Value::Array(v2.clone())).unwrap();
    assert!(matches!(
        replay(flow_v2, &json!({ "nothing": [] })),
        Err(Error::Serialization(_))
    ));
    assert!(matches!(
        replay(flow_v2, &vec![json!({ "Turn": { "time": 1 } })]),
        Err(Error::Serialization(_))
    ));
}

#[tokio::test]
async fn a_patch_marker_is_one_small_history_event() {
    let v1 = recorded(Code::V1, "s").await;
    let v2 = recorded(Code::V2, "s").await;
    let markers: Vec<&Value> = v2
        .iter()
        .filter(|e| e["Scheduled"]["action"].get("Patch").is_some())
        .collect();
    assert_eq!(markers.len(), 1);
    let size = serde_json::to_string(markers[0]).unwrap().len();
    println!("a patch marker is {size} bytes of history: {}", markers[0]);
    // v2 adds the marker and the fee call, and the call's completion in a turn of its own.
    assert_eq!(v2.len(), v1.len() + 4);
}
