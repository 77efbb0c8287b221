//! `--store postgres`: spread, bank and call against a private PostgreSQL server (fsync on,
//! synchronous_commit on) with 1, 2 and 3 runtime processes, a same-run raw baseline (plain
//! `tokio-postgres` writing the same rows in batched transactions), the failover time (SIGKILL),
//! the graceful hand-over time (SIGTERM) and the recovery after a server restart.
//!
//! The parent starts the server and the worker processes (this binary, `pg-worker ...`);
//! workers wait until the partitions are spread over all of them, then run their share on a
//! `go` from the parent and print their figures.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use entities::postgres::test_server::TestServer;
use entities::postgres::{PostgresOptions, PostgresStore};
use entities::prelude::*;

use crate::{percentile, transfer, Counter};

const PARTITIONS: u32 = 24;
const LEASE: Duration = Duration::from_secs(3);

fn options() -> PostgresOptions {
    PostgresOptions {
        partitions: PARTITIONS,
        lease: LEASE,
        ..Default::default()
    }
}

async fn runtime(url: &str) -> Runtime {
    let store = PostgresStore::connect_with(url, options())
        .await
        .expect("connect");
    Runtime::builder()
        .store(store)
        .entity::<Counter>()
        .orchestration("transfer", transfer)
        .start()
        .await
        .expect("start")
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn live_owners(url: &str) -> usize {
    let client = sql(url).await;
    let n: i64 = client
        .query_one(
            "SELECT count(DISTINCT owner) FROM entities_leases WHERE owner IS NOT NULL AND expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    n as usize
}

/// A worker: `pg-worker <workload> <url> <index> <processes>`.
pub(crate) async fn worker(args: &[String]) {
    // Warnings and errors of the runtime (a store fault, a lease lost) go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (workload, url, index, processes) = (
        args[0].as_str(),
        args[1].as_str(),
        args[2].parse::<usize>().unwrap(),
        args[3].parse::<usize>().unwrap(),
    );
    let store = PostgresStore::connect_with(url, options())
        .await
        .expect("connect");
    println!("node {}", store.node());
    let rt = Runtime::builder()
        .store(store)
        .entity::<Counter>()
        .orchestration("transfer", transfer)
        .start()
        .await
        .expect("start");
    let client = rt.client();
    while live_owners(url).await < processes {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    match workload {
        "spread" => {
            // 20,000 signals over this worker's 300 keys (in every partition), 256 senders.
            let (total, keys, senders) = (20_000usize, 300usize, 256usize);
            let start = Instant::now();
            let tasks: Vec<_> = (0..senders)
                .map(|s| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for i in (s..total).step_by(senders) {
                            client
                                .signal::<Counter>(format!("w{index}-k{}", i % keys))
                                .add(1)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for sender in futures::future::join_all(tasks).await {
                sender.expect("a sender failed");
            }
            // Durable end: every signal applied, read through calls to all keys at once
            // (wherever each key runs), repeated for keys not done yet.
            let checks = (0..keys).map(|k| {
                let client = client.clone();
                async move {
                    let want = (total / keys + usize::from(k < total % keys)) as i64;
                    loop {
                        let got = client
                            .call::<Counter>(format!("w{index}-k{k}"))
                            .get()
                            .await
                            .unwrap();
                        if got == want {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
            futures::future::join_all(checks).await;
            println!("result {total} {}", start.elapsed().as_secs_f64());
        }
        "bank" => {
            let (total, in_flight, accounts) = (600usize, 32usize, 200usize);
            let start = Instant::now();
            let tasks: Vec<_> = (0..in_flight)
                .map(|t| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for i in (t..total).step_by(in_flight) {
                            let from = (i * 7 + index * 13) % accounts;
                            let to = (from + 1 + i % (accounts - 1)) % accounts;
                            let id = client
                                .start_orchestration(
                                    "transfer",
                                    &crate::Transfer {
                                        from: format!("a{from}"),
                                        to: format!("a{to}"),
                                        amount: 1,
                                    },
                                )
                                .await
                                .unwrap();
                            client
                                .wait_for_orchestration(&id, Duration::from_secs(120))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for sender in futures::future::join_all(tasks).await {
                sender.expect("a sender failed");
            }
            println!("result {total} {}", start.elapsed().as_secs_f64());
        }
        "call" => {
            // Sequential client calls to keys of every partition (most run in another process
            // when there are several).
            let calls = 1_000usize;
            let mut latencies = Vec::with_capacity(calls);
            let start = Instant::now();
            for i in 0..calls {
                let t = Instant::now();
                client
                    .call::<Counter>(format!("c{}", i % 97))
                    .add(1)
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
            }
            let secs = start.elapsed().as_secs_f64();
            latencies.sort();
            println!(
                "result {calls} {secs} {} {}",
                percentile(&latencies, 0.5).as_secs_f64(),
                percentile(&latencies, 0.99).as_secs_f64()
            );
        }
        "failover" => {
            // Probe one key per partition, printing when a call is served.
            let probes: Vec<(u32, EntityId)> = (0..PARTITIONS)
                .map(|p| {
                    let id = (0..)
                        .map(|i| EntityId::new("Counter", format!("probe{i}")))
                        .find(|id| {
                            entities::partition_of(
                                &entities::message::Target::Entity(id.clone()),
                                PARTITIONS,
                            ) == p
                        })
                        .unwrap();
                    (p, id)
                })
                .collect();
            // SIGTERM stops the runtime gracefully: it hands its partitions over.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            let probe = async {
                loop {
                    for (p, id) in &probes {
                        let call = client.call_entity::<i64, _>(id, "get", &());
                        if let Ok(Ok(_)) =
                            tokio::time::timeout(Duration::from_millis(50), call).await
                        {
                            println!("served {p} {}", now_ms());
                        }
                    }
                }
            };
            tokio::select! {
                () = probe => {}
                _ = term.recv() => {}
            }
        }
        other => panic!("unknown workload {other}"),
    }
    std::io::stdout().flush().unwrap();
    rt.shutdown().await.unwrap();
}

struct Worker {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn(workload: &str, url: &str, index: usize, processes: usize) -> Worker {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "pg-worker",
            workload,
            url,
            &index.to_string(),
            &processes.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a worker");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Worker { child, lines }
}

impl Worker {
    fn expect(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(300))
                .expect("worker output");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }
}

/// Runs `workload` on `processes` workers; returns (operations per second, per-worker figures).
async fn run(server: &TestServer, workload: &str, processes: usize) -> (f64, Vec<Vec<f64>>) {
    let url = server.create_database().await.expect("database");
    if workload == "bank" {
        let rt = runtime(&url).await;
        for a in 0..200 {
            rt.client()
                .signal::<Counter>(format!("a{a}"))
                .add(1_000)
                .await
                .unwrap();
        }
        rt.client().call::<Counter>("a199").get().await.unwrap();
        rt.shutdown().await.unwrap();
    }
    let mut workers: Vec<Worker> = (0..processes)
        .map(|i| spawn(workload, &url, i, processes))
        .collect();
    for w in &workers {
        w.expect("ready");
    }
    for w in &mut workers {
        writeln!(w.child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut figures = Vec::new();
    for w in &workers {
        let result = w.expect("result ");
        figures.push(
            result
                .split(' ')
                .map(|v| v.parse().unwrap())
                .collect::<Vec<f64>>(),
        );
    }
    for mut w in workers {
        let _ = w.child.wait();
    }
    let ops: f64 = figures.iter().map(|f| f[0]).sum();
    let secs = figures.iter().map(|f| f[1]).fold(0.0, f64::max);
    (ops / secs, figures)
}

/// Plain `tokio-postgres`: per signal, what a runtime writes at least (the message row, then
/// in the next transaction its delete and the entity's new state), 1,000 signals per
/// transaction.
async fn raw(url: &str, total: usize, keys: usize) -> f64 {
    let mut client = sql(url).await;
    client
        .batch_execute(
            "CREATE TABLE raw_messages (id BIGINT PRIMARY KEY, part INT, target BYTEA, body TEXT, fresh BOOL);
             CREATE TABLE raw_entities (name TEXT, key BYTEA, part INT, state TEXT, last_modified BIGINT, PRIMARY KEY (name, key));",
        )
        .await
        .unwrap();
    let batch = 1000;
    let start = Instant::now();
    let mut previous: Vec<i64> = Vec::new();
    for b in 0..total / batch {
        let tx = client.transaction().await.unwrap();
        let ids: Vec<i64> = (0..batch).map(|i| (b * batch + i) as i64).collect();
        let parts: Vec<i32> = ids.iter().map(|i| (*i % 24) as i32).collect();
        let targets: Vec<Vec<u8>> = ids
            .iter()
            .map(|i| format!("@counter@k{}", *i as usize % keys).into_bytes())
            .collect();
        let bodies: Vec<String> = ids
            .iter()
            .map(|_| {
                r#"{"Operation":{"name":"add","input":1,"reply":null,"sender":null}}"#.to_string()
            })
            .collect();
        let fresh: Vec<bool> = ids.iter().map(|_| false).collect();
        tx.execute(
            "INSERT INTO raw_messages SELECT * FROM unnest($1::bigint[], $2::int[], $3::bytea[], $4::text[], $5::bool[])",
            &[&ids, &parts, &targets, &bodies, &fresh],
        )
        .await
        .unwrap();
        if !previous.is_empty() {
            tx.execute("DELETE FROM raw_messages WHERE id = ANY($1)", &[&previous])
                .await
                .unwrap();
        }
        let names: Vec<&str> = (0..keys).map(|_| "counter").collect();
        let ks: Vec<Vec<u8>> = (0..keys).map(|k| format!("k{k}").into_bytes()).collect();
        let kparts: Vec<i32> = (0..keys).map(|k| (k % 24) as i32).collect();
        let states: Vec<String> = (0..keys)
            .map(|k| format!("{{\"value\":{}}}", b * 1000 + k))
            .collect();
        let times: Vec<i64> = (0..keys).map(|_| 1).collect();
        tx.execute(
            "INSERT INTO raw_entities SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[], $5::bigint[]) \
             ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, last_modified = excluded.last_modified",
            &[&names, &ks, &kparts, &states, &times],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        previous = ids;
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Failover: two workers probing every partition; one is killed; the time from the kill to
/// the first call served on one of its partitions by the survivor.
async fn failover(server: &TestServer) -> Duration {
    let (mut victim, mut survivor, moved) = probing_pair(server).await;
    victim.child.kill().unwrap();
    let killed = now_ms();
    let _ = victim.child.wait();
    let (_, served_at) = first_served(&survivor, &moved, killed + 1);
    let _ = survivor.child.kill();
    let _ = survivor.child.wait();
    Duration::from_millis((served_at - killed) as u64)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The first `served` line of `worker` for one of `parts` at or after `since` (ms since the
/// epoch): (partition, time).
fn first_served(worker: &Worker, parts: &[u32], since: u128) -> (u32, u128) {
    loop {
        let line = worker
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("probe output");
        let mut fields = line.split_whitespace();
        if fields.next() != Some("served") {
            continue;
        }
        let p: u32 = fields.next().unwrap().parse().unwrap();
        let at: u128 = fields.next().unwrap().parse().unwrap();
        if at >= since && parts.contains(&p) {
            return (p, at);
        }
    }
}

/// The partitions whose lease names `node`.
async fn leases_of(url: &str, node: i64) -> Vec<u32> {
    sql(url)
        .await
        .query(
            "SELECT part FROM entities_leases WHERE owner = $1",
            &[&node],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect()
}

/// Two workers probing every partition on a new database, running: (the victim, the
/// survivor, the victim's partitions). The survivor's output so far is dropped.
async fn probing_pair(server: &TestServer) -> (Worker, Worker, Vec<u32>) {
    let url = server.create_database().await.expect("database");
    let mut workers: Vec<Worker> = (0..2).map(|i| spawn("failover", &url, i, 2)).collect();
    let victim_node: i64 = workers[1].expect("node ").parse().unwrap();
    for w in &workers {
        w.expect("ready");
    }
    for w in &mut workers {
        writeln!(w.child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved = leases_of(&url, victim_node).await;
    assert!(!moved.is_empty(), "the victim runs no partition");
    let (victim, survivor) = (workers.pop().unwrap(), workers.pop().unwrap());
    while survivor.lines.try_recv().is_ok() {}
    (victim, survivor, moved)
}

/// Graceful hand-over: two workers probe every partition; one gets SIGTERM (its runtime shuts
/// down and hands its partitions over). For each moved partition: the time from the signal to
/// the first call the survivor served on it.
async fn handoff(server: &TestServer) -> Vec<Duration> {
    let (mut victim, mut survivor, moved) = probing_pair(server).await;
    let signalled = now_ms();
    Command::new("kill")
        .args(["-TERM", &victim.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    let mut waiting = moved.clone();
    let mut took = Vec::new();
    while !waiting.is_empty() {
        let (p, at) = first_served(&survivor, &waiting, signalled);
        waiting.retain(|q| *q != p);
        took.push(Duration::from_millis((at - signalled) as u64));
    }
    let _ = victim.child.wait();
    let _ = survivor.child.kill();
    let _ = survivor.child.wait();
    took
}

/// Server restart: one worker probes every partition while the server restarts
/// (`pg_ctl restart -m fast`). Returns (how long the restart took until the server accepted
/// connections, the time from then to the first call served).
async fn restart(server: &TestServer) -> (Duration, Duration) {
    let url = server.create_database().await.expect("database");
    let mut worker = spawn("failover", &url, 0, 1);
    worker.expect("ready");
    writeln!(worker.child.stdin.as_mut().unwrap(), "go").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    server.restart().expect("restart the server");
    let down = started.elapsed();
    let up = now_ms();
    while worker.lines.try_recv().is_ok() {}
    let all: Vec<u32> = (0..PARTITIONS).collect();
    let (_, at) = first_served(&worker, &all, up);
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    (down, Duration::from_millis((at - up) as u64))
}

/// The `--store postgres` benchmarks.
pub(crate) async fn main(workload: &str, processes: std::ops::RangeInclusive<usize>) {
    let server = TestServer::start()
        .expect("a PostgreSQL server (install `postgresql` or set ENTITIES_POSTGRES_URL)");
    let url = server.create_database().await.unwrap();
    let settings = sql(&url).await;
    let mut shown = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_level",
        "shared_buffers",
    ] {
        let row = settings
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap();
        shown.push(format!("{name}={}", row.get::<_, String>(0)));
    }
    println!(
        "postgres: {}; {PARTITIONS} partitions, lease {LEASE:?}",
        shown.join(", ")
    );
    let all = workload == "all";
    if all || workload == "spread" {
        let raw_rate = raw(&url, 60_000, 1000).await;
        println!("raw      tokio-postgres, same rows, 1,000 per txn:  {raw_rate:>8.0} signals/s");
        for n in processes.clone() {
            let (rate, _) = run(&server, "spread", n).await;
            println!(
                "spread   {n} process(es), 256 senders each:           {rate:>8.0} signals/s ({:.0} % of raw)",
                100.0 * rate / raw_rate
            );
        }
    }
    if all || workload == "bank" {
        for n in processes.clone() {
            let (rate, _) = run(&server, "bank", n).await;
            println!(
                "bank     {n} process(es), 32 in flight each:         {rate:>8.0} transfers/s"
            );
        }
    }
    if all || workload == "call" {
        for n in processes.clone() {
            let (rate, figures) = run(&server, "call", n).await;
            let p50 = figures.iter().map(|f| f[2]).sum::<f64>() / figures.len() as f64;
            println!(
                "call     {n} process(es), sequential each:            {rate:>8.0} calls/s, p50 {:.2} ms",
                p50 * 1e3
            );
        }
    }
    if all || workload == "handoff" {
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5);
        let mut took: Vec<Duration> = Vec::new();
        for _ in 0..rounds {
            let round = handoff(&server).await;
            let ms: Vec<String> = round.iter().map(|d| d.as_millis().to_string()).collect();
            println!(
                "handoff  round: {} partitions moved, ms: {}",
                round.len(),
                ms.join(" ")
            );
            took.extend(round);
        }
        took.sort();
        println!(
            "handoff  SIGTERM to the first call served elsewhere, per moved partition ({} in {rounds} rounds): median {} ms, max {} ms",
            took.len(),
            percentile(&took, 50.0).as_millis(),
            took.last().copied().unwrap_or_default().as_millis()
        );
    }
    if all || workload == "restart" {
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5);
        for _ in 0..rounds {
            let (down, served) = restart(&server).await;
            println!(
                "restart  pg_ctl restart -m fast took {:.2} s; first call served {:.3} s after it returned",
                down.as_secs_f64(),
                served.as_secs_f64()
            );
        }
    }
    if all || workload == "failover" {
        let took = failover(&server).await;
        println!("failover SIGKILL to the first call served on a moved partition: {took:?} (lease {LEASE:?})");
    }
}
