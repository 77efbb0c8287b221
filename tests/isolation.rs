//! Isolation: no entity, stored value or second runtime can stall, stop or corrupt the others
//! (DESIGN.md guarantees 8 and 9).
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use entities::prelude::*;
use entities::store::{Batch, EntityQuery, EntityRecord, EntityRecordPage, InstanceRecord};
use entities::{Error, SqliteStore, Store, StoreError, StoreErrorKind};
use futures::future::BoxFuture;

mod support;
use support::{counter, state_of};

/// Generous bound for something that must happen: only a hang fails it.
const PATIENCE: Duration = Duration::from_secs(20);

/// `hang` never returns; `sleep` awaits the input in milliseconds, then counts.
struct Sleeper;

#[async_trait]
impl EntityFunction for Sleeper {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        match ctx.operation_name() {
            "hang" => std::future::pending().await,
            "sleep" => {
                let ms: u64 = ctx.input()?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let count: u64 = ctx.state_or_default()?;
                ctx.set_state(&(count + 1))
            }
            "count" => {
                let count: u64 = ctx.state_or_default()?;
                ctx.set_result(&count)
            }
            other => Err(OperationError::unknown_operation(other)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runtime_on_the_same_file_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.db");
    let first = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Counter", counter)
        .start()
        .await
        .unwrap();
    let Err(err) = SqliteStore::open(&path) else {
        panic!("a second store opened a file a runtime holds")
    };
    let Error::Store(store_err) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(store_err.kind(), StoreErrorKind::InUse);
    assert!(err.to_string().contains("owned.db"), "{err}");
    // Inspection stays possible, and the first runtime keeps working.
    let client = first.client();
    let id = EntityId::new("Counter", "c");
    client.signal_entity(&id, "add", &3).await.unwrap();
    let value: i64 = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(value, 3);
    let reader = SqliteStore::open_read_only(&path).unwrap();
    let record = reader.read_entity(&id).await.unwrap().expect("stored");
    assert_eq!(record.state, Some(serde_json::json!(3)));
    first.shutdown().await.unwrap();
    let second = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Counter", counter)
        .start()
        .await
        .unwrap();
    let value: i64 = second.client().call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(value, 3);
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_never_returns_holds_back_only_its_entity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stuck.db");
    let stuck = EntityId::new("Sleeper", "stuck");
    let other = EntityId::new("Counter", "other");
    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Counter", counter)
        .entity_fn("Sleeper", Sleeper)
        .shutdown_grace(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    client.signal_entity(&stuck, "hang", &()).await.unwrap();
    client.signal_entity(&stuck, "sleep", &0u64).await.unwrap();
    for i in 1..=200i64 {
        client.signal_entity(&other, "add", &1).await.unwrap();
        let value: i64 = tokio::time::timeout(PATIENCE, client.call_entity(&other, "get", &()))
            .await
            .expect("a call to another entity answered while one operation hangs")
            .unwrap();
        assert_eq!(value, i);
    }
    // The stuck entity's later message waits behind it, in order.
    assert_eq!(state_of(&client, &stuck).await, None);
    tokio::time::timeout(PATIENCE, runtime.shutdown())
        .await
        .expect("shutdown returned after its grace period")
        .unwrap();

    // After a restart with a short timeout, the stuck operation runs again, fails, and its
    // entity moves on to the next message.
    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Counter", counter)
        .entity_fn("Sleeper", Sleeper)
        .entity_operation_timeout("Sleeper", Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let value: i64 = client.call_entity(&other, "get", &()).await.unwrap();
    assert_eq!(value, 200);
    let err = client
        .call_entity::<(), _>(&stuck, "hang", &())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    let count: u64 = client.call_entity(&stuck, "count", &()).await.unwrap();
    assert_eq!(
        count, 1,
        "the message queued behind the stuck operation ran once"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_entitys_backlog_does_not_delay_the_others() {
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Counter", counter)
        .entity_fn("Sleeper", Sleeper)
        .shutdown_grace(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let slow = EntityId::new("Sleeper", "slow");
    let sends = (0..10_000).map(|_| client.signal_entity(&slow, "sleep", &1u64));
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    let fast = EntityId::new("Counter", "fast");
    for i in 1..=50i64 {
        client.signal_entity(&fast, "add", &1).await.unwrap();
        let value: i64 = tokio::time::timeout(PATIENCE, client.call_entity(&fast, "get", &()))
            .await
            .expect("a call to a free entity answered")
            .unwrap();
        assert_eq!(value, i);
    }
    // The free entity's 100 round trips were done while the slow backlog (at least 10 s of
    // sleeping, one operation at a time) was still far from finished.
    let done = state_of(&client, &slow)
        .await
        .map(|v| v.as_u64().unwrap())
        .unwrap_or(0);
    assert!(done < 10_000, "the slow entity finished first: {done}");
    runtime.shutdown().await.unwrap();
}

/// A store that fails its `fail_at`-th commit (counting from 1) with an I/O error and then
/// refuses every commit until `healed` is set and the runtime resumes it.
struct FaultyStore {
    inner: SqliteStore,
    commits: AtomicUsize,
    fail_at: usize,
    broken: Arc<AtomicBool>,
    healed: Arc<AtomicBool>,
}

fn io_fault() -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::Io,
        "injected write failure",
        std::io::Error::other("the disk went away"),
    )
}

#[async_trait]
impl Store for FaultyStore {
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
    fn commit(&self, batch: Batch) -> BoxFuture<'static, Result<Batch, StoreError>> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at {
            self.broken.store(true, Ordering::SeqCst);
        }
        if self.broken.load(Ordering::SeqCst) {
            return Box::pin(async { Err(io_fault()) });
        }
        self.inner.commit(batch)
    }
    fn resume(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let (broken, healed) = (self.broken.clone(), self.healed.clone());
        Box::pin(async move {
            if !healed.load(Ordering::SeqCst) {
                return Err(io_fault());
            }
            broken.store(false, Ordering::SeqCst);
            Ok(())
        })
    }
    async fn load_entities(&self, ids: Vec<EntityId>) -> Result<Vec<EntityRecord>, StoreError> {
        self.inner.load_entities(ids).await
    }
    async fn read_entity(&self, id: &EntityId) -> Result<Option<EntityRecord>, StoreError> {
        self.inner.read_entity(id).await
    }
    async fn query_entities(&self, query: &EntityQuery) -> Result<EntityRecordPage, StoreError> {
        self.inner.query_entities(query).await
    }
    async fn delete_empty_entities(&self) -> Result<u64, StoreError> {
        self.inner.delete_empty_entities().await
    }
    async fn read_instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner.read_instance(id).await
    }
    async fn read_history(&self, id: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.read_history(id).await
    }
    async fn purge_instance(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.purge_instance(id).await
    }
    async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.inner.running_instances().await
    }
}

/// Appends its input to its state and forwards it to the `Mirror` of the same key.
fn recorder(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut seen: Vec<u64> = ctx.state_or_default()?;
    let seq: u64 = ctx.input()?;
    seen.push(seq);
    ctx.set_state(&seen)?;
    ctx.signal_entity(&EntityId::new("Mirror", ctx.id().key()), "record", &seq)?;
    Ok(())
}

fn mirror(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut seen: Vec<u64> = ctx.state_or_default()?;
    seen.push(ctx.input()?);
    ctx.set_state(&seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_reported_with_its_cause_and_survived_without_a_restart() {
    let broken = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
    let runtime = Runtime::builder()
        .store(FaultyStore {
            inner: SqliteStore::in_memory().unwrap(),
            commits: AtomicUsize::new(0),
            fail_at: 40,
            broken: broken.clone(),
            healed: healed.clone(),
        })
        .entity_fn("Recorder", recorder)
        .entity_fn("Mirror", mirror)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    const SENDERS: usize = 4;
    const SENDS: u64 = 400;
    let heal = {
        let (broken, healed) = (broken.clone(), healed.clone());
        tokio::spawn(async move {
            while !broken.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            healed.store(true, Ordering::SeqCst);
        })
    };
    let senders = (0..SENDERS).map(|s| {
        let client = client.clone();
        tokio::spawn(async move {
            let id = EntityId::new("Recorder", format!("r{s}"));
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            for seq in 0..SENDS {
                match client.signal_entity(&id, "record", &seq).await {
                    Ok(()) => acked.push(seq),
                    Err(err) => failures.push(err),
                }
                if seq % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (acked, failures)
        })
    });
    let results = futures::future::join_all(senders).await;
    heal.await.unwrap();
    let mut failures = 0;
    let mut acked_after_a_failure = 0;
    for (s, result) in results.into_iter().enumerate() {
        let (acked, errors) = result.unwrap();
        failures += errors.len();
        for err in &errors {
            let Error::Store(store_err) = err else {
                panic!("a failed send says why: {err:?}")
            };
            assert_eq!(store_err.kind(), StoreErrorKind::Io, "{store_err}");
            let cause = std::error::Error::source(store_err).expect("the cause is kept");
            assert!(
                cause.downcast_ref::<std::io::Error>().is_some(),
                "{cause:?}"
            );
        }
        if !errors.is_empty() {
            acked_after_a_failure += acked.iter().filter(|&&seq| seq > SENDS / 2).count();
        }
        // Exactly once, in order, at both hops, for every acknowledged signal.
        let id = EntityId::new("Recorder", format!("r{s}"));
        let mirror_id = EntityId::new("Mirror", format!("r{s}"));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let (recorded, mirrored) = loop {
            let recorded = seen(&client, &id).await;
            let mirrored = seen(&client, &mirror_id).await;
            if recorded == mirrored && acked.iter().all(|a| recorded.contains(a)) {
                break (recorded, mirrored);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sender {s}: acknowledged signals missing: recorded {recorded:?}, mirrored {mirrored:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut sorted = recorded.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted, recorded,
            "sender {s}: applied twice or out of order"
        );
        assert_eq!(mirrored, recorded);
    }
    assert!(failures > 0, "the injected fault reached some sender");
    assert!(
        acked_after_a_failure > 0,
        "the runtime resumed by itself after the fault"
    );
    runtime.shutdown().await.unwrap();
}

async fn seen(client: &Client, id: &EntityId) -> Vec<u64> {
    state_of(client, id)
        .await
        .map(|v| serde_json::from_value(v).unwrap())
        .unwrap_or_default()
}
