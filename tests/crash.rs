//! Crash safety: a child process signalling in a loop is SIGKILLed mid-stream; a runtime
//! restarted on the same store applies every acknowledged signal exactly once, including the
//! entity-to-entity signals those operations sent, in order.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use entities::prelude::*;

const CHILD_ENV: &str = "ENTITIES_CRASH_CHILD_DB";
const ROUND_ENV: &str = "ENTITIES_CRASH_CHILD_ROUND";
const KEYS: usize = 4;

/// Records each input and forwards it to the mirror entity of the same key.
fn recorder(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut seen: Vec<u64> = ctx.state_or_default()?;
    let seq: u64 = ctx.input()?;
    seen.push(seq);
    ctx.set_state(&seen)?;
    let mirror = EntityId::new("Mirror", ctx.id().key());
    ctx.signal_entity(&mirror, "record", &seq)?;
    Ok(())
}

fn mirror(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut seen: Vec<u64> = ctx.state_or_default()?;
    seen.push(ctx.input()?);
    ctx.set_state(&seen)
}

async fn start(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Recorder", recorder)
        .entity_fn("Mirror", mirror)
        .start()
        .await
        .unwrap()
}

/// The child side: only does something when run by `killed_mid_stream_loses_nothing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by killed_mid_stream_loses_nothing"]
async fn crash_child() {
    let path = std::env::var(CHILD_ENV).expect("the parent sets the database path");
    let round = std::env::var(ROUND_ENV).expect("the parent sets the round");
    let runtime = start(std::path::Path::new(&path)).await;
    let client = runtime.client();
    let tasks = (0..KEYS).map(|key| {
        let client = client.clone();
        let id = EntityId::new("Recorder", format!("r{round}k{key}"));
        tokio::spawn(async move {
            for seq in 0u64.. {
                client.signal_entity(&id, "record", &seq).await.unwrap();
                println!("ack {key} {seq}");
            }
        })
    });
    futures::future::join_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    // Highest acknowledged sequence number per (round, key).
    let mut acked: BTreeMap<(usize, usize), u64> = BTreeMap::new();

    // Two children in turn, the second starting on what the first left unprocessed.
    for round in 0..2 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut count = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            // libtest may print `test name ... ` in front of the first line.
            let line = line.rsplit("... ").next().unwrap_or_default();
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ack") {
                continue;
            }
            let key: usize = parts.next().unwrap().parse().unwrap();
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            acked.insert((round, key), seq);
            count += 1;
            if count == 2000 {
                child.kill().unwrap(); // SIGKILL, mid-stream
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(count, 2000, "the child stopped before it was killed");
    }

    let runtime = start(&path).await;
    let client = runtime.client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (&(round, key), &max_acked) in &acked {
        let rec = EntityId::new("Recorder", format!("r{round}k{key}"));
        let mir = EntityId::new("Mirror", format!("r{round}k{key}"));
        let (recorded, mirrored) = loop {
            let r = client.get_entity_raw(&rec).await.unwrap();
            let m = client.get_entity_raw(&mir).await.unwrap();
            if let (Some(r), Some(m)) = (r, m) {
                if r.pending_messages == 0 && m.pending_messages == 0 {
                    let r: Vec<u64> = serde_json::from_value(r.state).unwrap();
                    let m: Vec<u64> = serde_json::from_value(m.state).unwrap();
                    break (r, m);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{rec} never settled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Every acknowledged signal exactly once, in order; at most one more (stored, but
        // killed before the acknowledgement was printed).
        for (i, seq) in recorded.iter().enumerate() {
            assert_eq!(
                *seq, i as u64,
                "{rec}: gap, duplicate or reordering in {recorded:?}"
            );
        }
        let last = *recorded.last().unwrap();
        assert!(
            last == max_acked || last == max_acked + 1,
            "{rec}: acknowledged up to {max_acked}, recorded up to {last}"
        );
        assert_eq!(
            recorded, mirrored,
            "{mir}: entity-to-entity signals exactly once, in order"
        );
    }
    runtime.shutdown().await.unwrap();
}
