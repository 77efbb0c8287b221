//! The class-based Counter of the API: `#[entity]` on its `impl`, reached through typed
//! proxies. Run with `cargo run --example class_counter`.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity] // entity name "Counter"
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

#[tokio::main]
async fn main() -> Result<(), entities::Error> {
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory()?)
        .entity::<Counter>()
        .start()
        .await?;
    let client = runtime.client();

    client.signal::<Counter>("game1").add(5).await?;
    client.signal::<Counter>("game1").add(37).await?;
    println!(
        "signalled add(5) and add(37) to {}",
        EntityId::of::<Counter>("game1")
    );

    let value = client.call::<Counter>("game1").get().await?;
    println!("call get() -> {value}");

    let meta = client
        .get_entity::<Counter>("game1")
        .await?
        .expect("the counter has state");
    println!("committed state: value = {}", meta.state.value);

    client.call::<Counter>("game1").reset().await?;
    println!(
        "after reset: {}",
        client.call::<Counter>("game1").get().await?
    );

    client.call::<Counter>("game1").delete().await?;
    let gone = client.get_entity::<Counter>("game1").await?.is_none();
    println!("after the built-in delete, state gone: {gone}");

    runtime.shutdown().await
}
