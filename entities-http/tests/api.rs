//! The HTTP API route by route, through a real server on 127.0.0.1.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use entities::http::Http;
use entities::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        "nothing" => {}
        "fail" => return Err(OperationError::new("insufficient funds")),
        "delete" => ctx.delete_state(),
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// Waits for the event "go" and returns its data.
async fn wait_go(ctx: OrchestrationContext, _: ()) -> Result<Value, entities::Error> {
    ctx.wait_for_event::<Value>("go").await
}

async fn double(_ctx: OrchestrationContext, n: i64) -> Result<i64, entities::Error> {
    Ok(n * 2)
}

/// Locks the counter named by the input until the event "go".
async fn hold(ctx: OrchestrationContext, key: String) -> Result<(), entities::Error> {
    let _section = ctx.lock(&[EntityId::new("Counter", key)]).await?;
    let _: Value = ctx.wait_for_event("go").await?;
    Ok(())
}

struct Server {
    runtime: Option<Runtime>,
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Server {
    async fn start(configure: impl FnOnce(Http) -> Http) -> Self {
        let runtime = Runtime::builder()
            .store(SqliteStore::in_memory().unwrap())
            .entity_fn("Counter", counter)
            .orchestration("wait_go", wait_go)
            .orchestration("double", double)
            .orchestration("hold", hold)
            .start()
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = configure(Http::new(runtime.client()));
        tokio::spawn(api.serve_on(listener, std::future::pending()));
        Self {
            runtime: Some(runtime),
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = req.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.send(
            self.req(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn shutdown(mut self) {
        self.runtime.take().unwrap().shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn signal_call_and_read() {
    let s = Server::start(|h| h).await;
    let (status, body) = s.post("/entities/Counter/a/add/send", "5").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = s.post("/entities/counter/a/add", "2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, Value::Null);
    let (status, body) = s.post("/entities/counter/a/get", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!(7)));
    // An operation that sets no result answers null.
    let (status, body) = s.post("/entities/counter/a/nothing", "").await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));

    let (status, body) = s.get("/entities/COUNTER/a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], json!(7));
    assert_eq!(body["id"], "@counter@a");
    assert_eq!(body["key"], "a");
    assert!(body["last_modified"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["locked_by"], Value::Null);

    let (status, body) = s.get("/entities/counter/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("no state"),
        "{body}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn operation_errors_are_422_with_their_message() {
    let s = Server::start(|h| h).await;
    let (status, body) = s.post("/entities/counter/a/fail", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["message"], "insufficient funds");
    let (status, body) = s.post("/entities/counter/a/add", "\"not a number\"").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn keys_are_percent_decoded_path_segments() {
    let s = Server::start(|h| h).await;
    for (encoded, key) in [
        ("a%2Fb%40c", "a/b@c"),
        ("%40counter%40x", "@counter@x"),
        ("sp%20ace", "sp ace"),
        ("%C3%A9t%C3%A9", "été"),
    ] {
        let (status, body) = s
            .post(&format!("/entities/counter/{encoded}/add"), "1")
            .await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        let (status, body) = s.get(&format!("/entities/counter/{encoded}")).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        assert_eq!(body["key"], key);
        assert_eq!(body["state"], 1);
    }
    let (_, body) = s.get("/entities?name=counter&prefix=a%2F").await;
    assert_eq!(body["entities"][0]["key"], "a/b@c");
    s.shutdown().await;
}

#[tokio::test]
async fn list_entities_page_by_page() {
    let s = Server::start(|h| h).await;
    for key in ["k1", "k2", "k3", "k4", "k5", "other"] {
        let (status, _) = s.post(&format!("/entities/counter/{key}/add"), "1").await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut keys = Vec::new();
    let mut url = "/entities?name=Counter&prefix=k&page_size=2".to_string();
    let mut pages = 0;
    loop {
        let (status, body) = s.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let entities = body["entities"].as_array().unwrap();
        assert!(entities.len() <= 2);
        keys.extend(
            entities
                .iter()
                .map(|e| e["key"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match body["continuation"].as_str() {
            Some(next) => {
                let encoded: String = url_encode(next);
                url = format!("/entities?name=Counter&prefix=k&page_size=2&continuation={encoded}");
            }
            None => break,
        }
    }
    assert_eq!(keys, ["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(pages, 3);
    let (status, body) = s.get("/entities?include_state=false").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["entities"].as_array().unwrap().len(), 6);
    assert_eq!(body["entities"][0]["state"], Value::Null);
    let (status, body) = s.get("/entities?page_size=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = s.get("/entities?continuation=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    s.shutdown().await;
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn orchestrations_start_wait_raise_terminate_purge() {
    let s = Server::start(|h| h).await;
    // Start and wait for the output.
    let (status, body) = s.post("/orchestrations/double?id=d1", "21").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], "d1");
    let (status, body) = s.get("/orchestrations/d1?wait=5s").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "Completed");
    assert_eq!(body["output"], 42);
    assert_eq!(body["input"], 21);
    let (status, body) = s.post("/orchestrations/double?id=d1", "1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // A generated id.
    let (status, body) = s.post("/orchestrations/double", "1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(!body["id"].as_str().unwrap().is_empty());

    // Raise an event.
    let (status, _) = s.post("/orchestrations/wait_go?id=w1", "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = s.get("/orchestrations/w1?wait=100ms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "Running");
    let (status, body) = s.post("/orchestrations/w1/events/go", r#"{"x": 1}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, body) = s.get("/orchestrations/w1?wait=5s").await;
    assert_eq!(body["status"], "Completed");
    assert_eq!(body["output"], json!({"x": 1}));
    let (status, body) = s.get("/orchestrations/w1/history").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body["events"].as_array().unwrap().is_empty());

    // Terminate.
    let (status, _) = s.post("/orchestrations/wait_go?id=w2", "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = s
        .send(s.req(reqwest::Method::DELETE, "/orchestrations/w2"))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "purging a running instance: {body}"
    );
    let (status, _) = s.post("/orchestrations/w2/terminate", "\"enough\"").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, body) = s.get("/orchestrations/w2?wait=5s").await;
    assert_eq!(body["status"], "Terminated");
    assert_eq!(body["error"], "enough");

    // List, by status and name.
    let (status, body) = s.get("/orchestrations?status=terminated").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w2"]);
    let (_, body) = s.get("/orchestrations?name=double&page_size=1").await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 1);
    assert!(body["continuation"].is_string());
    let (status, _) = s.get("/orchestrations?status=sleeping").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.get("/orchestrations?created_from=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, body) = s
        .get("/orchestrations?created_from=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 4);

    // Purge.
    let (status, body) = s
        .send(s.req(reqwest::Method::DELETE, "/orchestrations/w2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s
        .send(s.req(reqwest::Method::DELETE, "/orchestrations/w2"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.get("/orchestrations/w2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.post("/orchestrations/w2/events/go", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.post("/orchestrations/w2/terminate", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.get("/orchestrations/w2/history").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.get("/orchestrations/d1?wait=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.shutdown().await;
}

#[tokio::test]
async fn set_state_locks_and_clean() {
    let s = Server::start(|h| h).await;
    let (status, body) = s
        .send(
            s.req(reqwest::Method::PUT, "/entities/counter/fixed")
                .header("content-type", "application/json")
                .body("41"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = s.post("/entities/counter/fixed/get", "").await;
    assert_eq!(body, 41);
    let (status, _) = s
        .send(s.req(reqwest::Method::PUT, "/entities/counter/fixed"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no state given");

    let (status, _) = s.post("/orchestrations/hold?id=h1", "\"fixed\"").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut locks = Value::Null;
    for _ in 0..500 {
        locks = s.get("/locks").await.1;
        if !locks.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        locks,
        json!([{"id": "@counter@fixed", "name": "counter", "key": "fixed", "owner": "h1",
                "waiting": []}])
    );
    // A signal to the locked entity waits behind the lock, and the lock says so.
    let (status, _) = s.post("/entities/counter/fixed/add/send", "1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let locks = s.get("/locks").await.1;
    let waiting = &locks[0]["waiting"];
    assert_eq!(waiting.as_array().unwrap().len(), 1, "{locks}");
    assert_eq!(waiting[0]["kind"], "operation");
    assert_eq!(waiting[0]["operation"], "add");
    assert_eq!(waiting[0]["sender"], Value::Null);
    assert_eq!(waiting[0]["call"], false);
    assert!(waiting[0]["waiting_ms"].as_u64().unwrap() >= 20, "{locks}");
    s.post("/orchestrations/h1/events/go", "").await;
    s.get("/orchestrations/h1?wait=5s").await;
    let (status, body) = s.post("/clean", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["removed_entities"].is_u64());
    assert_eq!(s.get("/locks").await.1, json!([]));
    // Released, the signal that waited has run.
    let (_, body) = s.post("/entities/counter/fixed/get", "").await;
    assert_eq!(body, 42);
    s.shutdown().await;
}

#[tokio::test]
async fn stats_count_entities_instances_and_recent_failures() {
    let s = Server::start(|h| h).await;
    for key in ["a", "b", "c"] {
        s.post(&format!("/entities/counter/{key}/add/send"), "1")
            .await;
    }
    let (status, _) = s.post("/entities/counter/a/fail", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, started) = s.post("/orchestrations/double", "2").await;
    let id = started["id"].as_str().unwrap().to_string();
    s.get(&format!("/orchestrations/{id}?wait=5s")).await;
    let (status, stats) = s.get("/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["entities"], json!([{"name": "counter", "count": 3}]));
    assert_eq!(stats["orchestrations"]["Completed"], 1, "{stats}");
    assert_eq!(stats["orchestrations"]["Running"], 0, "{stats}");
    assert_eq!(stats["locked_entities"], 0);
    let failures = stats["recent_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{stats}");
    assert_eq!(failures[0]["entity"], "@counter@a");
    assert_eq!(failures[0]["operation"], "fail");
    assert_eq!(failures[0]["message"], "insufficient funds");
    s.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_is_served_without_a_token_and_its_data_with_one() {
    let mut s = Server::start(|h| h.token("secret")).await;
    for path in ["/ui", "/ui/app.js", "/ui/style.css"] {
        let response = s.req(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let policy = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!response.text().await.unwrap().is_empty());
    }
    let (status, _) = s.get("/stats").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.token = Some("secret".into());
    let (status, _) = s.get("/stats").await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_unknown_names_and_reserved_operations() {
    let s = Server::start(|h| h).await;
    let (status, body) = s.post("/entities/counter/a/add", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("JSON"), "{body}");
    let (status, body) = s.post("/entities/nosuch/a/add", "1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("nosuch"),
        "{body}"
    );
    let (status, _) = s.post("/entities/nosuch/a/add/send", "1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.post("/orchestrations/nosuch", "1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.post("/entities/counter/a/%24set_state", "1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.post("/entities/bad%40name/a/add", "1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = s.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
    let (status, body) = s.send(s.req(reqwest::Method::DELETE, "/entities")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["message"].is_string());
    assert!(s.get("/entities/counter/a").await.0 == StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let s = Server::start(|h| h.body_limit(1024)).await;
    let big = format!("\"{}\"", "x".repeat(4096));
    let (status, body) = s.post("/entities/counter/a/add", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["message"].is_string());
    let (status, _) = s.post("/orchestrations/double", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Under the limit it goes through.
    let (status, _) = s.post("/entities/counter/a/add", "3").await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let mut s = Server::start(|h| h.token("s3cret")).await;
    let (status, body) = s.get("/entities").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].is_string());
    let (status, _) = s.post("/entities/counter/a/add", "1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s.get("/health").await;
    assert_eq!(status, StatusCode::OK, "health needs no token");
    s.token = Some("wrong".into());
    assert_eq!(s.get("/entities").await.0, StatusCode::UNAUTHORIZED);
    s.token = Some("s3cret-but-longer".into());
    assert_eq!(s.get("/entities").await.0, StatusCode::UNAUTHORIZED);
    s.token = Some("s3cret".into());
    assert_eq!(s.get("/entities").await.0, StatusCode::OK);
    assert_eq!(
        s.post("/entities/counter/a/add", "1").await.0,
        StatusCode::OK
    );
    // Nothing was applied without the token.
    assert_eq!(s.get("/entities/counter/a").await.1["state"], 1);
    // The document declares the token on every operation but /health.
    let doc = s.get("/openapi.json").await.1;
    assert_eq!(
        doc["paths"]["/entities"]["get"]["security"],
        json!([{"bearer": []}])
    );
    assert!(doc["paths"]["/health"]["get"]["security"].is_null());
    s.shutdown().await;
}

#[tokio::test]
async fn a_stopped_runtime_answers_503() {
    let mut s = Server::start(|h| h).await;
    assert_eq!(s.get("/health").await.0, StatusCode::OK);
    s.runtime.take().unwrap().shutdown().await.unwrap();
    let (status, body) = s.post("/entities/counter/a/add", "1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = s.post("/entities/counter/a/add/send", "1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = s.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let s = Server::start(|h| h).await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, Vec<String>)> = paths
        .iter()
        .map(|(path, ops)| {
            let mut methods: Vec<String> = ops.as_object().unwrap().keys().cloned().collect();
            methods.sort();
            (path.clone(), methods)
        })
        .collect();
    documented.sort();
    let mut routes: Vec<(String, Vec<String>)> = entities::http::ROUTES
        .iter()
        .map(|(path, methods)| {
            let mut methods: Vec<String> = methods
                .iter()
                .map(std::string::ToString::to_string)
                .collect();
            methods.sort();
            (path.to_string(), methods)
        })
        .collect();
    routes.sort();
    assert_eq!(documented, routes);
    // The router answers every documented route and method itself (never the JSON
    // fallbacks for an unknown route or method), and refuses the other methods.
    for (path, methods) in entities::http::ROUTES {
        let concrete = path
            .replace("{name}", "counter")
            .replace("{key}", "k")
            .replace("{operation}", "get")
            .replace("{id}", "none")
            .replace("{event}", "e");
        for method in ["get", "post", "put", "delete"] {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let response = s.req(m, &concrete).send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            if methods.contains(&method) {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert!(!text.contains("no such route"), "{method} {path}: {text}");
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
        // Every operation documents its answers.
        for method in *methods {
            let answers = &paths[*path][*method]["responses"];
            assert!(
                ["200", "201", "202"]
                    .iter()
                    .any(|c| answers[*c].is_object()),
                "{method} {path} documents no success answer"
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_are_rendered_after_a_workload() {
    let s = Server::start(|h| h).await;
    for _ in 0..3 {
        s.post("/entities/counter/m/add", "1").await;
        s.post("/entities/counter/m/add/send", "1").await;
    }
    s.post("/entities/counter/m/fail", "").await;
    s.post("/orchestrations/double?id=metrics-1", "1").await;
    s.get("/orchestrations/metrics-1?wait=5s").await;
    s.post("/orchestrations/hold?id=metrics-hold", "\"locked\"")
        .await;
    for _ in 0..500 {
        if s.get("/locks").await.1.as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A signal scheduled for later is stored.
    let client = s.runtime.as_ref().unwrap().client();
    client
        .signal_entity_at(
            &EntityId::new("Counter", "later"),
            "add",
            &1,
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let response = s
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Other tests of this process share the recorder: counters are at least this test's.
    assert!(value("entities_operations_total{outcome=\"ok\"}") >= 6.0);
    assert!(value("entities_operations_total{outcome=\"error\"}") >= 1.0);
    assert!(value("entities_signals_received_total") >= 3.0);
    assert!(value("entities_calls_received_total") >= 4.0);
    assert!(value("entities_orchestrations_ended_total{status=\"completed\"}") >= 1.0);
    assert!(value("entities_batch_size_count") >= 1.0);
    assert!(value("entities_commit_seconds_count") >= 1.0);
    assert!(text.contains("entities_messages_waiting"), "{text}");
    assert!(value("entities_in_memory") >= 0.0);
    // The store's gauges describe this test's store (the last one scraped).
    assert_eq!(value("entities_locks_held"), 1.0);
    assert_eq!(value("entities_scheduled_backlog"), 1.0);
    assert!(value("entities_stored_messages") >= 1.0);
    assert_eq!(value("entities_orchestrations{status=\"completed\"}"), 1.0);
    assert_eq!(value("entities_orchestrations{status=\"running\"}"), 1.0);
    s.post("/orchestrations/metrics-hold/events/go", "").await;
    s.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_apply_a_send_once() {
    let s = Server::start(|h| h).await;
    let keyed = |path: &str, body: &str, key: &str| {
        s.req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
    };
    for _ in 0..3 {
        let (status, body) = s
            .send(keyed("/entities/counter/i/add/send", "5", "s1"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let (status, body) = s.send(keyed("/entities/counter/i/add", "1", "c1")).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    s.send(keyed("/entities/counter/i/add", "1", "c1")).await;
    let (_, value) = s.post("/entities/counter/i/get", "").await;
    assert_eq!(value, json!(6), "each key applied once");
    // A key is bound to its request: reused for a signal, another entity or another input,
    // it is refused and nothing is sent.
    for (path, input) in [
        ("/entities/counter/i/add/send", "1"),
        ("/entities/counter/x2/add", "1"),
        ("/entities/counter/i/add", "7"),
    ] {
        let (status, body) = s.send(keyed(path, input, "c1")).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {input}: {body}"
        );
        assert_eq!(body["kind"], "idempotency_mismatch", "{body}");
    }
    let (_, value) = s.post("/entities/counter/i/get", "").await;
    assert_eq!(value, json!(6), "a refused key applied its send");
    let (status, _) = s.get("/entities/counter/x2").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused key wrote x2");
    // A retried start answers the first instance's id.
    let (_, first) = s.send(keyed("/orchestrations/double", "2", "o1")).await;
    let (_, second) = s.send(keyed("/orchestrations/double", "2", "o1")).await;
    assert_eq!(first["id"], second["id"]);
    s.shutdown().await;
}

#[tokio::test]
async fn scheduled_signals_and_schedules_are_listed_and_cancelled() {
    let s = Server::start(|h| h).await;
    let runtime = s.runtime.as_ref().unwrap();
    let id = EntityId::new("Counter", "sched");
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    runtime
        .client()
        .signal_entity_at(&id, "add", &3, later)
        .await
        .unwrap();
    let (status, body) = s
        .post(
            "/scheduled/counter/sched/schedules",
            r#"{"operation": "add", "input": 1, "every_ms": 3600000}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let schedule = body["id"].as_u64().unwrap();
    let (status, listed) = s.get("/scheduled/counter/sched").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["signals"].as_array().unwrap().len(), 1);
    assert_eq!(listed["signals"][0]["input"], json!(3));
    assert_eq!(listed["schedules"][0]["id"], json!(schedule));
    assert_eq!(
        listed["schedules"][0]["schedule"],
        json!({"every_ms": 3600000})
    );
    let signal = listed["signals"][0]["id"].as_u64().unwrap();

    let delete = |path: String| s.send(s.req(reqwest::Method::DELETE, &path));
    let (status, _) = delete(format!("/scheduled/counter/sched/signals/{signal}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = delete(format!("/scheduled/counter/sched/signals/{signal}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(format!("/scheduled/counter/sched/schedules/{schedule}")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = s.get("/scheduled/counter/sched").await;
    assert_eq!(listed["signals"], json!([]));
    assert_eq!(listed["schedules"], json!([]));

    // Bad schedules are 400s.
    for body in [
        r#"{"operation": "add"}"#,
        r#"{"operation": "add", "every_ms": 0}"#,
        r#"{"operation": "add", "cron": "not cron"}"#,
        r#"{"operation": "add", "every_ms": 5, "cron": "0 * * * * *"}"#,
        r#"{"operation": "$set", "every_ms": 5}"#,
    ] {
        let (status, answer) = s.post("/scheduled/counter/sched/schedules", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    let (status, _) = delete("/scheduled/counter/sched/signals/x".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.shutdown().await;
}

/// A document whose stored states are at version 3 while the code running reads version 2.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    text: String,
}

#[entity(version = 2, migrate = Self::migrate)]
impl Doc {
    fn migrate(_from_version: u32, old: Value) -> Result<Self, String> {
        Ok(Self {
            text: old.to_string(),
        })
    }
    pub fn text(&self) -> String {
        self.text.clone()
    }
}

/// Writes its input as the state, stored at version 3.
fn doc_v3(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let text: String = ctx.input()?;
    ctx.set_state(&json!({ "text": text, "v3": true }))?;
    ctx.set_state_version(3);
    Ok(())
}

#[tokio::test]
async fn a_state_newer_than_the_code_is_409_state_version() {
    let store = MemoryStore::new();
    let newer = Runtime::builder()
        .store(store.reopen())
        .entity_fn("Doc", doc_v3)
        .start()
        .await
        .unwrap();
    newer
        .client()
        .call_entity::<(), _>(&EntityId::new("Doc", "d"), "write", &"hello")
        .await
        .unwrap();
    newer.shutdown().await.unwrap();

    let runtime = Runtime::builder()
        .store(store.reopen())
        .entity::<Doc>()
        .start()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Http::new(runtime.client()).serve_on(listener, std::future::pending()));
    let response = reqwest::get(format!("{base}/entities/Doc/d"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "state_version", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("has version 3"),
        "{body}"
    );
    // Operations fail as operation errors, with the same message.
    let response = reqwest::Client::new()
        .post(format!("{base}/entities/Doc/d/text"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn purge_orchestrations_by_query() {
    let s = Server::start(|h| h).await;
    for n in 0..3 {
        let (status, _) = s
            .post(&format!("/orchestrations/double?id=d{n}"), "2")
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (status, body) = s.get(&format!("/orchestrations/d{n}?wait=5s")).await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("Completed")),
            "{body}"
        );
    }
    s.post("/orchestrations/wait_go?id=w", "").await;
    let delete = |path: &str| s.send(s.req(reqwest::Method::DELETE, path));
    let (status, body) = delete("/orchestrations").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no filter: {body}");
    let (status, body) = delete("/orchestrations?name=wait_go").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"purged": 0})),
        "running: never"
    );
    let (status, body) = delete("/orchestrations?status=completed&page_size=2").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"purged": 3})));
    let (_, page) = s.get("/orchestrations").await;
    let ids: Vec<&str> = page["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w"]);
    let (status, _) = delete("/orchestrations?ended_before=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.shutdown().await;
}
