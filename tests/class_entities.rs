//! Class-based entities (`#[entity]`): every accepted form runs through the runtime with real
//! inputs and results.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use entities::prelude::*;
use entities::Error;
use serde::{Deserialize, Serialize};

use entities_test_support::Counter;

/// Every accepted form in one entity.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct Account {
    owner: String,
    balance: i64,
    log: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
pub struct Statement {
    owner: String,
    balance: i64,
    entries: usize,
}

#[entity(name = "Bank.Account")]
impl Account {
    /// Several inputs travel as a JSON array.
    pub fn open(&mut self, owner: String, initial: i64) {
        self.owner = owner;
        self.balance = initial;
        self.note("open");
    }

    /// `Result` with an error: the operation fails and its changes roll back.
    pub fn withdraw(&mut self, amount: i64) -> Result<i64, String> {
        self.balance -= amount;
        self.note("withdraw");
        if self.balance < 0 {
            return Err(format!("insufficient funds: {} short", -self.balance));
        }
        Ok(self.balance)
    }

    /// The context at any position; a typed signal to another entity.
    pub fn deposit_and_tip(&mut self, amount: i64, ctx: &mut EntityContext, tip_to: String) {
        self.balance += amount;
        ctx.signal::<Counter>(tip_to).add(1).unwrap();
    }

    /// A read-only operation with a struct result.
    pub fn statement(&self) -> Statement {
        Statement {
            owner: self.owner.clone(),
            balance: self.balance,
            entries: self.log.len(),
        }
    }

    /// `async fn` with a shared context.
    pub async fn slow_balance(&self, ctx: &EntityContext) -> String {
        tokio::time::sleep(Duration::from_millis(5)).await;
        format!("{} has {}", ctx.id(), self.balance)
    }

    /// `Result<(), E>`.
    pub fn check(&self, minimum: i64) -> Result<(), std::fmt::Error> {
        if self.balance >= minimum {
            Ok(())
        } else {
            Err(std::fmt::Error)
        }
    }

    /// A private helper, not an operation.
    fn note(&mut self, what: &str) {
        self.log.push(what.to_string());
    }
}

/// An entity that defines its own `delete`.
#[derive(Default, Serialize, Deserialize)]
pub struct Sticky {
    deletes: u32,
}

#[entity]
impl Sticky {
    pub fn delete(&mut self) -> u32 {
        self.deletes += 1;
        self.deletes
    }
}

/// The function-based monitor of the milestone example.
fn monitor(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let mut alerts: Vec<String> = ctx.state_or_default()?;
    match ctx.operation_name() {
        "alert" => {
            alerts.push(ctx.input()?);
            ctx.set_state(&alerts)
        }
        "poke_counter" => {
            let key: String = ctx.input()?;
            ctx.signal::<Counter>(key).add(10)?;
            Ok(())
        }
        other => Err(OperationError::unknown_operation(other)),
    }
}

/// A class-based entity that signals a function-based one when it crosses 100.
#[derive(Default, Serialize, Deserialize)]
pub struct Milestone {
    value: i64,
}

#[entity]
impl Milestone {
    pub fn add(&mut self, amount: i64, ctx: &EntityContext) -> Result<(), entities::Error> {
        let before = self.value;
        self.value += amount;
        if before < 100 && self.value >= 100 {
            let monitor = EntityId::new("Monitor", ctx.id().key());
            ctx.signal_entity(&monitor, "alert", &format!("crossed 100 at {}", self.value))?;
        }
        Ok(())
    }
}

/// Synchronous and `async` operations on one entity: they must run in the order sent even when
/// they share a batch (the synchronous ones run at once, the `async` ones suspend).
#[derive(Default, Serialize, Deserialize)]
pub struct Journal {
    entries: Vec<u32>,
}

#[entity]
impl Journal {
    pub fn push(&mut self, entry: u32) {
        self.entries.push(entry);
    }
    pub async fn push_later(&mut self, entry: u32) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.entries.push(entry);
    }
    pub fn fail(&mut self, entry: u32) -> Result<(), String> {
        self.entries.push(entry);
        Err(format!("refused {entry}"))
    }
    pub fn entries(&self) -> Vec<u32> {
        self.entries.clone()
    }
    /// Sends `push`/`push_later`/`fail` in one operation, so that the journal receives them
    /// together, in this order.
    pub fn fill(&self, ctx: &EntityContext, journal: String) -> Result<(), Error> {
        let target = ctx.signal::<Journal>(journal);
        target.push(1)?;
        target.push_later(2)?;
        target.fail(99)?;
        target.push(3)?;
        target.push_later(4)?;
        target.push_later(5)?;
        target.push(6)
    }
}

async fn runtime() -> Runtime {
    Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity::<Counter>()
        .entity::<Account>()
        .entity::<Sticky>()
        .entity::<Milestone>()
        .entity::<Journal>()
        .entity_fn("Monitor", monitor)
        .start()
        .await
        .unwrap()
}

async fn eventually<T>(mut f: impl FnMut() -> futures::future::BoxFuture<'static, Option<T>>) -> T {
    for _ in 0..3000 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn the_api_counter_works_as_written() {
    let runtime = runtime().await;
    let client = runtime.client();
    assert_eq!(
        EntityId::new("Counter", "game1"),
        EntityId::of::<Counter>("game1")
    );
    client.signal::<Counter>("k").add(5).await.unwrap();
    client.signal::<Counter>("k").add(6).await.unwrap();
    assert_eq!(client.call::<Counter>("k").get().await.unwrap(), 11);
    let meta = client.get_entity::<Counter>("k").await.unwrap().unwrap();
    assert_eq!(meta.state.value, 11);
    assert_eq!(meta.id, EntityId::of::<Counter>("k"));
    client.call::<Counter>("k").reset().await.unwrap();
    assert_eq!(client.call::<Counter>("k").get().await.unwrap(), 0);
    assert!(client
        .get_entity::<Counter>("other")
        .await
        .unwrap()
        .is_none());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn several_inputs_results_and_rollback() {
    let runtime = runtime().await;
    let client = runtime.client();
    let acct = client.call::<Account>("a1");
    acct.open("ada".to_string(), 100).await.unwrap();
    assert_eq!(acct.withdraw(30).await.unwrap(), 70);
    let err = acct.withdraw(500).await.unwrap_err();
    match err {
        Error::Operation(e) => assert_eq!(e.message(), "insufficient funds: 430 short"),
        other => panic!("expected an operation error, got {other:?}"),
    }
    let statement = acct.statement().await.unwrap();
    assert_eq!(
        statement,
        Statement {
            owner: "ada".into(),
            balance: 70,
            entries: 2, // open, the successful withdraw; the failed one rolled back
        }
    );
    acct.check(50).await.unwrap();
    assert!(matches!(acct.check(80).await, Err(Error::Operation(_))));
    // The untyped form reaches the same operations; several inputs are a JSON array.
    let id = EntityId::of::<Account>("a1");
    assert_eq!(id.to_string(), "@bank.account@a1");
    let balance: i64 = client.call_entity(&id, "WITHDRAW", &5).await.unwrap();
    assert_eq!(balance, 65, "operation names match case-insensitively");
    client
        .call_entity::<(), _>(&EntityId::of::<Account>("a2"), "open", &("bob", 7))
        .await
        .unwrap();
    let meta = client.get_entity::<Account>("a2").await.unwrap().unwrap();
    assert_eq!((meta.state.owner.as_str(), meta.state.balance), ("bob", 7));
    let err = client
        .call_entity::<(), _>(&id, "open", &"just one")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("takes 2 inputs"), "{err}");
    let err = client
        .call_entity::<(), _>(&id, "open", &(1, 2))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("input 1 of operation `open`"),
        "{err}"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn context_parameters_async_and_typed_signals_between_entities() {
    let runtime = runtime().await;
    let client = runtime.client();
    let acct = client.call::<Account>("a1");
    acct.open("cy".into(), 1).await.unwrap();
    acct.deposit_and_tip(9, "tips".into()).await.unwrap();
    assert_eq!(
        acct.slow_balance().await.unwrap(),
        "@bank.account@a1 has 10"
    );
    let tips = client.call::<Counter>("tips");
    let c = client.clone();
    eventually(|| {
        let c = c.clone();
        Box::pin(async move { (c.call::<Counter>("tips").get().await.unwrap() == 1).then_some(()) })
    })
    .await;
    // A function-based entity signals a class-based one through its typed proxy.
    client
        .signal_entity(&EntityId::new("Monitor", "m"), "poke_counter", &"tips")
        .await
        .unwrap();
    eventually(|| {
        let c = c.clone();
        Box::pin(
            async move { (c.call::<Counter>("tips").get().await.unwrap() == 11).then_some(()) },
        )
    })
    .await;
    assert_eq!(tips.get().await.unwrap(), 11);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn sync_and_async_operations_keep_their_order_in_one_batch() {
    let runtime = runtime().await;
    let client = runtime.client();
    for j in 0..8 {
        client
            .signal::<Journal>("driver")
            .fill(format!("j{j}"))
            .await
            .unwrap();
    }
    let c = client.clone();
    for j in 0..8 {
        let c = c.clone();
        let entries = eventually(move || {
            let c = c.clone();
            Box::pin(async move {
                let e = c.call::<Journal>(format!("j{j}")).entries().await.unwrap();
                (e.len() == 6).then_some(e)
            })
        })
        .await;
        assert_eq!(entries, [1, 2, 3, 4, 5, 6], "journal j{j}");
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn built_in_and_custom_delete() {
    let runtime = runtime().await;
    let client = runtime.client();
    client.signal::<Counter>("d").add(3).await.unwrap();
    client.call::<Counter>("d").delete().await.unwrap();
    assert!(client.get_entity::<Counter>("d").await.unwrap().is_none());
    assert_eq!(client.call::<Counter>("d").get().await.unwrap(), 0);

    assert_eq!(client.call::<Sticky>("s").delete().await.unwrap(), 1);
    assert_eq!(client.call::<Sticky>("s").delete().await.unwrap(), 2);
    assert!(client.get_entity::<Sticky>("s").await.unwrap().is_some());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_milestone_entity_alerts_its_monitor_once() {
    let runtime = runtime().await;
    let client = runtime.client();
    for amount in [40, 50, 30, 20] {
        client.signal::<Milestone>("g").add(amount).await.unwrap();
    }
    let c = client.clone();
    let alerts = eventually(|| {
        let c = c.clone();
        Box::pin(async move {
            c.get_entity_raw(&EntityId::new("Monitor", "g"))
                .await
                .unwrap()
                .map(|m| m.state)
        })
    })
    .await;
    assert_eq!(alerts, serde_json::json!(["crossed 100 at 120"]));
    runtime.shutdown().await.unwrap();
}
