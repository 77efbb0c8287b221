//! A rolling deploy on PostgreSQL: processes with old and new orchestration code (children of
//! the test) share one database; an instance that new code patched and old code then replays
//! is held, not failed, and completes once new code owns it again.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

mod children;

use std::io::Write;
use std::process::{Child, ChildStdin};
use std::time::{Duration, Instant};

use entities::prelude::*;
use entities::store::{InstanceRecord, Store};
use entities_postgres::test_server::TestServer;
use entities_postgres::{PostgresOptions, PostgresStore};
use entities_test_support::{flow_v1, flow_v2, Counter};

const URL_ENV: &str = "ENTITIES_PG_VERSION_URL";
const CODE_ENV: &str = "ENTITIES_PG_VERSION_CODE";
const WAIT: Duration = Duration::from_secs(60);

fn options() -> PostgresOptions {
    PostgresOptions {
        partitions: 4,
        lease: Duration::from_millis(2000),
        ..Default::default()
    }
}

/// The child side: a runtime with the `old` or `new` code of the flow, taking commands from
/// stdin (`start KEY`, `raise ID`), printing `started` and then `ok` after each command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the test below"]
async fn pg_version_child() {
    let url = std::env::var(URL_ENV).expect("the parent sets the URL");
    let code = std::env::var(CODE_ENV).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,entities_core=info")
        .with_writer(std::io::stderr)
        .try_init();
    let store = PostgresStore::connect_with(&url, options()).await.unwrap();
    let builder = Runtime::builder().store(store).entity::<Counter>();
    let builder = match code.as_str() {
        "old" => builder.orchestration("flow", flow_v1),
        "new" => builder.orchestration("flow", flow_v2),
        other => panic!("unknown code `{other}`"),
    };
    let runtime = builder.start().await.unwrap();
    let client = runtime.client();
    println!("started");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match line.split_once(' ') {
            Some(("start", key)) => {
                client
                    .start_orchestration_with_id("flow", key, &key)
                    .await
                    .unwrap();
            }
            Some(("raise", id)) => client.raise_event(id, "go", &()).await.unwrap(),
            _ => panic!("unknown command `{line}`"),
        }
        println!("ok");
    }
    runtime.shutdown().await.unwrap();
}

/// A child process running `code`.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl Proc {
    fn spawn(url: &str, code: &str, dir: &std::path::Path, n: usize) -> Self {
        let log = dir.join(format!("{code}{n}.log"));
        let (mut child, lines) = children::spawn(
            "pg_version_child",
            &[(URL_ENV, url.to_string()), (CODE_ENV, code.to_string())],
            &log,
        );
        let stdin = child.stdin.take();
        let proc = Self {
            child,
            stdin,
            lines,
            log,
        };
        proc.expect("started");
        proc
    }

    /// Waits for the line `what`.
    fn expect(&self, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == what => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "no `{what}` from the child; its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.expect("ok");
    }

    /// Shuts the child down gracefully (its partitions are handed over at once).
    fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the child failed; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// Waits until instance `id`'s stored record satisfies `done`.
async fn until(store: &PostgresStore, id: &str, done: impl Fn(&InstanceRecord) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(record) = store.read_instance(id).await.unwrap() {
            if done(&record) {
                return;
            }
            assert!(Instant::now() < deadline, "{id}: {record:?}");
        }
        assert!(Instant::now() < deadline, "{id} never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn counter(store: &PostgresStore, key: &str) -> Option<serde_json::Value> {
    store
        .read_entity(&EntityId::of::<Counter>(key))
        .await
        .unwrap()
        .and_then(|r| r.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_code_holds_what_new_code_patched_and_new_code_completes_it() {
    let Some(server) = TestServer::start_or_skip("old_code_holds_what_new_code_patched") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = PostgresStore::connect_with(&url, options()).await.unwrap();

    // New code starts the instance: it takes the patched path, then waits for `go`.
    let mut new = Proc::spawn(&url, "new", dir.path(), 1);
    new.send("start mixed");
    until(&store, "mixed", |_| true).await;
    let deadline = Instant::now() + WAIT;
    while counter(&store, "mixed").await.is_none() {
        assert!(Instant::now() < deadline, "the flow never added");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        counter(&store, "mixed-fee").await,
        Some(serde_json::json!({ "value": 100 }))
    );

    // A rollback mid-deploy: old code joins, then the new process leaves, and the event
    // arrives at old code, whose replay departs from the history.
    let mut old = Proc::spawn(&url, "old", dir.path(), 1);
    new.stop();
    old.send("raise mixed");
    until(&store, "mixed", |r| r.held.is_some()).await;
    let record = store.read_instance("mixed").await.unwrap().unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    let reason = record.held.unwrap();
    assert!(reason.contains("@counter@mixed-fee"), "{reason}");
    assert_eq!(store.stats().await.unwrap().instances_held, 1);

    // New code comes back and the old process leaves: the instance completes, with the event
    // raised while it was held.
    let new = Proc::spawn(&url, "new", dir.path(), 2);
    old.stop();
    until(&store, "mixed", |r| r.status.is_terminal()).await;
    let record = store.read_instance("mixed").await.unwrap().unwrap();
    assert_eq!(record.status, RuntimeStatus::Completed, "{record:?}");
    assert_eq!(record.output, Some(serde_json::json!(11)));
    assert_eq!(record.held, None);
    new.stop();
}
