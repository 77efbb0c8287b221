//! The database file going away under a running runtime: deleted (`rm`), or replaced by another
//! file renamed over it. The first send after it fails with `StoreErrorKind::Gone`, naming the
//! file; no send after it is acknowledged; a readiness ping says so too. The `-wal` and `-shm`
//! files, left at their paths, do not hide it, and are removed (a database put at the path
//! must not be read with them); checkpoints, which rewrite them, do not set the check off.

use std::path::Path;
use std::time::Duration;

use entities_core::message::{Body, Message, Target};
use entities_core::store::{Batch, EntityRecord, Store};
use entities_core::{EntityContext, EntityId, Error, OperationError, Runtime, StoreErrorKind};
use entities_sqlite::{SqliteOptions, SqliteStore, Synchronous};
use serde_json::json;

/// Adds its input to its state.
fn add(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let n: i64 = ctx.state_or_default()?;
    let by: i64 = ctx.input()?;
    ctx.set_state(&(n + by))
}

async fn start(store: SqliteStore) -> Runtime {
    Runtime::builder()
        .store(store)
        .entity_fn("Counter", add)
        .start()
        .await
        .unwrap()
}

/// The committed state of `id`, as a number.
async fn state(runtime: &Runtime, id: &EntityId) -> Option<i64> {
    let meta = runtime.client().get_entity_raw(id).await.unwrap()?;
    meta.state.as_i64()
}

/// Waits until `id`'s committed state is `want`: nothing of the runtime commits after that.
async fn applied(runtime: &Runtime, id: &EntityId, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state(runtime, id).await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the signal to {id} was never applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After the file went away: the first send fails with `Gone`, naming the file and what
/// happened to it, and no later send is acknowledged.
async fn sends_fail(runtime: &Runtime, path: &Path, what: &str) {
    let client = runtime.client();
    let id = EntityId::new("Counter", "k");
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        client.signal_entity(&id, "add", &1),
    )
    .await
    .expect("the first send after the file went away is answered");
    let err = match first {
        Err(Error::Store(err)) => err,
        Err(other) => panic!("expected a store error, got {other}"),
        Ok(()) => panic!("a send was acknowledged after the file was {what}"),
    };
    assert_eq!(err.kind(), StoreErrorKind::Gone, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the message names the file: {message}"
    );
    assert!(message.contains(what), "{message}");
    assert!(message.contains("not acknowledged"), "{message}");

    // Later sends do not wait for a store that cannot accept writes again: each fails with
    // `Gone` (well before the 30 s a store out of reach is waited for); none is acknowledged.
    let later = (0..10).map(|_| {
        let client = client.clone();
        let id = id.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                client.signal_entity(&id, "add", &1),
            )
            .await
            .expect("a send after the file went away was left waiting")
        }
    });
    for result in futures::future::join_all(later).await {
        match result {
            Ok(()) => panic!("a send was acknowledged after the file was {what}"),
            Err(Error::Store(err)) => assert_eq!(err.kind(), StoreErrorKind::Gone, "{err}"),
            Err(other) => panic!("expected a store error, got {other}"),
        }
    }
}

fn exists(path: &Path, suffix: &str) -> bool {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    Path::new(&name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_file_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.db");
    let store = SqliteStore::open(&path).unwrap();
    let runtime = start(store.clone()).await;
    let id = EntityId::new("Counter", "k");
    runtime
        .client()
        .signal_entity(&id, "add", &5)
        .await
        .unwrap();
    applied(&runtime, &id, 5).await;
    store.ping().await.unwrap();

    std::fs::remove_file(&path).unwrap();
    // The `-wal` and `-shm` files are still there: they do not hide that the database is not.
    assert!(exists(&path, "-wal") && exists(&path, "-shm"));
    sends_fail(&runtime, &path, "deleted").await;
    let ping = store.ping().await.unwrap_err();
    assert_eq!(ping.kind(), StoreErrorKind::Gone, "{ping}");
    // Reads still see what the file held, nothing of the failed commit.
    assert_eq!(state(&runtime, &id).await, Some(5));
    assert!(!exists(&path, "-wal") && !exists(&path, "-shm"));
    drop(store);
    tokio::time::timeout(Duration::from_secs(30), runtime.shutdown())
        .await
        .expect("the runtime stops")
        .unwrap();

    // A runtime started on the path again starts on an empty database: the old database's WAL
    // is not read with it.
    let runtime = start(SqliteStore::open(&path).unwrap()).await;
    assert_eq!(state(&runtime, &id).await, None);
    runtime
        .client()
        .signal_entity(&id, "add", &2)
        .await
        .unwrap();
    applied(&runtime, &id, 2).await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_replaced_by_another_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replaced.db");
    // Another database, with an entity of its own.
    let other = dir.path().join("other.db");
    let other_id = EntityId::new("Counter", "other");
    {
        let store = SqliteStore::open(&other).unwrap();
        store
            .commit(Batch {
                entities: vec![EntityRecord {
                    id: other_id.clone(),
                    state: Some(json!(42)),
                    state_version: 0,
                    lock_owner: None,
                    last_modified: 0,
                    pending_messages: 0,
                }],
                ..Batch::default()
            })
            .await
            .unwrap();
        store.close();
    }
    // Whole in its file: its WAL, which does not move with it, checkpointed.
    rusqlite::Connection::open(&other)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();

    let store = SqliteStore::open(&path).unwrap();
    let runtime = start(store.clone()).await;
    let id = EntityId::new("Counter", "k");
    runtime
        .client()
        .signal_entity(&id, "add", &5)
        .await
        .unwrap();
    applied(&runtime, &id, 5).await;

    std::fs::rename(&other, &path).unwrap();
    sends_fail(&runtime, &path, "replaced").await;
    let ping = store.ping().await.unwrap_err();
    assert_eq!(ping.kind(), StoreErrorKind::Gone, "{ping}");
    // The old database's `-wal` and `-shm` files are removed: the one now at the path must not
    // be read with them.
    assert!(!exists(&path, "-wal") && !exists(&path, "-shm"));
    drop(store);
    tokio::time::timeout(Duration::from_secs(30), runtime.shutdown())
        .await
        .expect("the runtime stops")
        .unwrap();

    // A runtime started on the path runs the file now there: the other database, whole,
    // with nothing of the sends made after it was put there.
    let runtime = start(SqliteStore::open(&path).unwrap()).await;
    assert_eq!(state(&runtime, &other_id).await, Some(42));
    assert_eq!(state(&runtime, &id).await, None);
    runtime.shutdown().await.unwrap();
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
        consumed: id.checked_sub(1).into_iter().collect(),
        ..Batch::default()
    }
}

#[tokio::test]
async fn checkpoints_do_not_set_off_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let options = SqliteOptions {
        synchronous: Synchronous::Normal,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options).unwrap();
    // 300 commits of 32 KiB: about 2,400 pages, past the automatic checkpoint (1,000 pages)
    // twice; halfway, another connection checkpoints and truncates the WAL.
    for id in 1..=300 {
        store.commit(message(id, 32 << 10)).await.unwrap();
        if id == 150 {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
    }
    store.ping().await.unwrap();
    store.resume().await.unwrap();
    let recovered = store.recover(u64::MAX).await.unwrap();
    let ids: Vec<u64> = recovered.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [300]);
    store.close();
}
