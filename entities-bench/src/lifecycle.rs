//! Benchmarks of the lifecycle features: what a TTL costs the hot path and idle entities, and
//! how late recurring schedules fire under load.

use std::time::{Duration, Instant};

use entities::prelude::*;
use entities::{Schedule, SqliteOptions, Synchronous};
use serde::{Deserialize, Serialize};

use super::{median, rss_mb, signals_with_cpu};

/// The TTL the hot-path rounds use: long enough that nothing expires while they run.
const LONG_TTL: Duration = Duration::from_secs(3600);

fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1)
}

/// `hot` and `spread` with and without a TTL on `Counter`, in interleaved rounds; medians.
pub(crate) async fn ttl_hot_path(sync: Synchronous, senders: usize) {
    let rounds = rounds();
    let (mut hot, mut hot_ttl, mut spread, mut spread_ttl) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        // Which of the pair runs first alternates, so that an order effect cancels out.
        let pair = |keys: usize| async move {
            let run =
                |ttl| async move { signals_with_cpu(sync, 300_000, keys, senders, ttl).await.0 };
            if round % 2 == 1 {
                let without = run(None).await;
                (without, run(Some(LONG_TTL)).await)
            } else {
                let with = run(Some(LONG_TTL)).await;
                (run(None).await, with)
            }
        };
        let (a, b) = pair(1).await;
        let (c, d) = pair(1000).await;
        println!(
            "  round {round}: hot {a:>8.0} / with TTL {b:>8.0}; spread {c:>8.0} / with TTL {d:>8.0} signals/s"
        );
        hot.push(a);
        hot_ttl.push(b);
        spread.push(c);
        spread_ttl.push(d);
    }
    // Each round's pair ran back to back: the median of the pairs' ratios is what noise
    // between rounds disturbs least.
    let ratio = |with: &[f64], without: &[f64]| {
        let mut r: Vec<f64> = with
            .iter()
            .zip(without)
            .map(|(w, o)| 100.0 * (w - o) / o)
            .collect();
        median(&mut r)
    };
    let (hot_change, spread_change) = (ratio(&hot_ttl, &hot), ratio(&spread_ttl, &spread));
    let (a, b) = (median(&mut hot), median(&mut hot_ttl));
    let (c, d) = (median(&mut spread), median(&mut spread_ttl));
    println!(
        "ttl      hot without / with a TTL:    {a:>8.0} / {b:>8.0} signals/s (medians of {rounds}; median change per round {hot_change:+.1} %)"
    );
    println!(
        "ttl      spread without / with a TTL: {c:>8.0} / {d:>8.0} signals/s (medians of {rounds}; median change per round {spread_change:+.1} %)"
    );
}

/// RSS of 1,000,000 entities at rest, without and with a TTL, each in a process of its own
/// (RSS does not shrink back), after an expiry sweep has run over them.
pub(crate) async fn ttl_at_rest(_sync: Synchronous) {
    let mut figures = Vec::new();
    for ttl in ["none", "120000"] {
        let output = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["rest-child", ttl])
            .output()
            .expect("run the child");
        let text = String::from_utf8_lossy(&output.stdout);
        let rss: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("rest-child "))
            .and_then(|v| v.trim().parse().ok());
        match rss {
            Some(rss) => figures.push(rss),
            None => {
                println!(
                    "ttl-rest the child failed: {text} {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                return;
            }
        }
    }
    println!(
        "ttl-rest 1,000,000 entities at rest: RSS {:.0} MB without a TTL, {:.0} MB with one ({:+.1} MB)",
        figures[0],
        figures[1],
        figures[1] - figures[0]
    );
}

/// The child of [`ttl_at_rest`]: writes 1,000,000 entities, waits past one expiry sweep
/// (every 30 s for a TTL of 120 s) and prints its RSS.
pub(crate) async fn rest_child(args: &[String]) {
    let ttl = args
        .first()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    println!("rest-child {:.1}", rest_rss(ttl).await);
}

/// RSS with a runtime over 1,000,000 stored entities, after 35 s at rest.
async fn rest_rss(ttl: Option<Duration>) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rest.db");
    let store = SqliteStore::open(&path).expect("open store");
    let mut builder = Runtime::builder().store(store).entity::<super::Counter>();
    if let Some(ttl) = ttl {
        builder = builder.entity_ttl("Counter", ttl);
    }
    let runtime = builder.start().await.expect("start runtime");
    let client = runtime.client();
    let senders = 256;
    let per = 1_000_000 / senders;
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    client
                        .signal::<super::Counter>(format!("e{}", s * per + i))
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
    tokio::time::sleep(Duration::from_secs(35)).await;
    let rss = rss_mb();
    runtime.shutdown().await.unwrap();
    rss
}

/// What a ticking entity records of its fires.
#[derive(Default, Serialize, Deserialize)]
struct Ticks {
    fires: u64,
    last: u64,
    /// The longest time between two fires, in milliseconds.
    longest: u64,
}

fn ticker(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut ticks: Ticks = ctx.state_or_default()?;
    let now = entities::message::now_millis();
    if ticks.last > 0 {
        ticks.longest = ticks.longest.max(now.saturating_sub(ticks.last));
    }
    ticks.last = now;
    ticks.fires += 1;
    ctx.set_state(&ticks)
}

/// The states of every `Ticker` entity.
async fn tickers(client: &Client) -> Vec<Ticks> {
    let mut all = Vec::new();
    let mut query = EntityQuery {
        name: Some("Ticker".into()),
        page_size: 10_000,
        ..EntityQuery::default()
    };
    loop {
        let page = client.query_entities(query.clone()).await.unwrap();
        all.extend(page.entities.into_iter().map(|e| {
            e.state
                .map(|s| serde_json::from_value(s).unwrap())
                .unwrap_or_default()
        }));
        match page.continuation {
            Some(c) => query.continuation = Some(c),
            None => return all,
        }
    }
}

/// 100,000 schedules firing every 5 s for 20 s: how much later than its period each fire ran.
pub(crate) async fn schedules(sync: Synchronous) {
    const SCHEDULES: usize = 100_000;
    let period = Duration::from_secs(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open_with(
        dir.path().join("schedules.db"),
        SqliteOptions {
            synchronous: sync,
            ..SqliteOptions::default()
        },
    )
    .expect("open store");
    let runtime = Runtime::builder()
        .store(store)
        .entity_fn("Ticker", ticker)
        .start()
        .await
        .expect("start runtime");
    let client = runtime.client();
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (t..SCHEDULES).step_by(64) {
                    let id = EntityId::new("Ticker", format!("t{i}"));
                    client
                        .schedule(&id, "tick", &(), Schedule::every(period))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let created = started.elapsed();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut longest = Vec::with_capacity(SCHEDULES);
    let mut fires = 0;
    for ticks in tickers(&client).await {
        fires += ticks.fires;
        if ticks.fires >= 2 {
            longest.push(ticks.longest.saturating_sub(period.as_millis() as u64) as f64);
        }
    }
    runtime.shutdown().await.unwrap();
    longest.sort_by(f64::total_cmp);
    let at = |p: f64| longest[((longest.len() - 1) as f64 * p) as usize];
    println!(
        "schedules {SCHEDULES} schedules every {period:?} (created in {:.1} s), {fires} fires in 20 s",
        created.as_secs_f64()
    );
    println!(
        "schedules worst lag per schedule (longest gap minus period): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.99),
        longest[longest.len() - 1]
    );
}

/// 1,000 entities with a daily schedule each over 30 virtual days on a manual clock: the real
/// time the month takes, on the memory store and on SQLite, with the schedules created at one
/// virtual time (the fires of a day fall at one time) or 1 ms apart (at 1,000 times a day,
/// each a step of the clock).
pub(crate) async fn manual_clock(sync: Synchronous) {
    const ENTITIES: usize = 1_000;
    const DAYS: u32 = 30;
    let day = Duration::from_secs(24 * 3600);
    let dir = tempfile::tempdir().expect("temp dir");
    for (on_sqlite, spread) in [(false, false), (false, true), (true, false), (true, true)] {
        let path = dir.path().join(format!("clock-{spread}.db"));
        let clock = entities::testing::ManualClock::new();
        let builder = Runtime::builder()
            .clock(clock.clone())
            .entity_fn("Ticker", ticker);
        let builder = if on_sqlite {
            builder.store(
                SqliteStore::open_with(
                    &path,
                    SqliteOptions {
                        synchronous: sync,
                        ..SqliteOptions::default()
                    },
                )
                .expect("open store"),
            )
        } else {
            builder.store(MemoryStore::new())
        };
        let runtime = builder.start().await.expect("start runtime");
        let client = runtime.client();
        for i in 0..ENTITIES {
            let id = EntityId::new("Ticker", format!("t{i}"));
            client
                .schedule(&id, "tick", &(), Schedule::every(day))
                .await
                .unwrap();
            if spread {
                clock.advance(Duration::from_millis(1)).await;
            }
        }
        let started = Instant::now();
        clock.advance(day * DAYS).await;
        let took = started.elapsed();
        let fires: u64 = tickers(&client).await.iter().map(|t| t.fires).sum();
        runtime.shutdown().await.expect("shutdown");
        let store = if on_sqlite { "sqlite" } else { "memory" };
        let times = if spread {
            "1,000 times a day"
        } else {
            "one time a day"
        };
        println!(
            "clock    {ENTITIES} daily schedules x {DAYS} virtual days ({store}, fires at {times}): {:>8.1} ms real, {fires} fires ({:.0} fires/s)",
            took.as_secs_f64() * 1e3,
            fires as f64 / took.as_secs_f64()
        );
    }
}
