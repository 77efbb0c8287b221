//! One owner per database file: a second `open`, in this process or another, is refused while
//! a store owns the file; the file opens again once the owner is closed, dropped or killed;
//! `open_read_only` reads without owning and refuses writes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use entities_core::message::{Body, Message, Target};
use entities_core::store::{
    Batch, EntityQuery, EntityRecord, InstanceRecord, InstanceWrite, RuntimeStatus, Store,
};
use entities_core::{EntityId, Error, StoreError, StoreErrorKind};
use entities_sqlite::SqliteStore;
use serde_json::json;

const CHILD_ENV: &str = "ENTITIES_OWNERSHIP_CHILD_DB";

fn signal(id: u64) -> Message {
    Message {
        id,
        target: Target::Entity(EntityId::new("Counter", "k")),
        deliver_at: None,
        body: Body::Operation {
            name: "add".into(),
            input: Some(json!(1)),
            reply: None,
            sender: None,
        },
    }
}

fn messages(ids: impl IntoIterator<Item = u64>) -> Batch {
    Batch {
        produced: ids.into_iter().map(signal).collect(),
        ..Batch::default()
    }
}

async fn stored_ids(store: &SqliteStore) -> Vec<u64> {
    let recovered = store.recover(u64::MAX).await.unwrap();
    recovered.messages.iter().map(|m| m.id).collect()
}

/// The store error of a failed open.
fn open_error(result: Result<SqliteStore, Error>) -> StoreError {
    match result {
        Err(Error::Store(err)) => err,
        Err(other) => panic!("expected a store error, got {other}"),
        Ok(_) => panic!("the open succeeded"),
    }
}

fn assert_in_use(result: Result<SqliteStore, Error>, path: &Path) {
    let err = open_error(result);
    assert_eq!(err.kind(), StoreErrorKind::InUse, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the message names the file: {message}"
    );
    assert!(message.contains("another runtime"), "{message}");
    assert!(message.contains("open_read_only"), "{message}");
}

#[tokio::test]
async fn a_second_open_in_process_is_refused_until_the_owner_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.db");
    let owner = SqliteStore::open(&path).unwrap();
    assert_in_use(SqliteStore::open(&path), &path);

    // The owner is not disturbed by the refused open.
    owner.commit(messages([1, 2])).await.unwrap();
    assert_eq!(stored_ids(&owner).await, [1, 2]);

    owner.close();
    drop(owner);
    let next = SqliteStore::open(&path).unwrap();
    assert_eq!(stored_ids(&next).await, [1, 2]);
    next.commit(messages([3])).await.unwrap();
    assert_eq!(stored_ids(&next).await, [1, 2, 3]);
}

#[tokio::test]
async fn close_releases_the_file_while_clones_live_and_refuses_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.db");
    let owner = SqliteStore::open(&path).unwrap();
    let clone = owner.clone();
    owner.close();
    let next = SqliteStore::open(&path).unwrap();
    let err = clone.commit(messages([1])).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Closed, "{err}");
    next.commit(messages([2])).await.unwrap();
    assert_eq!(stored_ids(&next).await, [2]);
}

#[tokio::test]
async fn dropping_the_last_clone_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.db");
    let owner = SqliteStore::open(&path).unwrap();
    let clone = owner.clone();
    drop(owner);
    assert_in_use(SqliteStore::open(&path), &path);
    clone.commit(messages([1])).await.unwrap();
    drop(clone);
    let next = SqliteStore::open(&path).unwrap();
    assert_eq!(stored_ids(&next).await, [1]);
}

/// Kills the child when dropped, so that a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `owner_child` on `path` and waits until it owns the database.
fn spawn_owner(path: &Path) -> ChildGuard {
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "owner_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    for line in stdout.lines() {
        // libtest may print `test name ... ` in front of the first line.
        if line.unwrap().ends_with("owned") {
            return child;
        }
    }
    panic!("the child ended before it owned the database");
}

/// The child side of `a_database_owned_by_another_process_is_refused_until_it_dies`: owns the
/// database, stores messages 1 and 2 and an entity, says `owned`, then waits for its standard
/// input to close (or to be killed).
#[tokio::test]
#[ignore = "run as a child process by a_database_owned_by_another_process_is_refused_until_it_dies"]
async fn owner_child() {
    let path = PathBuf::from(std::env::var_os(CHILD_ENV).expect("the parent sets the path"));
    let store = SqliteStore::open(path).unwrap();
    let mut batch = messages([1, 2]);
    batch.entities.push(counter("k", 5));
    store.commit(batch).await.unwrap();
    println!("owned");
    let mut rest = String::new();
    while std::io::stdin().read_line(&mut rest).unwrap_or(0) > 0 {}
}

#[tokio::test]
async fn a_database_owned_by_another_process_is_refused_until_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let mut child = spawn_owner(&path);
    assert_in_use(SqliteStore::open(&path), &path);

    // The owner's data can be read meanwhile, not written.
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(stored_ids(&reader).await, [1, 2]);
    let record = reader
        .read_entity(&EntityId::new("Counter", "k"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.state, record.pending_messages), (Some(json!(5)), 2));
    let err = reader.commit(messages([3])).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::ReadOnly, "{err}");
    drop(reader);

    child.0.kill().unwrap(); // SIGKILL: the lock goes with the process
    child.0.wait().unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(stored_ids(&store).await, [1, 2]);
    store.commit(messages([3])).await.unwrap();
    assert_eq!(stored_ids(&store).await, [1, 2, 3]);
}

fn counter(key: &str, value: i64) -> EntityRecord {
    EntityRecord {
        id: EntityId::new("Counter", key),
        state: Some(json!(value)),
        state_version: 1,
        lock_owner: None,
        last_modified: 7,
        pending_messages: 0,
    }
}

fn instance(id: &str) -> InstanceWrite {
    InstanceWrite {
        record: InstanceRecord {
            id: id.into(),
            name: "o".into(),
            status: RuntimeStatus::Running,
            input: json!("in"),
            output: None,
            created: 1,
            updated: 2,
            held: None,
        },
        first_event: 0,
        events: vec![json!("started"), json!("called")],
        create: true,
        restart: false,
    }
}

#[tokio::test]
async fn a_read_only_store_reads_while_the_owner_runs_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inspected.db");
    let owner = SqliteStore::open(&path).unwrap();
    owner
        .commit(Batch {
            entities: vec![counter("a", 1), counter("b", 2)],
            produced: vec![signal(1)],
            instances: vec![instance("i")],
            ..Batch::default()
        })
        .await
        .unwrap();

    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(reader.path(), Some(path.as_path()));
    assert_eq!(stored_ids(&reader).await, [1]);
    let a = reader
        .read_entity(&EntityId::new("Counter", "a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.state, Some(json!(1)));
    let page = reader
        .query_entities(&EntityQuery::default())
        .await
        .unwrap();
    assert_eq!(page.entities.len(), 2);
    let read = reader.read_instance("i").await.unwrap().unwrap();
    assert_eq!(read.input, json!("in"));
    assert_eq!(
        reader.read_history("i").await.unwrap(),
        [json!("started"), json!("called")]
    );

    // Every write is refused, and says why.
    let err = reader.commit(messages([2])).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::ReadOnly);
    assert!(err.to_string().contains("open_read_only"), "{err}");
    let kinds = [
        reader.delete_empty_entities().await.unwrap_err().kind(),
        reader.purge_instance("i").await.unwrap_err().kind(),
        reader.resume().await.unwrap_err().kind(),
    ];
    assert_eq!(kinds, [StoreErrorKind::ReadOnly; 3]);

    // The owner goes on; the reader sees its new commits.
    owner.commit(messages([2])).await.unwrap();
    assert_eq!(stored_ids(&reader).await, [1, 2]);
    assert!(reader.read_instance("i").await.unwrap().is_some());
}

#[test]
fn open_read_only_neither_creates_nor_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let err = open_error(SqliteStore::open_read_only(&missing));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!missing.exists(), "the file was created");

    let version = |path: &Path| -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap()
    };
    let old = dir.path().join("old.db");
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = open_error(SqliteStore::open_read_only(&old));
    assert!(err.to_string().contains("older than this build"), "{err}");
    assert_eq!(version(&old), 0, "the file was migrated");

    let new = dir.path().join("new.db");
    rusqlite::Connection::open(&new)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = open_error(SqliteStore::open_read_only(&new));
    assert!(err.to_string().contains("newer than this build"), "{err}");
    assert_eq!(version(&new), 99);
}
