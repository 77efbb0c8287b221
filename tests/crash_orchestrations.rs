//! Crash safety of orchestrations: a child process running many transfer orchestrations (some
//! holding locks) is SIGKILLed; after a restart on the same store every transfer completes, no
//! entity operation ran twice, money is conserved and no lock is left held.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use entities::prelude::*;
use serde::{Deserialize, Serialize};

const CHILD_ENV: &str = "ENTITIES_ORCH_CRASH_DB";
const AUDIT_ENV: &str = "ENTITIES_ORCH_CRASH_AUDIT";
const ACCOUNTS: usize = 4;
/// Where `audit` appends: set by the child from its environment, by the parent directly.
static AUDIT_PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
const TRANSFERS: usize = 120;

/// An account that logs every operation it applies, by transfer id.
#[derive(Default, Serialize, Deserialize)]
pub struct Account {
    balance: i64,
    log: Vec<String>,
}

#[entity]
impl Account {
    pub fn deposit(&mut self, amount: i64, by: String) {
        self.balance += amount;
        self.log.push(format!("{by}:deposit"));
    }
    pub fn withdraw(&mut self, amount: i64, by: String) {
        self.balance -= amount;
        self.log.push(format!("{by}:withdraw"));
    }
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

#[derive(Serialize, Deserialize)]
pub struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let me = ctx.instance_id();
    let ids = [
        EntityId::of::<Account>(&t.from),
        EntityId::of::<Account>(&t.to),
    ];
    let moved = {
        let _section = ctx.lock(&ids).await?;
        let balance = ctx.call::<Account>(&t.from).balance().await?;
        if balance >= t.amount {
            ctx.call::<Account>(&t.from)
                .withdraw(t.amount, me.clone())
                .await?;
            ctx.timer(Duration::from_millis(2)).await;
            ctx.call::<Account>(&t.to)
                .deposit(t.amount, me.clone())
                .await?;
            true
        } else {
            false
        }
    };
    ctx.call_activity::<()>("audit", &me).await?;
    Ok(moved)
}

/// Appends the instance id to the audit file.
async fn audit(instance: String) -> Result<(), String> {
    let path = AUDIT_PATH.get().ok_or("no audit file set")?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    // One write of the whole line: a kill cannot tear it.
    file.write_all(format!("{instance}\n").as_bytes())
        .map_err(|e| e.to_string())
}

async fn start(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity::<Account>()
        .orchestration("transfer", transfer)
        .activity("audit", audit)
        .start()
        .await
        .unwrap()
}

fn transfer_of(i: usize) -> Transfer {
    Transfer {
        from: format!("acct{}", i % ACCOUNTS),
        to: format!("acct{}", (i * 7 + 1 + i / ACCOUNTS) % ACCOUNTS),
        amount: 5 + (i as i64 % 7) * 10,
    }
}

/// The child side: only does something when run by the parent test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by killed_mid_flight_orchestrations_finish_after_restart"]
async fn orchestration_crash_child() {
    let path = std::env::var(CHILD_ENV).expect("set by the parent");
    AUDIT_PATH.get_or_init(|| std::env::var(AUDIT_ENV).expect("set by the parent").into());
    let runtime = start(std::path::Path::new(&path)).await;
    let client = runtime.client();
    for a in 0..ACCOUNTS {
        client
            .signal::<Account>(format!("acct{a}"))
            .deposit(100, format!("seed{a}"))
            .await
            .unwrap();
    }
    println!("seeded");
    for i in 0..TRANSFERS {
        let t = transfer_of(i);
        client
            .start_orchestration_with_id("transfer", &format!("t{i}"), &t)
            .await
            .unwrap();
        println!("started {i}");
    }
    for i in 0..TRANSFERS {
        client
            .wait_for_orchestration(&format!("t{i}"), Duration::from_secs(60))
            .await
            .unwrap();
        println!("done {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_flight_orchestrations_finish_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch-crash.db");
    let audit_path = dir.path().join("audit.log");
    AUDIT_PATH.set(audit_path.clone()).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "orchestration_crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .env(AUDIT_ENV, &audit_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut started = 0;
    let mut done = 0;
    let mut seeded = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest may print `test name ... ` in front of the first line.
        let line = line.rsplit("... ").next().unwrap_or_default();
        if line == "seeded" {
            seeded = true;
        } else if line.starts_with("started ") {
            started += 1;
        } else if line.starts_with("done ") {
            done += 1;
        }
        if done == 10 {
            child.kill().unwrap(); // SIGKILL with many transfers in flight
            break;
        }
    }
    child.wait().unwrap();
    assert!(
        seeded && started == TRANSFERS && done == 10,
        "child stopped early"
    );

    // The kill must have caught transfers mid-flight, some holding locks.
    let unfinished: std::collections::HashSet<String> = {
        use entities::store::{EntityQuery, Store};
        let store = SqliteStore::open(&path).unwrap();
        let unfinished: std::collections::HashSet<String> = store
            .running_instances()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        let running = unfinished.len();
        let page = store
            .query_entities(&EntityQuery {
                include_stateless: true,
                page_size: 100,
                ..EntityQuery::default()
            })
            .await
            .unwrap();
        let locked = page
            .entities
            .iter()
            .filter(|e| e.lock_owner.is_some())
            .count();
        println!("at the kill: {running} transfers unfinished, {locked} accounts locked");
        assert!(
            running > 0,
            "every transfer had finished: nothing was in flight"
        );
        assert!(locked > 0, "no transfer held a lock at the kill");
        unfinished
    };
    let runtime = start(&path).await;
    let client = runtime.client();
    let mut moved = 0;
    for i in 0..TRANSFERS {
        let status = client
            .wait_for_orchestration(&format!("t{i}"), Duration::from_secs(120))
            .await
            .unwrap();
        if status.output::<bool>().unwrap() {
            moved += 1;
        }
    }
    assert!(moved > 0);

    // Every entity operation exactly once: each transfer that moved money withdrew once and
    // deposited once, and nothing else ran twice.
    let mut total = 0;
    let mut applied: HashMap<String, usize> = HashMap::new();
    for a in 0..ACCOUNTS {
        let meta = client
            .get_entity::<Account>(format!("acct{a}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(meta.locked_by, None, "acct{a} is still locked");
        assert_eq!(meta.pending_messages, 0);
        assert!(meta.state.balance >= 0, "acct{a} went negative");
        total += meta.state.balance;
        for entry in meta.state.log {
            *applied.entry(entry).or_default() += 1;
        }
    }
    assert_eq!(total, 100 * ACCOUNTS as i64, "money is conserved");
    for (entry, count) in &applied {
        assert_eq!(*count, 1, "{entry} was applied {count} times");
    }
    let withdrawals = applied.keys().filter(|e| e.ends_with(":withdraw")).count();
    let deposits = applied
        .keys()
        .filter(|e| e.ends_with(":deposit") && !e.starts_with("seed"))
        .count();
    assert_eq!((withdrawals, deposits), (moved, moved));

    // Activities: each transfer's audit ran. One whose result was committed never runs again;
    // one cut off between its end and the commit of its result runs again after the restart
    // (at-least-once, as in every durable-execution system): only for an instance unfinished
    // at the kill, and at most once more.
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in audit.lines() {
        *runs.entry(line).or_default() += 1;
    }
    assert_eq!(runs.len(), TRANSFERS, "every transfer audited");
    for (instance, n) in &runs {
        assert!(*n <= 2, "the audit of {instance} ran {n} times");
        if *n == 2 {
            assert!(
                unfinished.contains(*instance),
                "the audit of {instance} ran again although its instance had finished"
            );
        }
    }
    runtime.shutdown().await.unwrap();
}
