//! The lifecycle example of the API contract (shared/API.md section 9), as written there,
//! compiled and run: services, expiry, schedules, scheduled signals, idempotent sends and
//! state versions.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use entities::prelude::*;
use entities::Schedule;
use serde::{Deserialize, Serialize};

/// Mails sent by every `Mailer` of this test.
static SENT: AtomicUsize = AtomicUsize::new(0);

/// A service: counts the mails it was asked to send.
#[derive(Default)]
pub struct Mailer;

impl Mailer {
    pub fn new() -> Self {
        Self
    }
    pub fn send(&self, _to: &str) {
        SENT.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Item {
    name: String,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Cart {
    items: Vec<Item>,
}

#[entity(version = 2, migrate = Self::migrate)]
impl Cart {
    /// Version 1 stored the items as a list of names.
    fn migrate(from_version: u32, old: serde_json::Value) -> Result<Self, String> {
        match from_version {
            1 => {
                let names: Vec<String> =
                    serde_json::from_value(old["items"].clone()).map_err(|e| e.to_string())?;
                Ok(Cart {
                    items: names.into_iter().map(|name| Item { name }).collect(),
                })
            }
            other => Err(format!("no migration from version {other}")),
        }
    }
    pub fn add(&mut self, name: String) {
        self.items.push(Item { name });
    }
    pub fn remind(&mut self) {}
    pub fn checkout(&mut self, ctx: &EntityContext) -> Result<(), String> {
        ctx.service::<Mailer>()
            .map_err(|e| e.to_string())?
            .send("alice");
        self.items.clear();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_9_lifecycle() -> Result<(), entities::Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let runtime = Runtime::builder()
        .store(SqliteStore::open(&path)?)
        .service(Mailer::new()) // ctx.service::<Mailer>()
        .entity::<Cart>()
        .entity_ttl("Cart", Duration::from_secs(30 * 24 * 3600)) // idle carts expire
        .start()
        .await?;
    let client = runtime.client();
    let cart = EntityId::of::<Cart>("alice");
    let every = client
        .schedule(
            &cart,
            "remind",
            &(),
            Schedule::every(Duration::from_secs(3600)),
        )
        .await?;
    let cron = client
        .schedule(&cart, "remind", &(), Schedule::cron("0 0 9 * * *")?)
        .await?;
    assert!(client.cancel_schedule(&cart, every).await?);
    assert_eq!(client.schedules(&cart).await?[0].id, cron);
    let waiting = client.pending_signals(&cart).await?; // scheduled one-off signals
    assert!(waiting.is_empty());
    client.signal::<Cart>("alice").add("book".into()).await?;
    client
        .idempotent("order-7")
        .signal::<Cart>("alice")
        .checkout()
        .await?; // applied once per key
    client
        .idempotent("order-7")
        .signal::<Cart>("alice")
        .checkout()
        .await?;
    client.call::<Cart>("alice").remind().await?;
    assert_eq!(SENT.load(Ordering::SeqCst), 1);
    runtime.shutdown().await
}
