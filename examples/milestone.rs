//! The milestone example of the reference: a counter that signals a monitor entity when its
//! value crosses 100. A class-based entity signalling a function-based one.
//! Run with `cargo run --example milestone`.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    pub fn add(&mut self, amount: i64, ctx: &EntityContext) -> Result<(), entities::Error> {
        let before = self.value;
        self.value += amount;
        if before <= 100 && self.value > 100 {
            // Sent only if this operation commits.
            let monitor = EntityId::new("Monitor", ctx.id().key());
            ctx.signal_entity(&monitor, "alert", &self.value)?;
        }
        Ok(())
    }
    pub fn get(&self) -> i64 {
        self.value
    }
}

/// Keeps the alerts it receives.
fn monitor(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut alerts: Vec<i64> = ctx.state_or_default()?;
    match ctx.operation_name() {
        "alert" => {
            let value: i64 = ctx.input()?;
            println!(
                "monitor {}: counter crossed 100 (now {value})",
                ctx.id().key()
            );
            alerts.push(value);
            ctx.set_state(&alerts)
        }
        other => Err(OperationError::unknown_operation(other)),
    }
}

#[tokio::main]
async fn main() -> Result<(), entities::Error> {
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory()?)
        .entity::<Counter>()
        .entity_fn("Monitor", monitor)
        .start()
        .await?;
    let client = runtime.client();
    for amount in [30, 40, 50, 60] {
        client.signal::<Counter>("game1").add(amount).await?;
        println!("add({amount})");
    }
    println!(
        "counter is {}",
        client.call::<Counter>("game1").get().await?
    );
    let monitor_id = EntityId::new("Monitor", "game1");
    for _ in 0..100 {
        if let Some(meta) = client.get_entity_raw(&monitor_id).await? {
            println!("monitor state: {}", meta.state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime.shutdown().await
}
