//! Idempotent sends: a signal, call or start retried with the same key is applied once within
//! the retention window, also when the sending process was killed after the send was stored
//! but before it heard back.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use entities::prelude::*;
use entities::Error;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Cart {
    items: Vec<String>,
    checkouts: u32,
}

#[entity]
impl Cart {
    pub fn add(&mut self, item: String) -> usize {
        self.items.push(item);
        self.items.len()
    }
    pub fn checkout(&mut self) -> Result<u32, String> {
        if self.items.is_empty() {
            return Err("the cart is empty".into());
        }
        self.checkouts += 1;
        Ok(self.checkouts)
    }
    pub fn checkouts(&self) -> u32 {
        self.checkouts
    }
}

async fn wait(ctx: OrchestrationContext, _: ()) -> Result<(), Error> {
    ctx.wait_for_event::<()>("never").await
}

fn builder(path: &std::path::Path) -> entities::RuntimeBuilder {
    Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity::<Cart>()
        .orchestration("wait", wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_signals_and_calls_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(&dir.path().join("once.db")).start().await.unwrap();
    let client = runtime.client();
    for _ in 0..3 {
        client
            .idempotent("add-apple")
            .signal::<Cart>("alice")
            .add("apple".into())
            .await
            .unwrap();
    }
    client
        .idempotent("add-pear")
        .signal::<Cart>("alice")
        .add("pear".into())
        .await
        .unwrap();
    assert_eq!(
        client
            .call::<Cart>("alice")
            .add("plum".into())
            .await
            .unwrap(),
        3
    );

    // A call retried returns the first call's result, and is not applied again.
    let checkout = client.idempotent("order-7");
    assert_eq!(checkout.call::<Cart>("alice").checkout().await.unwrap(), 1);
    assert_eq!(checkout.call::<Cart>("alice").checkout().await.unwrap(), 1);
    client
        .idempotent("order-7")
        .signal::<Cart>("alice")
        .checkout()
        .await
        .unwrap_err();
    assert_eq!(client.call::<Cart>("alice").checkouts().await.unwrap(), 1);
    // The untyped forms.
    let id = EntityId::of::<Cart>("alice");
    let again = client.idempotent("order-8");
    let first: u32 = again.call_entity(&id, "checkout", &()).await.unwrap();
    let second: u32 = again.call_entity(&id, "checkout", &()).await.unwrap();
    assert_eq!((first, second), (2, 2));
    let raw = client.idempotent("order-9");
    raw.signal_entity_raw(&id, "checkout", None).await.unwrap();
    raw.signal_entity(&id, "checkout", &()).await.unwrap();
    assert_eq!(client.call::<Cart>("alice").checkouts().await.unwrap(), 3);

    // An operation's error is the retained answer too.
    let empty = client.idempotent("empty-checkout");
    for _ in 0..2 {
        let err = empty.call::<Cart>("bob").checkout().await.unwrap_err();
        assert!(err.to_string().contains("the cart is empty"), "{err}");
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_of_one_key_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(&dir.path().join("concurrent.db"))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    client
        .signal::<Cart>("carol")
        .add("x".into())
        .await
        .unwrap();
    let calls = (0..16).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .idempotent("carol-checkout")
                .call::<Cart>("carol")
                .checkout()
                .await
                .unwrap()
        })
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), 1);
    }
    assert_eq!(client.call::<Cart>("carol").checkouts().await.unwrap(), 1);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_start_returns_the_first_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("start.db");
    let runtime = builder(&path).start().await.unwrap();
    let client = runtime.client();
    let first = client
        .idempotent("start-1")
        .start_orchestration("wait", &())
        .await
        .unwrap();
    let second = client
        .idempotent("start-1")
        .start_orchestration("wait", &())
        .await
        .unwrap();
    assert_eq!(first, second);
    let chosen = client
        .idempotent("start-2")
        .start_orchestration_with_id("wait", "chosen", &())
        .await
        .unwrap();
    assert_eq!(chosen, "chosen");
    runtime.shutdown().await.unwrap();

    // Keys survive a restart.
    let runtime = builder(&path).start().await.unwrap();
    let client = runtime.client();
    let third = client
        .idempotent("start-1")
        .start_orchestration("wait", &())
        .await
        .unwrap();
    assert_eq!(third, first);
    let page = client
        .query_orchestrations(entities::OrchestrationQuery::default())
        .await
        .unwrap();
    assert_eq!(page.instances.len(), 2, "one instance per key");
    // A key belongs to one request: another kind of send, or another input, is refused.
    let err = client
        .idempotent("start-1")
        .signal::<Cart>("dave")
        .add("y".into())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyMismatch { .. }), "{err}");
    let err = client
        .idempotent("start-1")
        .start_orchestration("wait", &5)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyMismatch { .. }), "{err}");
    let err = client
        .idempotent("k".repeat(256))
        .signal::<Cart>("dave")
        .add("y".into())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyKey { .. }), "{err}");
    let err = client
        .idempotent("")
        .signal::<Cart>("dave")
        .add("y".into())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyKey { .. }), "{err}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_bind_only_within_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(&dir.path().join("retention.db"))
        .idempotency_retention(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let send = || {
        client
            .idempotent("k")
            .signal::<Cart>("erin")
            .add("z".into())
    };
    send().await.unwrap();
    send().await.unwrap();
    assert_eq!(
        client.call::<Cart>("erin").add("-".into()).await.unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send().await.unwrap();
    assert_eq!(
        client.call::<Cart>("erin").add("-".into()).await.unwrap(),
        4
    );
    runtime.shutdown().await.unwrap();
}

const CHILD_ENV: &str = "ENTITIES_IDEMPOTENT_CHILD_DB";

/// The child side of `killed_sender_retries_apply_once`: keyed signals and calls in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by killed_sender_retries_apply_once"]
async fn idempotent_child() {
    let path = std::env::var(CHILD_ENV).expect("the parent sets the database path");
    let runtime = builder(std::path::Path::new(&path)).start().await.unwrap();
    let client = runtime.client();
    let signals = {
        let client = client.clone();
        tokio::spawn(async move {
            for seq in 0u64.. {
                client
                    .idempotent(format!("signal-{seq}"))
                    .signal::<Cart>("signalled")
                    .add(seq.to_string())
                    .await
                    .unwrap();
                println!("signal {seq}");
            }
        })
    };
    let calls = tokio::spawn(async move {
        for seq in 0u64.. {
            let len = client
                .idempotent(format!("call-{seq}"))
                .call::<Cart>("called")
                .add(seq.to_string())
                .await
                .unwrap();
            println!("call {seq} {len}");
        }
    });
    let _ = futures::future::join(signals, calls).await;
}

/// A sender killed mid-stream retries every send after the restart with the same keys:
/// the acknowledged ones and the one in flight are each applied exactly once, and retried
/// calls answer what the first call answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sender_retries_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "idempotent_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut signalled: Option<u64> = None;
    let mut answers: BTreeMap<u64, usize> = BTreeMap::new();
    let mut lines = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let line = line.rsplit("... ").next().unwrap_or_default().to_string();
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["signal", seq] => signalled = Some(seq.parse().unwrap()),
            ["call", seq, len] => {
                answers.insert(seq.parse().unwrap(), len.parse().unwrap());
            }
            _ => continue,
        }
        lines += 1;
        if lines == 600 {
            child.kill().unwrap(); // SIGKILL, with sends in flight
        }
    }
    child.wait().unwrap();
    let signalled = signalled.expect("the child signalled");
    let called = *answers.keys().last().expect("the child called");
    println!("killed after {signalled} signals and {called} calls acknowledged");

    let runtime = builder(&path).start().await.unwrap();
    let client = runtime.client();
    // Retry everything acknowledged, and the send that was in flight on each stream.
    for seq in 0..=signalled + 1 {
        client
            .idempotent(format!("signal-{seq}"))
            .signal::<Cart>("signalled")
            .add(seq.to_string())
            .await
            .unwrap();
    }
    for seq in 0..=called + 1 {
        let len = client
            .idempotent(format!("call-{seq}"))
            .call::<Cart>("called")
            .add(seq.to_string())
            .await
            .unwrap();
        if let Some(first) = answers.get(&seq) {
            assert_eq!(
                len, *first,
                "call {seq}: the retry answers what the first call did"
            );
        }
        assert_eq!(len as u64, seq + 1, "call {seq} applied once, in order");
    }
    // Each key applied exactly once, in order.
    let signalled_len = client
        .call::<Cart>("signalled")
        .add("end".into())
        .await
        .unwrap();
    assert_eq!(signalled_len as u64, signalled + 3);
    let called_len = client
        .call::<Cart>("called")
        .add("end".into())
        .await
        .unwrap();
    assert_eq!(called_len as u64, called + 3);
    runtime.shutdown().await.unwrap();
}

/// A key is bound to its request: reused for another entity, operation or input it is refused
/// with `IdempotencyMismatch` and nothing is sent; the same request again is a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(&dir.path().join("bound.db")).start().await.unwrap();
    let client = runtime.client();
    let same = client.idempotent("same");
    let first = same.call::<Cart>("x1").add("apple".into()).await.unwrap();
    assert_eq!(first, 1);
    let refused = [
        same.call::<Cart>("x2").add("apple".into()).await,
        same.call::<Cart>("x1").add("pear".into()).await,
    ];
    for err in refused {
        let err = err.unwrap_err();
        assert!(matches!(err, Error::IdempotencyMismatch { .. }), "{err}");
    }
    let err = same.call::<Cart>("x1").checkout().await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyMismatch { .. }), "{err}");
    // The retry of the first request still answers its result.
    assert_eq!(
        same.call::<Cart>("x1").add("apple".into()).await.unwrap(),
        1
    );
    assert_eq!(
        client.call::<Cart>("x2").add("plum".into()).await.unwrap(),
        1,
        "x2 was written"
    );
    assert_eq!(client.call::<Cart>("x1").checkouts().await.unwrap(), 0);
    runtime.shutdown().await.unwrap();
}
