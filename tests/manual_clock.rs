//! The manual clock: a month of timers, schedules, scheduled signals and expiries in
//! milliseconds, in time order, on the memory and SQLite stores.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::{Duration, Instant, SystemTime};

use entities::prelude::*;
use entities::testing::ManualClock;
use entities_test_support::Counter;
use serde::{Deserialize, Serialize};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A cart that expires after a week of silence.
#[derive(Default, Serialize, Deserialize)]
pub struct Cart {
    items: u32,
}

#[entity]
impl Cart {
    pub fn add(&mut self) {
        self.items += 1;
    }
    pub fn items(&self) -> u32 {
        self.items
    }
}

/// Records what it is told, in order.
#[derive(Default, Serialize, Deserialize)]
pub struct Log {
    seen: Vec<String>,
}

#[entity]
impl Log {
    pub fn record(&mut self, what: String) {
        self.seen.push(what);
    }
    pub fn seen(&self) -> Vec<String> {
        self.seen.clone()
    }
}

/// Passes what it is told on to the log, tagged with its own key.
#[derive(Default, Serialize, Deserialize)]
pub struct Relay;

#[entity]
impl Relay {
    pub fn pass(&mut self, ctx: &EntityContext, what: String) -> Result<(), String> {
        let tagged = format!("{} {what}", ctx.id().key());
        ctx.signal::<Log>("log")
            .record(tagged)
            .map_err(|e| e.to_string())
    }
}

/// Waits 30 days, signals a counter, and answers the time it woke at.
async fn reminder(ctx: OrchestrationContext, key: String) -> Result<SystemTime, entities::Error> {
    ctx.timer(30 * DAY).await;
    ctx.signal::<Counter>(key).add(1)?;
    Ok(ctx.current_time())
}

/// Naps in real time (an activity doing real I/O), then waits a virtual day.
async fn nap_then_wait(ctx: OrchestrationContext, key: String) -> Result<(), entities::Error> {
    ctx.call_activity::<()>("nap", &30u64).await?;
    ctx.timer(DAY).await;
    ctx.signal::<Counter>(key).add(1)?;
    Ok(())
}

async fn nap(ms: u64) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(())
}

fn builder(clock: &ManualClock) -> entities::RuntimeBuilder {
    Runtime::builder()
        .clock(clock.clone())
        .entity::<Cart>()
        .entity::<Counter>()
        .entity::<Log>()
        .entity::<Relay>()
        .entity_ttl("Cart", 7 * DAY)
        .orchestration("reminder", reminder)
        .orchestration("nap_then_wait", nap_then_wait)
        .activity("nap", nap)
}

/// A runtime of [`builder`] on the memory store.
async fn on_memory(clock: &ManualClock) -> Runtime {
    builder(clock)
        .store(MemoryStore::new())
        .start()
        .await
        .unwrap()
}

async fn value(client: &Client, key: &str) -> i64 {
    client.call::<Counter>(key).get().await.unwrap()
}

/// The example of API.md section 13: 30.5 virtual days.
async fn a_month(runtime: Runtime, clock: &ManualClock) {
    let client = runtime.client();
    let start = clock.now();
    client
        .schedule(
            &EntityId::of::<Counter>("daily"),
            "add",
            &1,
            Schedule::every(DAY),
        )
        .await
        .unwrap();
    client
        .signal_entity_at(
            &EntityId::of::<Counter>("once"),
            "add",
            &5,
            start + 10 * DAY,
        )
        .await
        .unwrap();
    client.signal::<Cart>("c1").add().await.unwrap();
    let id = client
        .start_orchestration("reminder", &"reminded")
        .await
        .unwrap();
    let real = Instant::now();

    // Day 6 and some: six daily fires; the cart is still there, written at the clock's time.
    clock.advance(6 * DAY + Duration::from_secs(3600)).await;
    assert_eq!(value(&client, "daily").await, 6);
    assert_eq!(value(&client, "once").await, 0);
    let meta = client.get_entity::<Cart>("c1").await.unwrap().unwrap();
    assert_eq!(meta.last_modified, round(start));
    assert_eq!(meta.state.items, 1);
    // It expires 7 idle days after its last operation, to the second.
    clock.set(start + 7 * DAY - Duration::from_secs(1)).await;
    assert!(client.get_entity::<Cart>("c1").await.unwrap().is_some());
    clock.set(start + 7 * DAY + Duration::from_secs(1)).await;
    assert!(client.get_entity::<Cart>("c1").await.unwrap().is_none());

    clock.set(start + 30 * DAY + DAY / 2).await;
    let elapsed = real.elapsed();
    assert_eq!(clock.now(), start + 30 * DAY + DAY / 2);
    assert_eq!(value(&client, "daily").await, 30, "one fire per day passed");
    assert_eq!(value(&client, "once").await, 5);
    assert_eq!(value(&client, "reminded").await, 1);
    let done = client.orchestration_status(&id).await.unwrap().unwrap();
    let woke: SystemTime = done.output().unwrap();
    assert!(woke >= start + 30 * DAY && woke < start + 30 * DAY + Duration::from_secs(1));
    assert_eq!(done.updated, round(woke));
    let next = client
        .schedules(&EntityId::of::<Counter>("daily"))
        .await
        .unwrap()[0]
        .next_fire;
    assert!(next > clock.now() && next <= clock.now() + DAY);
    println!("30.5 virtual days took {elapsed:?} of real time");
    runtime.shutdown().await.unwrap();
}

fn round(t: SystemTime) -> SystemTime {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[tokio::test]
async fn a_month_on_the_memory_store() {
    let clock = ManualClock::new();
    let runtime = on_memory(&clock).await;
    a_month(runtime, &clock).await;
}

#[tokio::test]
async fn a_month_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let runtime = builder(&clock)
        .store(SqliteStore::open(dir.path().join("month.db")).unwrap())
        .start()
        .await
        .unwrap();
    a_month(runtime, &clock).await;
}

#[tokio::test]
async fn fires_run_in_time_order_across_entities() {
    let clock = ManualClock::new();
    let runtime = on_memory(&clock).await;
    let client = runtime.client();
    let start = clock.now();
    // Signals sent out of order, each due at its own hour, and a schedule between them.
    for hour in [5u64, 1, 4, 2, 3] {
        client
            .signal_entity_at(
                &EntityId::of::<Log>("log"),
                "record",
                &format!("hour {hour}"),
                start + Duration::from_secs(hour * 3600),
            )
            .await
            .unwrap();
    }
    client
        .schedule(
            &EntityId::of::<Log>("log"),
            "record",
            &"every 90 min",
            Schedule::every(Duration::from_secs(90 * 60)),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5 * 3600)).await;
    let seen = client.call::<Log>("log").seen().await.unwrap();
    assert_eq!(
        seen,
        [
            "hour 1",
            "every 90 min",
            "hour 2",
            // Due at the same time: the one sent first runs first.
            "hour 3",
            "every 90 min",
            "hour 4",
            "every 90 min",
            "hour 5",
        ]
    );
    // Across entities: each relay runs at its time and tells the log, which runs before the
    // next time comes.
    let later = clock.now();
    for (key, minute) in [("c", 30u64), ("a", 10), ("b", 20), ("d", 40)] {
        client
            .signal_entity_at(
                &EntityId::of::<Relay>(key),
                "pass",
                &format!("at {minute}"),
                later + Duration::from_secs(minute * 60),
            )
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(3600)).await;
    let relayed: Vec<String> = client
        .call::<Log>("log")
        .seen()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.contains(" at "))
        .collect();
    assert_eq!(relayed, ["a at 10", "b at 20", "c at 30", "d at 40"]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advance_while_sends_arrive_loses_nothing() {
    let clock = ManualClock::new();
    let runtime = on_memory(&clock).await;
    let client = runtime.client();
    client
        .schedule(
            &EntityId::of::<Counter>("ticks"),
            "add",
            &1,
            Schedule::every(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                client.signal::<Counter>("sent").add(1).await.unwrap();
            }
        })
    };
    for _ in 0..10 {
        clock.advance(Duration::from_secs(6 * 60)).await;
    }
    sender.await.unwrap();
    clock.advance(Duration::ZERO).await;
    assert_eq!(value(&client, "sent").await, 2000);
    assert_eq!(value(&client, "ticks").await, 60);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cron_schedule_across_a_virtual_month() {
    // 2027-01-01T00:00:00Z
    let new_year = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
    let clock = ManualClock::at(new_year);
    let runtime = on_memory(&clock).await;
    let client = runtime.client();
    let noon = EntityId::of::<Counter>("noon");
    client
        .schedule(&noon, "add", &1, Schedule::cron("0 0 12 * * *").unwrap())
        .await
        .unwrap();
    clock.advance(31 * DAY).await;
    assert_eq!(
        value(&client, "noon").await,
        31,
        "one fire per day of January"
    );
    let next = client.schedules(&noon).await.unwrap()[0].next_fire;
    assert_eq!(next, new_year + 31 * DAY + DAY / 2, "February 1st, noon");
    // Setting the clock forward works like advancing it.
    clock.set(new_year + 33 * DAY).await;
    assert_eq!(value(&client, "noon").await, 33);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn idempotency_keys_bind_for_their_retention_in_clock_time() {
    let clock = ManualClock::new();
    let runtime = builder(&clock)
        .store(MemoryStore::new())
        .idempotency_retention(DAY)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let keyed = client.idempotent("deposit-1");
    keyed.signal::<Counter>("k").add(1).await.unwrap();
    keyed.signal::<Counter>("k").add(1).await.unwrap();
    assert_eq!(value(&client, "k").await, 1);
    clock.advance(DAY + Duration::from_secs(1)).await;
    keyed.signal::<Counter>("k").add(1).await.unwrap();
    assert_eq!(
        value(&client, "k").await,
        2,
        "the key no longer binds a day later"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn activities_doing_real_io_are_awaited() {
    let clock = ManualClock::new();
    let runtime = on_memory(&clock).await;
    let client = runtime.client();
    let id = client
        .start_orchestration("nap_then_wait", &"napped")
        .await
        .unwrap();
    // The activity takes real time; the day's timer after it fires within the same advance.
    clock.advance(2 * DAY).await;
    assert_eq!(value(&client, "napped").await, 1);
    let done = client.orchestration_status(&id).await.unwrap().unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed);
    runtime.shutdown().await.unwrap();
}
