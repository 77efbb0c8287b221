//! Database files that cannot be written (`chattr +i`, as root on a file system that has the
//! flag): a commit fails with `StoreErrorKind::ReadOnly`, not `Io`, with SQLite's error as its
//! source and the operating system's (`EPERM`) in its message; later batches and `resume` are
//! refused the same way, and once the file is writable again `resume` accepts writes, with
//! nothing committed before lost.
//!
//! Where `chattr +i` cannot be set, the test prints `SKIPPED: ...` and passes, unless
//! `ENTITIES_REQUIRE_ALL_TESTS=1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use entities_core::message::{Body, Message, Target};
use entities_core::store::{Batch, Store};
use entities_core::{EntityId, StoreError, StoreErrorKind};
use entities_sqlite::SqliteStore;

/// A file made immutable with `chattr +i`, made mutable again when dropped (so that the test's
/// directory can be removed, even after a failure).
struct Immutable(PathBuf);

impl Immutable {
    /// `Err` with the reason if the flag cannot be set.
    fn set(path: &Path) -> Result<Self, String> {
        let output = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run `chattr`: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(stderr.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn signal(id: u64) -> Batch {
    Batch {
        produced: vec![Message {
            id,
            target: Target::Entity(EntityId::new("Counter", "k")),
            deliver_at: None,
            body: Body::Operation {
                name: "add".into(),
                input: Some(serde_json::json!(1)),
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

fn assert_read_only(err: &StoreError) {
    assert_eq!(err.kind(), StoreErrorKind::ReadOnly, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("Operation not permitted"),
        "the OS error is named: {message}"
    );
    assert!(message.contains("make them writable"), "{message}");
}

#[tokio::test]
async fn an_immutable_wal_is_read_only_until_made_writable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frozen.db");
    let store = SqliteStore::open(&path).unwrap();
    store.commit(signal(1)).await.unwrap();

    // Commits are written to the WAL.
    let wal = dir.path().join("frozen.db-wal");
    let frozen = match Immutable::set(&wal) {
        Ok(frozen) => frozen,
        Err(reason) => {
            let line = format!(
                "SKIPPED: an_immutable_wal_is_read_only_until_made_writable: cannot `chattr +i` \
                 ({reason})"
            );
            if std::env::var("ENTITIES_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
                panic!("{line}, and ENTITIES_REQUIRE_ALL_TESTS=1");
            }
            let _ = writeln!(std::io::stderr(), "{line}");
            return;
        }
    };
    let err = store.commit(signal(2)).await.unwrap_err();
    assert_read_only(&err);
    assert_eq!(
        sqlite_code(&err),
        Some(rusqlite::ErrorCode::SystemIoFailure),
        "SQLite's error is the source: {err:?}"
    );
    let later = store.commit(signal(3)).await.unwrap_err();
    assert_read_only(&later);
    assert_read_only(&store.resume().await.unwrap_err());

    drop(frozen);
    store.resume().await.unwrap();
    store.commit(signal(4)).await.unwrap();
    let recovered = store.recover(u64::MAX).await.unwrap();
    let ids: Vec<u64> = recovered.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 4]);
    store.close();
}
