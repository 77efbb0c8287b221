//! Fixtures shared by the workspace's tests, benchmarks and examples: the counter entity in
//! its class-based and function-based forms, the bank's transfer orchestration, two versions of a
//! flow changed while it runs, and waits for held instances and histories. Not
//! published: it exists so that each fixture is written once.

use entities::prelude::*;
use serde::{Deserialize, Serialize};

/// A counter (entity name `Counter`): `add` adds, `reset` sets zero, `get` reads, `fail`
/// always fails.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    /// The count.
    pub value: i64,
}

#[entity]
impl Counter {
    /// Adds `amount`.
    pub fn add(&mut self, amount: i64) {
        self.value += amount;
    }
    /// Sets the counter to zero.
    pub fn reset(&mut self) {
        self.value = 0;
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.value
    }
    /// Always fails, with `counter says no`.
    pub fn fail(&self) -> Result<(), String> {
        Err("counter says no".into())
    }
}

/// The function-based counter: `add` adds its input to the state, `get` returns it.
pub fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// The input of [`transfer`]: move `amount` from the counter `from` to the counter `to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    /// The key of the counter to take from.
    pub from: String,
    /// The key of the counter to add to.
    pub to: String,
    /// How much to move.
    pub amount: i64,
}

/// The bank's transfer: locks both counters, and moves the amount if `from` holds enough.
/// Returns whether it moved.
pub async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let from = EntityId::of::<Counter>(&t.from);
    let to = EntityId::of::<Counter>(&t.to);
    let _section = ctx.lock(&[from, to]).await?;
    let balance = ctx.call::<Counter>(&t.from).get().await?;
    if balance < t.amount {
        return Ok(false);
    }
    ctx.call::<Counter>(&t.from).add(-t.amount).await?;
    ctx.call::<Counter>(&t.to).add(t.amount).await?;
    Ok(true)
}

/// The first version of a flow changed while instances run (see `tests/versioning.rs`):
/// adds 1 to the counter `key`, waits for `go`, adds 10, answers the total.
pub async fn flow_v1(ctx: OrchestrationContext, key: String) -> Result<i64, entities::Error> {
    ctx.call::<Counter>(&key).add(1).await?;
    let _: () = ctx.wait_for_event("go").await?;
    ctx.call::<Counter>(&key).add(10).await?;
    ctx.call::<Counter>(&key).get().await
}

/// The second version of [`flow_v1`]: a patch charges a fee first, to the counter
/// `{key}-fee`.
pub async fn flow_v2(ctx: OrchestrationContext, key: String) -> Result<i64, entities::Error> {
    if ctx.patched("fee") {
        ctx.call::<Counter>(format!("{key}-fee")).add(100).await?;
    }
    // Asked again, the same patch answers the same, with no second marker.
    assert_eq!(ctx.patched("fee"), ctx.patched("fee"));
    ctx.call::<Counter>(&key).add(1).await?;
    let _: () = ctx.wait_for_event("go").await?;
    ctx.call::<Counter>(&key).add(10).await?;
    ctx.call::<Counter>(&key).get().await
}

/// How long the waits below wait before they fail.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until orchestration instance `id` is held (see `OrchestrationStatus::held`);
/// returns its status. Panics after 30 s.
pub async fn until_held(client: &Client, id: &str) -> OrchestrationStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = client.orchestration_status(id).await.unwrap().unwrap();
        if status.held.is_some() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never held: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until the history of instance `id` has at least `events` events. Panics after 30 s.
pub async fn until_history_has(client: &Client, id: &str, events: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let history = client.orchestration_history(id).await.unwrap();
        if history.as_ref().is_some_and(|h| h.len() >= events) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never had {events} history events: {history:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The committed state of an entity, `None` if it has none.
pub async fn state_of(client: &Client, id: &EntityId) -> Option<serde_json::Value> {
    client.get_entity_raw(id).await.unwrap().map(|m| m.state)
}
