//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver against the server example. Opens each page,
//! signals and calls from the entity form, sees a critical section on the locks page,
//! terminates it, shows a held instance, checks that a key holding `<script>` shows as text,
//! sees the runtime go
//! unreachable, and saves a screenshot of each page under `target/dashboard/`.
//!
//! Without Chromium and chromedriver it prints one line saying it skipped; with
//! `ENTITIES_REQUIRE_ALL_TESTS=1` (set by `.ci/run`) it fails instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const XSS_KEY: &str = "<script>alert(1)</script>";
const HELD_ID: &str = "departed-1";

/// Stores a running transfer instance held because its code departed from its history.
async fn seed_held_instance(db: &Path) {
    use entities::store::{Batch, InstanceRecord, InstanceWrite, Store};
    let store = entities::SqliteStore::open(db).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let input = json!({ "from": "alice", "to": "bob", "amount": 1 });
    let record = InstanceRecord {
        id: HELD_ID.into(),
        name: "transfer".into(),
        status: entities::RuntimeStatus::Running,
        input: input.clone(),
        output: None,
        created: now,
        updated: now,
        held: Some(
            "step 1: the history has a call of `fee` on @account@alice that the code no \
             longer schedules"
                .into(),
        ),
    };
    let events = vec![
        json!({ "Turn": { "time": now } }),
        json!({ "Started": { "name": "transfer", "input": input, "parent": null, "first_seq": 0 } }),
    ];
    store
        .commit(Batch {
            instances: vec![InstanceWrite {
                record,
                first_event: 0,
                events,
                create: true,
                restart: false,
            }],
            ..Batch::default()
        })
        .await
        .unwrap();
    store.close();
    drop(store); // its file lock goes with it
}

/// Skips the test with one visible line, or fails it when every test is required.
fn skip(why: &str) {
    let line = format!("dashboard browser test skipped: {why}");
    if std::env::var("ENTITIES_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
        panic!("{line}, and ENTITIES_REQUIRE_ALL_TESTS=1");
    }
    eprintln!("{line}");
}

fn find_program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The build directory of this test (`target/debug`).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers, or panics after 20 s with what the process printed.
async fn wait_up(url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = reqwest::Client::new();
    while Instant::now() < deadline {
        if http.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{url} did not answer within 20 s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn spawn(program: &Path, args: &[String], envs: &[(&str, String)], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// Polls `check` every 100 ms for up to 15 s; panics with `what` and the page's text.
async fn eventually<F, Fut>(browser: &Client, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = page_text(browser).await;
    panic!("timed out waiting for {what}; the page shows:\n{page}");
}

async fn page_text(browser: &Client) -> String {
    match browser.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The text of the element `css`, or empty when it is not there.
async fn text_of(browser: &Client, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_text(browser: &Client, css: &str, wanted: &str) {
    eventually(browser, &format!("`{wanted}` in {css}"), || async {
        text_of(browser, css).await.contains(wanted)
    })
    .await;
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let element = browser.find(Locator::Css(css)).await.unwrap();
    element.clear().await.unwrap();
    element.send_keys(value).await.unwrap();
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn screenshot(browser: &Client, dir: &Path, name: &str) {
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium() {
    let Some(chromium) = find_program(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    ) else {
        return skip("no Chromium (install Debian's `chromium` or set CHROMIUM)");
    };
    let Some(driver) = find_program("CHROMEDRIVER", &["/usr/bin/chromedriver"]) else {
        return skip("no chromedriver (install Debian's `chromium-driver` or set CHROMEDRIVER)");
    };
    let server_bin = build_dir().join("examples").join("server");
    if !server_bin.exists() {
        return skip(&format!(
            "the server example is not built at {} (`cargo test --workspace` or \
             `cargo build --example server` builds it)",
            server_bin.display()
        ));
    }
    let shots = build_dir().parent().unwrap().join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let work = tempfile::tempdir().unwrap();

    // A held instance, as code that departed from its history leaves it: stored before the
    // server starts (it has no message, so the server shows it as stored).
    let db = work.path().join("bank.db");
    seed_held_instance(&db).await;

    // The server example on a private database and port.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server_log = work.path().join("server.log");
    let mut server = spawn(
        &server_bin,
        &[],
        &[
            ("BANK_ADDR", format!("127.0.0.1:{port}")),
            ("BANK_DB", db.display().to_string()),
            ("ENTITIES_TOKEN", String::new()),
        ],
        &server_log,
    );
    wait_up(&format!("{base}/health"), &server_log).await;
    let http = reqwest::Client::new();
    let post = |path: String, body: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status.as_u16(), body)
        }
    };
    // The example deposits alice's 100 after it starts serving; wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while post("/entities/account/alice/balance".into(), String::new())
        .await
        .1
        != json!(100)
    {
        assert!(Instant::now() < deadline, "alice never got her deposit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post(
        format!("/entities/account/{}/deposit/send", segment(XSS_KEY)),
        "3".into(),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = post("/entities/account/bob/withdraw".into(), "1000".into()).await;
    assert_eq!(status, 422, "a failure for the overview");

    // Chromium under chromedriver.
    let driver_port = free_port();
    let driver_log = work.path().join("chromedriver.log");
    let _driver = spawn(
        &driver,
        &[format!("--port={driver_port}")],
        &[],
        &driver_log,
    );
    wait_up(
        &format!("http://127.0.0.1:{driver_port}/status"),
        &driver_log,
    )
    .await;
    let profile = work.path().join("profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot start Chromium through chromedriver: {e}\n{}",
                std::fs::read_to_string(&driver_log).unwrap_or_default()
            )
        });

    // Overview: entity names with counts, instances by status, the failure, live figures.
    browser.goto(&format!("{base}/ui")).await.unwrap();
    wait_text(&browser, "#page-overview", "account").await;
    wait_text(&browser, "#page-overview", "insufficient funds").await;
    eventually(&browser, "a live operations figure", || async {
        text_of(&browser, "#ops-per-second")
            .await
            .chars()
            .any(|c| c.is_ascii_digit())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few chart samples
    screenshot(&browser, &shots, "overview").await;

    // Entities: the list, with the hostile key shown as text and never run.
    browser
        .goto(&format!("{base}/ui#/entities?name=account"))
        .await
        .unwrap();
    wait_text(&browser, "#page-entities", "alice").await;
    wait_text(&browser, "#page-entities", XSS_KEY).await;
    let scripts = browser
        .execute("return document.querySelectorAll('script').length", vec![])
        .await
        .unwrap();
    assert_eq!(
        scripts,
        json!(1),
        "only the dashboard's own script is on the page"
    );
    assert!(
        browser.get_alert_text().await.is_err(),
        "a stored key ran as a script"
    );
    screenshot(&browser, &shots, "entities").await;

    browser
        .goto(&format!("{base}/ui#/entity/account/{}", segment(XSS_KEY)))
        .await
        .unwrap();
    wait_text(&browser, "#page-entity", XSS_KEY).await;
    wait_text(&browser, "#entity-state", "3").await;
    assert!(
        browser.get_alert_text().await.is_err(),
        "a stored key ran as a script"
    );

    // An entity's page: its schedules, stopped from the page; signal from the form and see
    // the new state; a call's error.
    let (status, _) = post(
        "/scheduled/account/alice/schedules".into(),
        r#"{"operation": "deposit", "input": 1, "every_ms": 7200000}"#.into(),
    )
    .await;
    assert_eq!(status, 201);
    browser
        .goto(&format!("{base}/ui#/entity/account/alice"))
        .await
        .unwrap();
    wait_text(&browser, "#entity-state", "100").await;
    wait_text(&browser, "#entity-scheduled", "every 2.0 h").await;
    click(&browser, "#entity-scheduled button").await;
    wait_text(&browser, "#scheduled-result", "cancelled").await;
    wait_text(&browser, "#entity-scheduled", "nothing scheduled").await;
    fill(&browser, "#op-name", "deposit").await;
    fill(&browser, "#op-input", "7").await;
    click(&browser, "#op-signal").await;
    wait_text(&browser, "#entity-state", "107").await;
    fill(&browser, "#op-name", "withdraw").await;
    fill(&browser, "#op-input", "100000").await;
    click(&browser, "#op-call").await;
    wait_text(&browser, "#op-result", "insufficient funds").await;
    let class = browser
        .find(Locator::Css("#op-result"))
        .await
        .unwrap()
        .attr("class")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        class.contains("error"),
        "the error is shown as one: {class}"
    );
    fill(&browser, "#op-name", "balance").await;
    fill(&browser, "#op-input", "").await;
    click(&browser, "#op-call").await;
    wait_text(&browser, "#op-result", "107").await;
    screenshot(&browser, &shots, "entity").await;

    // A transfer holding its lock, with an operation queued behind it.
    let (status, _) = post(
        "/orchestrations/held_transfer?id=held-1".into(),
        r#"{"from":"alice","to":"bob","amount":5}"#.into(),
    )
    .await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let locks: Value = http
            .get(format!("{base}/locks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if locks.as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transfer never locked: {locks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post("/entities/account/bob/deposit/send".into(), "1".into()).await;
    assert_eq!(status, 202);
    browser.goto(&format!("{base}/ui#/locks")).await.unwrap();
    wait_text(&browser, "#page-locks", "held-1").await;
    wait_text(&browser, "#page-locks", "bob").await;
    wait_text(&browser, "#page-locks", "deposit").await;
    let held = browser
        .find_all(Locator::Css("#page-locks .lock"))
        .await
        .unwrap();
    assert_eq!(held.len(), 2, "both accounts of the section are shown");
    screenshot(&browser, &shots, "locks").await;

    // The instance: its history, then terminated from its page.
    browser
        .goto(&format!("{base}/ui#/orchestration/held-1"))
        .await
        .unwrap();
    wait_text(&browser, "#page-orchestration", "Running").await;
    wait_text(&browser, "#history", "Lock").await;
    fill(&browser, "#terminate-reason", "stopped by an operator").await;
    click(&browser, "#orch-terminate").await;
    if browser.get_alert_text().await.is_ok() {
        browser.accept_alert().await.unwrap();
    }
    wait_text(&browser, "#page-orchestration", "Terminated").await;
    let status: Value = http
        .get(format!("{base}/orchestrations/held-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "Terminated", "{status}");
    screenshot(&browser, &shots, "orchestration").await;

    browser.goto(&format!("{base}/ui#/locks")).await.unwrap();
    eventually(&browser, "the locks released", || async {
        browser
            .find_all(Locator::Css("#page-locks .lock"))
            .await
            .map(|l| l.len())
            .unwrap_or(9)
            == 0
            && text_of(&browser, "#page-locks")
                .await
                .contains("no critical section")
    })
    .await;
    browser
        .goto(&format!("{base}/ui#/orchestrations"))
        .await
        .unwrap();
    wait_text(&browser, "#page-orchestrations", "held-1").await;
    screenshot(&browser, &shots, "orchestrations").await;

    // The held instance: counted on the overview, listed by the "held" filter (and only it),
    // its reason on its page.
    browser.goto(&format!("{base}/ui")).await.unwrap();
    eventually(&browser, "the held count", || async {
        browser
            .execute(
                "return [...document.querySelectorAll('#page-overview li')]\
                 .some(li => li.textContent.replace(/\\s+/g, ' ').trim() === 'Held1' \
                   || li.textContent.replace(/\\s+/g, ' ').trim() === 'Held 1')",
                vec![],
            )
            .await
            .is_ok_and(|v| v == json!(true))
    })
    .await;
    browser
        .goto(&format!("{base}/ui#/orchestrations?status=held"))
        .await
        .unwrap();
    wait_text(&browser, "#page-orchestrations", HELD_ID).await;
    let listed = text_of(&browser, "#page-orchestrations").await;
    assert!(!listed.contains("held-1"), "{listed}");
    assert!(listed.contains("Held"), "{listed}");
    browser
        .goto(&format!("{base}/ui#/orchestration/{HELD_ID}"))
        .await
        .unwrap();
    wait_text(&browser, "#held-reason", "no longer schedules").await;
    screenshot(&browser, &shots, "held").await;

    // The runtime goes away: the page says so.
    server.kill().await.unwrap();
    eventually(&browser, "the unreachable banner", || async {
        match browser.find(Locator::Css("#unreachable")).await {
            Ok(banner) => banner.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    screenshot(&browser, &shots, "unreachable").await;
    browser.close().await.unwrap();
    eprintln!("dashboard screenshots in {}", shots.display());
}
