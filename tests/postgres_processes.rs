//! Several processes on one PostgreSQL database (children of the test, SIGKILLed and
//! SIGSTOPped), checked by an audit: every acknowledged signal of every process is applied
//! exactly once, in order per stream, forwards through relay entities included.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

mod children;

use std::collections::{BTreeMap, HashMap};

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use entities::prelude::*;
use entities::Store;
use entities_postgres::test_server::TestServer;
use entities_postgres::{PostgresOptions, PostgresStore};
use serde::{Deserialize, Serialize};

/// The tests of this file run one at a time: each runs three processes and a server, which is
/// all two cores can take without starving lease renewals.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const URL_ENV: &str = "ENTITIES_PG_CHILD_URL";
const NAME_ENV: &str = "ENTITIES_PG_CHILD_NAME";
const COUNT_ENV: &str = "ENTITIES_PG_CHILD_COUNT";
const LEASE_ENV: &str = "ENTITIES_PG_CHILD_LEASE_MS";
const LEASE: Duration = Duration::from_millis(2000);
const PARTITIONS: u32 = 12;
/// Audit entities (and relays): spread over the partitions.
const LANES: u64 = 12;

fn options() -> PostgresOptions {
    let lease = std::env::var(LEASE_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(LEASE, Duration::from_millis);
    PostgresOptions {
        partitions: PARTITIONS,
        lease,
        ..Default::default()
    }
}

/// One recorded signal: stream `stream` (a process and a lane), number `n`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Mark {
    stream: String,
    n: u64,
}

/// Audit: keeps, per stream, every number received, in the order received.
fn audit(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut seen: BTreeMap<String, Vec<u64>> = ctx.state_or_default()?;
    match ctx.operation_name() {
        "record" => {
            let mark: Mark = ctx.input()?;
            seen.entry(mark.stream).or_default().push(mark.n);
            ctx.set_state(&seen)?;
        }
        "count" => {
            let total: usize = seen.values().map(Vec::len).sum();
            ctx.set_result(&total)?;
        }
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// Relay: forwards a mark to the audit entity of the same key.
fn relay(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mark: Mark = ctx.input()?;
    let to = EntityId::new("Audit", ctx.id().key());
    ctx.signal_entity(&to, "record", &mark)?;
    Ok(())
}

async fn start(url: &str) -> Runtime {
    let store = PostgresStore::connect_with(url, options()).await.unwrap();
    Runtime::builder()
        .store(store)
        .entity_fn("Audit", audit)
        .entity_fn("Relay", relay)
        .start()
        .await
        .unwrap()
}

/// The child side: sends `COUNT` marks per lane from its own client (odd lanes through a
/// relay), calls now and then, and prints `ack <stream> <n>` once each signal is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the tests below"]
async fn pg_child() {
    let url = std::env::var(URL_ENV).expect("the parent sets the URL");
    let name = std::env::var(NAME_ENV).unwrap();
    let count: u64 = std::env::var(COUNT_ENV).unwrap().parse().unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,entities_postgres=info,entities_core=info")
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = start(&url).await;
    let client = runtime.client();
    println!("started");
    let lanes = (0..LANES).map(|lane| {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let stream = format!("{name}-{lane}");
            let key = format!("lane{lane}");
            for n in 0..count {
                let mark = Mark {
                    stream: stream.clone(),
                    n,
                };
                let sent = if lane % 2 == 0 {
                    client
                        .signal_entity(&EntityId::new("Audit", &key), "record", &mark)
                        .await
                } else {
                    client
                        .signal_entity(&EntityId::new("Relay", &key), "forward", &mark)
                        .await
                };
                match sent {
                    Ok(()) => println!("ack {stream} {n}"),
                    Err(err) => eprintln!("{stream} {n} not acknowledged: {err}"),
                }
                if n % 25 == 0 {
                    let id = EntityId::new("Audit", &key);
                    if let Err(err) = client.call_entity::<usize, _>(&id, "count", &()).await {
                        eprintln!("call to {id} failed: {err}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    futures::future::join_all(lanes).await;
    println!("done");
    // Stay up (running partitions) until the parent closes stdin.
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    runtime.shutdown().await.unwrap();
}

struct Proc {
    child: Child,
    acks: std::sync::mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

fn spawn(url: &str, name: &str, count: u64, dir: &std::path::Path) -> Proc {
    spawn_child("pg_child", url, name, count, dir, &[])
}

fn spawn_child(
    test: &str,
    url: &str,
    name: &str,
    count: u64,
    dir: &std::path::Path,
    env: &[(&str, String)],
) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let mut envs = env.to_vec();
    envs.extend([
        (URL_ENV, url.to_string()),
        (NAME_ENV, name.to_string()),
        (COUNT_ENV, count.to_string()),
    ]);
    let (child, acks) = children::spawn(test, &envs, &log);
    Proc { child, acks, log }
}

impl Proc {
    /// Lines until `what` is printed (collecting acks into `acked`).
    fn until(&self, what: &str, acked: &mut HashMap<String, Vec<u64>>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(line) if line == what => return,
                Ok(line) => record(&line, acked),
                Err(_) => panic!("no `{what}` in time; log:\n{}", tail(&self.log)),
            }
        }
    }

    /// Every line left, to the end of the output.
    fn drain(&self, acked: &mut HashMap<String, Vec<u64>>) {
        while let Ok(line) = self.acks.recv_timeout(Duration::from_secs(30)) {
            record(&line, acked);
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn record(line: &str, acked: &mut HashMap<String, Vec<u64>>) {
    let mut parts = line.split_whitespace();
    if parts.next() == Some("ack") {
        let (Some(stream), Some(n)) = (parts.next(), parts.next()) else {
            return;
        };
        acked
            .entry(stream.to_string())
            .or_default()
            .push(n.parse().unwrap());
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Backtrace frames say little here: the messages around them say what happened.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("at ")
                || t.split(':')
                    .next()
                    .is_some_and(|n| n.parse::<u32>().is_ok()))
        })
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Owners of the partitions, from the lease table.
async fn owners(url: &str) -> Vec<Option<i64>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT owner FROM entities_leases WHERE expires_at > now() OR owner IS NULL ORDER BY part",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Nodes that hold an unexpired lease.
async fn live_owners(url: &str) -> std::collections::BTreeSet<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT DISTINCT owner FROM entities_leases WHERE owner IS NOT NULL AND expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn node_count(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM entities_leases WHERE owner IS NOT NULL AND expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until every acknowledged mark is applied, then checks: no duplicate, in order per
/// stream, nothing acknowledged missing.
async fn check_audit(url: &str, acked: &HashMap<String, Vec<u64>>) {
    let store = PostgresStore::connect_with(url, options()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut applied: HashMap<String, Vec<u64>> = HashMap::new();
        for lane in 0..LANES {
            let id = EntityId::new("Audit", format!("lane{lane}"));
            if let Some(record) = store.read_entity(&id).await.unwrap() {
                let seen: BTreeMap<String, Vec<u64>> =
                    serde_json::from_value(record.state.unwrap_or_default()).unwrap_or_default();
                applied.extend(seen);
            }
        }
        let mut missing = Vec::new();
        for (stream, ns) in acked {
            let got = applied.get(stream).cloned().unwrap_or_default();
            for n in ns {
                if !got.contains(n) {
                    missing.push((stream.clone(), *n));
                }
            }
        }
        for (stream, got) in &applied {
            for pair in got.windows(2) {
                assert!(
                    pair[0] < pair[1],
                    "stream {stream}: {} applied after {} (a duplicate or out of order): {got:?}",
                    pair[1],
                    pair[0]
                );
            }
        }
        if missing.is_empty() {
            let total: usize = acked.values().map(Vec::len).sum();
            assert!(total > 0);
            println!("audit: {total} acknowledged signals, every one applied once, in order");
            return;
        }
        if Instant::now() >= deadline {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for row in client
                .query("SELECT id, part, fresh, convert_from(target, 'UTF8'), body FROM entities_messages ORDER BY seq", &[])
                .await
                .unwrap()
            {
                println!(
                    "left: id {} part {} fresh {} {} {}",
                    row.get::<_, i64>(0),
                    row.get::<_, i32>(1),
                    row.get::<_, bool>(2),
                    row.get::<_, String>(3),
                    row.get::<_, String>(4)
                );
            }
            println!("owners: {:?}", owners(url).await);
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged signals never applied: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Stop,
}

/// Three load processes (`{prefix}0` to `{prefix}2`, `count` signals per lane each), started
/// and running, with the partitions spread over all three.
async fn spread_three(
    url: &str,
    prefix: &str,
    count: u64,
    dir: &std::path::Path,
    acked: &mut HashMap<String, Vec<u64>>,
) -> Vec<Proc> {
    let procs: Vec<Proc> = (0..3)
        .map(|i| spawn(url, &format!("{prefix}{i}"), count, dir))
        .collect();
    for p in &procs {
        p.until("started", acked, Duration::from_secs(30));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while live_owners(url).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "partitions never spread: {:?}",
            owners(url).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    procs
}

async fn three_processes(fault: Fault, what: &str) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(server) = TestServer::start_or_skip(what) else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut acked = HashMap::new();
    let procs = spread_three(&url, "p", 200, dir, &mut acked).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let victim = &procs[0];
    match fault {
        Fault::Kill => victim.signal("-KILL"),
        Fault::Stop => victim.signal("-STOP"),
    }
    let faulted = Instant::now();
    // The survivors take its partitions once they have seen its leases unrenewed for a whole
    // lease (seen from their first lease round after its last renewal, and acted on at a
    // round): within two leases, plus 2 s for the claim and the recovery.
    loop {
        let owners = live_owners(&url).await;
        if owners.len() == 2 && node_count(&url).await == i64::from(PARTITIONS) {
            break;
        }
        assert!(
            faulted.elapsed() < 2 * LEASE + Duration::from_secs(2),
            "partitions not taken over in time: {:?}",
            self::owners(&url).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("taken over after {:?}", faulted.elapsed());
    if let Fault::Stop = fault {
        tokio::time::sleep(Duration::from_millis(500)).await;
        victim.signal("-CONT");
    }
    for p in &procs[1..] {
        p.until("done", &mut acked, Duration::from_secs(120));
    }
    if let Fault::Stop = fault {
        victim.until("done", &mut acked, Duration::from_secs(120));
        // It rejoined: the partitions spread over three again. (No time is asked of a
        // rejoin; the bound only keeps a broken one from hanging the run.)
        let resumed = Instant::now();
        let deadline = resumed + Duration::from_secs(60);
        while live_owners(&url).await.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "the stopped process did not rejoin"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("rejoined {:?} after it finished sending", resumed.elapsed());
    } else {
        victim.drain(&mut acked);
    }
    check_audit(&url, &acked).await;
    for mut p in procs {
        drop(p.child.stdin.take());
        p.drain(&mut acked);
        let _ = p.child.wait();
        if let Fault::Stop = fault {
            // A process paused past its lease: what it had not committed is sent again (to
            // the new owners), and its clients never hear of the move.
            let failed = failures(&p.log);
            assert!(
                failed.is_empty(),
                "{} client requests failed, e.g. {:?}",
                failed.len(),
                &failed[..failed.len().min(5)]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_is_replaced_and_nothing_is_lost() {
    three_processes(Fault::Kill, "killed_process_is_replaced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_process_is_fenced_and_rejoins() {
    three_processes(Fault::Stop, "stopped_process_is_fenced").await;
}

/// The lines of a child's log that tell of a send or call that failed.
fn failures(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" not acknowledged: ") || l.starts_with("call to "))
        .map(str::to_string)
        .collect()
}

/// Leases as stored: partition, owner, epoch.
async fn leases(url: &str) -> Vec<(i32, Option<i64>, i64)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT part, owner, epoch FROM entities_leases ORDER BY part",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// What happens to the database server under load.
#[derive(Clone, Copy, Debug)]
enum ServerFault {
    /// `pg_ctl restart -m fast`.
    Restart,
    /// Stopped for 10 s, then started again.
    Down,
    /// Every server process SIGSTOPped for 10 s, then continued.
    Freeze,
}

/// Three processes send under load while the server restarts, is down 10 s or is frozen 10 s:
/// no client send or call fails, every acknowledged signal is applied once and in order, and
/// (frozen) no partition changes owner.
async fn server_fault(fault: ServerFault, what: &str) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(server) = TestServer::start_or_skip(what) else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut acked = HashMap::new();
    let count = match fault {
        ServerFault::Restart => 300,
        ServerFault::Down | ServerFault::Freeze => 400,
    };
    let procs = spread_three(&url, "s", count, dir, &mut acked).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = leases(&url).await;
    match fault {
        ServerFault::Restart => server.restart().unwrap(),
        ServerFault::Down => {
            server.stop().unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            server.start_again().unwrap();
        }
        ServerFault::Freeze => {
            server.freeze(true).unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            server.freeze(false).unwrap();
        }
    }
    let back = Instant::now();
    for p in &procs {
        p.until("done", &mut acked, Duration::from_secs(180));
    }
    println!(
        "{fault:?}: every process done {:?} after the server came back",
        back.elapsed()
    );
    if let ServerFault::Freeze = fault {
        assert_eq!(
            leases(&url).await,
            before,
            "a partition changed owner across the freeze"
        );
    }
    check_audit(&url, &acked).await;
    for mut p in procs {
        drop(p.child.stdin.take());
        p.drain(&mut acked);
        let _ = p.child.wait();
        let failed = failures(&p.log);
        assert!(
            failed.is_empty(),
            "{fault:?}: {} client requests failed, e.g. {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_fails_no_request() {
    server_fault(ServerFault::Restart, "server_restart_fails_no_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_ten_seconds_fails_no_request() {
    server_fault(ServerFault::Down, "server_down_ten_seconds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_frozen_ten_seconds_moves_no_partition() {
    server_fault(ServerFault::Freeze, "server_frozen_ten_seconds").await;
}

/// A bank account (money moves only inside transfers).
#[derive(Default, Serialize, Deserialize)]
pub struct Account {
    balance: i64,
}

#[entity]
impl Account {
    pub fn deposit(&mut self, amount: i64) {
        self.balance += amount;
    }
    pub fn withdraw(&mut self, amount: i64) -> Result<i64, String> {
        if amount > self.balance {
            return Err(format!("insufficient funds: {}", self.balance));
        }
        self.balance -= amount;
        Ok(self.balance)
    }
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

#[derive(Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let from = EntityId::of::<Account>(&t.from);
    let to = EntityId::of::<Account>(&t.to);
    let _section = ctx.lock(&[from, to]).await?;
    let balance = ctx.call::<Account>(&t.from).balance().await?;
    if balance < t.amount {
        return Ok(false);
    }
    ctx.call::<Account>(&t.from).withdraw(t.amount).await?;
    ctx.call::<Account>(&t.to).deposit(t.amount).await?;
    Ok(true)
}

const ACCOUNTS: u64 = 10;
const OPENING: i64 = 1000;

async fn start_bank(url: &str) -> Runtime {
    let store = PostgresStore::connect_with(url, options()).await.unwrap();
    Runtime::builder()
        .store(store)
        .entity::<Account>()
        .orchestration("transfer", transfer)
        .start()
        .await
        .unwrap()
}

/// The child side of the bank test: starts `COUNT` transfers between random accounts and
/// prints `transfer <id>` once each start is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the tests below"]
async fn pg_bank_child() {
    let url = std::env::var(URL_ENV).expect("the parent sets the URL");
    let name = std::env::var(NAME_ENV).unwrap();
    let count: u64 = std::env::var(COUNT_ENV).unwrap().parse().unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,entities_postgres=info")
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = start_bank(&url).await;
    let client = runtime.client();
    println!("started");
    let mut seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    for _ in 0..count {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let from = (seed >> 33) % ACCOUNTS;
        let to = (from + 1 + (seed >> 40) % (ACCOUNTS - 1)) % ACCOUNTS;
        let t = Transfer {
            from: format!("acct{from}"),
            to: format!("acct{to}"),
            amount: 1 + ((seed >> 20) % 300) as i64,
        };
        match client.start_orchestration("transfer", &t).await {
            Ok(id) => println!("transfer {id}"),
            Err(err) => eprintln!("start failed: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("done");
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_across_processes_survive_a_kill() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(server) = TestServer::start_or_skip("bank_transfers_across_processes") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Opening balances, from a runtime of the test itself (stopped before the children run).
    {
        let rt = start_bank(&url).await;
        for a in 0..ACCOUNTS {
            rt.client()
                .signal::<Account>(format!("acct{a}"))
                .deposit(OPENING)
                .await
                .unwrap();
        }
        for a in 0..ACCOUNTS {
            let b = rt
                .client()
                .call::<Account>(format!("acct{a}"))
                .balance()
                .await
                .unwrap();
            assert_eq!(b, OPENING);
        }
        rt.shutdown().await.unwrap();
    }
    let mut lines = HashMap::new();
    let procs: Vec<Proc> = (0..3)
        .map(|i| spawn_child("pg_bank_child", &url, &format!("b{i}"), 60, dir.path(), &[]))
        .collect();
    for p in &procs {
        p.until("started", &mut lines, Duration::from_secs(30));
    }
    let mut started: Vec<String> = Vec::new();
    let take = |p: &Proc, started: &mut Vec<String>, until: Option<&str>| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Ok(line) = p
            .acks
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(id) = line.strip_prefix("transfer ") {
                started.push(id.to_string());
            }
            if Some(line.as_str()) == until {
                return;
            }
        }
        assert!(
            until.is_none(),
            "no `{until:?}` in time; log:\n{}",
            tail(&p.log)
        );
    };
    // Kill one once transfers are under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while started.len() < 20 {
        assert!(Instant::now() < deadline);
        if let Ok(line) = procs[0].acks.recv_timeout(Duration::from_millis(50)) {
            if let Some(id) = line.strip_prefix("transfer ") {
                started.push(id.to_string());
            }
        }
    }
    procs[0].signal("-KILL");
    take(&procs[0], &mut started, None);
    for p in &procs[1..] {
        take(p, &mut started, Some("done"));
    }
    // Every transfer ends, money is conserved, no lock is left.
    let store = PostgresStore::connect_with(&url, options()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &started {
        loop {
            let record = store.read_instance(id).await.unwrap();
            if record.as_ref().is_some_and(|r| r.status.is_terminal()) {
                assert_eq!(record.unwrap().status, entities::RuntimeStatus::Completed);
                break;
            }
            assert!(Instant::now() < deadline, "transfer {id} never ended");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A start the killed process stored but did not print yet is not in `started`: it runs
    // once its partition has moved, maybe after all of those. It must end too.
    loop {
        let running = store.running_instances().await.unwrap();
        if running.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} transfers never ended: {:?}",
            running.len(),
            running.iter().map(|r| &r.id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut total = 0;
    for a in 0..ACCOUNTS {
        let id = EntityId::new("Account", format!("acct{a}"));
        let record = store.read_entity(&id).await.unwrap().unwrap();
        assert_eq!(record.lock_owner, None, "{id} is still locked");
        let balance = record.state.unwrap()["balance"].as_i64().unwrap();
        assert!(balance >= 0);
        total += balance;
    }
    assert_eq!(total, OPENING * ACCOUNTS as i64, "money is conserved");
    println!(
        "{} transfers ended, money conserved, no lock left",
        started.len()
    );
    for mut p in procs {
        drop(p.child.stdin.take());
        let _ = p.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_and_move_at_graceful_shutdown() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(server) = TestServer::start_or_skip("partitions_spread_and_move") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A long lease: a move faster than it is a hand-over, not an expiry.
    let env = [(LEASE_ENV, "8000".to_string())];
    let mut acked = HashMap::new();
    let first = spawn_child("pg_child", &url, "r0", 5, dir.path(), &env);
    first.until("done", &mut acked, Duration::from_secs(60));
    assert_eq!(
        owners(&url).await.iter().flatten().count(),
        PARTITIONS as usize
    );
    assert_eq!(live_owners(&url).await.len(), 1);
    let mut others: Vec<Proc> = (1..3)
        .map(|i| spawn_child("pg_child", &url, &format!("r{i}"), 5, dir.path(), &env))
        .collect();
    for p in &others {
        p.until("done", &mut acked, Duration::from_secs(60));
    }
    // Spread evenly: 4 each.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let owners = owners(&url).await;
        let mut per: HashMap<i64, usize> = HashMap::new();
        for o in owners.iter().flatten() {
            *per.entry(*o).or_default() += 1;
        }
        if per.len() == 3 && per.values().all(|n| *n == PARTITIONS as usize / 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never spread evenly: {per:?}; logs:\n{}\n{}\n{}",
            tail(&first.log),
            tail(&others[0].log),
            tail(&others[1].log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A graceful stop hands its partitions over at once.
    let mut leaving = others.pop().unwrap();
    drop(leaving.child.stdin.take());
    let stopped = Instant::now();
    assert!(
        leaving.child.wait().unwrap().success(),
        "{}",
        tail(&leaving.log)
    );
    loop {
        let live = live_owners(&url).await;
        if live.len() == 2 && node_count(&url).await == i64::from(PARTITIONS) {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(4),
            "partitions did not move at shutdown: {:?}",
            owners(&url).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("moved {:?} after the graceful stop", stopped.elapsed());
    check_audit(&url, &acked).await;
    for mut p in others.into_iter().chain([first]) {
        drop(p.child.stdin.take());
        let _ = p.child.wait();
    }
}
