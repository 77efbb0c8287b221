//! The examples of the API contract (shared/API.md), as written there, compiled and run
//! together: the class-based Counter (1), the function-based counter (2), the transfer
//! orchestration (5) and the runtime and client of section 6.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use entities::prelude::*;
use serde::{Deserialize, Serialize};

// Section 1.
#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity] // entity name "Counter"; #[entity(name = "Score")] overrides it
impl Counter {
    pub fn add(&mut self, amount: i64) {
        self.value += amount;
    }
    pub fn reset(&mut self) {
        self.value = 0;
    }
    pub fn get(&self) -> i64 {
        self.value
    }
}

// Section 2.
fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "reset" => ctx.set_state(&0i64)?,
        "get" => ctx.set_result(&value)?,
        "delete" => ctx.delete_state(),
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

// Section 5.
#[derive(Serialize, Deserialize)]
pub struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let from = EntityId::of::<Counter>(&t.from);
    let to = EntityId::of::<Counter>(&t.to);
    // Critical section: no other caller's operation runs on either entity until it is dropped.
    let _section = ctx.lock(&[from, to]).await?;
    let balance = ctx.call::<Counter>(&t.from).get().await?;
    if balance < t.amount {
        return Ok(false);
    }
    ctx.call::<Counter>(&t.from).add(-t.amount).await?;
    ctx.call::<Counter>(&t.to).add(t.amount).await?;
    Ok(true)
} // the section ends here; it also ends when the orchestration ends in any way

/// The monitor of section 6 (function-based, reusing section 2's counter logic).
fn monitor(ctx: &mut EntityContext) -> Result<(), OperationError> {
    counter(ctx)
}

/// The activity of section 6.
async fn notify(input: String) -> Result<String, std::io::Error> {
    Ok(format!("notified: {input}"))
}

// Section 6, with a temporary database file instead of "bank.db".
#[tokio::test]
async fn section_6_main() -> Result<(), entities::Error> {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .store(SqliteStore::open(dir.path().join("bank.db"))?) // SqliteStore::in_memory() for tests
        .entity::<Counter>()
        .entity_fn("Monitor", monitor)
        .orchestration("transfer", transfer)
        .activity("notify", notify) // async fn notify(input: T) -> Result<R, E>
        .start()
        .await?;
    let client = runtime.client(); // cheap to clone, usable from any task

    client.signal::<Counter>("alice").add(100).await?;
    let id = client
        .start_orchestration(
            "transfer",
            &Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 30,
            },
        )
        .await?;
    let done = client
        .wait_for_orchestration(&id, Duration::from_secs(10))
        .await?;
    let moved: bool = done.output()?;
    assert!(moved);
    assert_eq!(client.call::<Counter>("bob").get().await?, 30);

    // Section 2's function-based entity beside the class-based one.
    let monitor_id = EntityId::new("Monitor", "m");
    client.signal_entity(&monitor_id, "add", &5).await?;
    let value: i64 = client
        .call_entity::<i64, _>(&monitor_id, "get", &())
        .await?;
    assert_eq!(value, 5);

    // Section 3.
    assert_eq!(
        EntityId::new("Counter", "game1"),
        EntityId::of::<Counter>("game1")
    );
    assert_eq!(
        EntityId::of::<Counter>("game1").to_string(),
        "@counter@game1"
    );
    assert_eq!(
        "@counter@game1".parse::<EntityId>()?,
        EntityId::of::<Counter>("game1")
    );

    // Section 4: reads.
    let meta = client.get_entity::<Counter>("alice").await?.unwrap();
    assert_eq!(meta.state.value, 70);
    assert!(meta.last_modified <= std::time::SystemTime::now());
    let raw = client
        .get_entity_raw(&EntityId::of::<Counter>("alice"))
        .await?
        .unwrap();
    assert_eq!(raw.state, serde_json::json!({"value": 70}));
    let page = client
        .query_entities(EntityQuery {
            name: Some("Counter".into()),
            ..EntityQuery::default()
        })
        .await?;
    assert_eq!(page.entities.len(), 2);

    runtime.shutdown().await?;
    Ok(())
}
