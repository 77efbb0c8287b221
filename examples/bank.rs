//! The transfer-funds scenario of the reference: `Account` entities and a `transfer`
//! orchestration that locks both accounts in a critical section, checks the balance, withdraws
//! and deposits. Run with `cargo run --example bank`. The `Account` entity and the `Transfer`
//! input are in `examples/support/bank.rs`, shared with the `server` and `bank_postgres`
//! examples; the orchestration here also reports each transfer through an activity.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

#[path = "support/bank.rs"]
pub mod bank;

use std::time::Duration;

use entities::prelude::*;

use bank::{Account, Transfer};

/// Moves money between two accounts; returns whether it did.
async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let from = EntityId::of::<Account>(&t.from);
    let to = EntityId::of::<Account>(&t.to);
    // No other caller's operation runs on either account until `_section` is dropped.
    let _section = ctx.lock(&[from, to]).await?;
    let balance = ctx.call::<Account>(&t.from).balance().await?;
    if balance < t.amount {
        return Ok(false);
    }
    ctx.call::<Account>(&t.from).withdraw(t.amount).await?;
    ctx.call::<Account>(&t.to).deposit(t.amount).await?;
    let note = format!("moved {} from {} to {}", t.amount, t.from, t.to);
    ctx.call_activity::<()>("notify", &note).await?;
    Ok(true)
}

/// An activity: the place for side effects (here, printing).
async fn notify(message: String) -> Result<(), String> {
    println!("  notify: {message}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), entities::Error> {
    let path = std::env::temp_dir().join(format!("entities-bank-{}.db", std::process::id()));
    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path)?)
        .entity::<Account>()
        .orchestration("transfer", transfer)
        .activity("notify", notify)
        .start()
        .await?;
    let client = runtime.client();

    client.signal::<Account>("alice").deposit(100).await?;
    client.signal::<Account>("bob").deposit(20).await?;
    println!("alice deposits 100, bob deposits 20");

    // Transfers in both directions at once: the locks are taken in one global order, so
    // they cannot deadlock, and no balance goes negative.
    let transfers = [
        ("alice", "bob", 30),
        ("bob", "alice", 10),
        ("alice", "bob", 500),
        ("bob", "alice", 45),
    ];
    let mut ids = Vec::new();
    for (from, to, amount) in transfers {
        let t = Transfer {
            from: from.into(),
            to: to.into(),
            amount,
        };
        ids.push((
            client.start_orchestration("transfer", &t).await?,
            from,
            to,
            amount,
        ));
    }
    for (id, from, to, amount) in ids {
        let done = client
            .wait_for_orchestration(&id, Duration::from_secs(10))
            .await?;
        let moved: bool = done.output()?;
        println!(
            "transfer {amount} {from} -> {to}: {}",
            if moved {
                "done"
            } else {
                "refused (insufficient funds)"
            }
        );
    }

    let alice = client.call::<Account>("alice").balance().await?;
    let bob = client.call::<Account>("bob").balance().await?;
    println!("balances: alice {alice}, bob {bob}, total {}", alice + bob);
    assert_eq!(alice + bob, 120, "money is conserved");

    match client.call::<Account>("bob").withdraw(1_000).await {
        Err(err) => println!("direct withdraw of 1000 from bob: {err}"),
        Ok(_) => println!("unexpected: the withdraw succeeded"),
    }

    runtime.shutdown().await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
