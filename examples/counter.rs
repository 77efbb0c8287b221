//! A function-based counter entity on the embedded SQLite store.
//!
//! Run with `cargo run --example counter`. The state lives in `counter.db` (in the system's
//! temporary directory), so running it again continues from the last count.

use std::time::{Duration, SystemTime};

use entities::prelude::*;

/// The counter: one function dispatching on the operation name.
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

#[tokio::main]
async fn main() -> Result<(), entities::Error> {
    let path = std::env::temp_dir().join("entities-counter-example.db");
    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path)?)
        .entity_fn("Counter", counter)
        .start()
        .await?;
    let client = runtime.client();
    let id = EntityId::new("Counter", "game1");
    println!("store: {}", path.display());

    let before: i64 = client.call_entity(&id, "get", &()).await?;
    println!("{id} starts at {before}");

    for amount in [1, 2, 3, 4] {
        client.signal_entity(&id, "add", &amount).await?;
        println!("signalled add({amount}) (durably stored)");
    }
    let when = SystemTime::now() + Duration::from_millis(200);
    client.signal_entity_at(&id, "add", &100, when).await?;
    println!("scheduled add(100) for 200 ms from now");

    let now: i64 = client.call_entity(&id, "get", &()).await?;
    println!("{id} is now {now} (the scheduled signal has not run yet)");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let meta = client
        .get_entity_raw(&id)
        .await?
        .expect("the counter has state");
    println!(
        "committed state {} (last modified {:?}, {} messages waiting)",
        meta.state, meta.last_modified, meta.pending_messages
    );

    match client.call_entity::<i64, _>(&id, "jump", &()).await {
        Err(err) => println!("an unknown operation fails cleanly: {err}"),
        Ok(_) => println!("unexpected: `jump` succeeded"),
    }

    runtime.shutdown().await?;
    println!(
        "runtime shut down; run again to continue from {}",
        meta.state
    );
    Ok(())
}
