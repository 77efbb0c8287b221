//! 2,000 TCP connections that send nothing do not lock clients out: a `GET /health` is
//! answered within 1 s while they stay open.
//!
//! The server runs as the probe that found the problem ran it: with the common limit of
//! 1,024 open files, which 2,000 connections would exhaust without a connection cap (the
//! server then accepts no one until they go). The connections are held by a second process
//! (this test binary run again, as `hold_silent_connections`), with a limit that fits them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use entities::http::Http;
use entities::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The connections that send nothing.
const SILENT: usize = 2_000;

/// The server's limit on open files in this test, the common default.
const SERVER_FILES: libc::rlim_t = 1_024;

/// The variable that turns [`hold_silent_connections`] on, with the address to connect to.
const HOLD: &str = "ENTITIES_TEST_HOLD_SILENT_CONNECTIONS_TO";

/// Sets this process's soft limit on open files to `soft` (at most the hard limit); returns
/// the limit set.
fn set_file_limit(soft: libc::rlim_t) -> libc::rlim_t {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        limit.rlim_cur
    }
}

#[tokio::test]
async fn silent_connections_do_not_keep_a_request_from_being_answered() {
    assert_eq!(set_file_limit(SERVER_FILES), SERVER_FILES);
    let runtime = Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    // A backlog that holds every connection at once: the kernel completes them all without
    // waiting for the server (with a short one, connections past it would retry their SYN for
    // seconds before the server even sees them).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(Http::new(runtime.client()).serve_on(listener, std::future::pending()));

    // The other process opens the connections, says how many it holds, and holds them until
    // it is killed.
    let mut holder = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_silent_connections",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD, &addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let held = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints `test hold_silent_connections ... ` before the test's output.
            if let Some((_, count)) = line.split_once("holding ") {
                return count.parse::<usize>().unwrap();
            }
        }
        panic!("the holder ended without holding its connections");
    })
    .await
    .expect("the holder did not open its connections");
    assert_eq!(held, SILENT, "the holder could not open every connection");

    // A generous client timeout: the test fails on it only if the request is not answered.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let answer = http
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .expect("GET /health is not answered while silent connections are open");
        let took = started.elapsed();
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        assert!(
            took <= Duration::from_secs(1),
            "GET /health took {took:?} to be answered"
        );
    }
    holder.kill().await.unwrap();
    runtime.shutdown().await.unwrap();
}

/// The other process of the test above: opens [`SILENT`] connections to the address in
/// [`HOLD`], sends nothing, says `holding N`, and waits until it is killed. Does nothing when
/// [`HOLD`] is not set.
#[tokio::test]
async fn hold_silent_connections() {
    let Ok(addr) = std::env::var(HOLD) else {
        return;
    };
    set_file_limit(SILENT as libc::rlim_t + 256);
    let mut connections = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        // Connected once the server's kernel has queued it, whether the server accepts it
        // or not.
        match tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        {
            Ok(Ok(stream)) => connections.push(stream),
            other => {
                eprintln!("connection {} failed: {other:?}", connections.len());
                break;
            }
        }
    }
    println!("holding {}", connections.len());
    // Until the test kills this process (or its stdin closes).
    let _ = tokio::io::stdin().read(&mut [0u8; 1]).await;
    drop(connections);
}
