//! Tests of recovery by time, of messages set aside because they cannot be decoded, of corrupt
//! values, and of the migration to schema 2. Bad rows are written with a second connection.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use entities_core::message::{now_millis, Body, Message, Target};
use entities_core::store::{
    Batch, EntityQuery, EntityRecord, InstanceRecord, InstanceWrite, RuntimeStatus, Store,
};
use entities_core::{EntityId, StoreErrorKind};
use rusqlite::{params, Connection};
use serde_json::json;
use tempfile::TempDir;

use crate::{schema, sql, SqliteStore};

fn message(id: u64, deliver_at: Option<u64>) -> Message {
    Message {
        id,
        target: Target::Entity(EntityId::new("Counter", "k")),
        deliver_at,
        body: Body::Operation {
            name: "add".into(),
            input: Some(json!(1)),
            reply: None,
            sender: None,
        },
    }
}

fn good_body() -> String {
    serde_json::to_string(&message(0, None).body).unwrap()
}

fn produce(messages: Vec<Message>) -> Batch {
    Batch {
        produced: messages,
        ..Batch::default()
    }
}

/// A store on a file in a fresh directory (kept alive by the returned `TempDir`).
fn temp_store() -> (TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    (dir, path, store)
}

/// Inserts message rows as given, bypassing the store.
fn insert_raw(path: &Path, rows: &[(u64, &str, Option<u64>, &str)]) {
    let conn = Connection::open(path).unwrap();
    for (id, target, deliver_at, body) in rows {
        conn.execute(
            "INSERT INTO messages (id, target, deliver_at, body) VALUES (?1, ?2, ?3, ?4)",
            params![*id as i64, target, deliver_at.map(|t| t as i64), body],
        )
        .unwrap();
    }
}

fn ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

/// What the tests log, from every thread (the writer logs on its own).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines that contain `marker`.
fn log_lines(logs: &Mutex<Vec<u8>>, marker: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|line| line.contains(marker))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn messages_that_cannot_be_decoded_are_set_aside_once() {
    let logs = captured_logs();
    let (_dir, path, store) = temp_store();
    store
        .commit(produce(vec![message(1, None), message(5, None)]))
        .await
        .unwrap();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_body = format!(r#"{{"Event":{{"name":"e","data":{deep}}}}}"#);
    insert_raw(
        &path,
        &[
            (2, "@LogTest@not-json", None, "not json {"),
            (3, "LogTest-unparsable-target", None, &good_body()),
            (9, "!LogTest-deep", None, &deep_body),
        ],
    );

    let first = store.recover(u64::MAX).await.unwrap();
    assert_eq!(ids(&first.messages), [1, 5]);
    assert_eq!(first.set_aside, 3);
    assert_eq!(first.max_message_id, 9, "the set-aside ids stay taken");
    let logged = log_lines(&logs, "LogTest");
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(logged
        .iter()
        .all(|l| l.contains("WARN") && l.contains("set aside")));
    assert!(logged
        .iter()
        .any(|l| l.contains("id=3") && l.contains("unparsable")));

    let set_aside = store.set_aside_messages().await.unwrap();
    let listed: Vec<_> = set_aside
        .iter()
        .map(|m| (m.id, m.target.as_str(), m.deliver_at, m.body.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (2, "@LogTest@not-json", None, "not json {"),
            (3, "LogTest-unparsable-target", None, good_body().as_str()),
            (9, "!LogTest-deep", None, deep_body.as_str()),
        ]
    );
    assert!(
        set_aside[0].error.contains("body"),
        "{}",
        set_aside[0].error
    );
    assert!(
        set_aside[1].error.contains("target"),
        "{}",
        set_aside[1].error
    );
    assert!(
        set_aside[2].error.contains("recursion"),
        "{}",
        set_aside[2].error
    );
    assert!(set_aside.iter().all(|m| m.set_aside_at > 0));

    // Neither this store nor one opened anew sees them again.
    let second = store.recover(u64::MAX).await.unwrap();
    assert_eq!((ids(&second.messages), second.set_aside), (vec![1, 5], 0));
    drop(store);
    let reopened = SqliteStore::open(&path).unwrap();
    let third = reopened.recover(u64::MAX).await.unwrap();
    assert_eq!(ids(&third.messages), [1, 5]);
    assert_eq!((third.set_aside, third.max_message_id), (0, 9));
    assert_eq!(log_lines(&logs, "LogTest").len(), 3, "logged once only");
    assert_eq!(reopened.set_aside_messages().await.unwrap(), set_aside);
}

#[tokio::test]
async fn a_state_that_is_not_json_fails_only_its_entity() {
    let (_dir, path, store) = temp_store();
    let entity = |key: &str, value: i64| EntityRecord {
        id: EntityId::new("Counter", key),
        state: Some(json!(value)),
        state_version: 1,
        lock_owner: None,
        last_modified: 0,
        pending_messages: 0,
    };
    store
        .commit(Batch {
            entities: vec![entity("a", 1), entity("b", 2)],
            ..Batch::default()
        })
        .await
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE entities SET state = '{oops' WHERE key = 'b'", [])
        .unwrap();
    let (a, b) = (EntityId::new("Counter", "a"), EntityId::new("Counter", "b"));
    let named = format!("`{b}`");

    let err = store.load_entities(vec![b.clone()]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert_eq!(err.raw_value(), Some("{oops"));
    assert!(err.to_string().contains(&named), "{err}");
    let err = store.read_entity(&b).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert_eq!(err.raw_value(), Some("{oops"));
    assert!(err.to_string().contains(&named), "{err}");
    let err = store
        .query_entities(&EntityQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert!(err.to_string().contains(&named), "{err}");

    let loaded = store.load_entities(vec![a.clone()]).await.unwrap();
    assert_eq!(loaded[0].state, Some(json!(1)));
    let read = store.read_entity(&a).await.unwrap().unwrap();
    assert_eq!(read.state, Some(json!(1)));
    let without_states = store
        .query_entities(&EntityQuery {
            include_state: false,
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(without_states.entities.len(), 2);
}

fn create_instance(id: &str, events: Vec<serde_json::Value>) -> Batch {
    Batch {
        instances: vec![InstanceWrite {
            record: InstanceRecord {
                id: id.into(),
                name: "o".into(),
                status: RuntimeStatus::Running,
                input: json!({"n": 1}),
                output: None,
                created: 0,
                updated: 0,
                held: None,
            },
            first_event: 0,
            events,
            create: true,
            restart: false,
        }],
        ..Batch::default()
    }
}

#[tokio::test]
async fn a_corrupt_history_event_or_input_names_its_instance() {
    let (_dir, path, store) = temp_store();
    let events = vec![json!("started"), json!("step")];
    store.commit(create_instance("h", events)).await.unwrap();
    store.commit(create_instance("in", vec![])).await.unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE history SET event = 'nope' WHERE seq = 1", [])
        .unwrap();
    conn.execute("UPDATE instances SET input = '{' WHERE id = 'in'", [])
        .unwrap();

    let err = store.read_history("h").await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert_eq!(err.raw_value(), Some("nope"));
    assert!(err.to_string().contains("event 1 "), "{err}");
    assert!(err.to_string().contains("`h`"), "{err}");
    assert_eq!(
        store.read_instance("h").await.unwrap().unwrap().input,
        json!({"n": 1})
    );

    let err = store.read_instance("in").await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert_eq!(err.raw_value(), Some("{"));
    assert!(
        err.to_string()
            .contains("input of orchestration instance `in`"),
        "{err}"
    );
    let err = store.running_instances().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    assert!(err.to_string().contains("`in`"), "{err}");
}

#[tokio::test]
async fn recover_returns_unscheduled_messages_and_those_due_by_the_horizon() {
    let store = SqliteStore::in_memory().unwrap();
    let times = [None, Some(100), Some(200), None, Some(150), Some(300)];
    let messages = (1..).zip(times).map(|(id, at)| message(id, at)).collect();
    store.commit(produce(messages)).await.unwrap();

    let due = store.recover(150).await.unwrap();
    assert_eq!(ids(&due.messages), [1, 2, 4, 5]);
    assert_eq!(
        due.max_message_id, 6,
        "counts the messages after the horizon"
    );
    assert_eq!(ids(&store.recover(99).await.unwrap().messages), [1, 4]);
    assert_eq!(
        ids(&store.recover(u64::MAX).await.unwrap().messages),
        [1, 2, 3, 4, 5, 6]
    );
    let five = store.recover(150).await.unwrap().messages.pop().unwrap();
    assert_eq!(five.deliver_at, Some(150));
}

#[tokio::test]
async fn scheduled_messages_are_paged_by_time_then_id() {
    let (_dir, path, store) = temp_store();
    let times = [10, 20, 20, 20, 30, 40];
    let mut messages: Vec<_> = (1..)
        .zip(times)
        .map(|(id, at)| message(id, Some(at)))
        .collect();
    messages.push(message(7, None));
    store.commit(produce(messages)).await.unwrap();
    // An undecodable message at (20, 8): between 4 and 5 in paging order.
    insert_raw(&path, &[(8, "@Counter@k", Some(20), "{broken")]);
    let page = |after: (u64, u64), until: u64, limit: usize| {
        let store = store.clone();
        async move {
            let page = store.scheduled_messages(after, until, limit).await.unwrap();
            ids(&page)
        }
    };

    assert_eq!(page((0, 0), 1000, 2).await, [1, 2]);
    assert_eq!(page((20, 2), 1000, 2).await, [3, 4], "same time, later ids");
    assert!(store.set_aside_messages().await.unwrap().is_empty());
    assert_eq!(
        page((20, 4), 1000, 2).await,
        [5, 6],
        "the undecodable message does not count against the limit"
    );
    let set_aside = store.set_aside_messages().await.unwrap();
    assert_eq!((set_aside[0].id, set_aside[0].deliver_at), (8, Some(20)));
    assert_eq!(set_aside[0].body, "{broken");
    assert_eq!(page((40, 6), 1000, 2).await, Vec::<u64>::new());
    assert_eq!(
        page((0, 0), 20, 10).await,
        [1, 2, 3, 4],
        "until is inclusive"
    );
    assert_eq!(page((20, 3), 30, 10).await, [4, 5]);
    assert_eq!(page((10, u64::MAX), 1000, 10).await, [2, 3, 4, 5, 6]);
    assert_eq!(page((30, 0), 20, 10).await, Vec::<u64>::new());
    assert_eq!(page((0, 0), u64::MAX, 0).await, Vec::<u64>::new());
    assert_eq!(page((0, 0), u64::MAX, 100).await, [1, 2, 3, 4, 5, 6]);
    let recovered = store.recover(u64::MAX).await.unwrap();
    assert_eq!(recovered.max_message_id, 8);
    assert_eq!(recovered.set_aside, 0, "set aside by the page already");
}

#[tokio::test]
async fn a_version_1_database_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO entities (name, key, state, lock_owner, last_modified) \
             VALUES ('counter', 'k', '7', NULL, 1)",
            [],
        )
        .unwrap();
    }
    insert_raw(
        &path,
        &[
            (1, "@Counter@k", None, &good_body()),
            (2, "@Counter@k", Some(5), &good_body()),
        ],
    );

    let store = SqliteStore::open(&path).unwrap();
    let recovered = store.recover(u64::MAX).await.unwrap();
    assert_eq!(ids(&recovered.messages), [1, 2]);
    assert_eq!(recovered.max_message_id, 2);
    assert_eq!(
        ids(&store.scheduled_messages((0, 0), 10, 10).await.unwrap()),
        [2]
    );
    let entity = store
        .read_entity(&EntityId::new("Counter", "k"))
        .await
        .unwrap();
    let entity = entity.unwrap();
    assert_eq!(entity.state, Some(json!(7)));
    assert_eq!(
        entity.state_version, 1,
        "states stored before versions are version 1"
    );
    assert!(store.set_aside_messages().await.unwrap().is_empty());
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, schema::CURRENT_VERSION);
}

/// The query plan of `sql`, one line per step.
fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    let rows = stmt
        .query_map(rusqlite::params_from_iter(nulls), |row| {
            row.get::<_, String>(3)
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn no_message_query_scans_or_sorts_the_table() {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::migrate(&mut conn).unwrap();
    for query in sql::MESSAGE_QUERIES {
        let plan = query_plan(&conn, query);
        assert!(
            plan.iter()
                .all(|step| !step.starts_with("SCAN") && !step.contains("TEMP B-TREE")),
            "{query}: {plan:?}"
        );
    }
    let plans: Vec<_> = sql::MESSAGE_QUERIES[..4]
        .iter()
        .map(|query| query_plan(&conn, query).join(";"))
        .collect();
    assert!(
        plans[0].contains("USING INDEX messages_unscheduled"),
        "{plans:?}"
    );
    for plan in &plans[1..] {
        assert!(plan.contains("USING INDEX messages_scheduled"), "{plans:?}");
    }
}

/// `VmHWM` (peak) and `VmRSS` of this process, in MiB.
fn memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets `VmHWM` to the current RSS (Linux), so that it measures what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `cargo test -p entities-sqlite --release -- --ignored --nocapture recover_with_a_big`
#[test]
#[ignore = "a benchmark: run in release mode"]
fn recover_with_a_big_backlog_of_scheduled_messages() {
    const COUNT: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backlog.db");
    let now = now_millis();
    let tomorrow = now + 86_400_000;
    drop(SqliteStore::open(&path).unwrap());
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        let mut insert = tx
            .prepare("INSERT INTO messages (id, target, deliver_at, body) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        let body = good_body();
        for id in 1..=COUNT {
            let target = format!("@Counter@{}", id % 1000);
            insert
                .execute(params![
                    id as i64,
                    target,
                    (tomorrow + id % 1000) as i64,
                    body
                ])
                .unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let before = memory_mib();
        reset_peak();
        let start = Instant::now();
        let recovery = store.recover(now + 60_000).await.unwrap();
        let elapsed = start.elapsed();
        let after = memory_mib();
        println!(
            "recover(now + 60 s) over {COUNT} messages scheduled a day ahead: {elapsed:?}, \
             {} messages; VmHWM/VmRSS before {before:?} MiB, after {after:?} MiB",
            recovery.messages.len()
        );
        assert!(recovery.messages.is_empty());
        assert_eq!(recovery.max_message_id, COUNT);
        assert!(elapsed.as_millis() < 1000, "{elapsed:?}");

        let start = Instant::now();
        let page = store
            .scheduled_messages((0, 0), u64::MAX, 1000)
            .await
            .unwrap();
        println!(
            "first page of 1000 scheduled messages: {:?}",
            start.elapsed()
        );
        assert_eq!(page.len(), 1000);

        reset_peak();
        let start = Instant::now();
        let all = store.recover(u64::MAX).await.unwrap();
        println!(
            "for comparison, recover(u64::MAX) (all {} messages): {:?}; VmHWM/VmRSS {:?} MiB",
            all.messages.len(),
            start.elapsed(),
            memory_mib()
        );
    });
}
