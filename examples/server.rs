//! The bank of `examples/bank.rs` behind the HTTP API on 127.0.0.1:8080, with metrics at
//! `/metrics` and the API described at `/openapi.json`. Run with `cargo run --example server`
//! (set `ENTITIES_TOKEN` to require a bearer token, `BANK_DB` for the database file,
//! `BANK_ADDR` for another local address; built with `--features postgres`,
//! `BANK_POSTGRES_URL=postgres://..` puts the bank in that PostgreSQL database instead, shared
//! by every process started on it); it prints `entities` CLI and curl lines to try.
//!
//! Stop it with Ctrl-C or SIGTERM (`docker stop`, Kubernetes): it stops taking requests
//! (`/ready` answers 503 from then on), finishes those under way, then shuts the runtime down,
//! which hands its PostgreSQL partitions to the other processes, and exits with 0.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

#[path = "support/bank.rs"]
pub mod bank;

use entities::prelude::*;
use entities::RuntimeBuilder;

use bank::{transfer, Account, Transfer};

/// Waits for an approval event before moving the money: try `raise` on it.
async fn approved_transfer(
    ctx: OrchestrationContext,
    t: Transfer,
) -> Result<bool, entities::Error> {
    let approved: bool = ctx.wait_for_event("approval").await?;
    if !approved {
        return Ok(false);
    }
    ctx.call_orchestration::<bool>("transfer", &t).await
}

/// Locks both accounts, then holds the lock until the event `proceed` says whether to move
/// the money: while it waits, the dashboard's Locks page shows the section and the operations
/// queued behind it.
async fn held_transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let from = EntityId::of::<Account>(&t.from);
    let to = EntityId::of::<Account>(&t.to);
    let _section = ctx.lock(&[from, to]).await?;
    let proceed: bool = ctx.wait_for_event("proceed").await?;
    let balance = ctx.call::<Account>(&t.from).balance().await?;
    if !proceed || balance < t.amount {
        return Ok(false);
    }
    ctx.call::<Account>(&t.from).withdraw(t.amount).await?;
    ctx.call::<Account>(&t.to).deposit(t.amount).await?;
    Ok(true)
}

/// The runtime builder on the PostgreSQL database at `url`.
#[cfg(feature = "postgres")]
async fn postgres(
    builder: RuntimeBuilder,
    url: &str,
) -> Result<RuntimeBuilder, Box<dyn std::error::Error>> {
    Ok(builder.store(entities::postgres::PostgresStore::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(
    _: RuntimeBuilder,
    _: &str,
) -> Result<RuntimeBuilder, Box<dyn std::error::Error>> {
    Err("BANK_POSTGRES_URL is set, but this build has no PostgreSQL store: build with `--features postgres`".into())
}

/// Resolves at the first SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is
/// called, before the server answers, so that an early SIGTERM also stops it gracefully.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "Ctrl-C",
        };
        println!("{name}: finishing the requests under way, then stopping the runtime");
    })
}

#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        println!("Ctrl-C: finishing the requests under way, then stopping the runtime");
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = stop_signal()?;
    let addr = std::env::var("BANK_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_string());
    let addr = addr.as_str();
    let db = std::env::var("BANK_DB").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("entities-bank-server.db")
            .display()
            .to_string()
    });
    let token = std::env::var("ENTITIES_TOKEN").unwrap_or_default();
    // The Prometheus recorder of `/metrics`, installed first so that it counts from the start.
    entities::http::prometheus();
    let postgres_url = std::env::var("BANK_POSTGRES_URL").unwrap_or_default();
    let (builder, database) = if postgres_url.is_empty() {
        (
            Runtime::builder().store(SqliteStore::open(&db)?),
            db.clone(),
        )
    } else {
        let builder = postgres(Runtime::builder(), &postgres_url).await?;
        (builder, "PostgreSQL at BANK_POSTGRES_URL".to_string())
    };
    let runtime = builder
        .entity::<Account>()
        .orchestration("transfer", transfer)
        .orchestration("approved_transfer", approved_transfer)
        .orchestration("held_transfer", held_transfer)
        .start()
        .await?;
    let client = runtime.client();
    if client.get_entity::<Account>("alice").await?.is_none() {
        client.signal::<Account>("alice").deposit(100).await?;
        client.signal::<Account>("bob").deposit(20).await?;
    }

    let auth = if token.is_empty() {
        String::new()
    } else {
        " -H \"Authorization: Bearer $ENTITIES_TOKEN\"".to_string()
    };
    println!("bank on http://{addr} (database {database}); dashboard on http://{addr}/ui; try:\n");
    println!("  cargo run -p entities-cli -- list");
    println!("  cargo run -p entities-cli -- call @account@alice balance");
    println!("  cargo run -p entities-cli -- signal @account@bob deposit 5");
    println!("  cargo run -p entities-cli -- start transfer '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":30}}' --id t1");
    println!("  cargo run -p entities-cli -- orchestration t1 --history");
    println!("  cargo run -p entities-cli -- start approved_transfer '{{\"from\":\"bob\",\"to\":\"alice\",\"amount\":1}}' --id t2");
    println!("  cargo run -p entities-cli -- raise t2 approval true");
    println!("  cargo run -p entities-cli -- start held_transfer '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":5}}' --id t4");
    println!("  cargo run -p entities-cli -- locks");
    println!("  cargo run -p entities-cli -- raise t4 proceed true");
    println!("  cargo run -p entities-cli -- edit @account@alice");
    if postgres_url.is_empty() {
        println!("  cargo run -p entities-cli -- --db {db} orchestrations");
    }
    println!();
    println!("  curl -s{auth} http://{addr}/entities/account/alice");
    println!("  curl -s{auth} -H 'Content-Type: application/json' -X POST http://{addr}/entities/account/alice/withdraw -d 1000");
    println!("  curl -s{auth} -H 'Content-Type: application/json' -X POST http://{addr}/entities/account/bob/deposit/send -d 5");
    println!("  curl -s{auth} -H 'Content-Type: application/json' -X POST 'http://{addr}/orchestrations/transfer?id=t3' -d '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":10}}'");
    println!("  curl -s{auth} 'http://{addr}/orchestrations/t3?wait=5s'");
    println!("  curl -s{auth} 'http://{addr}/entities?name=account'");
    println!("  curl -s{auth} http://{addr}/metrics");
    println!("  curl -s http://{addr}/openapi.json");
    println!("  curl -s http://{addr}/ready");
    println!();

    entities::http::Http::new(client)
        .token(&token)
        .serve_with_shutdown(addr, shutdown)
        .await?;
    runtime.shutdown().await?;
    println!("stopped");
    Ok(())
}
