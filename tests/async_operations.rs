//! `async` operations are polled once in their batch, as sync ones run; only one that awaits
//! something not ready goes on on a task of its own. Those that do not await drain in a few
//! batches; those that await still hold back only their own entity; a panic before or after
//! an await, and a timeout, fail only their operation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use entities::prelude::*;
use tokio::sync::Notify;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(30);

/// An entity whose state is a list of numbers. `push` is sync; `push_async` is `async` and
/// never awaits; `push_awaiting` awaits once (a yield) before it pushes; `hold` waits for
/// `gate`; `push_then_hold` pushes, then waits for `gate`; `sleep` awaits its input in ms;
/// `panic_now` and `panic_later` write a state and panic, before any await and after one;
/// `entries` answers the list.
struct Ops {
    gate: Arc<Notify>,
}

fn push(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut entries: Vec<u32> = ctx.state_or_default()?;
    entries.push(ctx.input()?);
    ctx.set_state(&entries)
}

#[async_trait]
impl EntityFunction for Ops {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        match ctx.operation_name() {
            "push_async" => push(ctx),
            "push_awaiting" => {
                tokio::task::yield_now().await;
                push(ctx)
            }
            "hold" => {
                self.gate.notified().await;
                Ok(())
            }
            "push_then_hold" => {
                push(ctx)?;
                self.gate.notified().await;
                Ok(())
            }
            "sleep" => {
                tokio::time::sleep(Duration::from_millis(ctx.input()?)).await;
                Ok(())
            }
            "panic_now" => {
                ctx.set_state(&vec![999u32])?;
                panic!("boom before any await");
            }
            "panic_later" => {
                tokio::task::yield_now().await;
                ctx.set_state(&vec![999u32])?;
                panic!("boom after an await");
            }
            "forever" => std::future::pending().await,
            other => Err(OperationError::unknown_operation(other)),
        }
    }

    fn run_now(&self, ctx: &mut EntityContext) -> Option<Result<(), OperationError>> {
        match ctx.operation_name() {
            "push" => Some(push(ctx)),
            "entries" => {
                let entries: Vec<u32> = match ctx.state_or_default() {
                    Ok(entries) => entries,
                    Err(err) => return Some(Err(err)),
                };
                Some(ctx.set_result(&entries))
            }
            _ => None,
        }
    }
}

/// A runtime on a new SQLite file in `dir`, with `Ops` registered.
async fn start(dir: &tempfile::TempDir, gate: &Arc<Notify>) -> (Runtime, SqliteStore) {
    let store = SqliteStore::open(dir.path().join("async.db")).unwrap();
    let runtime = Runtime::builder()
        .store(store.clone())
        .entity_fn("Ops", Ops { gate: gate.clone() })
        .entity_operation_timeout("Ops", Duration::from_secs(60))
        .shutdown_grace(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    (runtime, store)
}

/// The committed list of `id` once `done` holds of it (`None`: no state).
async fn committed_when(
    client: &Client,
    id: &EntityId,
    done: impl Fn(&Option<Vec<u32>>) -> bool,
) -> Option<Vec<u32>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = client
            .get_entity_raw(id)
            .await
            .unwrap()
            .map(|m| serde_json::from_value(m.state).unwrap());
        if done(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never got there: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_operations_that_do_not_await_drain_in_few_batches_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Notify::new());
    let (runtime, store) = start(&dir, &gate).await;
    let client = runtime.client();
    let id = EntityId::new("Ops", "drained");
    const OPS: u32 = 500;
    // Every operation queues behind `hold`, then they all run once it ends.
    client.signal_entity(&id, "hold", &()).await.unwrap();
    for i in 0..OPS {
        client.signal_entity(&id, "push_async", &i).await.unwrap();
    }
    let before = store.stats().transactions;
    gate.notify_one();
    let entries = committed_when(&client, &id, |e| {
        e.as_ref().is_some_and(|e| e.len() == OPS as usize)
    })
    .await;
    assert_eq!(entries.unwrap(), (0..OPS).collect::<Vec<_>>());
    let commits = store.stats().transactions - before;
    // On a task each, they would take a batch each.
    assert!(
        commits < 20,
        "{OPS} async operations that never await took {commits} commits"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_async_and_awaiting_operations_keep_their_order_and_failures_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Notify::new());
    let (runtime, _store) = start(&dir, &gate).await;
    let client = runtime.client();
    let id = EntityId::new("Ops", "mixed");
    // All queued behind `hold`, so that they run in one batch once it ends.
    client.signal_entity(&id, "hold", &()).await.unwrap();
    let sent: &[(&str, u32)] = &[
        ("push", 0),
        ("push_async", 1),
        ("push_awaiting", 2),
        ("push_async", 3),
        ("push", 4),
        ("panic_now", 5),
        ("push_async", 6),
        ("panic_later", 7),
        ("push_awaiting", 8),
        ("push", 9),
    ];
    for (operation, input) in sent {
        client.signal_entity(&id, operation, input).await.unwrap();
    }
    gate.notify_one();
    let entries: Vec<u32> = tokio::time::timeout(PATIENCE, client.call_entity(&id, "entries", &()))
        .await
        .expect("the entity answered")
        .unwrap();
    // The panicking operations' writes are rolled back; every other one applied once, in order.
    assert_eq!(entries, vec![0, 1, 2, 3, 4, 6, 8, 9]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_suspended_after_others_of_its_batch_leaves_their_state_committed() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Notify::new());
    let (runtime, _store) = start(&dir, &gate).await;
    let client = runtime.client();
    let id = EntityId::new("Ops", "suspended");
    client.signal_entity(&id, "hold", &()).await.unwrap();
    client
        .signal_entity(&id, "push_async", &1u32)
        .await
        .unwrap();
    client.signal_entity(&id, "push", &2u32).await.unwrap();
    client
        .signal_entity(&id, "push_then_hold", &3u32)
        .await
        .unwrap();
    client
        .signal_entity(&id, "push_async", &4u32)
        .await
        .unwrap();
    gate.notify_one();
    // While `push_then_hold` waits (its push not committed yet), the batch that ran the two
    // operations before it commits their state, not its own.
    let seen = committed_when(&client, &id, std::option::Option::is_some).await;
    assert_eq!(seen.unwrap(), vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        committed_when(&client, &id, |_| true).await.unwrap(),
        vec![1, 2]
    );
    gate.notify_one();
    let entries = committed_when(&client, &id, |e| e.as_ref().is_some_and(|e| e.len() == 4)).await;
    assert_eq!(entries.unwrap(), vec![1, 2, 3, 4]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_awaits_holds_back_only_its_own_entity() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Notify::new());
    let (runtime, _store) = start(&dir, &gate).await;
    let client = runtime.client();
    let sleeper = EntityId::new("Ops", "sleeper");
    let other = EntityId::new("Ops", "other");
    client
        .signal_entity(&sleeper, "sleep", &3_000u64)
        .await
        .unwrap();
    client.signal_entity(&sleeper, "push", &1u32).await.unwrap();
    let started = tokio::time::Instant::now();
    // Sync, async and awaiting operations of another entity go on while it sleeps.
    for i in 0..30u32 {
        let operation = ["push", "push_async", "push_awaiting"][i as usize % 3];
        client.signal_entity(&other, operation, &i).await.unwrap();
        let entries: Vec<u32> = client.call_entity(&other, "entries", &()).await.unwrap();
        assert_eq!(entries.len(), i as usize + 1);
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the other entity waited for the sleeping one: {:?}",
        started.elapsed()
    );
    // The sleeper's later message waits behind its sleep, then runs.
    assert_eq!(committed_when(&client, &sleeper, |_| true).await, None);
    let entries: Vec<u32> =
        tokio::time::timeout(PATIENCE, client.call_entity(&sleeper, "entries", &()))
            .await
            .expect("the sleeper answered after its sleep")
            .unwrap();
    assert_eq!(entries, vec![1]);
    assert!(started.elapsed() >= Duration::from_millis(2_900));
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_or_after_an_await_fails_only_its_operation() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Notify::new());
    let (runtime, _store) = start(&dir, &gate).await;
    let client = runtime.client();
    let id = EntityId::new("Ops", "panicky");
    let other = EntityId::new("Ops", "calm");
    client
        .call_entity::<(), _>(&id, "push_async", &1u32)
        .await
        .unwrap();
    for operation in ["panic_now", "panic_later"] {
        let err = tokio::time::timeout(PATIENCE, client.call_entity::<(), _>(&id, operation, &()))
            .await
            .expect("the panicking call was answered")
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert!(err.to_string().contains("boom"), "{err}");
        // The entity and the others go on, with the state from before the panic.
        client
            .call_entity::<(), _>(&other, "push_async", &7u32)
            .await
            .unwrap();
        let entries: Vec<u32> = client.call_entity(&id, "entries", &()).await.unwrap();
        assert_eq!(entries, vec![1], "after {operation}");
    }
    client
        .call_entity::<(), _>(&id, "push_awaiting", &2u32)
        .await
        .unwrap();
    let entries: Vec<u32> = client.call_entity(&id, "entries", &()).await.unwrap();
    assert_eq!(entries, vec![1, 2]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_awaits_past_its_timeout_fails_and_its_entity_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .store(SqliteStore::open(dir.path().join("timeout.db")).unwrap())
        .entity_fn(
            "Ops",
            Ops {
                gate: Arc::new(Notify::new()),
            },
        )
        .entity_operation_timeout("Ops", Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = EntityId::new("Ops", "late");
    client
        .call_entity::<(), _>(&id, "push_async", &1u32)
        .await
        .unwrap();
    client
        .signal_entity(&id, "push_then_hold", &2u32)
        .await
        .unwrap();
    let err = tokio::time::timeout(PATIENCE, client.call_entity::<(), _>(&id, "forever", &()))
        .await
        .expect("the call past its timeout was answered")
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    // `push_then_hold` timed out too: its push is rolled back.
    let entries: Vec<u32> = client.call_entity(&id, "entries", &()).await.unwrap();
    assert_eq!(entries, vec![1]);
    runtime.shutdown().await.unwrap();
}
