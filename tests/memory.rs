//! Memory is bounded by the work in flight, not by the stored backlog (DESIGN.md guarantee 9).
//! Each measurement runs in a child process of its own, so that its peak RSS is its own.
//!
//! Documented bounds (README): a runtime started on a store holding 200,000 signals scheduled a
//! day ahead stays under 40 MB peak RSS (measured: 8 MB; holding them all in memory took about 60 MB more);
//! 100,000 concurrent sends with `max_pending_client_messages(1_000)` stay under 130 MB (measured: 94 MB in a debug build).

use std::process::Command;

use entities::message::{Body, Message, Target};
use entities::prelude::*;
use entities::store::Batch;
use entities::{SqliteStore, Store};

mod support;
use support::counter;

const CHILD_ENV: &str = "ENTITIES_MEMORY_CHILD";

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Runs this test binary's `child` test with `mode` and `path`; returns the peak RSS it printed.
fn child_peak(mode: &str, path: &std::path::Path) -> f64 {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture"])
        .env(CHILD_ENV, format!("{mode}:{}", path.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("peak-rss-mb "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure from the child: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the tests below"]
async fn child() {
    let spec = std::env::var(CHILD_ENV).expect("set by the parent");
    let (mode, path) = spec.split_once(':').unwrap();
    let runtime = Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Counter", counter)
        .max_pending_client_messages(1_000)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    if mode == "burst" {
        let id = EntityId::new("Counter", "burst");
        let sends = (0..100_000).map(|_| client.signal_entity(&id, "add", &1));
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }
    }
    let _: i64 = client
        .call_entity(&EntityId::new("Counter", "probe"), "get", &())
        .await
        .unwrap();
    println!("peak-rss-mb {:.1}", peak_rss_mb());
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_backlog_of_scheduled_signals_stays_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backlog.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let at = entities::message::now_millis() + 86_400_000;
        let commits: Vec<_> = (0..20u64)
            .map(|chunk| {
                let produced = (chunk * 10_000..(chunk + 1) * 10_000)
                    .map(|i| Message {
                        id: i + 1,
                        target: Target::Entity(EntityId::new("Counter", format!("k{}", i % 100))),
                        deliver_at: Some(at + i),
                        body: Body::Operation {
                            name: "add".into(),
                            input: Some(serde_json::json!(1)),
                            reply: None,
                            sender: None,
                        },
                    })
                    .collect();
                store.commit(Batch {
                    produced,
                    ..Batch::default()
                })
            })
            .collect();
        for commit in commits {
            commit.await.unwrap();
        }
        store.close();
    }
    let peak = child_peak("backlog", &path);
    println!("peak RSS with 200,000 stored scheduled signals: {peak:.1} MB");
    assert!(
        peak < 40.0,
        "peak RSS {peak:.1} MB over the documented 40 MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_senders_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let peak = child_peak("burst", &dir.path().join("burst.db"));
    println!("peak RSS with 100,000 concurrent sends: {peak:.1} MB");
    assert!(
        peak < 130.0,
        "peak RSS {peak:.1} MB over the documented 130 MB"
    );
}
