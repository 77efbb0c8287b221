//! A real full disk (a small tmpfs; needs root): a failed commit says so and carries SQLite's
//! error, every later batch is refused, `resume` refuses while the disk is full and accepts
//! writes again once space is freed, and nothing committed before the fault is lost.
//!
//! Where no tmpfs can be mounted, the test prints `SKIPPED: ...` and passes, unless
//! `ENTITIES_REQUIRE_ALL_TESTS=1`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use entities_core::message::{Body, Message, Target};
use entities_core::store::{Batch, Store};
use entities_core::{EntityId, StoreError, StoreErrorKind};
use entities_sqlite::SqliteStore;

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount` takes it); `Err` with the reason if it cannot.
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run `mount`: {e}"))?;
        if !output.status.success() {
            // On one line.
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(stderr.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a writer thread still ending must not keep the mount.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Reports a test that cannot run, or fails it if every test is required to run.
fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: cannot mount a tmpfs ({reason})");
    if std::env::var("ENTITIES_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
        panic!("{line}, and ENTITIES_REQUIRE_ALL_TESTS=1");
    }
    // Straight to the standard error: the test harness captures `eprintln!`.
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A batch storing one message with a body of `size` bytes.
fn message(id: u64, size: usize) -> Batch {
    Batch {
        produced: vec![Message {
            id,
            target: Target::Entity(EntityId::new("Blob", "k")),
            deliver_at: None,
            body: Body::Operation {
                name: "put".into(),
                input: Some(serde_json::Value::String("x".repeat(size))),
                reply: None,
                sender: None,
            },
        }],
        ..Batch::default()
    }
}

/// The SQLite error code of the error's direct cause, a `rusqlite::Error`.
fn sqlite_code(err: &StoreError) -> Option<rusqlite::ErrorCode> {
    std::error::Error::source(err)?
        .downcast_ref::<rusqlite::Error>()?
        .sqlite_error_code()
}

#[tokio::test]
async fn a_full_disk_fails_commits_with_their_cause_until_resumed() {
    let test = "a_full_disk_fails_commits_with_their_cause_until_resumed";
    let tmpfs = match Tmpfs::mount("4m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => return skip(test, &reason),
    };
    // Space to free later.
    let filler = tmpfs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    let store = SqliteStore::open(tmpfs.path().join("full.db")).unwrap();

    // 64 KiB messages until the disk is full (far fewer than 1000 fit in 4 MiB).
    let mut stored = Vec::new();
    let mut failure = None;
    for id in 1..1000 {
        match store.commit(message(id, 64 << 10)).await {
            Ok(_) => stored.push(id),
            Err(err) => {
                failure = Some((id, err));
                break;
            }
        }
    }
    let (failed, err) = failure.expect("the disk never filled up");
    assert!(!stored.is_empty(), "nothing fitted: {err}");
    assert_eq!(err.kind(), StoreErrorKind::DiskFull, "{err}");
    assert_eq!(
        sqlite_code(&err),
        Some(rusqlite::ErrorCode::DiskFull),
        "SQLite's error is the source: {err:?}"
    );

    // Later batches are refused, with the cause; so is a resume while the disk is full.
    let later = store.commit(message(failed + 1, 10)).await.unwrap_err();
    assert_eq!(later.kind(), StoreErrorKind::DiskFull, "{later}");
    assert_eq!(sqlite_code(&later), Some(rusqlite::ErrorCode::DiskFull));
    let refused = store.resume().await.unwrap_err();
    assert_eq!(refused.kind(), StoreErrorKind::DiskFull, "{refused}");
    let still = store.commit(message(failed + 2, 10)).await.unwrap_err();
    assert_eq!(still.kind(), StoreErrorKind::DiskFull, "{still}");

    std::fs::remove_file(&filler).unwrap();
    store.resume().await.unwrap();
    store.commit(message(failed + 3, 10)).await.unwrap();

    let recovered = store.recover(u64::MAX).await.unwrap();
    let ids: Vec<u64> = recovered.messages.iter().map(|m| m.id).collect();
    stored.push(failed + 3);
    assert_eq!(
        ids, stored,
        "what was committed before the fault is all there"
    );
    store.close();
}
