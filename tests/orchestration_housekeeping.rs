//! Orchestration housekeeping (issue 14): purging ended instances by query, and eternal
//! orchestrations through `continue_as_new`.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::{Duration, SystemTime};

use entities::prelude::*;
use entities::{Error, OrchestrationQuery, RuntimeStatus};
use serde::{Deserialize, Serialize};

use entities_test_support::Counter;

const WAIT: Duration = Duration::from_secs(60);

async fn quick(_ctx: OrchestrationContext, n: i64) -> Result<i64, Error> {
    Ok(n)
}

async fn fails(_ctx: OrchestrationContext, _: ()) -> Result<(), Error> {
    Err(Error::OrchestrationFailed("on purpose".into()))
}

async fn waits(ctx: OrchestrationContext, _: ()) -> Result<String, Error> {
    ctx.wait_for_event::<String>("go").await
}

fn purge_runtime() -> entities::RuntimeBuilder {
    Runtime::builder()
        .orchestration("quick", quick)
        .orchestration("fails", fails)
        .orchestration("waits", waits)
}

async fn status(client: &Client, id: &str) -> Option<RuntimeStatus> {
    client
        .orchestration_status(id)
        .await
        .unwrap()
        .map(|s| s.status)
}

/// Waits until the instance has run its first turn (it is waiting for its event).
async fn until_started(client: &Client, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .orchestration_history(id)
        .await
        .unwrap()
        .is_none_or(|h| h.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "{id} never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn purge_orchestrations_removes_the_ended_instances_a_query_selects() {
    let runtime = purge_runtime()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let mut early = Vec::new();
    for i in 0..3 {
        let id = client
            .start_orchestration_with_id("quick", &format!("early-{i}"), &i)
            .await
            .unwrap();
        client.wait_for_orchestration(&id, WAIT).await.unwrap();
        early.push(id);
    }
    let mut failed = Vec::new();
    for i in 0..2 {
        let id = client
            .start_orchestration_with_id("fails", &format!("failed-{i}"), &())
            .await
            .unwrap();
        let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
        assert_eq!(done.status, RuntimeStatus::Failed);
        failed.push(id);
    }
    let terminated = client
        .start_orchestration_with_id("waits", "terminated", &())
        .await
        .unwrap();
    until_started(&client, &terminated).await;
    client.terminate(&terminated, "stop").await.unwrap();
    client
        .wait_for_orchestration(&terminated, WAIT)
        .await
        .unwrap();
    let mut running = Vec::new();
    for i in 0..2 {
        let id = client
            .start_orchestration_with_id("waits", &format!("running-{i}"), &())
            .await
            .unwrap();
        until_started(&client, &id).await;
        running.push(id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut late = Vec::new();
    for i in 0..2 {
        let id = client
            .start_orchestration_with_id("quick", &format!("late-{i}"), &i)
            .await
            .unwrap();
        client.wait_for_orchestration(&id, WAIT).await.unwrap();
        late.push(id);
    }

    // Asking for running instances purges nothing.
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            status: Some(RuntimeStatus::Running),
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 0);

    // By name (the running "waits" instances are untouched by a name query too).
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            name: Some("waits".into()),
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the terminated one");
    assert_eq!(status(&client, &terminated).await, None);
    for id in &running {
        assert_eq!(status(&client, id).await, Some(RuntimeStatus::Running));
    }

    // By status, one per store transaction.
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            status: Some(RuntimeStatus::Failed),
            page_size: 1,
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 2);
    for id in &failed {
        assert_eq!(status(&client, id).await, None);
        assert_eq!(client.orchestration_history(id).await.unwrap(), None);
    }

    // By end time: the early ones, not those that ended after the cutoff.
    let listed = client
        .query_orchestrations(OrchestrationQuery {
            ended_before: Some(cutoff),
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    let listed: Vec<String> = listed
        .instances
        .into_iter()
        .map(|s| s.instance_id)
        .collect();
    assert_eq!(listed, early);
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            name: Some("quick".into()),
            ended_before: Some(cutoff),
            page_size: 2,
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 3);
    for id in &early {
        assert_eq!(status(&client, id).await, None);
    }
    for id in &late {
        assert_eq!(status(&client, id).await, Some(RuntimeStatus::Completed));
    }

    // Everything that ended; the running ones stay and still finish.
    let purged = client
        .purge_orchestrations(OrchestrationQuery::default())
        .await
        .unwrap();
    assert_eq!(purged, 2);
    let left = client
        .query_orchestrations(OrchestrationQuery::default())
        .await
        .unwrap();
    let left: Vec<String> = left.instances.into_iter().map(|s| s.instance_id).collect();
    assert_eq!(left, running);
    for id in &running {
        client.raise_event(id, "go", &"now").await.unwrap();
        let done = client.wait_for_orchestration(id, WAIT).await.unwrap();
        assert_eq!(done.output::<String>().unwrap(), "now");
    }
    // A purged id can be used again.
    let again = client
        .start_orchestration_with_id("quick", &early[0], &7)
        .await
        .unwrap();
    let done = client.wait_for_orchestration(&again, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 7);
    runtime.shutdown().await.unwrap();
}

/// The state an eternal orchestration carries from run to run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Loop {
    n: u64,
    sum: u64,
}

const ROUNDS: u64 = 10_000;

/// Counts to `ROUNDS` through `continue_as_new`, one run per round; every 100th round adds
/// through an activity (whose result must come back to the run that asked).
async fn count_up(ctx: OrchestrationContext, state: Loop) -> Result<Loop, Error> {
    if state.n == ROUNDS {
        return Ok(state);
    }
    let add = if state.n.is_multiple_of(100) {
        ctx.call_activity::<u64>("identity", &state.n).await?
    } else {
        state.n
    };
    ctx.continue_as_new(&Loop {
        n: state.n + 1,
        sum: state.sum + add,
    })
    .await
}

async fn identity(n: u64) -> Result<u64, String> {
    Ok(n)
}

/// Receives `total` events named "item", one per run.
async fn collect(
    ctx: OrchestrationContext,
    (seen, total): (Vec<u32>, usize),
) -> Result<Vec<u32>, Error> {
    if seen.is_empty() {
        // The first events arrive meanwhile: the first run receives them all at once.
        ctx.timer(Duration::from_millis(100)).await;
    }
    let item = ctx.wait_for_event::<u32>("item").await?;
    let mut seen = seen;
    seen.push(item);
    if seen.len() == total {
        return Ok(seen);
    }
    ctx.continue_as_new(&(seen, total)).await
}

/// Round 0 locks the counter "shared", adds 1 and continues as new inside its critical
/// section; round 1 waits for "done", then locks it again and adds 10.
async fn locker(ctx: OrchestrationContext, round: u32) -> Result<i64, Error> {
    let shared = EntityId::of::<Counter>("shared");
    if round == 0 {
        let _section = ctx.lock(std::slice::from_ref(&shared)).await?;
        ctx.call::<Counter>("shared").add(1).await?;
        return ctx.continue_as_new(&1u32).await;
    }
    ctx.wait_for_event::<()>("done").await?;
    let _section = ctx.lock(std::slice::from_ref(&shared)).await?;
    ctx.call::<Counter>("shared").add(10).await?;
    ctx.call::<Counter>("shared").get().await
}

/// Locks the counter "shared" and adds 100.
async fn other_locker(ctx: OrchestrationContext, _: ()) -> Result<i64, Error> {
    let _section = ctx.lock(&[EntityId::of::<Counter>("shared")]).await?;
    ctx.call::<Counter>("shared").add(100).await?;
    ctx.call::<Counter>("shared").get().await
}

/// Continues as new while a lock is still being acquired: refused.
async fn too_early(ctx: OrchestrationContext, _: ()) -> Result<(), Error> {
    let pending = ctx.lock(&[EntityId::of::<Counter>("early")]);
    let refused = ctx.continue_as_new::<()>(&()).await;
    let _section = pending.await?;
    match refused {
        Err(Error::LockingRulesViolation(_)) => Ok(()),
        other => Err(Error::OrchestrationFailed(format!(
            "not refused: {other:?}"
        ))),
    }
}

/// Waits 2 ms per round, up to `TIMED_ROUNDS`.
async fn timed_loop(ctx: OrchestrationContext, n: u32) -> Result<u32, Error> {
    if n == TIMED_ROUNDS {
        return Ok(n);
    }
    ctx.timer(Duration::from_millis(2)).await;
    ctx.continue_as_new(&(n + 1)).await
}

const TIMED_ROUNDS: u32 = 150;

fn loops() -> entities::RuntimeBuilder {
    Runtime::builder()
        .entity::<Counter>()
        .orchestration("count_up", count_up)
        .orchestration("collect", collect)
        .orchestration("locker", locker)
        .orchestration("other_locker", other_locker)
        .orchestration("too_early", too_early)
        .orchestration("timed_loop", timed_loop)
        .activity("identity", identity)
}

async fn history_len(client: &Client, id: &str) -> usize {
    client
        .orchestration_history(id)
        .await
        .unwrap()
        .map_or(0, |h| h.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eternal_orchestration_loops_ten_thousand_times_with_a_small_history() {
    let runtime = loops()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = client
        .start_orchestration_with_id("count_up", "eternal", &Loop::default())
        .await
        .unwrap();
    // While it loops, its stored history stays a few events long.
    let mut longest = 0;
    let mut samples = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = client.orchestration_status(&id).await.unwrap().unwrap();
        longest = longest.max(history_len(&client, &id).await);
        samples += 1;
        if status.status.is_terminal() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop did not finish"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    let result: Loop = done.output().unwrap();
    assert_eq!(
        result,
        Loop {
            n: ROUNDS,
            sum: ROUNDS * (ROUNDS - 1) / 2
        }
    );
    assert!(samples > 1);
    assert!(longest <= 8, "the history grew to {longest} events");
    let final_len = history_len(&client, &id).await;
    assert!(final_len <= 4, "final history of {final_len} events");
    // The instance kept its id and shows its last run's input.
    assert_eq!(done.instance_id, "eternal");
    assert_eq!(
        serde_json::from_value::<Loop>(done.input).unwrap().n,
        ROUNDS
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_raised_while_it_continues_as_new_are_not_lost() {
    let runtime = loops()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let total = 60usize;
    let id = client
        .start_orchestration("collect", &(Vec::<u32>::new(), total))
        .await
        .unwrap();
    // Half arrive while the first run waits on its timer, and are handed from run to run;
    // the rest arrive while the runs go on.
    for i in 0..total as u32 {
        client.raise_event(&id, "item", &i).await.unwrap();
        if i == total as u32 / 2 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    let seen: Vec<u32> = done.output().unwrap();
    assert_eq!(seen, (0..total as u32).collect::<Vec<_>>());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lock_held_when_continuing_as_new_is_released() {
    let runtime = loops()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = client.start_orchestration("locker", &0u32).await.unwrap();
    // The first run added 1 in its section and continued as new: the second run waits, and
    // the lock is free.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = client
            .get_entity::<Counter>("shared")
            .await
            .unwrap()
            .map(|m| (m.state.value, m.locked_by));
        if value == Some((1, None))
            && client
                .orchestration_status(&id)
                .await
                .unwrap()
                .unwrap()
                .input
                == serde_json::json!(1)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "counter: {value:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        client
            .orchestration_status(&id)
            .await
            .unwrap()
            .unwrap()
            .status,
        RuntimeStatus::Running
    );
    // Another orchestration can lock the entity.
    let other = client
        .start_orchestration("other_locker", &())
        .await
        .unwrap();
    let done = client.wait_for_orchestration(&other, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 101);
    assert!(client.locks().await.unwrap().is_empty());
    // The second run locks it again.
    client.raise_event(&id, "done", &()).await.unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 111);

    // Continuing while a lock is still being acquired is refused, and nothing restarts.
    let early = client.start_orchestration("too_early", &()).await.unwrap();
    let done = client.wait_for_orchestration(&early, WAIT).await.unwrap();
    done.output::<()>().unwrap();
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eternal_orchestration_continues_across_a_reopen_of_its_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.db");
    let runtime = loops()
        .store(SqliteStore::open(&path).unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = client
        .start_orchestration_with_id("timed_loop", "timed", &0u32)
        .await
        .unwrap();
    let round = |client: Client| async move {
        let status = client.orchestration_status("timed").await.unwrap().unwrap();
        serde_json::from_value::<u32>(status.input).unwrap()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while round(client.clone()).await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop does not advance"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown().await.unwrap();

    let runtime = loops()
        .store(SqliteStore::open(&path).unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let stopped_at = round(client.clone()).await;
    assert!(stopped_at < TIMED_ROUNDS, "it finished before the reopen");
    assert!(history_len(&client, &id).await <= 8);
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<u32>().unwrap(), TIMED_ROUNDS);
    assert!(history_len(&client, &id).await <= 4);
    runtime.shutdown().await.unwrap();
}
