//! Benchmarks of `entities` on the embedded SQLite store.
//!
//! `cargo run --release -p entities-bench -- --store postgres [spread|bank|call|failover|handoff|restart]
//! [--processes N]` runs the PostgreSQL benchmarks (see `pg.rs`) with 1, 2 and 3 runtime
//! processes, or with N only.
//!
//! `cargo run --release -p entities-bench -- <workload> [--normal]`, where workload is one of
//! `hot`, `spread`, `bank`, `call`, `rest`, `raw`, `isolated`, `backlog`, `http`, `ttl`,
//! `schedules`, `clock`, `drain`, or `all`; `ttl-rest` (not in `all`) compares 1,000,000 idle entities with and
//! without a TTL. `--normal` runs with
//! `synchronous=NORMAL` instead of the default `FULL`. `spread` alternates with the raw
//! rusqlite baseline for `ROUNDS` rounds (default 5) and reports medians. `drain` has one
//! entity run `DRAIN_OPS` queued operations (default 50,000) that are sync, `async` without an
//! await, and `DRAIN_AWAITING_OPS` (default 10,000) that await once, for `ROUNDS` rounds
//! (default 3), and reports medians. Every figure is durable: a signal counts
//! once it is processed and its effect committed.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod lifecycle;
mod pg;

use entities::prelude::*;
use entities::{SqliteOptions, Synchronous, WriteStats};
use entities_test_support::{transfer, Counter, Transfer};
use serde::{Deserialize, Serialize};

/// Latencies of orchestration -> entity calls, measured in the orchestration (not replayed:
/// the instance stays cached, so this wall-clock reading is never re-executed).
static CALL_LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

async fn caller(ctx: OrchestrationContext, calls: usize) -> Result<(), entities::Error> {
    for _ in 0..calls {
        let start = Instant::now();
        ctx.call::<Counter>("target").add(1).await?;
        CALL_LATENCIES.lock().unwrap().push(start.elapsed());
    }
    Ok(())
}

struct Bench {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sync: Synchronous,
    /// A TTL for `Counter`, if the workload measures with one.
    ttl: Option<Duration>,
}

impl Bench {
    fn new(sync: Synchronous) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.db");
        Self {
            _dir: dir,
            path,
            sync,
            ttl: None,
        }
    }

    async fn runtime(&self) -> Runtime {
        self.runtime_and_store().await.0
    }

    /// The store on this bench's database.
    fn store(&self) -> SqliteStore {
        SqliteStore::open_with(
            &self.path,
            SqliteOptions {
                synchronous: self.sync,
                ..SqliteOptions::default()
            },
        )
        .expect("open store")
    }

    /// The runtime and a handle on its store (for its write counts).
    async fn runtime_and_store(&self) -> (Runtime, SqliteStore) {
        let store = self.store();
        let inflight = std::env::var("INFLIGHT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let mut builder = Runtime::builder()
            .max_inflight_commits(inflight)
            .store(store.clone())
            .entity::<Counter>()
            .orchestration("transfer", transfer)
            .orchestration("caller", caller);
        if let Some(ttl) = self.ttl {
            builder = builder.entity_ttl("Counter", ttl);
        }
        let runtime = builder.start().await.expect("start runtime");
        (runtime, store)
    }
}

/// Sends `total` signals from `senders` concurrent tasks, `keys` distinct entities, and waits
/// until all are processed and committed. Returns signals per second.
async fn signals(sync: Synchronous, total: usize, keys: usize, senders: usize) -> f64 {
    signals_with_cpu(sync, total, keys, senders, None).await.0
}

/// [`signals`], also returning the CPU time spent per signal (all threads), in microseconds,
/// and what the store wrote.
async fn signals_with_cpu(
    sync: Synchronous,
    total: usize,
    keys: usize,
    senders: usize,
    ttl: Option<Duration>,
) -> (f64, f64, WriteStats) {
    let mut bench = Bench::new(sync);
    bench.ttl = ttl;
    let (runtime, store) = bench.runtime_and_store().await;
    let client = runtime.client();
    let cpu = cpu_seconds();
    let start = Instant::now();
    let per_sender = total / senders;
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..per_sender {
                    let key = (s * per_sender + i) % keys;
                    client
                        .signal::<Counter>(format!("k{key}"))
                        .add(1)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sent = per_sender * senders;
    // Processed and committed: every entity's committed state adds up to what was sent.
    loop {
        let mut sum = 0;
        let mut query = EntityQuery {
            page_size: 10_000,
            ..EntityQuery::default()
        };
        loop {
            let page = client.query_entities(query.clone()).await.unwrap();
            for e in &page.entities {
                sum += e
                    .state
                    .as_ref()
                    .and_then(|s| s["value"].as_i64())
                    .unwrap_or(0);
            }
            match page.continuation {
                Some(c) => query.continuation = Some(c),
                None => break,
            }
        }
        if sum as usize == sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu;
    runtime.shutdown().await.unwrap();
    (
        sent as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / sent as f64,
        store.stats(),
    )
}

async fn bank(sync: Synchronous, total: usize, in_flight: usize, accounts: usize) -> (f64, usize) {
    let bench = Bench::new(sync);
    let runtime = bench.runtime().await;
    let client = runtime.client();
    for a in 0..accounts {
        client
            .signal::<Counter>(format!("a{a}"))
            .add(1_000_000)
            .await
            .unwrap();
    }
    let start = Instant::now();
    let per_task = total / in_flight;
    let tasks: Vec<_> = (0..in_flight)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut moved = 0;
                for i in 0..per_task {
                    let n = t * per_task + i;
                    let from = n % accounts;
                    let to = (n * 7 + 1 + n / accounts) % accounts;
                    let to = if to == from { (to + 1) % accounts } else { to };
                    let tr = Transfer {
                        from: format!("a{from}"),
                        to: format!("a{to}"),
                        amount: 1,
                    };
                    let id = client.start_orchestration("transfer", &tr).await.unwrap();
                    let done = client
                        .wait_for_orchestration(&id, Duration::from_secs(120))
                        .await
                        .unwrap();
                    if done.output::<bool>().unwrap() {
                        moved += 1;
                    }
                }
                moved
            })
        })
        .collect();
    let mut moved = 0;
    for t in tasks {
        moved += t.await.unwrap();
    }
    let elapsed = start.elapsed();
    runtime.shutdown().await.unwrap();
    ((per_task * in_flight) as f64 / elapsed.as_secs_f64(), moved)
}

/// Per-call latency inside one orchestration making `calls` sequential calls, and the rate of
/// calls from the start to the durable end of the orchestration.
async fn call_latency(sync: Synchronous, calls: usize) -> (Duration, Duration, f64) {
    let bench = Bench::new(sync);
    let runtime = bench.runtime().await;
    let client = runtime.client();
    CALL_LATENCIES.lock().unwrap().clear();
    let start = Instant::now();
    let id = client.start_orchestration("caller", &calls).await.unwrap();
    client
        .wait_for_orchestration(&id, Duration::from_secs(300))
        .await
        .unwrap();
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    runtime.shutdown().await.unwrap();
    let mut lat = CALL_LATENCIES.lock().unwrap().clone();
    lat.sort();
    (percentile(&lat, 50.0), percentile(&lat, 99.0), rate)
}

/// Client calls to one entity: latency of `sequential` calls made one after the other, then
/// the rate of `total` calls made by `in_flight` concurrent callers.
async fn client_calls(
    sync: Synchronous,
    sequential: usize,
    total: usize,
    in_flight: usize,
) -> (Duration, Duration, f64) {
    let bench = Bench::new(sync);
    let runtime = bench.runtime().await;
    let client = runtime.client();
    let lat = sequential_calls(&client, sequential).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..total / in_flight {
                    client.call::<Counter>("one").add(1).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (total / in_flight * in_flight) as f64 / start.elapsed().as_secs_f64();
    runtime.shutdown().await.unwrap();
    (percentile(&lat, 50.0), percentile(&lat, 99.0), rate)
}

/// Opened by [`drain`] once every signal of a drain is stored: `Drain::hold` waits for it, so
/// that the signals queue behind it and the timing covers their operations only.
static DRAIN_GATE: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// The entity of the `drain` workload: the same addition as a sync operation, an `async` one
/// that never awaits, and an `async` one that awaits once.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Drain {
    value: i64,
}

#[entity]
impl Drain {
    /// Waits for the gate: holds the entity's queue while the operations are sent.
    pub async fn hold(&self) {
        DRAIN_GATE.notified().await;
    }
    /// Adds `amount`, synchronously.
    pub fn add(&mut self, amount: i64) {
        self.value += amount;
    }
    /// Adds `amount` in an `async` operation that never awaits.
    pub async fn add_async(&mut self, amount: i64) {
        self.value += amount;
    }
    /// Adds `amount` in an `async` operation that awaits once.
    pub async fn add_awaiting(&mut self, amount: i64) {
        tokio::task::yield_now().await;
        self.value += amount;
    }
}

/// The kind of operation a drain runs.
#[derive(Clone, Copy, Debug)]
enum DrainKind {
    Sync,
    AsyncNoAwait,
    AsyncAwaiting,
}

/// One entity drains `ops` operations of `kind` queued behind a held operation: all are
/// stored first, then the hold ends and the clock runs until the committed state includes
/// them all. Returns operations per second.
async fn drain(sync: Synchronous, kind: DrainKind, ops: usize) -> f64 {
    let bench = Bench::new(sync);
    let store = bench.store();
    let runtime = Runtime::builder()
        .store(store)
        .entity::<Drain>()
        .start()
        .await
        .expect("start runtime");
    let client = runtime.client();
    client.signal::<Drain>("d").hold().await.unwrap();
    let sends = (0..ops).map(|_| {
        let proxy = client.signal::<Drain>("d");
        async move {
            match kind {
                DrainKind::Sync => proxy.add(1).await,
                DrainKind::AsyncNoAwait => proxy.add_async(1).await,
                DrainKind::AsyncAwaiting => proxy.add_awaiting(1).await,
            }
        }
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    let start = Instant::now();
    DRAIN_GATE.notify_one();
    loop {
        let value = client
            .get_entity::<Drain>("d")
            .await
            .unwrap()
            .map_or(0, |m| m.state.value);
        if value as usize == ops {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    runtime.shutdown().await.unwrap();
    ops as f64 / elapsed.as_secs_f64()
}

/// An entity whose `sleep` operation awaits the input in milliseconds.
struct Sleeper;

#[async_trait::async_trait]
impl EntityFunction for Sleeper {
    async fn run(&self, ctx: &mut EntityContext) -> Result<(), OperationError> {
        let ms: u64 = ctx.input()?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

/// Latency of `calls` sequential client calls to a free entity while another entity has
/// `queued` operations of 1 ms each waiting.
async fn isolated(sync: Synchronous, queued: usize, calls: usize) -> (Duration, Duration) {
    let bench = Bench::new(sync);
    let store = bench.store();
    let runtime = Runtime::builder()
        .store(store)
        .entity::<Counter>()
        .entity_fn("Sleeper", Sleeper)
        .shutdown_grace(Duration::from_millis(100))
        .start()
        .await
        .expect("start runtime");
    let client = runtime.client();
    let slow = EntityId::new("Sleeper", "slow");
    let sends = (0..queued).map(|_| client.signal_entity(&slow, "sleep", &1u64));
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        client.call::<Counter>("free").add(1).await.unwrap();
        lat.push(start.elapsed());
    }
    lat.sort();
    runtime.shutdown().await.unwrap();
    (percentile(&lat, 50.0), percentile(&lat, 99.0))
}

/// Stores `count` signals scheduled a day ahead into a new database at `path`.
async fn fill_backlog(path: &Path, count: u64) {
    use entities::message::{Body, Message, Target};
    use entities::store::Batch;
    use entities::Store;
    let store = SqliteStore::open(path).expect("open store");
    let at = entities::message::now_millis() + 86_400_000;
    let mut commits = Vec::new();
    for chunk in 0..count.div_ceil(10_000) {
        let produced = (chunk * 10_000..((chunk + 1) * 10_000).min(count))
            .map(|i| Message {
                id: i + 1,
                target: Target::Entity(EntityId::new("Counter", format!("k{}", i % 1000))),
                deliver_at: Some(at + i),
                body: Body::Operation {
                    name: "add".into(),
                    input: Some(serde_json::json!(1)),
                    reply: None,
                    sender: None,
                },
            })
            .collect();
        commits.push(store.commit(Batch {
            produced,
            ..Batch::default()
        }));
    }
    for commit in commits {
        commit.await.expect("commit");
    }
    store.close();
}

/// In a process of its own: starts a runtime on a database with a stored backlog and prints
/// how long `start` took and the process's peak and current RSS.
async fn backlog_child(path: &str) {
    let start = Instant::now();
    let runtime = Runtime::builder()
        .store(SqliteStore::open(path).expect("open store"))
        .entity::<Counter>()
        .start()
        .await
        .expect("start runtime");
    let started = start.elapsed();
    // Serve something, so that the figure is of a working runtime.
    runtime
        .client()
        .call::<Counter>("probe")
        .add(1)
        .await
        .unwrap();
    println!(
        "backlog-child {:.3} {:.1} {:.1}",
        started.as_secs_f64(),
        status_mb("VmHWM:"),
        status_mb("VmRSS:")
    );
    runtime.shutdown().await.unwrap();
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

/// The environment variable `name` as a number, or `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU time used by this process so far (all threads, user and system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and
    // 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn at_rest(
    sync: Synchronous,
    entities: usize,
    reads: usize,
) -> (f64, f64, Duration, Duration) {
    let bench = Bench::new(sync);
    let rss_before = rss_mb();
    let runtime = bench.runtime().await;
    let client = runtime.client();
    let senders = 256;
    let per = entities / senders;
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    client
                        .signal::<Counter>(format!("e{}", s * per + i))
                        .add(1)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Wait until the last entity of every sender has its state.
    for s in 0..senders {
        let key = format!("e{}", s * per + per - 1);
        while client
            .get_entity::<Counter>(key.clone())
            .await
            .unwrap()
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let rss = rss_mb();
    let mut lat = Vec::with_capacity(reads);
    let mut x: u64 = 88172645463325252;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("e{}", x % (per * senders) as u64);
        let start = Instant::now();
        let meta = client.get_entity::<Counter>(key).await.unwrap();
        lat.push(start.elapsed());
        assert!(meta.is_some());
    }
    lat.sort();
    runtime.shutdown().await.unwrap();
    (
        rss_before,
        rss,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
    )
}

/// Raw rusqlite: the rows of the spread workload (a message inserted per signal, deleted when
/// processed, an entity row upserted), in transactions of `batch` signals.
fn raw(sync: Synchronous, total: usize, keys: usize, batch: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode = if sync == Synchronous::Full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={mode};
         CREATE TABLE messages (id INTEGER PRIMARY KEY, target TEXT NOT NULL, deliver_at INTEGER, body TEXT NOT NULL);
         CREATE INDEX messages_by_target ON messages (target);
         CREATE TABLE entities (name TEXT NOT NULL, key TEXT NOT NULL, state TEXT, lock_owner TEXT,
           last_modified INTEGER NOT NULL, PRIMARY KEY (name, key)) WITHOUT ROWID;"
    ))
    .unwrap();
    let cpu = cpu_seconds();
    let rate = run_raw(conn, Path::new(&path), total, keys, batch);
    (rate, (cpu_seconds() - cpu) * 1e6 / total as f64)
}

fn run_raw(
    mut conn: rusqlite::Connection,
    _path: &Path,
    total: usize,
    keys: usize,
    batch: usize,
) -> f64 {
    let start = Instant::now();
    let mut id = 0i64;
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        // Ingest: the signals are stored.
        let tx = conn.transaction().unwrap();
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO messages (id, target, deliver_at, body) VALUES (?1, ?2, NULL, ?3)",
                )
                .unwrap();
            for i in 0..n {
                let key = (done + i) % keys;
                // The body as entities stores it: the target and time are columns of their own.
                let body = r#"{"Operation":{"name":"add","input":1,"reply":null,"sender":null}}"#;
                ins.execute(rusqlite::params![
                    id + i as i64,
                    format!("@counter@k{key}"),
                    body
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        // Processing: the messages are deleted and the entities written.
        let tx = conn.transaction().unwrap();
        {
            let mut del = tx
                .prepare_cached("DELETE FROM messages WHERE id = ?1")
                .unwrap();
            for i in 0..n {
                del.execute([id + i as i64]).unwrap();
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO entities (name, key, state, lock_owner, last_modified) VALUES ('counter', ?1, ?2, NULL, 0)
                     ON CONFLICT (name, key) DO UPDATE SET state = excluded.state, last_modified = excluded.last_modified",
                )
                .unwrap();
            let touched = n.min(keys);
            for i in 0..touched {
                let key = (done + i) % keys;
                up.execute(rusqlite::params![
                    format!("k{key}"),
                    format!(r#"{{"value":{}}}"#, done + i)
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        id += n as i64;
        done += n;
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The HTTP API served on 127.0.0.1 by this process, loaded by hyper client connections in the
/// same process (the load generator shares the machine's cores with the server).
struct HttpFigures {
    /// Sequential calls on a fresh database, while its WAL file still grows.
    fresh_p50: Duration,
    /// `GET /health`, sequential: the HTTP round trip alone.
    health_p50: Duration,
    /// The sequential call through the in-process client.
    in_process_p50: Duration,
    sequential_p50: Duration,
    sequential_p99: Duration,
    calls_per_s: f64,
    calls_p50: Duration,
    calls_p99: Duration,
    sends_per_s: f64,
}

/// Calls made to warm a fresh database up before the sequential calls are timed: SQLite's WAL
/// file grows until its first checkpoint (1,000 pages, one page per call here) and is then
/// rewritten in place, and a sync that grows a file costs about 0.1 ms more on this machine's
/// disk. A server that has run a while has its WAL at full size.
const WARM_UP_CALLS: usize = 1500;

/// Sequential calls (and `GET /health` requests) timed by the HTTP workload.
const SEQUENTIAL_CALLS: usize = 2000;

/// Sequential calls to one key (after [`WARM_UP_CALLS`]), with the HTTP round trip alone and the
/// same call in process for comparison; `total` calls by `in_flight` callers over `keys` keys; then
/// `total` one-way sends by `in_flight` senders over `keys` keys, timed until every one is
/// processed and committed.
async fn http_load(sync: Synchronous, total: usize, in_flight: usize, keys: usize) -> HttpFigures {
    let bench = Bench::new(sync);
    let runtime = bench.runtime().await;
    let client = runtime.client();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let listener_addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(entities::http::Http::new(client.clone()).serve_on(
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let addr = listener_addr;
    // On a task, like every load task below: the runtime's worker that polls its socket runs
    // it, as a load generator's own event loop would.
    let (one, fresh, mut lat) = tokio::spawn(async move {
        let mut one = HttpConnection::open(addr).await;
        let mut lat = Vec::with_capacity(WARM_UP_CALLS + SEQUENTIAL_CALLS);
        for _ in 0..WARM_UP_CALLS + SEQUENTIAL_CALLS {
            let start = Instant::now();
            one.post("/entities/counter/one/add".to_string(), "1").await;
            lat.push(start.elapsed());
        }
        let mut fresh = lat.drain(..WARM_UP_CALLS).collect::<Vec<_>>();
        fresh.sort();
        (one, fresh, lat)
    })
    .await
    .expect("sequential load task");
    lat.sort();
    let (sequential_p50, sequential_p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let fresh_p50 = percentile(&fresh, 50.0);
    // What the sequential call is made of: an HTTP round trip that does not reach the engine,
    // and the same call through the in-process client on a task.
    let (one, health) = tokio::spawn(async move {
        let mut one = one;
        let mut health = Vec::with_capacity(SEQUENTIAL_CALLS);
        for _ in 0..SEQUENTIAL_CALLS {
            let start = Instant::now();
            one.get("/health").await;
            health.push(start.elapsed());
        }
        health.sort();
        (one, health)
    })
    .await
    .expect("health load task");
    drop(one);
    let in_process = tokio::spawn({
        let client = client.clone();
        async move { sequential_calls(&client, SEQUENTIAL_CALLS).await }
    })
    .await
    .expect("in-process call task");

    let run = |path: &'static str| {
        let tasks: Vec<_> = (0..in_flight)
            .map(|task| {
                tokio::spawn(async move {
                    let mut conn = HttpConnection::open(addr).await;
                    let mut lat = Vec::with_capacity(total / in_flight);
                    for i in 0..total / in_flight {
                        let key = (task * 7919 + i) % keys;
                        let start = Instant::now();
                        conn.post(format!("/entities/counter/k{key}/{path}"), "1")
                            .await;
                        lat.push(start.elapsed());
                    }
                    lat
                })
            })
            .collect();
        async move {
            let mut all = Vec::with_capacity(total);
            for t in tasks {
                all.extend(t.await.expect("load task"));
            }
            all.sort();
            all
        }
    };
    let start = Instant::now();
    let lat = run("add").await;
    let calls_per_s = lat.len() as f64 / start.elapsed().as_secs_f64();
    let (calls_p50, calls_p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));

    let before = sum_of_keys(&client).await;
    let start = Instant::now();
    let sent = run("add/send").await.len() as i64;
    while sum_of_keys(&client).await < before + sent {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sends_per_s = sent as f64 / start.elapsed().as_secs_f64();

    let _ = stop.send(());
    let _ = server.await;
    runtime.shutdown().await.unwrap();
    HttpFigures {
        fresh_p50,
        health_p50: percentile(&health, 50.0),
        in_process_p50: percentile(&in_process, 50.0),
        sequential_p50,
        sequential_p99,
        calls_per_s,
        calls_p50,
        calls_p99,
        sends_per_s,
    }
}

/// One HTTP/1.1 keep-alive connection of the load generator: hyper's client connection,
/// without a pool or URL parsing, driven by the task that sends on it (no task of its own),
/// so that the generator takes as few thread wake-ups and as little of the machine's two
/// cores as it can, like a single-threaded tool such as `wrk` would.
struct HttpConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    connection: std::pin::Pin<
        Box<
            hyper::client::conn::http1::Connection<
                hyper_util::rt::TokioIo<tokio::net::TcpStream>,
                http_body_util::Full<bytes::Bytes>,
            >,
        >,
    >,
    host: String,
}

impl HttpConnection {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP handshake");
        Self {
            sender,
            connection: Box::pin(connection),
            host: addr.to_string(),
        }
    }

    /// Gets `path` and reads the whole answer, which must be a success.
    async fn get(&mut self, path: &'static str) {
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        self.exchange(request).await;
    }

    /// Posts `body` to `path` and reads the whole answer, which must be a success.
    async fn post(&mut self, path: String, body: &'static str) {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .expect("request");
        self.exchange(request).await;
    }

    /// Sends `request` and reads its whole answer while driving the connection.
    async fn exchange(&mut self, request: hyper::Request<http_body_util::Full<bytes::Bytes>>) {
        use http_body_util::BodyExt;
        let sender = &mut self.sender;
        let answer = async move {
            sender.ready().await.expect("connection ready");
            let response = sender.send_request(request).await.expect("request");
            assert!(response.status().is_success(), "{}", response.status());
            response.into_body().collect().await.expect("body");
        };
        tokio::select! {
            () = answer => {}
            ended = &mut self.connection => panic!("the HTTP connection ended: {ended:?}"),
        }
    }
}

/// The sum of the committed values of the counters `k*`.
/// The latencies of `n` calls to one counter made one after the other, sorted.
async fn sequential_calls(client: &Client, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.call::<Counter>("one").add(1).await.unwrap();
        lat.push(start.elapsed());
    }
    lat.sort();
    lat
}

async fn sum_of_keys(client: &Client) -> i64 {
    let mut query = EntityQuery {
        name: Some("counter".into()),
        key_prefix: Some("k".into()),
        page_size: 10_000,
        ..EntityQuery::default()
    };
    let mut sum = 0;
    loop {
        let page = client.query_entities(query.clone()).await.unwrap();
        sum += page
            .entities
            .iter()
            .filter_map(|e| e.state.as_ref()?.get("value")?.as_i64())
            .sum::<i64>();
        match page.continuation {
            Some(next) => query.continuation = Some(next),
            None => return sum,
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("backlog-child") {
        return backlog_child(&args[1]).await;
    }
    if args.first().map(String::as_str) == Some("rest-child") {
        return lifecycle::rest_child(&args[1..]).await;
    }
    if args.first().map(String::as_str) == Some("pg-worker") {
        return pg::worker(&args[1..]).await;
    }
    if let Some(i) = args.iter().position(|a| a == "--store") {
        if args.get(i + 1).map(String::as_str) == Some("postgres") {
            let counts = args.iter().position(|a| a == "--processes");
            let processes = match counts.and_then(|c| args.get(c + 1)) {
                Some(n) => {
                    let n: usize = n.parse().expect("--processes takes a number");
                    n..=n
                }
                None => 1..=3,
            };
            let workload = args
                .iter()
                .enumerate()
                .find(|(j, a)| {
                    !a.starts_with("--") && *j != i + 1 && counts.is_none_or(|c| *j != c + 1)
                })
                .map_or("all", |(_, a)| a.as_str());
            return pg::main(workload, processes).await;
        }
    }
    let sync = if args.iter().any(|a| a == "--normal") {
        Synchronous::Normal
    } else {
        Synchronous::Full
    };
    let mode = if sync == Synchronous::Full {
        "FULL"
    } else {
        "NORMAL"
    };
    let workload = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "all".into());
    let all = workload == "all";
    println!(
        "entities benchmark: synchronous={mode}, WAL, {} cores",
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(1)
    );
    let senders: usize = std::env::var("SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    if all || workload == "hot" {
        let rate = signals(sync, 300_000, 1, senders).await;
        println!("hot      signals to one entity, {senders} senders:     {rate:>10.0} signals/s");
    }
    if all || workload == "spread" || workload == "raw" {
        // The machine is shared and noisy: alternate the two workloads and report medians.
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5)
            .max(1);
        let (mut rates, mut raws, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (rate, cpu, stats) = signals_with_cpu(sync, 300_000, 1000, senders, None).await;
            let (raw_rate, raw_cpu) = raw(sync, 300_000, 1000, 4096);
            let share = 100.0 * rate / raw_rate;
            println!(
                "  round {round}: spread {rate:>8.0} signals/s ({cpu:.1} us CPU each), raw {raw_rate:>8.0} signals/s ({raw_cpu:.1} us CPU each), share {share:>5.1} %"
            );
            println!(
                "           spread wrote {} transactions, {} message rows ({} never written), {} deletes, {} entity rows",
                stats.transactions,
                stats.messages_written,
                stats.messages_elided,
                stats.messages_deleted,
                stats.entity_rows_written
            );
            rates.push(rate);
            raws.push(raw_rate);
            shares.push(share);
        }
        let (rate, raw_rate, share) = (median(&mut rates), median(&mut raws), median(&mut shares));
        println!("spread   signals over 1,000 entities, {senders} senders:{rate:>10.0} signals/s (median of {rounds})");
        println!("raw      rusqlite, same rows, 4,096 per txn:       {raw_rate:>10.0} signals/s (median of {rounds})");
        println!(
            "share    entities / raw rusqlite, same round:      {share:>10.1} % (median of {rounds}; range {:.1}-{:.1})",
            shares[0],
            shares[shares.len() - 1]
        );
    }
    if all || workload == "drain" {
        // Rounds alternate the three kinds, starting with a different one each round.
        let rounds = env_or("ROUNDS", 3).max(1);
        let ops = env_or("DRAIN_OPS", 50_000);
        let awaiting_ops = env_or("DRAIN_AWAITING_OPS", 10_000);
        let kinds = [
            DrainKind::Sync,
            DrainKind::AsyncNoAwait,
            DrainKind::AsyncAwaiting,
        ];
        let mut rates: [Vec<f64>; 3] = Default::default();
        for round in 0..rounds {
            let mut line = format!("  round {}:", round + 1);
            for k in 0..kinds.len() {
                let k = (k + round) % kinds.len();
                let n = match kinds[k] {
                    DrainKind::AsyncAwaiting => awaiting_ops,
                    _ => ops,
                };
                let rate = drain(sync, kinds[k], n).await;
                line += &format!(" {:?} {rate:.0}", kinds[k]);
                rates[k].push(rate);
            }
            println!("{line} ops/s");
        }
        let [s, a, w] = rates.map(|mut r| median(&mut r));
        println!("drain    one entity, {ops} sync ops:              {s:>10.0} ops/s (median of {rounds})");
        println!("drain    one entity, {ops} async ops, no await:   {a:>10.0} ops/s (median of {rounds}; {:.0} % of sync)", 100.0 * a / s);
        println!("drain    one entity, {awaiting_ops} async ops that await: {w:>10.0} ops/s (median of {rounds})");
    }
    if all || workload == "bank" {
        let accounts: usize = std::env::var("BANK_ACCOUNTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let (rate, moved) = bank(sync, 20_000, 64, accounts).await;
        println!("bank     transfers, 64 in flight, {accounts} accounts:   {rate:>10.0} transfers/s ({moved} moved)");
    }
    if all || workload == "call" {
        let (p50, p99, rate) = call_latency(sync, 5_000).await;
        println!(
            "call     orchestration -> entity round trip:       p50 {:>8.3} ms, p99 {:>8.3} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!("call     sequential calls, start to durable end:   {rate:>10.0} calls/s");
        let (p50, p99, rate) = client_calls(sync, 2_000, 50_000, 64).await;
        println!(
            "ccall    client -> entity call, one key, sequential: p50 {:>8.3} ms, p99 {:>8.3} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!("ccall    client calls to one key, 64 in flight:    {rate:>10.0} calls/s");
    }
    if all || workload == "isolated" {
        let (p50, p99) = isolated(sync, 10_000, 2_000).await;
        println!(
            "isolated client call to a free entity, another with 10,000 slow ops queued: p50 {:>8.3} ms, p99 {:>8.3} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    if all || workload == "backlog" {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("backlog.db");
        fill_backlog(&path, 1_000_000).await;
        let output = std::process::Command::new(std::env::current_exe().expect("own path"))
            .arg("backlog-child")
            .arg(&path)
            .output()
            .expect("run the start-up child");
        let text = String::from_utf8_lossy(&output.stdout);
        let figures: Vec<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("backlog-child "))
            .map(|l| l.split(' ').filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        match figures[..] {
            [secs, peak, rss] => println!(
                "backlog  start with 1,000,000 scheduled signals stored: {:.0} ms, RSS {rss:.0} MB (peak {peak:.0} MB)",
                secs * 1e3
            ),
            _ => println!("backlog  the start-up child failed: {text} {}", String::from_utf8_lossy(&output.stderr)),
        }
    }
    if all || workload == "http" {
        let f = http_load(sync, 40_000, 64, 1000).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "http     call over HTTP, one key, sequential:      p50 {:>8.3} ms, p99 {:>8.3} ms",
            ms(f.sequential_p50),
            ms(f.sequential_p99)
        );
        println!(
            "http     sequential, first {WARM_UP_CALLS} calls on a fresh database: p50 {:>8.3} ms",
            ms(f.fresh_p50)
        );
        println!(
            "http     GET /health, sequential (HTTP alone):       p50 {:>8.3} ms",
            ms(f.health_p50)
        );
        println!(
            "http     the same call in process, sequential:      p50 {:>8.3} ms",
            ms(f.in_process_p50)
        );
        println!(
            "http     calls, 64 in flight, 1,000 keys:          {:>10.0} calls/s (p50 {:.3} ms, p99 {:.3} ms)",
            f.calls_per_s,
            ms(f.calls_p50),
            ms(f.calls_p99)
        );
        println!(
            "http     sends, 64 in flight, 1,000 keys, end to end: {:>7.0} sends/s",
            f.sends_per_s
        );
    }
    if all || workload == "ttl" {
        lifecycle::ttl_hot_path(sync, senders).await;
    }
    if workload == "ttl-rest" {
        lifecycle::ttl_at_rest(sync).await;
    }
    if all || workload == "schedules" {
        lifecycle::schedules(sync).await;
    }
    if all || workload == "clock" {
        lifecycle::manual_clock(sync).await;
    }
    if all || workload == "rest" {
        let (before, rss, p50, p99) = at_rest(sync, 1_000_000, 20_000).await;
        println!("rest     1,000,000 entities: RSS {rss:.0} MB (process start {before:.0} MB); point read p50 {:.1} us, p99 {:.1} us", p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6);
    }
}
