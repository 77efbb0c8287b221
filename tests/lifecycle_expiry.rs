//! Expiry of idle entities: state deleted after its TTL, durably and across restarts; use, a
//! lock or a waiting message keeps an entity alive (on a manual clock, in virtual days); a
//! signal racing the expiry is never lost (in real time).
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

mod support;

use std::time::Duration;

use entities::prelude::*;
use entities::testing::ManualClock;
use entities::Error;
use support::{counter, state_of};

fn builder(path: &std::path::Path, ttl: Option<Duration>) -> entities::RuntimeBuilder {
    let builder = Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Counter", counter)
        .entity_fn("Other", counter)
        .orchestration("hold", hold);
    match ttl {
        Some(ttl) => builder.entity_ttl("Counter", ttl),
        None => builder,
    }
}

/// Locks a counter and waits for "go" inside the section.
async fn hold(ctx: OrchestrationContext, key: String) -> Result<(), Error> {
    let section = ctx.lock(&[EntityId::new("Counter", key)]).await?;
    let _: () = ctx.wait_for_event("go").await?;
    drop(section);
    Ok(())
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A builder on the manual clock `clock`.
fn on_clock(
    path: &std::path::Path,
    ttl: Option<Duration>,
    clock: &ManualClock,
) -> entities::RuntimeBuilder {
    builder(path, ttl).clock(clock.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entity_expires_and_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let runtime = on_clock(&dir.path().join("ttl.db"), Some(7 * DAY), &clock)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let id = EntityId::new("Counter", "idle");
    let other = EntityId::new("Other", "idle");
    client.signal_entity(&id, "add", &5).await.unwrap();
    client.signal_entity(&other, "add", &5).await.unwrap();
    assert_eq!(
        client.call_entity::<i64, _>(&id, "get", &()).await.unwrap(),
        5
    );
    // Not a second before its TTL, and at once after.
    clock.advance(7 * DAY - Duration::from_secs(1)).await;
    assert_eq!(state_of(&client, &id).await, Some(5.into()));
    clock.advance(Duration::from_secs(1)).await;
    assert_eq!(state_of(&client, &id).await, None);
    // Expired for good, and a new operation starts on a fresh state.
    assert_eq!(
        client.call_entity::<i64, _>(&id, "get", &()).await.unwrap(),
        0
    );
    client.signal_entity(&id, "add", &2).await.unwrap();
    assert_eq!(
        client.call_entity::<i64, _>(&id, "get", &()).await.unwrap(),
        2
    );
    // Names without a TTL keep their state.
    assert_eq!(state_of(&client, &other).await, Some(5.into()));
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.db");
    let clock = ManualClock::new();
    let id = EntityId::new("Counter", "restart");
    let runtime = on_clock(&path, None, &clock).start().await.unwrap();
    let client = runtime.client();
    client.signal_entity(&id, "add", &1).await.unwrap();
    assert_eq!(
        client.call_entity::<i64, _>(&id, "get", &()).await.unwrap(),
        1
    );
    runtime.shutdown().await.unwrap();
    // Idle for longer than the TTL while no runtime ran: it expires at the start.
    clock.advance(8 * DAY).await;
    let runtime = on_clock(&path, Some(7 * DAY), &clock)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    clock.advance(Duration::ZERO).await;
    assert_eq!(state_of(&client, &id).await, None);
    runtime.shutdown().await.unwrap();
    // Deleted durably.
    let runtime = builder(&path, None).start().await.unwrap();
    assert_eq!(state_of(&runtime.client(), &id).await, None);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_keep_an_entity_alive() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let runtime = on_clock(&dir.path().join("alive.db"), Some(7 * DAY), &clock)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let written = EntityId::new("Counter", "written");
    let read = EntityId::new("Counter", "read");
    client.signal_entity(&read, "add", &7).await.unwrap();
    // 75 days of use, far past the TTL, 5 days apart.
    for _ in 0..15 {
        client.signal_entity(&written, "add", &1).await.unwrap();
        // A read-only operation counts as use too.
        assert_eq!(
            client
                .call_entity::<i64, _>(&read, "get", &())
                .await
                .unwrap(),
            7
        );
        clock.advance(5 * DAY).await;
    }
    assert_eq!(
        client
            .call_entity::<i64, _>(&written, "get", &())
            .await
            .unwrap(),
        15
    );
    clock.advance(7 * DAY).await;
    assert_eq!(state_of(&client, &read).await, None);
    assert_eq!(state_of(&client, &written).await, None);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_or_a_waiting_message_keeps_an_entity_alive() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let runtime = on_clock(&dir.path().join("held.db"), Some(DAY), &clock)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let locked = EntityId::new("Counter", "locked");
    let waiting = EntityId::new("Counter", "waiting");
    client.signal_entity(&locked, "add", &1).await.unwrap();
    client.signal_entity(&waiting, "add", &1).await.unwrap();
    let instance = client
        .start_orchestration("hold", &"locked".to_string())
        .await
        .unwrap();
    let in_a_month = clock.now() + 30 * DAY;
    client
        .signal_entity_at(&waiting, "add", &1, in_a_month)
        .await
        .unwrap();
    clock.advance(5 * DAY).await;
    assert_eq!(
        state_of(&client, &locked).await,
        Some(1.into()),
        "expired while locked"
    );
    assert_eq!(
        state_of(&client, &waiting).await,
        Some(1.into()),
        "expired with a message waiting"
    );
    // Released, and with nothing waiting any more, both expire within a day.
    client.raise_event(&instance, "go", &()).await.unwrap();
    let signal = client.pending_signals(&waiting).await.unwrap()[0].id;
    assert!(client.cancel_signal(&waiting, signal).await.unwrap());
    clock.advance(DAY).await;
    assert_eq!(state_of(&client, &locked).await, None);
    assert_eq!(state_of(&client, &waiting).await, None);
    runtime.shutdown().await.unwrap();
}

/// A signal sent just as the entity expires runs either before the expiry (which then keeps
/// the entity) or after it, on a fresh state: it is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_racing_a_signal_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_millis(100);
    let runtime = builder(&dir.path().join("race.db"), Some(ttl))
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let (mut before, mut after) = (0, 0);
    for round in 0..40u64 {
        let id = EntityId::new("Counter", format!("race{round}"));
        client.signal_entity(&id, "add", &1).await.unwrap();
        assert_eq!(
            client.call_entity::<i64, _>(&id, "get", &()).await.unwrap(),
            1
        );
        // Around the moment the sweep finds it idle (it runs every 50 ms).
        tokio::time::sleep(ttl + Duration::from_millis(round * 3 % 60)).await;
        client.signal_entity(&id, "add", &1).await.unwrap();
        match client.call_entity::<i64, _>(&id, "get", &()).await.unwrap() {
            2 => before += 1,
            1 => after += 1,
            other => panic!("round {round}: the racing signal was lost (value {other})"),
        }
    }
    println!("signal kept the entity alive {before} times, ran on a fresh state {after} times");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn ttl_for_an_unknown_name_or_of_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(&dir.path().join("a.db"), None)
        .entity_ttl("Nobody", Duration::from_secs(1))
        .start()
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("nobody")),
        "{err}"
    );
    let err = builder(&dir.path().join("b.db"), Some(Duration::ZERO))
        .start()
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("zero")),
        "{err}"
    );
}
