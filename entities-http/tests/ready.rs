//! `GET /ready` and the graceful stop: 200 while the process can serve, 503 with the reason
//! once the runtime has shut down or the shutdown signal of `Http::serve_with_shutdown` has
//! fired, while the requests under way still finish; and the server example stopping on
//! SIGTERM. (The store that cannot be reached is `tests/ready_postgres.rs` of the workspace.)

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use entities::http::Http;
use entities::prelude::*;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Waits for the event "go" and returns its data.
async fn wait_go(ctx: OrchestrationContext, _: ()) -> Result<Value, entities::Error> {
    ctx.wait_for_event::<Value>("go").await
}

async fn runtime(dir: &tempfile::TempDir) -> Runtime {
    Runtime::builder()
        .store(SqliteStore::open(dir.path().join("ready.db")).unwrap())
        .orchestration("wait_go", wait_go)
        .start()
        .await
        .unwrap()
}

/// Serves `http` on a free port of 127.0.0.1 until `stop` resolves; returns the base URL and
/// the server's task.
async fn serve(
    http: Http,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (
    String,
    tokio::task::JoinHandle<Result<(), entities::http::HttpError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (base, tokio::spawn(http.serve_on(listener, stop)))
}

/// The status and JSON body of a GET (a fresh connection each time: a server that stopped
/// taking connections is seen at once).
async fn get(url: String) -> Result<(u16, Value), reqwest::Error> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = http.get(url).send().await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn post(url: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `/ready` until it answers `status`, for up to `within`; returns the body.
async fn ready_becomes(base: &str, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let answer = get(format!("{base}/ready")).await;
        match answer {
            Ok((s, body)) if s == status => return body,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("/ready did not answer {status} within {within:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn ready_is_200_while_the_runtime_runs_and_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir).await;
    let (base, _server) = serve(
        Http::new(runtime.client()).token("s3cret"),
        std::future::pending(),
    )
    .await;
    let (status, body) = get(format!("{base}/ready")).await.unwrap();
    assert_eq!((status, body), (200, json!({ "status": "ready" })));
    // The token is set: the API itself refuses a request without it.
    assert_eq!(get(format!("{base}/entities")).await.unwrap().0, 401);
    // The document declares the token on the API, not on the probes.
    let doc: Value = reqwest::Client::new()
        .get(format!("{base}/openapi.json"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/ready"]["get"]["security"].is_null());
    assert!(doc["paths"]["/entities"]["get"]["security"].is_array());
    assert!(doc["paths"]["/ready"]["get"]["responses"]["503"].is_object());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn ready_is_503_with_the_reason_once_the_runtime_has_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir).await;
    let (base, _server) = serve(Http::new(runtime.client()), std::future::pending()).await;
    assert_eq!(get(format!("{base}/ready")).await.unwrap().0, 200);
    runtime.shutdown().await.unwrap();
    let (status, body) = get(format!("{base}/ready")).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["kind"], "shut_down", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("shut down"),
        "{body}"
    );
}

/// With a drain delay, the server goes on taking requests after its shutdown signal while
/// `/ready` answers 503; a request under way (a long poll of an instance) finishes with 200;
/// then the server stops taking connections and `serve_with_shutdown` returns.
#[tokio::test]
async fn ready_is_503_from_the_shutdown_signal_while_a_slow_request_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let drain = Duration::from_millis(1500);
    let (base, server) = serve(Http::new(runtime.client()).drain_delay(drain), async move {
        let _ = stopped.await;
    })
    .await;
    assert_eq!(get(format!("{base}/ready")).await.unwrap().0, 200);
    let (status, body) = post(&format!("{base}/orchestrations/wait_go?id=slow"), "").await;
    assert_eq!(status, 202, "{body}");
    // The slow request: waits up to 10 s for the instance to end.
    let slow = tokio::spawn(get(format!("{base}/orchestrations/slow?wait=10s")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!slow.is_finished(), "the slow request must be under way");

    stop.send(()).unwrap();
    let signalled = Instant::now();
    let body = ready_becomes(&base, 503, Duration::from_secs(1)).await;
    assert_eq!(body["kind"], "draining", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    // Liveness is not readiness: the process is alive.
    assert_eq!(get(format!("{base}/health")).await.unwrap().0, 200);
    assert!(!slow.is_finished(), "the slow request is still under way");
    // Requests are still taken during the drain delay: this one ends the slow request.
    let (status, body) = post(&format!("{base}/orchestrations/slow/events/go"), "7").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Completed", "{body}");
    assert_eq!(body["output"], 7, "{body}");
    assert_eq!(get(format!("{base}/ready")).await.unwrap().0, 503);

    // After the delay, no new connection is taken and the server returns.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve_with_shutdown returns once drained")
        .unwrap()
        .unwrap();
    assert!(signalled.elapsed() >= drain, "{:?}", signalled.elapsed());
    assert!(get(format!("{base}/ready")).await.is_err());
    runtime.shutdown().await.unwrap();
}

/// Without a drain delay, new connections stop at the signal, the request under way still
/// finishes with 200, `serve_with_shutdown` returns only after it, and a router built from
/// the same `Http` (a probe port, say) answers 503 from the signal on.
#[tokio::test]
async fn serve_with_shutdown_finishes_the_requests_under_way_then_returns() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir).await;
    let http = Http::new(runtime.client());
    let (probe, _probe_server) = serve(http.clone(), std::future::pending()).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let (base, server) = serve(http, async move {
        let _ = stopped.await;
    })
    .await;
    let (status, _) = post(&format!("{base}/orchestrations/wait_go?id=slow"), "").await;
    assert_eq!(status, 202);
    // The slow request: the instance never ends, so it answers its status after 2 s.
    let slow = tokio::spawn(get(format!("{base}/orchestrations/slow?wait=2s")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(format!("{probe}/ready")).await.unwrap().0, 200);

    stop.send(()).unwrap();
    let body = ready_becomes(&probe, 503, Duration::from_secs(1)).await;
    assert_eq!(body["kind"], "draining", "{body}");
    let mut server = server;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut server)
            .await
            .is_err(),
        "serve_with_shutdown must wait for the request under way"
    );
    assert!(
        get(format!("{base}/health")).await.is_err(),
        "no new connection is taken after the signal"
    );
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Running", "{body}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve_with_shutdown returns once the request under way has finished")
        .unwrap()
        .unwrap();
    runtime.shutdown().await.unwrap();
}

/// The build directory of this test (`target/debug`).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Skips the test with one visible line, or fails it when every test is required.
fn skip(why: &str) {
    let line = format!("server example SIGTERM test skipped: {why}");
    if std::env::var("ENTITIES_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
        panic!("{line}, and ENTITIES_REQUIRE_ALL_TESTS=1");
    }
    eprintln!("{line}");
}

/// `examples/server.rs` stops gracefully on SIGTERM: a request under way finishes with 200,
/// then the runtime shuts down and the process exits with 0.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_example_stops_gracefully_on_sigterm() {
    let bin = build_dir().join("examples").join("server");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/server.rs");
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&bin), modified(&source)) {
        (None, _) => {
            return skip(&format!(
                "the server example is not built at {} (`cargo test --workspace` or \
                 `cargo build --example server` builds it)",
                bin.display()
            ))
        }
        (Some(built), Some(changed)) if built < changed => {
            return skip(&format!(
                "{} is older than examples/server.rs; `cargo build --example server`",
                bin.display()
            ))
        }
        _ => {}
    }
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let log = work.path().join("server.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .env("BANK_ADDR", format!("127.0.0.1:{port}"))
        .env("BANK_DB", work.path().join("bank.db"))
        .env("ENTITIES_TOKEN", "")
        .env_remove("BANK_POSTGRES_URL")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(format!("{base}/ready")).await.ok().map(|a| a.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the server did not get ready within 20 s; log:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let transfer = r#"{"from":"bob","to":"alice","amount":1}"#;
    let (status, body) = post(
        &format!("{base}/orchestrations/approved_transfer?id=waits"),
        transfer,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // A request under way when SIGTERM comes: the instance waits for an approval, so this
    // answers its status after 2 s.
    let slow = tokio::spawn(get(format!("{base}/orchestrations/waits?wait=2s")));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, body) = slow
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the request under way failed ({e}); log:\n{}", read_log()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Running", "{body}");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 10 s of SIGTERM; log:\n{}", read_log()))
        .unwrap();
    let log = read_log();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(
        log.contains("SIGTERM: finishing the requests under way"),
        "{log}"
    );
    assert!(log.contains("\nstopped\n"), "{log}");
}
