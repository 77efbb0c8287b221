//! Schedules, scheduled signals, expiry and idempotent sends on a Cart entity. Run with
//! `cargo run --example lifecycle`.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::{Duration, SystemTime};

use entities::prelude::*;
use entities::Schedule;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Cart {
    items: Vec<String>,
    reminders: u32,
    orders: u32,
}

#[entity]
impl Cart {
    pub fn add(&mut self, item: String) {
        self.items.push(item);
    }
    pub fn remind(&mut self) {
        self.reminders += 1;
    }
    pub fn checkout(&mut self) -> Result<u32, String> {
        if self.items.is_empty() {
            return Err("the cart is empty".into());
        }
        self.items.clear();
        self.orders += 1;
        Ok(self.orders)
    }
    pub fn reminders(&self) -> u32 {
        self.reminders
    }
}

#[tokio::main]
async fn main() -> Result<(), entities::Error> {
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory()?)
        .entity::<Cart>()
        .entity_ttl("Cart", Duration::from_millis(800)) // short, to see it expire
        .start()
        .await?;
    let client = runtime.client();
    let cart = EntityId::of::<Cart>("alice");

    // A recurring schedule, and a one-off signal for later that is cancelled.
    let every = client
        .schedule(
            &cart,
            "remind",
            &(),
            Schedule::every(Duration::from_millis(100)),
        )
        .await?;
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    client
        .signal_entity_at(&cart, "remind", &(), in_an_hour)
        .await?;
    let pending = client.pending_signals(&cart).await?;
    println!("pending signals: {}", pending.len());
    for signal in &pending {
        println!(
            "cancel signal {}: {}",
            signal.id,
            client.cancel_signal(&cart, signal.id).await?
        );
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    client.cancel_schedule(&cart, every).await?;
    let reminders = client.call::<Cart>("alice").reminders().await?;
    println!("reminders fired before the schedule was cancelled: {reminders}");

    // The same checkout retried with its idempotency key is applied once.
    client.signal::<Cart>("alice").add("apple".into()).await?;
    let order = client.idempotent("order-7");
    let first = order.call::<Cart>("alice").checkout().await?;
    let retried = order.call::<Cart>("alice").checkout().await?;
    println!("checkout -> order {first}; retried with the same key -> order {retried}");

    // Left alone, the cart expires.
    while client.get_entity::<Cart>("alice").await?.is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the idle cart expired");
    runtime.shutdown().await
}
