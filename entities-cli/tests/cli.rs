//! The `entities` binary run as a process: against a running server, and against a `--db`
//! file. Checks output and exit codes.

use std::path::Path;
use std::time::Duration;

use entities::http::Http;
use entities::prelude::*;
use entities_test_support::{until_held, until_history_has};
use serde_json::{json, Value};

fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        "fail" => return Err(OperationError::new("nope, on purpose")),
        "delete" => ctx.delete_state(),
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

async fn wait_go(ctx: OrchestrationContext, _: Value) -> Result<Value, entities::Error> {
    ctx.wait_for_event::<Value>("go").await
}

async fn hold(ctx: OrchestrationContext, key: String) -> Result<(), entities::Error> {
    let _section = ctx.lock(&[EntityId::new("Counter", key)]).await?;
    let _: Value = ctx.wait_for_event("go").await?;
    Ok(())
}

async fn runtime(store: SqliteStore) -> Runtime {
    Runtime::builder()
        .store(store)
        .entity_fn("Counter", counter)
        .orchestration("wait_go", wait_go)
        .orchestration("hold", hold)
        .start()
        .await
        .unwrap()
}

/// Serves `runtime` on 127.0.0.1 with a token; returns the URL.
async fn serve(runtime: &Runtime, token: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let api = Http::new(runtime.client()).token(token);
    tokio::spawn(api.serve_on(listener, std::future::pending()));
    url
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the binary with `args` and the environment `env`.
async fn entities(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entities"));
    command
        .args(args)
        .env_remove("ENTITIES_URL")
        .env_remove("ENTITIES_TOKEN")
        .env_remove("VISUAL")
        .env_remove("EDITOR");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the CLI hung")
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_running_server() {
    let runtime = runtime(SqliteStore::in_memory().unwrap()).await;
    let url = serve(&runtime, "tok").await;
    let env = [("ENTITIES_URL", url.as_str()), ("ENTITIES_TOKEN", "tok")];
    let run = |args: &'static [&'static str]| entities(args, &env);

    // Signal, call, show, list.
    let out = run(&["signal", "@Counter@alice", "add", "5"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("stored"), "{}", out.stdout);
    let out = run(&["call", "@counter@alice", "get"]).await;
    assert_eq!((out.code, out.stdout.trim()), (0, "5"), "{}", out.stderr);
    let out = run(&["call", "@counter@a/b@c", "add", "2"]).await;
    assert_eq!(out.code, 0, "a key with / and @: {}", out.stderr);
    let out = run(&["show", "@counter@a/b@c"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("entity:    @counter@a/b@c"),
        "{}",
        out.stdout
    );
    let out = run(&["--json", "show", "@counter@alice"]).await;
    assert_eq!(out.json()["state"], 5);
    let out = run(&["list"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ENTITY"), "{}", out.stdout);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    let out = run(&["list", "counter", "--prefix", "al", "--json"]).await;
    let list = out.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["key"], "alice");

    // Errors and their exit codes.
    let out = run(&["call", "@counter@alice", "fail"]).await;
    assert_eq!(out.code, 4, "operation error: {}", out.stderr);
    assert!(out.stderr.contains("nope, on purpose"), "{}", out.stderr);
    let out = run(&["show", "@counter@nobody"]).await;
    assert_eq!(out.code, 3, "not found: {}", out.stderr);
    let out = run(&["call", "@nosuch@x", "get"]).await;
    assert_eq!(out.code, 3, "unknown name: {}", out.stderr);
    let out = run(&["call", "@counter@alice", "add", "{oops"]).await;
    assert_eq!(out.code, 2, "bad JSON argument: {}", out.stderr);
    let out = run(&["show", "counter-alice"]).await;
    assert_eq!(out.code, 2, "bad id: {}", out.stderr);
    let out = entities(&["--url", &url, "list"], &[]).await;
    assert_eq!(out.code, 6, "no token: {}", out.stderr);
    let out = entities(&["--url", "http://127.0.0.1:9", "list"], &[]).await;
    assert_eq!(out.code, 7, "unreachable: {}", out.stderr);

    // Edit through $EDITOR: the state is written back.
    let out = entities(
        &["edit", "@counter@alice"],
        &[
            ("ENTITIES_URL", url.as_str()),
            ("ENTITIES_TOKEN", "tok"),
            ("EDITOR", "true"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("no change"), "{}", out.stdout);
    let out = entities(
        &["edit", "@counter@alice"],
        &[
            ("ENTITIES_URL", url.as_str()),
            ("ENTITIES_TOKEN", "tok"),
            ("EDITOR", "sed -i s/5/42/"),
            ("VISUAL", ""),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("state written"), "{}", out.stdout);
    assert_eq!(
        run(&["call", "@counter@alice", "get"]).await.stdout.trim(),
        "42"
    );
    let out = entities(
        &["edit", "@counter@alice"],
        &[
            ("ENTITIES_URL", url.as_str()),
            ("ENTITIES_TOKEN", "tok"),
            ("EDITOR", "sh -c 'echo {broken > \"$0\"'"),
        ],
    )
    .await;
    assert_eq!(out.code, 2, "invalid JSON from the editor: {}", out.stderr);
    assert_eq!(
        run(&["call", "@counter@alice", "get"]).await.stdout.trim(),
        "42"
    );

    // Delete.
    let out = run(&["delete", "@counter@a/b@c"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(run(&["show", "@counter@a/b@c"]).await.code, 3);

    // Orchestrations: start, raise, list, show, terminate, purge.
    let out = run(&["start", "wait_go", "{\"n\": 1}", "--id", "w1"]).await;
    assert_eq!((out.code, out.stdout.trim()), (0, "w1"), "{}", out.stderr);
    let out = run(&["start", "wait_go", "--id", "w1"]).await;
    assert_eq!(out.code, 5, "id in use: {}", out.stderr);
    let out = run(&["start", "nosuch"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = run(&["raise", "w1", "go", "\"done\""]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let client = runtime.client();
    client
        .wait_for_orchestration("w1", Duration::from_secs(10))
        .await
        .unwrap();
    let out = run(&["orchestration", "w1", "--history"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("status:   Completed"), "{}", out.stdout);
    assert!(out.stdout.contains("output:   \"done\""), "{}", out.stdout);
    assert!(out.stdout.contains("history:"), "{}", out.stdout);
    run(&["start", "wait_go", "--id", "w2"]).await;
    let out = run(&["orchestrations", "--status", "running"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("w2") && !out.stdout.contains("w1"),
        "{}",
        out.stdout
    );
    let out = run(&["--json", "orchestrations"]).await;
    assert_eq!(out.json().as_array().unwrap().len(), 2);
    let out = run(&["purge", "w2"]).await;
    assert_eq!(out.code, 5, "purging a running instance: {}", out.stderr);
    let out = run(&["terminate", "w2", "stop it"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done = client
        .wait_for_orchestration("w2", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.error.as_deref(), Some("stop it"));
    assert_eq!(run(&["purge", "w2"]).await.code, 0);
    assert_eq!(run(&["purge", "w2"]).await.code, 3);
    assert_eq!(run(&["orchestration", "w2"]).await.code, 3);

    // Locks and clean.
    run(&["start", "hold", "\"alice\"", "--id", "h1"]).await;
    let mut out = run(&["locks"]).await;
    for _ in 0..200 {
        if out.stdout.contains("h1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        out = run(&["locks"]).await;
    }
    assert!(
        out.stdout.contains("@counter@alice") && out.stdout.contains("h1"),
        "{}",
        out.stdout
    );
    // An operation sent meanwhile waits behind the lock, and `locks` shows it.
    assert_eq!(run(&["signal", "@counter@alice", "add", "1"]).await.code, 0);
    let out = run(&["locks"]).await;
    assert!(out.stdout.contains("add (client, "), "{}", out.stdout);
    run(&["raise", "h1", "go"]).await;
    client
        .wait_for_orchestration("h1", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(run(&["locks"]).await.stdout.trim(), "no locks");
    let out = run(&["clean"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("removed"), "{}", out.stdout);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_db_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.db");
    let runtime = runtime(SqliteStore::open(&path).unwrap()).await;
    let client = runtime.client();
    client
        .call_entity::<(), _>(&EntityId::new("Counter", "x"), "add", &3)
        .await
        .unwrap();
    client
        .call_entity::<(), _>(&EntityId::new("Counter", "y"), "add", &4)
        .await
        .unwrap();
    client
        .start_orchestration_with_id("wait_go", "o1", &json!(1))
        .await
        .unwrap();
    client.raise_event("o1", "go", &"fine").await.unwrap();
    client
        .wait_for_orchestration("o1", Duration::from_secs(10))
        .await
        .unwrap();
    client
        .start_orchestration_with_id("wait_go", "o2", &json!(2))
        .await
        .unwrap();
    let db = path.to_str().unwrap();

    // Read-only while the runtime owns the file.
    let out = entities(&["--db", db, "--json", "show", "@counter@x"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["state"], 3);
    runtime.shutdown().await.unwrap();

    // And with no runtime at all.
    let out = entities(&["--db", db, "list"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("@counter@x") && out.stdout.contains("@counter@y"));
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    let out = entities(
        &["--db", db, "--json", "list", "counter", "--prefix", "y"],
        &[],
    )
    .await;
    assert_eq!(out.json()[0]["state"], 4);
    let out = entities(&["--db", db, "show", "@counter@nobody"], &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = entities(
        &["--db", db, "orchestrations", "--status", "completed"],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("o1") && !out.stdout.contains("o2"),
        "{}",
        out.stdout
    );
    let out = entities(
        &["--db", db, "--json", "orchestration", "o1", "--history"],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status = out.json();
    assert_eq!(status["status"], "Completed");
    assert_eq!(status["output"], "fine");
    assert!(!status["history"].as_array().unwrap().is_empty());
    let out = entities(&["--db", db, "orchestration", "nosuch"], &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);

    // Writes need a runtime; a missing file is an error.
    let out = entities(&["--db", db, "signal", "@counter@x", "add", "1"], &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--url"), "{}", out.stderr);
    let missing = Path::new(db).with_file_name("missing.db");
    let out = entities(&["--db", missing.to_str().unwrap(), "list"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    // Nothing was written: the file still has what the runtime left.
    let store = SqliteStore::open_read_only(&path).unwrap();
    let x = entities::Store::read_entity(&store, &EntityId::new("Counter", "x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x.state, Some(json!(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_and_idempotency_keys() {
    let runtime = runtime(SqliteStore::in_memory().unwrap()).await;
    let url = serve(&runtime, "tok").await;
    let env = [("ENTITIES_URL", url.as_str()), ("ENTITIES_TOKEN", "tok")];
    let run = |args: &'static [&'static str]| entities(args, &env);

    // A keyed signal and call apply once.
    for _ in 0..2 {
        let out = run(&["signal", "@counter@k", "add", "5", "--key", "s1"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let out = run(&["call", "@counter@k", "add", "1", "--key", "c1"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let out = run(&["call", "@counter@k", "get"]).await;
    assert_eq!(out.stdout.trim(), "6", "{}", out.stderr);

    // Schedules: start one, list it, stop it.
    let out = run(&[
        "schedule",
        "@counter@k",
        "add",
        "1",
        "--every-ms",
        "3600000",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let counter = EntityId::new("Counter", "k");
    runtime
        .client()
        .signal_entity_at(&counter, "add", &9, later)
        .await
        .unwrap();
    let out = run(&["scheduled", "@counter@k"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("every 3600000 ms"), "{}", out.stdout);
    assert!(out.stdout.contains("signal"), "{}", out.stdout);
    let listed = run(&["--json", "scheduled", "@counter@k"]).await.json();
    let signal = listed["signals"][0]["id"].to_string();
    let args: Vec<String> = ["cancel-signal", "@counter@k", &signal]
        .map(String::from)
        .into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(entities(&refs, &env).await.code, 0);
    let out = entities(&refs, &env).await;
    assert_eq!(out.code, 3, "cancelled twice: {}", out.stderr);
    let args: Vec<String> = ["unschedule", "@counter@k", &id].map(String::from).into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = entities(&refs, &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        run(&["scheduled", "@counter@k"]).await.stdout.trim(),
        "nothing scheduled"
    );
    // Neither --every-ms nor --cron is a usage error.
    assert_eq!(run(&["schedule", "@counter@k", "add"]).await.code, 2);
    runtime.shutdown().await.unwrap();
}

/// The second version of `wait_go`: a patch signals a counter first.
async fn wait_go_v2(ctx: OrchestrationContext, _: Value) -> Result<Value, entities::Error> {
    if ctx.patched("notify") {
        ctx.signal_entity(&EntityId::new("Counter", "n"), "add", &1)?;
    }
    ctx.wait_for_event::<Value>("go").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_instances_are_listed_and_their_history_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    let db = path.to_str().unwrap();
    let patched = Runtime::builder()
        .store(SqliteStore::open(&path).unwrap())
        .entity_fn("Counter", counter)
        .orchestration("wait_go", wait_go_v2)
        .start()
        .await
        .unwrap();
    let client = patched.client();
    client
        .start_orchestration_with_id("wait_go", "v2", &json!(1))
        .await
        .unwrap();
    until_history_has(&client, "v2", 3).await;
    patched.shutdown().await.unwrap();

    // The code without the patch holds the instance when its event arrives.
    let old = runtime(SqliteStore::open(&path).unwrap()).await;
    let client = old.client();
    client.raise_event("v2", "go", &"now").await.unwrap();
    until_held(&client, "v2").await;
    old.shutdown().await.unwrap();

    let out = entities(&["--db", db, "orchestrations", "--status", "held"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("v2") && out.stdout.contains("Running (held)"),
        "{}",
        out.stdout
    );
    let out = entities(&["--db", db, "orchestration", "v2"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("held:     step 1"), "{}", out.stdout);

    // What `--history --json` prints is what `testing::replay` reads: the patched code
    // replays it, the old code names where it departs.
    let out = entities(
        &["--db", db, "--json", "orchestration", "v2", "--history"],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let saved = out.json();
    entities::testing::replay(wait_go_v2, &saved).unwrap();
    match entities::testing::replay(wait_go, &saved) {
        Err(entities::Error::NonDeterminism(reason)) => {
            assert!(reason.contains("step 1"), "{reason}");
        }
        other => panic!("expected a departure, got {other:?}"),
    }
}
