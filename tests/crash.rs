//! Crash safety: a child process signalling in a loop is SIGKILLed mid-stream; a runtime
//! restarted on the same store applies every acknowledged signal exactly once, including the
//! entity-to-entity signals those operations sent, in order.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use entities::prelude::*;
use entities::Store;

const CHILD_ENV: &str = "ENTITIES_CRASH_CHILD_DB";
const ROUND_ENV: &str = "ENTITIES_CRASH_CHILD_ROUND";
const KEYS: usize = 4;
const ROUNDS: usize = 2;
/// Acknowledgements read before a child is killed.
const KILL_AFTER: usize = 2000;

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
    for round in 0..ROUNDS {
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
        // Read to the end: the child goes on printing acknowledgements until the kill lands,
        // and every one it printed counts (some are already in the pipe or in this reader's
        // buffer when the kill is sent).
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
            let expected = acked.get(&(round, key)).map_or(0, |last| last + 1);
            assert_eq!(
                seq, expected,
                "round {round} key {key}: acknowledgements out of order"
            );
            acked.insert((round, key), seq);
            count += 1;
            if count == KILL_AFTER {
                child.kill().unwrap(); // SIGKILL, mid-stream
            }
        }
        let status = child.wait().unwrap();
        assert!(
            count >= KILL_AFTER && was_killed(status),
            "round {round}: the child stopped by itself ({status}) after {count} acknowledgements"
        );
        println!(
            "round {round}: {count} acknowledgements, {} of them read after the kill",
            count - KILL_AFTER
        );
    }

    let runtime = start(&path).await;
    let client = runtime.client();
    // Everything stored is processed: no message is left, scheduled or not.
    let inspect = SqliteStore::open_read_only(&path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = inspect.recover(u64::MAX).await.unwrap().messages.len();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} stored messages were never processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = |id: EntityId| {
        let client = client.clone();
        async move {
            match client.get_entity_raw(&id).await.unwrap() {
                Some(meta) => serde_json::from_value::<Vec<u64>>(meta.state).unwrap(),
                None => Vec::new(),
            }
        }
    };
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            let rec = EntityId::new("Recorder", format!("r{round}k{key}"));
            let mir = EntityId::new("Mirror", format!("r{round}k{key}"));
            let recorded = state(rec.clone()).await;
            let mirrored = state(mir.clone()).await;
            // Every acknowledged signal exactly once, in order; at most one more (stored, but
            // killed before the acknowledgement was printed); nothing twice.
            for (i, seq) in recorded.iter().enumerate() {
                assert_eq!(
                    *seq, i as u64,
                    "{rec}: gap, duplicate or reordering in {recorded:?}"
                );
            }
            let stored = recorded.len() as u64;
            let acknowledged = acked.get(&(round, key)).map_or(0, |last| last + 1);
            assert!(
                stored == acknowledged || stored == acknowledged + 1,
                "{rec}: {acknowledged} signals acknowledged, {stored} recorded"
            );
            assert_eq!(
                recorded, mirrored,
                "{mir}: entity-to-entity signals exactly once, in order"
            );
        }
    }
    runtime.shutdown().await.unwrap();
}

/// Whether a child died of the kill (SIGKILL on Unix) rather than by itself.
fn was_killed(status: std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(9)
    }
    #[cfg(not(unix))]
    {
        !status.success()
    }
}
