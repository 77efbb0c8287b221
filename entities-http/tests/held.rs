//! A held orchestration instance (its code departed from its history) as the HTTP API shows
//! it: its status, the `held` filter, the overview count and the metrics gauge. A test binary
//! of its own, so that the store gauges it reads are its store's.

use std::time::Duration;

use entities::http::Http;
use entities::prelude::*;
use entities_test_support::{until_held, until_history_has};
use reqwest::StatusCode;
use serde_json::Value;

/// The first version: waits for `go`.
async fn flow_v1(ctx: OrchestrationContext, _: ()) -> Result<(), entities::Error> {
    ctx.wait_for_event::<()>("go").await
}

/// The second version: a patch signals a counter first.
async fn flow_v2(ctx: OrchestrationContext, _: ()) -> Result<(), entities::Error> {
    if ctx.patched("notify") {
        ctx.signal_entity(&EntityId::new("Counter", "n"), "add", &1)?;
    }
    ctx.wait_for_event::<()>("go").await
}

fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    ctx.set_state(&(value + ctx.input::<i64>()?))?;
    Ok(())
}

async fn start(path: &std::path::Path, patched: bool) -> Runtime {
    let builder = Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Counter", counter);
    let builder = if patched {
        builder.orchestration("flow", flow_v2)
    } else {
        builder.orchestration("flow", flow_v1)
    };
    builder.start().await.unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let response = http.get(url).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let (status, text) = get(http, url).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_held_instance_is_shown_filtered_counted_and_measured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    let runtime = start(&path, true).await;
    let client = runtime.client();
    client
        .start_orchestration_with_id("flow", "h1", &())
        .await
        .unwrap();
    client
        .start_orchestration_with_id("flow", "r1", &())
        .await
        .unwrap();
    until_history_has(&client, "h1", 3).await;
    runtime.shutdown().await.unwrap();

    // Older code: `h1` replays when its event arrives, and is held; `r1` gets nothing.
    let runtime = start(&path, false).await;
    let client = runtime.client();
    client.raise_event("h1", "go", &()).await.unwrap();
    until_held(&client, "h1").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Http::new(runtime.client()).serve_on(listener, std::future::pending()));
    let http = reqwest::Client::new();

    let status = get_json(&http, &format!("{base}/orchestrations/h1")).await;
    assert_eq!(status["status"], "Running");
    let reason = status["held"].as_str().unwrap();
    assert!(
        reason.contains("signal of `add` to @counter@n") && reason.contains("no longer schedules"),
        "{reason}"
    );
    let running = get_json(&http, &format!("{base}/orchestrations/r1")).await;
    assert_eq!(running["held"], Value::Null);

    let held = get_json(&http, &format!("{base}/orchestrations?status=held")).await;
    let ids: Vec<&str> = held["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h1"]);
    let running = get_json(&http, &format!("{base}/orchestrations?status=running")).await;
    assert_eq!(running["instances"].as_array().unwrap().len(), 2);
    let (status, text) = get(&http, &format!("{base}/orchestrations?status=stuck")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("held"), "{text}");

    let stats = get_json(&http, &format!("{base}/stats")).await;
    assert_eq!(stats["held_orchestrations"], 1);
    assert_eq!(stats["orchestrations"]["Running"], 2);
    let (_, metrics) = get(&http, &format!("{base}/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "entities_orchestrations_held 1"),
        "{metrics}"
    );

    // Terminated, it is no longer held.
    let response = http
        .post(format!("{base}/orchestrations/h1/terminate"))
        .header("content-type", "application/json")
        .body(r#""rolled back""#)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let done = client
        .wait_for_orchestration("h1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, RuntimeStatus::Terminated);
    assert_eq!(done.held, None);
    let stats = get_json(&http, &format!("{base}/stats")).await;
    assert_eq!(stats["held_orchestrations"], 0);
    runtime.shutdown().await.unwrap();
}
