//! The server's limits against slow and hostile clients: half-sent request heads and idle
//! keep-alive connections are closed after their timeouts, a declared body over the limit is
//! refused before it is sent, and a request that runs past the request timeout is stopped,
//! while calls and `?wait=` reads, which wait by design, are not.

use std::time::Duration;

use entities::http::Http;
use entities::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// Locks the counter named by the input until the event "go".
async fn hold(ctx: OrchestrationContext, key: String) -> Result<(), entities::Error> {
    let _section = ctx.lock(&[EntityId::new("Counter", key)]).await?;
    let _: Value = ctx.wait_for_event("go").await?;
    Ok(())
}

/// How long a test waits for what should come at once: long enough never to fail a test on
/// a slow machine, so that it fails only when the thing does not come.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1 with the options `configure` sets; its runtime and address.
async fn serve(configure: impl FnOnce(Http) -> Http) -> (Runtime, String) {
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity_fn("Counter", counter)
        .orchestration("hold", hold)
        .start()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let api = configure(Http::new(runtime.client()));
    tokio::spawn(api.serve_on(listener, std::future::pending()));
    (runtime, addr)
}

/// Reads until the server closes the connection (or resets it); `Err` after [`PATIENCE`].
async fn closed_by_server(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Ok(read),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Err(format!(
                    "still open after {PATIENCE:?}, having read {:?}",
                    String::from_utf8_lossy(&read)
                ))
            }
        }
    }
}

#[tokio::test]
async fn half_sent_heads_and_silent_connections_are_closed_after_the_header_timeout() {
    let (runtime, addr) = serve(|h| h.header_read_timeout(Duration::from_millis(300))).await;
    // A head that never ends.
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    // A connection that sends nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let started = tokio::time::Instant::now();
    closed_by_server(&mut half).await.unwrap();
    closed_by_server(&mut silent).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A head sent in time is answered.
    let answer = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let (runtime, addr) = serve(|h| {
        h.idle_timeout(Duration::from_millis(300))
            .header_read_timeout(Duration::from_secs(60))
    })
    .await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let read = closed_by_server(&mut stream).await.unwrap();
    let answer = String::from_utf8_lossy(&read);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let (runtime, addr) = serve(|h| h).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    // 10 GB declared, not a byte of it sent.
    stream
        .write_all(
            b"POST /entities/counter/a/add HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("no answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"kind\":\"body_too_large\""), "{answer}");
    // The same with `Expect: 100-continue`, as curl sends it: no `100 Continue` first.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"PUT /entities/counter/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nExpect: 100-continue\r\n\
              Content-Length: 10000000000\r\n\r\n",
        )
        .await
        .unwrap();
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("no answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_past_the_request_timeout_is_stopped_but_calls_and_waits_are_not() {
    let timeout = Duration::from_millis(500);
    let (runtime, addr) = serve(|h| {
        h.request_timeout(timeout)
            .header_read_timeout(timeout)
            .idle_timeout(timeout)
    })
    .await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let post = |path: &str, body: &str| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    // An orchestration holds the counter's lock until "go": whatever runs in its queue waits.
    let answer = post("/orchestrations/hold?id=h1", "\"held\"")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    loop {
        let locks: Value = http
            .get(format!("{base}/locks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !locks.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Replacing the state waits behind the lock: stopped at the request timeout.
    let answer = http
        .put(format!("{base}/entities/counter/held"))
        .header("content-type", "application/json")
        .body("5")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["kind"], "request_timeout", "{body}");

    // A call and a `?wait=` read wait past it, for as long as they need.
    let call = tokio::spawn(post("/entities/counter/held/add", "1").send());
    let wait = tokio::spawn(http.get(format!("{base}/orchestrations/h1?wait=5s")).send());
    tokio::time::sleep(timeout * 3).await;
    let answer = post("/orchestrations/h1/events/go", "")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let answer = call.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let answer = wait.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let status: Value = answer.json().await.unwrap();
    assert_eq!(status["status"], "Completed", "{status}");
    runtime.shutdown().await.unwrap();
}
