//! The bank example on PostgreSQL, from two processes sharing one database. Run with
//! `cargo run --features postgres-test-server --example bank_postgres`: it starts a private
//! PostgreSQL server (or uses `ENTITIES_POSTGRES_URL`), opens the accounts, then runs itself twice as
//! workers that each start transfers; every process serves its share of the partitions, and
//! calls and locks cross between them.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

#[path = "support/bank.rs"]
pub mod bank;

use std::process::Command;
use std::time::Duration;

use entities::postgres::test_server::TestServer;
use entities::postgres::{PostgresOptions, PostgresStore};
use entities::prelude::*;

use bank::{transfer, Account, Transfer};

const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];

async fn runtime(url: &str) -> Result<Runtime, Box<dyn std::error::Error>> {
    let options = PostgresOptions {
        partitions: 8,
        lease: Duration::from_secs(5),
        ..Default::default()
    };
    let store = PostgresStore::connect_with(url, options).await?;
    Ok(Runtime::builder()
        .store(store)
        .entity::<Account>()
        .orchestration("transfer", transfer)
        .start()
        .await?)
}

/// A worker process: starts transfers in a ring, waits for them, stays a little while so the
/// other worker's calls to its partitions are served, then hands its partitions over.
async fn worker(url: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = runtime(url).await?;
    let client = runtime.client();
    let mut ids = Vec::new();
    for (i, from) in ACCOUNTS.iter().enumerate() {
        let to = ACCOUNTS[(i + 1) % ACCOUNTS.len()];
        let t = Transfer {
            from: from.to_string(),
            to: to.to_string(),
            amount: 10 * (i as i64 + 1),
        };
        ids.push((client.start_orchestration("transfer", &t).await?, *from, to));
    }
    for (id, from, to) in ids {
        let done = client
            .wait_for_orchestration(&id, Duration::from_secs(30))
            .await?;
        let moved: bool = done.output()?;
        println!(
            "[{name}] transfer {from} -> {to}: {}",
            if moved { "done" } else { "refused" }
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    runtime.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--worker" {
        return worker(&args[2], &args[3]).await;
    }
    let _server;
    let url = match std::env::var("ENTITIES_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => {
            println!("starting a private PostgreSQL server...");
            let server = TestServer::start()?;
            let url = server.create_database().await?;
            _server = server;
            url
        }
    };
    {
        let runtime = runtime(&url).await?;
        for account in ACCOUNTS {
            runtime
                .client()
                .signal::<Account>(account)
                .deposit(100)
                .await?;
        }
        for account in ACCOUNTS {
            runtime.client().call::<Account>(account).balance().await?;
        }
        runtime.shutdown().await?;
    }
    println!(
        "opened {} accounts with 100 each; starting two worker processes",
        ACCOUNTS.len()
    );
    let me = std::env::current_exe()?;
    let workers: Vec<_> = ["worker-1", "worker-2"]
        .into_iter()
        .map(|name| Command::new(&me).args(["--worker", &url, name]).spawn())
        .collect::<Result<_, _>>()?;
    for mut worker in workers {
        let status = worker.wait()?;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }
    let runtime = runtime(&url).await?;
    let mut total = 0;
    for account in ACCOUNTS {
        let balance = runtime.client().call::<Account>(account).balance().await?;
        println!("{account}: {balance}");
        total += balance;
    }
    runtime.shutdown().await?;
    println!(
        "total {total} (money is conserved: {})",
        total == 100 * ACCOUNTS.len() as i64
    );
    Ok(())
}
