//! A runtime on a real disk that fills up (a small tmpfs; needs root): sends fail with
//! `StoreErrorKind::DiskFull` and SQLite's error as their cause, and once space is freed the
//! runtime resumes by itself, without a restart; every acknowledged signal is applied, none
//! that failed is.
//!
//! Where no tmpfs can be mounted, the test prints `SKIPPED: ...` and passes, unless
//! `ENTITIES_REQUIRE_ALL_TESTS=1` (set by `.ci/run`).

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use entities::prelude::*;
use entities::{Error, SqliteOptions, SqliteStore, StoreErrorKind};

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run `mount`: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(stderr.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        Ok(Self { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Keeps its input (a large string) as its state.
fn blob(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let data: String = ctx.input()?;
    ctx.set_state(&data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_on_a_full_disk_reports_it_and_resumes_once_space_is_freed() {
    let test = "a_runtime_on_a_full_disk_reports_it_and_resumes_once_space_is_freed";
    let tmpfs = match Tmpfs::mount("8m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            let line = format!("SKIPPED: {test}: cannot mount a tmpfs ({reason})");
            if std::env::var("ENTITIES_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
                panic!("{line}, and ENTITIES_REQUIRE_ALL_TESTS=1");
            }
            let _ = writeln!(std::io::stderr(), "{line}");
            return;
        }
    };
    let filler = tmpfs.dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();
    let runtime = Runtime::builder()
        .store(
            SqliteStore::open_with(
                tmpfs.dir.path().join("full.db"),
                SqliteOptions {
                    unavailable_timeout: Duration::from_secs(2),
                    ..SqliteOptions::default()
                },
            )
            .unwrap(),
        )
        .entity_fn("Blob", blob)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let data = "x".repeat(32 * 1024);
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let mut seq = 0u64;
    // Fill the disk until a send fails.
    let fault = loop {
        seq += 1;
        assert!(seq < 10_000, "the disk never filled up");
        match client
            .signal_entity(&EntityId::new("Blob", format!("k{seq}")), "put", &data)
            .await
        {
            Ok(()) => acked.push(seq),
            Err(err) => {
                failed.push(seq);
                break err;
            }
        }
    };
    let Error::Store(store_err) = &fault else {
        panic!("a failed send says why: {fault:?}")
    };
    assert_eq!(store_err.kind(), StoreErrorKind::DiskFull, "{store_err}");
    let cause = std::error::Error::source(store_err).expect("the cause is kept");
    assert_eq!(
        cause
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code),
        Some(rusqlite::ErrorCode::DiskFull),
        "{cause:?}"
    );
    // While the disk stays full, sends do not wait forever: each fails, with the disk's error
    // or (once it waited `unavailable_timeout`) as unavailable; nothing of them is applied.
    let during = (0..5).map(|n| {
        let client = client.clone();
        let data = data.clone();
        let seq = seq + 1 + n;
        async move {
            let id = EntityId::new("Blob", format!("k{seq}"));
            let sent = tokio::time::timeout(
                Duration::from_secs(20),
                client.signal_entity(&id, "put", &data),
            )
            .await
            .expect("a send during the outage was left waiting");
            (seq, sent)
        }
    });
    for (n, sent) in futures::future::join_all(during).await {
        match sent {
            Ok(()) => acked.push(n),
            Err(Error::Store(err)) => {
                assert!(
                    matches!(
                        err.kind(),
                        StoreErrorKind::DiskFull | StoreErrorKind::Unavailable
                    ),
                    "{err}"
                );
                failed.push(n);
            }
            Err(other) => panic!("a send failed with {other}"),
        }
    }
    seq += 5;
    // Free the space: the runtime resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        seq += 1;
        match client
            .signal_entity(&EntityId::new("Blob", format!("k{seq}")), "put", &"small")
            .await
        {
            Ok(()) => {
                acked.push(seq);
                break;
            }
            Err(_) => failed.push(seq),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runtime did not resume after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = EntityId::new("Blob", format!("k{seq}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.get_entity_raw(&last).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last signal never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for seq in &acked {
        let id = EntityId::new("Blob", format!("k{seq}"));
        assert!(
            client.get_entity_raw(&id).await.unwrap().is_some(),
            "acknowledged signal {seq} was lost"
        );
    }
    for seq in &failed {
        let id = EntityId::new("Blob", format!("k{seq}"));
        assert!(
            client.get_entity_raw(&id).await.unwrap().is_none(),
            "signal {seq} was refused but applied"
        );
    }
    runtime.shutdown().await.unwrap();
}
