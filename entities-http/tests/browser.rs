//! Browser safety without a token: what a web page of another site can make the user's
//! browser send (a cross-origin POST, a "simple" `text/plain` request, a request to a name
//! rebound to this server) is refused, while the server's own pages and clients that are not
//! browsers go on; and `Idempotency-Key` headers that are empty or too long are bad input.

use entities::http::Http;
use entities::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;

fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

struct Server {
    runtime: Runtime,
    /// `http://127.0.0.1:PORT`
    base: String,
    /// `127.0.0.1:PORT`
    addr: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(configure: impl FnOnce(Http) -> Http) -> Self {
        let runtime = Runtime::builder()
            .store(SqliteStore::in_memory().unwrap())
            .entity_fn("Counter", counter)
            .start()
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let api = configure(Http::new(runtime.client()));
        tokio::spawn(api.serve_on(listener, std::future::pending()));
        Self {
            runtime,
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// A JSON POST, as the dashboard sends it.
    fn post(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = req.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body)
    }

    /// The counter's value, read the way a client that is not a browser does.
    async fn value(&self, key: &str) -> Value {
        let (status, body) = self
            .send(self.post(&format!("/entities/counter/{key}/get"), ""))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// An error answer has the status, a `kind` and a message.
fn assert_refused(answer: (StatusCode, Value), status: StatusCode, kind: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["kind"], kind, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn unsafe_requests_from_another_origin_are_refused() {
    let s = Server::start(|h| h).await;
    // What `curl -X POST -H 'Origin: http://evil.example' ...` sends: a page of another
    // site posting through the user's browser.
    let answer = s
        .send(
            s.post("/entities/counter/victim/add/send", "1000")
                .header("origin", "http://evil.example"),
        )
        .await;
    assert_refused(answer, StatusCode::FORBIDDEN, "cross_origin");
    // Another port of the same host is another origin; `null` is no origin of ours.
    let port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    for origin in [format!("http://127.0.0.1:{other_port}"), "null".to_string()] {
        let answer = s
            .send(
                s.post("/entities/counter/victim/add/send", "1000")
                    .header("origin", &origin),
            )
            .await;
        assert_refused(answer, StatusCode::FORBIDDEN, "cross_origin");
    }
    // Without an `Origin`, the browser's `Sec-Fetch-Site` says where the request comes from.
    for site in ["cross-site", "same-site"] {
        let answer = s
            .send(
                s.req(reqwest::Method::DELETE, "/orchestrations/x")
                    .header("sec-fetch-site", site),
            )
            .await;
        assert_refused(answer, StatusCode::FORBIDDEN, "cross_origin");
    }
    assert_eq!(s.value("victim").await, 0, "nothing was applied");

    // The server's own pages (the dashboard) and clients that are not browsers go on.
    let (status, body) = s
        .send(
            s.post("/entities/counter/victim/add", "1")
                .header("origin", format!("http://{}", s.addr))
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.send(s.post("/entities/counter/victim/add", "1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Reads are not refused for their origin (the browser keeps their answers from the page).
    let (status, body) = s
        .send(
            s.req(reqwest::Method::GET, "/entities/counter/victim")
                .header("origin", "http://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.value("victim").await, 2);
    s.runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_allowed_host_counts_as_an_own_origin() {
    // Behind a proxy that rewrites `Host`, the dashboard's public name is given.
    let s = Server::start(|h| h.allowed_hosts(["dashboard.example"])).await;
    let (status, body) = s
        .send(
            s.post("/entities/counter/a/add", "1")
                .header("origin", "https://dashboard.example"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = s
        .send(
            s.post("/entities/counter/a/add", "1")
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_refused(answer, StatusCode::FORBIDDEN, "cross_origin");
    s.runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn bodies_must_be_json() {
    let s = Server::start(|h| h).await;
    // A "simple" request: a page may send it to any site without asking first.
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = s
            .req(reqwest::Method::POST, "/entities/counter/victim/add/send")
            .body("1000");
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        let answer = s.send(req).await;
        assert_refused(
            answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let answer = s
        .send(
            s.req(reqwest::Method::PUT, "/entities/counter/victim")
                .header("content-type", "text/plain")
                .body("1000"),
        )
        .await;
    assert_refused(
        answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_eq!(s.value("victim").await, 0, "nothing was applied");

    // JSON, with parameters or a `+json` type, and requests without a body, go on.
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.x+json",
    ] {
        let (status, body) = s
            .send(
                s.req(reqwest::Method::POST, "/entities/counter/victim/add/send")
                    .header("content-type", content_type)
                    .body("1"),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{content_type}: {body}");
    }
    let (status, body) = s
        .send(s.req(reqwest::Method::POST, "/entities/counter/victim/get"))
        .await;
    assert_eq!(status, StatusCode::OK, "no body needs no type: {body}");
    assert_eq!(body, 3);
    s.runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_without_a_token() {
    let s = Server::start(|h| h).await;
    let (status, _) = s.send(s.post("/entities/counter/secret/add", "7")).await;
    assert_eq!(status, StatusCode::OK);
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    // A page of evil.example whose name now resolves to 127.0.0.1 reads "its own" origin.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".into(),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        for path in ["/entities/counter/secret", "/entities", "/ui"] {
            let answer = s
                .send(s.req(reqwest::Method::GET, path).header("host", &host))
                .await;
            assert_refused(answer, StatusCode::FORBIDDEN, "host_not_allowed");
        }
    }
    // The server's own names, and any IP address (a page cannot rebind one).
    for host in [
        s.addr.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "10.0.0.7:80".into(),
    ] {
        let (status, body) = s
            .send(
                s.req(reqwest::Method::GET, "/entities/counter/secret")
                    .header("host", &host),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    // Probes read nothing, and load balancers send what they like.
    let (status, _) = s
        .send(
            s.req(reqwest::Method::GET, "/health")
                .header("host", "evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.runtime.shutdown().await.unwrap();

    // Widened, the names given are served.
    let s = Server::start(|h| h.allowed_hosts(["entities.internal", "api.example:8443"])).await;
    for (host, expected) in [
        ("entities.internal:8080", StatusCode::OK),
        ("ENTITIES.internal", StatusCode::OK),
        ("api.example:8443", StatusCode::OK),
        ("api.example:8080", StatusCode::FORBIDDEN),
        ("evil.example", StatusCode::FORBIDDEN),
    ] {
        let (status, body) = s
            .send(
                s.req(reqwest::Method::GET, "/entities")
                    .header("host", host),
            )
            .await;
        assert_eq!(status, expected, "{host}: {body}");
    }
    s.runtime.shutdown().await.unwrap();
    let s = Server::start(|h| h.allowed_hosts(["*"])).await;
    let (status, _) = s
        .send(
            s.req(reqwest::Method::GET, "/entities")
                .header("host", "any.example"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.runtime.shutdown().await.unwrap();

    // With a token, the page has no credential to read with: any name is served.
    let s = Server::start(|h| h.token("s3cret")).await;
    let (status, body) = s
        .send(
            s.req(reqwest::Method::GET, "/entities")
                .header("host", "entities.example.com")
                .bearer_auth("s3cret"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn idempotency_keys_must_be_1_to_255_bytes() {
    let s = Server::start(|h| h).await;
    let keyed = |path: &str, key: &str| s.post(path, "1").header("idempotency-key", key);
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str()] {
        for path in ["/entities/counter/i/add", "/entities/counter/i/add/send"] {
            let answer = s.send(keyed(path, key)).await;
            assert_refused(answer, StatusCode::BAD_REQUEST, "bad_request");
        }
        let answer = s
            .send(
                s.post("/orchestrations/nosuch", "1")
                    .header("idempotency-key", key),
            )
            .await;
        assert_refused(answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(s.value("i").await, 0, "nothing was applied");
    let longest = "k".repeat(255);
    let (status, body) = s
        .send(keyed("/entities/counter/i/add/send", &longest))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = s.send(keyed("/entities/counter/i/add", "a")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.value("i").await, 2);
    s.runtime.shutdown().await.unwrap();
}
