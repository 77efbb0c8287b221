//! The core runtime with function-based entities: serial execution, order, rollback,
//! scheduling, deletion, restarts, queries, clean-up and bad input.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use entities::prelude::*;
use entities::{Error, SqliteStore, Store, StoreError};
use serde_json::json;

/// A counter that can also fail, panic, forward and record its inputs.
fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        "delete" => ctx.delete_state(),
        "fail_after_changes" => {
            ctx.set_state(&1000i64)?;
            ctx.signal_entity(&EntityId::new("Counter", "witness"), "add", &1)?;
            return Err(OperationError::new("failed on purpose"));
        }
        "panic_after_changes" => {
            ctx.set_state(&2000i64)?;
            ctx.signal_entity(&EntityId::new("Counter", "witness"), "add", &1)?;
            panic!("panicked on purpose");
        }
        "forward" => {
            let target: String = ctx.input()?;
            ctx.signal_entity(&EntityId::new("Counter", target), "add", &value)?;
        }
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// Appends every input to a list, so the order of operations can be checked.
fn recorder(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut seen: Vec<serde_json::Value> = ctx.state_or_default()?;
    match ctx.operation_name() {
        "record" => {
            seen.push(ctx.input()?);
            ctx.set_state(&seen)?;
        }
        "record_at" => {
            let millis = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            seen.push(json!(millis));
            ctx.set_state(&seen)?;
        }
        "send_many" => {
            let n: u64 = ctx.input()?;
            for i in 0..n {
                ctx.signal_entity(&EntityId::new("Recorder", "target"), "record", &i)?;
            }
        }
        "get" => ctx.set_result(&seen)?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// An async entity that detects overlapping operations on itself.
struct Overlap {
    running: AtomicBool,
    overlaps: AtomicUsize,
}

#[async_trait]
impl EntityFunction for Overlap {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        if self.running.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(50)).await;
        let n: u64 = ctx.state_or_default()?;
        ctx.set_state(&(n + 1))?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }
}

async fn start(store: SqliteStore) -> Runtime {
    Runtime::builder()
        .store(store)
        .entity_fn("Counter", counter)
        .entity_fn("Recorder", recorder)
        .start()
        .await
        .expect("runtime starts")
}

async fn wait_for<T: std::fmt::Debug>(
    what: &str,
    mut f: impl FnMut() -> futures::future::BoxFuture<'static, Option<T>>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn state_of(client: &Client, id: &EntityId) -> Option<serde_json::Value> {
    client.get_entity_raw(id).await.unwrap().map(|m| m.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_one_entity_never_overlap() {
    let overlap = Arc::new(Overlap {
        running: AtomicBool::new(false),
        overlaps: AtomicUsize::new(0),
    });
    struct Shared(Arc<Overlap>);
    #[async_trait]
    impl EntityFunction for Shared {
        async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
            self.0.run(ctx).await
        }
    }
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Overlap", Shared(overlap.clone()))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = EntityId::new("Overlap", "one");
    let sends = (0..400).map(|_| {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.signal_entity(&id, "bump", &()).await })
    });
    for send in futures::future::join_all(sends).await {
        send.unwrap().unwrap();
    }
    let c = client.clone();
    let i = id.clone();
    wait_for("400 operations", || {
        let (c, i) = (c.clone(), i.clone());
        Box::pin(async move { state_of(&c, &i).await.filter(|v| v == &json!(400)) })
    })
    .await;
    assert_eq!(overlap.overlaps.load(Ordering::SeqCst), 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_senders_signals_run_in_order() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    let id = EntityId::new("Recorder", "ordered");
    for i in 0..200u64 {
        client.signal_entity(&id, "record", &i).await.unwrap();
    }
    // An entity sending many signals to another: they arrive in the order sent.
    client
        .signal_entity(&EntityId::new("Recorder", "sender"), "send_many", &300u64)
        .await
        .unwrap();
    let seen: Vec<u64> = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    let target = EntityId::new("Recorder", "target");
    let c = client.clone();
    let seen = wait_for("300 forwarded signals", || {
        let (c, t) = (c.clone(), target.clone());
        Box::pin(async move {
            let v: Vec<u64> = c.call_entity(&t, "get", &()).await.unwrap();
            (v.len() == 300).then_some(v)
        })
    })
    .await;
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_operation_rolls_back_only_itself() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "batch");
    // Sent concurrently so that they are stored together and run in one batch.
    let ops = [
        ("add", 1),
        ("fail_after_changes", 0),
        ("add", 2),
        ("panic_after_changes", 0),
        ("add", 4),
    ];
    let sends = ops.iter().map(|(op, n)| client.signal_entity(&id, op, n));
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let value: i64 = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(
        value, 7,
        "the failed operations' state changes are rolled back"
    );
    let witness = client
        .get_entity_raw(&EntityId::new("Counter", "witness"))
        .await
        .unwrap();
    assert!(
        witness.is_none(),
        "the failed operations' signals are dropped"
    );

    let err = client
        .call_entity::<(), _>(&id, "fail_after_changes", &())
        .await
        .unwrap_err();
    match err {
        Error::Operation(e) => assert_eq!(e.message(), "failed on purpose"),
        other => panic!("expected an operation error, got {other:?}"),
    }
    let err = client
        .call_entity::<(), _>(&id, "panic_after_changes", &())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("panicked on purpose"), "{err}");
    let value: i64 = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(value, 7);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_becomes_an_operation_error_and_the_entity_goes_on() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "bad");
    client.signal_entity(&id, "add", &5).await.unwrap();

    let err = client
        .call_entity::<(), _>(&id, "nope", &())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown operation `nope`"),
        "{err}"
    );
    let err = client
        .call_entity::<(), _>(&id, "add", &"five")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Operation(_)), "{err:?}");
    assert!(err.to_string().contains("does not deserialize"), "{err}");

    // A signal to a name no runtime registered is refused by the client.
    let err = client
        .signal_entity(&EntityId::new("Nobody", "x"), "add", &1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownEntity(ref n) if n == "nobody"),
        "{err:?}"
    );

    let value: i64 = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(value, 5);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_state_that_does_not_deserialize_fails_the_operation_and_is_kept() {
    fn typed(ctx: &mut EntityContext) -> Result<(), OperationError> {
        match ctx.operation_name() {
            "set_text" => ctx.set_state(&"not a number"),
            "inc" => {
                // `state()` reads a wrong-shaped state as None and fails the operation.
                let n: i64 = ctx.state().unwrap_or_default();
                ctx.set_state(&(n + 1))
            }
            other => Err(OperationError::unknown_operation(other)),
        }
    }
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Typed", typed)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = EntityId::new("Typed", "t");
    client
        .call_entity::<(), _>(&id, "set_text", &())
        .await
        .unwrap();
    let err = client
        .call_entity::<(), _>(&id, "inc", &())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not deserialize"), "{err}");
    assert_eq!(state_of(&client, &id).await, Some(json!("not a number")));
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn scheduled_signals_are_not_delivered_early() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    let id = EntityId::new("Recorder", "late");
    let at = SystemTime::now() + Duration::from_millis(300);
    client
        .signal_entity_at(&id, "record_at", &(), at)
        .await
        .unwrap();
    let at_ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(state_of(&client, &id).await.is_none(), "delivered early");
    let c = client.clone();
    let i = id.clone();
    let ran = wait_for("the scheduled signal", || {
        let (c, i) = (c.clone(), i.clone());
        Box::pin(async move { state_of(&c, &i).await })
    })
    .await;
    let ran_ms = ran[0].as_u64().unwrap();
    assert!(ran_ms >= at_ms, "ran at {ran_ms}, scheduled for {at_ms}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn scheduled_signals_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduled.db");
    let at = SystemTime::now() + Duration::from_millis(500);
    let at_ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = EntityId::new("Recorder", "later");
    {
        let runtime = start(SqliteStore::open(&path).unwrap()).await;
        runtime
            .client()
            .signal_entity_at(&id, "record_at", &(), at)
            .await
            .unwrap();
        runtime.shutdown().await.unwrap();
    }
    let runtime = start(SqliteStore::open(&path).unwrap()).await;
    let client = runtime.client();
    let c = client.clone();
    let i = id.clone();
    let ran = wait_for("the scheduled signal after restart", || {
        let (c, i) = (c.clone(), i.clone());
        Box::pin(async move { state_of(&c, &i).await })
    })
    .await;
    assert_eq!(ran.as_array().unwrap().len(), 1);
    assert!(ran[0].as_u64().unwrap() >= at_ms);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_survives_a_restart_on_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.db");
    let id = EntityId::new("Counter", "kept");
    {
        let runtime = start(SqliteStore::open(&path).unwrap()).await;
        let client = runtime.client();
        for i in 1..=10 {
            client.signal_entity(&id, "add", &i).await.unwrap();
        }
        // Shut down without waiting for processing: stored signals are kept.
        runtime.shutdown().await.unwrap();
    }
    let runtime = start(SqliteStore::open(&path).unwrap()).await;
    let client = runtime.client();
    let value: i64 = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(value, 55);
    let meta = client.get_entity_raw(&id).await.unwrap().unwrap();
    assert_eq!(meta.pending_messages, 0);
    assert!(meta.last_modified <= SystemTime::now());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn delete_removes_the_state_and_clean_removes_the_entity() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    let gone = EntityId::new("Counter", "gone");
    let kept = EntityId::new("Counter", "kept");
    client.signal_entity(&gone, "add", &1).await.unwrap();
    client.signal_entity(&kept, "add", &2).await.unwrap();
    client
        .call_entity::<(), _>(&gone, "delete", &())
        .await
        .unwrap();
    assert!(client.get_entity_raw(&gone).await.unwrap().is_none());
    let value: i64 = client.call_entity(&gone, "get", &()).await.unwrap();
    assert_eq!(value, 0, "a deleted entity starts again from no state");

    let listed = client
        .query_entities(EntityQuery {
            include_stateless: true,
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<String> = listed.entities.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["@counter@gone", "@counter@kept"]);
    assert!(listed.entities[0].state.is_none());

    let cleaned = client.clean_entity_storage().await.unwrap();
    assert_eq!(cleaned.removed_entities, 1);
    let listed = client
        .query_entities(EntityQuery {
            include_stateless: true,
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<String> = listed.entities.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["@counter@kept"]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn queries_filter_by_name_and_prefix_page_by_page() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    for i in 0..25 {
        client
            .signal_entity(&EntityId::new("Counter", format!("user-{i:02}")), "add", &i)
            .await
            .unwrap();
    }
    for i in 0..5 {
        client
            .signal_entity(&EntityId::new("Counter", format!("team-{i}")), "add", &i)
            .await
            .unwrap();
    }
    client
        .signal_entity(&EntityId::new("Recorder", "user-x"), "record", &1)
        .await
        .unwrap();
    // Wait until everything ran.
    let last: i64 = client
        .call_entity(&EntityId::new("Counter", "team-4"), "get", &())
        .await
        .unwrap();
    assert_eq!(last, 4);

    let mut query = EntityQuery {
        name: Some("COUNTER".into()),
        key_prefix: Some("user-".into()),
        page_size: 10,
        ..EntityQuery::default()
    };
    let mut pages = Vec::new();
    loop {
        let page = client.query_entities(query.clone()).await.unwrap();
        pages.push(page.entities.clone());
        match page.continuation {
            Some(next) => query.continuation = Some(next),
            None => break,
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let all: Vec<_> = pages.concat();
    for (i, meta) in all.iter().enumerate() {
        assert_eq!(meta.id, EntityId::new("Counter", format!("user-{i:02}")));
        assert_eq!(meta.state, Some(json!(i)));
    }

    let without_state = client
        .query_entities(EntityQuery {
            include_state: false,
            key_prefix: Some("user-".into()),
            page_size: 100,
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        without_state.entities.len(),
        26,
        "both names match the prefix"
    );
    assert!(without_state.entities.iter().all(|e| e.state.is_none()));
    assert!(without_state.continuation.is_none());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn entities_signal_entities() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    let a = EntityId::new("Counter", "a");
    let b = EntityId::new("Counter", "b");
    client.signal_entity(&a, "add", &7).await.unwrap();
    client.signal_entity(&a, "forward", &"b").await.unwrap();
    let c = client.clone();
    let value = wait_for("the forwarded signal", || {
        let (c, b) = (c.clone(), b.clone());
        Box::pin(async move { state_of(&c, &b).await })
    })
    .await;
    assert_eq!(value, json!(7));
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn configuration_mistakes_are_errors() {
    let err = Runtime::builder()
        .entity_fn("Counter", counter)
        .start()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no store"), "{err}");
    let err = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Counter", counter)
        .entity_fn("counter", counter)
        .start()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("registered twice"), "{err}");
}

#[tokio::test]
async fn a_client_after_shutdown_gets_an_error() {
    let runtime = start(SqliteStore::in_memory().unwrap()).await;
    let client = runtime.client();
    runtime.shutdown().await.unwrap();
    let err = client
        .signal_entity(&EntityId::new("Counter", "x"), "add", &1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Shutdown), "{err:?}");
}

/// Writes a state, waits, then fails: the state it wrote is never committed.
struct SlowFailure;

#[async_trait]
impl EntityFunction for SlowFailure {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        match ctx.operation_name() {
            "set" => ctx.set_state(&ctx.input::<i64>()?),
            "linger_and_fail" => {
                ctx.set_state(&999i64)?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(OperationError::new("changed my mind"))
            }
            other => Err(OperationError::unknown_operation(other)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_committed_state_only() {
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Slow", SlowFailure)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = EntityId::new("Slow", "s");
    client.call_entity::<(), _>(&id, "set", &1).await.unwrap();
    client
        .signal_entity(&id, "linger_and_fail", &())
        .await
        .unwrap();
    let mut reads = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        let state = state_of(&client, &id).await;
        assert_eq!(
            state,
            Some(json!(1)),
            "a read saw a state that was never committed"
        );
        let page = client.query_entities(EntityQuery::default()).await.unwrap();
        assert_eq!(page.entities[0].state, Some(json!(1)));
        reads += 1;
    }
    assert!(reads > 10);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_restarted_in_process_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.db");
    let id = EntityId::new("Recorder", "dropped");
    let sent = 600u64;
    {
        let runtime = start(SqliteStore::open(&path).unwrap()).await;
        let client = runtime.client();
        let sends = (0..sent).map(|i| {
            let (client, id) = (client.clone(), id.clone());
            async move { client.signal_entity(&id, "record", &i).await.unwrap() }
        });
        futures::future::join_all(sends).await;
        drop(runtime); // no shutdown: the engine is aborted mid-work
    }
    let runtime = start(SqliteStore::open(&path).unwrap()).await;
    let client = runtime.client();
    let c = client.clone();
    let i = id.clone();
    let seen: Vec<u64> = wait_for("every signal", || {
        let (c, i) = (c.clone(), i.clone());
        Box::pin(async move {
            let meta = c.get_entity_raw(&i).await.unwrap()?;
            let seen: Vec<u64> = serde_json::from_value(meta.state).unwrap();
            (meta.pending_messages == 0 && seen.len() as u64 >= sent).then_some(seen)
        })
    })
    .await;
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "an operation was applied twice");
    assert_eq!(sorted, (0..sent).collect::<Vec<_>>());
    runtime.shutdown().await.unwrap();
}

/// An entity whose `wait` operation holds its batch until the test opens the gate.
struct Gate {
    started: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl EntityFunction for Gate {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        match ctx.operation_name() {
            "wait" => {
                self.started.notify_one();
                self.open.notified().await;
                ctx.set_state(&"opened")?;
                Ok(())
            }
            other => Err(OperationError::unknown_operation(other)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_async_operation_does_not_hold_back_other_senders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.db");
    let started = Arc::new(tokio::sync::Notify::new());
    let open = Arc::new(tokio::sync::Notify::new());
    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Counter", counter)
        .entity_fn(
            "Gate",
            Gate {
                started: started.clone(),
                open: open.clone(),
            },
        )
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let patience = Duration::from_secs(10);
    // The signal that starts the long operation is stored without waiting for it.
    tokio::time::timeout(
        patience,
        client.signal_entity(&EntityId::new("Gate", "g"), "wait", &()),
    )
    .await
    .expect("the signal was acknowledged while its operation runs")
    .unwrap();
    started.notified().await;
    // Signals sent while it runs are stored too, and run once it is done.
    for _ in 0..3 {
        tokio::time::timeout(
            patience,
            client.signal_entity(&EntityId::new("Counter", "c"), "add", &1),
        )
        .await
        .expect("a signal was acknowledged while another entity's operation runs")
        .unwrap();
    }
    let stored = client
        .get_entity_raw(&EntityId::new("Counter", "c"))
        .await
        .unwrap();
    assert_eq!(
        stored, None,
        "the counter's operations have not run: the signals were acknowledged once stored"
    );
    open.notify_one();
    let c = client.clone();
    wait_for("the waiting signals", || {
        let c = c.clone();
        Box::pin(async move {
            state_of(&c, &EntityId::new("Counter", "c"))
                .await
                .filter(|v| v == &json!(3))
        })
    })
    .await;
    assert_eq!(
        state_of(&client, &EntityId::new("Gate", "g")).await,
        Some(json!("opened"))
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_acknowledged_around_a_shutdown_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shutdown.db");
    let id = EntityId::new("Recorder", "r");
    let acknowledged = {
        let runtime = start(SqliteStore::open(&path).unwrap()).await;
        let client = runtime.client();
        let sends: Vec<_> = (0..2000u64)
            .map(|i| {
                let (client, id) = (client.clone(), id.clone());
                tokio::spawn(
                    async move { client.signal_entity(&id, "record", &i).await.map(|()| i) },
                )
            })
            .collect();
        tokio::task::yield_now().await;
        runtime.shutdown().await.unwrap();
        let mut acknowledged = Vec::new();
        for send in sends {
            match send.await.unwrap() {
                Ok(i) => acknowledged.push(i),
                Err(err) => assert!(matches!(err, Error::Shutdown), "{err:?}"),
            }
        }
        acknowledged
    };
    assert!(!acknowledged.is_empty());
    let runtime = start(SqliteStore::open(&path).unwrap()).await;
    let client = runtime.client();
    let c = client.clone();
    let i = id.clone();
    let seen: Vec<u64> = wait_for("the acknowledged signals", || {
        let (c, i) = (c.clone(), i.clone());
        Box::pin(async move {
            let meta = c.get_entity_raw(&i).await.unwrap()?;
            (meta.pending_messages == 0).then(|| serde_json::from_value(meta.state).unwrap())
        })
    })
    .await;
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    seen_sorted.dedup();
    assert_eq!(
        seen_sorted.len(),
        seen.len(),
        "an operation was applied twice"
    );
    for i in &acknowledged {
        assert!(
            seen_sorted.binary_search(i).is_ok(),
            "acknowledged signal {i} was lost"
        );
    }
    runtime.shutdown().await.unwrap();
}

/// A store whose commits are answered only once the test opens the gate, and whose entity
/// loads fail for keys starting with `bad`.
struct GatedStore {
    inner: SqliteStore,
    committing: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl Store for GatedStore {
    async fn recover(&self, horizon: u64) -> Result<entities::store::Recovery, StoreError> {
        self.inner.recover(horizon).await
    }
    async fn scheduled_messages(
        &self,
        after: (u64, u64),
        until: u64,
        limit: usize,
    ) -> Result<Vec<entities::message::Message>, StoreError> {
        self.inner.scheduled_messages(after, until, limit).await
    }
    fn commit(
        &self,
        batch: entities::store::Batch,
    ) -> futures::future::BoxFuture<'static, Result<entities::store::Batch, StoreError>> {
        let commit = self.inner.commit(batch);
        self.committing.notify_one();
        let gate = self.gate.clone();
        Box::pin(async move {
            let _pass = gate.acquire().await;
            commit.await
        })
    }
    async fn load_entities(
        &self,
        ids: Vec<EntityId>,
    ) -> Result<Vec<entities::store::EntityRecord>, StoreError> {
        if ids.iter().any(|id| id.key().starts_with("bad")) {
            return Err(StoreError::new("read failed on purpose"));
        }
        self.inner.load_entities(ids).await
    }
    async fn read_entity(
        &self,
        id: &EntityId,
    ) -> Result<Option<entities::store::EntityRecord>, StoreError> {
        self.inner.read_entity(id).await
    }
    async fn query_entities(
        &self,
        query: &EntityQuery,
    ) -> Result<entities::store::EntityRecordPage, StoreError> {
        self.inner.query_entities(query).await
    }
    async fn delete_empty_entities(&self) -> Result<u64, StoreError> {
        self.inner.delete_empty_entities().await
    }
    async fn read_instance(
        &self,
        id: &str,
    ) -> Result<Option<entities::store::InstanceRecord>, StoreError> {
        self.inner.read_instance(id).await
    }
    async fn read_history(&self, id: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.read_history(id).await
    }
    async fn purge_instance(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.purge_instance(id).await
    }
    async fn running_instances(&self) -> Result<Vec<entities::store::InstanceRecord>, StoreError> {
        self.inner.running_instances().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_message_commits_after_the_engine_stopped_hears_it_was_stored() {
    let committing = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let inner = SqliteStore::in_memory().unwrap();
    let runtime = Runtime::builder()
        .store(GatedStore {
            inner: inner.clone(),
            committing: committing.clone(),
            gate: gate.clone(),
        })
        .entity_fn("Counter", counter)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    // A scheduled signal: its batch stores it without running it, and the commit is held.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let c = client.clone();
    let scheduled = tokio::spawn(async move {
        c.signal_entity_at(&EntityId::new("Counter", "later"), "add", &1, later)
            .await
    });
    committing.notified().await;
    // The next batch fails reading an entity: the engine stops.
    let err = client
        .signal_entity(&EntityId::new("Counter", "bad"), "add", &1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Shutdown), "{err:?}");
    // The held commit lands after the engine stopped: its sender hears it was stored.
    gate.add_permits(100);
    scheduled.await.unwrap().unwrap();
    let stored = inner.recover(u64::MAX).await.unwrap().messages;
    assert_eq!(stored.len(), 1, "the scheduled signal is stored");
    drop(runtime);
}
