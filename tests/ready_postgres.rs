//! `GET /ready` of the HTTP API on PostgreSQL: 503 within a few seconds while the database
//! cannot be reached, whether the connections are cut and refused (the server stopped) or
//! nothing answers at all (a hung server or network: the probe still answers, after the 2 s
//! ping timeout), and 200 again once the database is back.
//!
//! The test runs a private PostgreSQL server (`TestServer`) and puts a TCP relay between the
//! store and it, which cuts, refuses and hangs connections on demand. Without the server
//! binaries it prints one line saying it skipped; with `ENTITIES_REQUIRE_ALL_TESTS=1` it fails
//! instead.

use std::time::{Duration, Instant};

use entities::http::Http;
use entities::prelude::*;
use entities_postgres::test_server::TestServer;
use entities_postgres::{PostgresOptions, PostgresStore};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does with the connections to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Relays both ways.
    Up,
    /// Cuts every connection and closes new ones at once, as a stopped server does.
    Down,
    /// Relays nothing and answers nothing, keeping connections open: a hung server.
    Hung,
}

/// A TCP relay on 127.0.0.1 to `upstream`, switched between [`Link`]s.
struct Relay {
    addr: String,
    link: watch::Sender<Link>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (link, links) = watch::channel(Link::Up);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(relay(inbound, upstream.clone(), links.clone()));
            }
        });
        Self { addr, link }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

/// Waits until the link is one that `wanted` accepts (or the relay is gone).
async fn until(link: &mut watch::Receiver<Link>, wanted: impl Fn(Link) -> bool) {
    loop {
        if wanted(*link.borrow_and_update()) {
            return;
        }
        if link.changed().await.is_err() {
            return;
        }
    }
}

async fn relay(mut inbound: TcpStream, upstream: String, mut link: watch::Receiver<Link>) {
    let now = *link.borrow_and_update();
    if now == Link::Up {
        let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
            () = until(&mut link, |l| l != Link::Up) => {}
        }
    }
    // Down: dropping the sockets closes them. Hung: hold them, silent, until it ends.
    until(&mut link, |l| l != Link::Hung).await;
}

/// `GET path` on `addr` over a fresh connection: the status and the JSON body.
async fn get(addr: &str, path: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Polls `/ready` until it answers `status` within `within`; every answer must come within
/// 3 s (the 2 s ping timeout and some slack). Returns the body.
async fn ready_becomes(api: &str, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let asked = Instant::now();
        let (got, body) = tokio::time::timeout(Duration::from_secs(10), get(api, "/ready"))
            .await
            .expect("/ready must answer, not hang");
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "/ready took {took:?} to answer {got} {body}"
        );
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready did not answer {status} within {within:?}; last {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `url` with its host and port replaced by `addr`; also returns the host and port replaced.
fn through(url: &str, addr: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (authority, database) = rest.split_once('/').expect("a URL with a database");
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let upstream = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    (format!("{scheme}://{user}{addr}/{database}"), upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_postgres_cannot_be_reached_and_200_once_it_is_back() {
    let Some(server) = TestServer::start_or_skip("ready_is_503_while_postgres_cannot_be_reached")
    else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let (_, upstream) = through(&url, "");
    let relay = Relay::start(upstream).await;
    let (url, _) = through(&url, &relay.addr);
    let store = PostgresStore::connect_with(
        &url,
        PostgresOptions {
            partitions: 4,
            lease: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let runtime = Runtime::builder().store(store).start().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    tokio::spawn(Http::new(runtime.client()).serve_on(listener, std::future::pending()));
    assert_eq!(
        get(&api, "/ready").await,
        (200, serde_json::json!({"status": "ready"}))
    );

    // The database stops: connections cut, new ones refused.
    relay.set(Link::Down);
    let body = ready_becomes(&api, 503, Duration::from_secs(5)).await;
    assert_eq!(body["kind"], "store_unavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("the store cannot be reached: "),
        "{body}"
    );
    // The liveness check does not depend on the database.
    assert_eq!(get(&api, "/health").await.0, 200);
    relay.set(Link::Up);
    ready_becomes(&api, 200, Duration::from_secs(15)).await;

    // The database hangs: nothing answers, and the probe answers 503 after its timeout.
    relay.set(Link::Hung);
    let body = ready_becomes(&api, 503, Duration::from_secs(5)).await;
    assert_eq!(body["kind"], "store_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("did not answer"),
        "{body}"
    );
    relay.set(Link::Up);
    ready_becomes(&api, 200, Duration::from_secs(15)).await;

    tokio::time::timeout(Duration::from_secs(30), runtime.shutdown())
        .await
        .expect("the runtime shuts down once the database is back")
        .unwrap();
    drop(server);
}
