//! An operation that suspends takes its entity's state along while it runs; the entity's
//! committed state must stay what the operations before it left, also when a batch records
//! those operations while it runs, and across a stop that cuts it off (as a crash would).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use entities::prelude::*;
use tokio::sync::Notify;

/// `add` runs at once; `wait` suspends until the gate opens, then adds 1000.
struct Mixed {
    started: Arc<Notify>,
    open: Arc<Notify>,
}

#[async_trait]
impl EntityFunction for Mixed {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        self.started.notify_one();
        self.open.notified().await;
        let value: i64 = ctx.state_or_default()?;
        ctx.set_state(&(value + 1000))
    }

    fn run_now(&self, ctx: &mut EntityContext) -> Option<Result<(), OperationError>> {
        if ctx.operation_name() != "add" {
            return None;
        }
        Some(add(ctx))
    }
}

fn add(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    let amount: i64 = ctx.input()?;
    ctx.set_state(&(value + amount))
}

/// The committed state and pending messages once `done` holds of them (`None`: no state).
async fn committed_when(
    client: &Client,
    id: &EntityId,
    done: impl Fn(Option<(i64, u64)>) -> bool,
) -> Option<(i64, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = client
            .get_entity_raw(id)
            .await
            .unwrap()
            .map(|m| (serde_json::from_value(m.state).unwrap(), m.pending_messages));
        if done(seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never got there: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_operation_leaves_the_committed_state_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suspended.db");
    let started = Arc::new(Notify::new());
    let open = Arc::new(Notify::new());
    let mixed = || Mixed {
        started: started.clone(),
        open: open.clone(),
    };
    let id = EntityId::new("Mixed", "m");

    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Mixed", mixed())
        .shutdown_grace(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    client.signal_entity(&id, "add", &5).await.unwrap();
    client.signal_entity(&id, "wait", &()).await.unwrap();
    started.notified().await;
    // Queued behind the first `wait`: once it ends, one batch records it, runs `add` at once
    // and starts the second `wait`, which suspends.
    client.signal_entity(&id, "add", &1).await.unwrap();
    client.signal_entity(&id, "wait", &()).await.unwrap();
    open.notify_one();
    started.notified().await;
    let seen = committed_when(&client, &id, |seen| !matches!(seen, Some((_, p)) if p > 1)).await;
    assert_eq!(
        seen,
        Some((1006, 1)),
        "while the second `wait` runs: what the operations before it did, and its message"
    );
    // Stopped while the second `wait` runs (it runs again at the next start, as after a crash).
    runtime.shutdown().await.unwrap();

    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Mixed", mixed())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    assert_eq!(
        committed_when(&client, &id, |_| true).await,
        Some((1006, 1)),
        "after the restart"
    );
    started.notified().await;
    open.notify_one();
    let seen = committed_when(&client, &id, |seen| !matches!(seen, Some((_, p)) if p > 0)).await;
    assert_eq!(seen, Some((2006, 0)), "every operation applied once");
    runtime.shutdown().await.unwrap();
}
