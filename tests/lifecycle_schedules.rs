//! Scheduled signals you can see and cancel, and recurring schedules: fires over restarts and
//! a SIGKILL without duplicates or a burst of missed fires, and cancelling a schedule.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use entities::prelude::*;
use entities::testing::ManualClock;
use entities::{Error, Schedule};
use support::{counter, state_of};

async fn start(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Counter", counter)
        .start()
        .await
        .unwrap()
}

async fn count(client: &Client, id: &EntityId) -> i64 {
    state_of(client, id)
        .await
        .map_or(0, |v| v.as_i64().expect("a number"))
}

/// Waits until the counter reaches `value` (at most 10 s).
async fn wait_for(client: &Client, id: &EntityId, value: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(client, id).await < value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// A runtime on the manual clock `clock`, with a schedule horizon of `horizon`.
async fn start_on(path: &std::path::Path, clock: &ManualClock, horizon: Duration) -> Runtime {
    Runtime::builder()
        .store(SqliteStore::open(path).unwrap())
        .entity_fn("Counter", counter)
        .clock(clock.clone())
        .schedule_horizon(horizon)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_signals_are_listed_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pending.db");
    let clock = ManualClock::new();
    let runtime = start_on(&path, &clock, Duration::from_secs(60)).await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "pending");
    let soon = clock.now() + Duration::from_secs(10);
    let later = clock.now() + HOUR;
    client.signal_entity_at(&id, "add", &1, soon).await.unwrap();
    client
        .signal_entity_at(&id, "add", &10, later)
        .await
        .unwrap();
    client
        .signal_entity_at(&id, "add", &100, soon)
        .await
        .unwrap();
    client.signal_entity(&id, "add", &1000).await.unwrap(); // not scheduled: not listed

    let pending = client.pending_signals(&id).await.unwrap();
    let inputs: Vec<_> = pending.iter().map(|p| p.input.clone().unwrap()).collect();
    assert_eq!(inputs, [1, 100, 10].map(serde_json::Value::from));
    assert!(pending.iter().all(|p| p.operation == "add"));
    assert!(pending[0].due <= pending[2].due);

    // One held in memory (due soon), one only in the store (due in an hour).
    assert!(client.cancel_signal(&id, pending[1].id).await.unwrap());
    assert!(client.cancel_signal(&id, pending[2].id).await.unwrap());
    assert!(!client.cancel_signal(&id, pending[2].id).await.unwrap());
    let left = client.pending_signals(&id).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, pending[0].id);

    clock.advance(2 * HOUR).await;
    assert_eq!(count(&client, &id).await, 1001, "a cancelled signal ran");
    assert!(client.pending_signals(&id).await.unwrap().is_empty());
    // It ran: too late to cancel.
    assert!(!client.cancel_signal(&id, pending[0].id).await.unwrap());
    runtime.shutdown().await.unwrap();

    // The cancelled ones stay cancelled after a restart.
    let runtime = start_on(&path, &clock, Duration::from_secs(60)).await;
    let client = runtime.client();
    assert!(client.pending_signals(&id).await.unwrap().is_empty());
    clock.advance(2 * HOUR).await;
    assert_eq!(count(&client, &id).await, 1001);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_signal_stored_beyond_the_horizon_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let runtime = start_on(
        &dir.path().join("horizon.db"),
        &clock,
        Duration::from_secs(1),
    )
    .await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "far");
    let at = clock.now() + HOUR;
    client.signal_entity_at(&id, "add", &1, at).await.unwrap();
    client.signal_entity_at(&id, "add", &2, at).await.unwrap();
    let pending = client.pending_signals(&id).await.unwrap();
    assert_eq!(pending.len(), 2);
    // Not read in yet (beyond the horizon): the cancellation reaches it when it is paged in.
    assert!(client.cancel_signal(&id, pending[0].id).await.unwrap());
    clock.advance(2 * HOUR).await;
    assert_eq!(count(&client, &id).await, 2, "the cancelled signal ran");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_schedule_fires_until_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let runtime = start_on(
        &dir.path().join("every.db"),
        &clock,
        Duration::from_secs(60),
    )
    .await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "every");
    let schedule = client
        .schedule(&id, "add", &1, Schedule::every(HOUR))
        .await
        .unwrap();
    let listed = client.schedules(&id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, schedule);
    assert_eq!(listed[0].operation, "add");
    assert_eq!(listed[0].schedule, Schedule::every(HOUR));
    assert_eq!(listed[0].next_fire, clock.now() + HOUR);
    // A schedule is no one-off signal.
    assert!(client.pending_signals(&id).await.unwrap().is_empty());

    clock.advance(5 * HOUR).await;
    assert_eq!(count(&client, &id).await, 5, "one fire per hour passed");
    assert!(client.cancel_schedule(&id, schedule).await.unwrap());
    assert!(client.schedules(&id).await.unwrap().is_empty());
    assert!(!client.cancel_schedule(&id, schedule).await.unwrap());
    // None after the cancellation.
    clock.advance(24 * HOUR).await;
    assert_eq!(count(&client, &id).await, 5);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(&dir.path().join("bad.db")).await;
    let client = runtime.client();
    let err = client
        .schedule(
            &EntityId::new("Nobody", "x"),
            "add",
            &1,
            Schedule::every(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownEntity(_)), "{err}");
    let err = Schedule::cron("61 * * * * *").unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule(_)), "{err}");
    let cron = Schedule::cron("0 0 9 * * *").unwrap();
    let id = EntityId::new("Counter", "cron");
    let schedule = client.schedule(&id, "add", &1, cron).await.unwrap();
    let listed = client.schedules(&id).await.unwrap();
    let next = listed[0]
        .next_fire
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(next <= Duration::from_secs(24 * 3600), "{next:?}");
    assert!(client.cancel_schedule(&id, schedule).await.unwrap());
    runtime.shutdown().await.unwrap();
}

/// Fires missed while no runtime ran come due once at the next start, not once per period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_fires_are_delivered_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missed.db");
    let id = EntityId::new("Counter", "missed");
    let period = Duration::from_millis(600);
    let runtime = start(&path).await;
    let client = runtime.client();
    client
        .schedule(&id, "add", &1, Schedule::every(period))
        .await
        .unwrap();
    tokio::time::sleep(period * 2 + period / 2).await;
    let before = count(&client, &id).await;
    assert!(before >= 1, "no fire before the shutdown");
    runtime.shutdown().await.unwrap();

    tokio::time::sleep(period * 6).await; // about six periods without a runtime
    let runtime = start(&path).await;
    let client = runtime.client();
    wait_for(&client, &id, before + 1).await;
    // The next fire is a period after this one: a burst of missed fires would show now.
    tokio::time::sleep(period / 3).await;
    assert_eq!(
        count(&client, &id).await,
        before + 1,
        "the fires missed while stopped come out as exactly one"
    );
    tokio::time::sleep(period * 2 + period / 4).await;
    let after = count(&client, &id).await;
    assert!(
        (before + 2..=before + 4).contains(&after),
        "the schedule goes on at its period: {before} then {after}"
    );
    runtime.shutdown().await.unwrap();
}

const CHILD_ENV: &str = "ENTITIES_SCHEDULE_CHILD_DB";

/// The child side of `schedule_survives_sigkill`: starts a schedule and runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by schedule_survives_sigkill"]
async fn schedule_child() {
    let path = std::env::var(CHILD_ENV).expect("the parent sets the database path");
    let runtime = start(std::path::Path::new(&path)).await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "killed");
    if client.schedules(&id).await.unwrap().is_empty() {
        client
            .schedule(&id, "add", &1, Schedule::every(Duration::from_millis(20)))
            .await
            .unwrap();
    }
    println!("scheduled");
    std::future::pending::<()>().await;
}

/// A process killed while its schedule fires: after a restart the schedule goes on, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_survives_sigkill() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "schedule_child",
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
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().ends_with("scheduled")));
    std::thread::sleep(Duration::from_millis(500)); // about 25 fires
    child.kill().unwrap();
    child.wait().unwrap();

    let runtime = start(&path).await;
    let client = runtime.client();
    let id = EntityId::new("Counter", "killed");
    let listed = client.schedules(&id).await.unwrap();
    assert_eq!(listed.len(), 1, "exactly one next fire is stored");
    let before = count(&client, &id).await;
    assert!(
        before >= 5,
        "the child's schedule fired only {before} times"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&client, &id).await < before + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fires after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.cancel_schedule(&id, listed[0].id).await.unwrap());
    assert!(client.schedules(&id).await.unwrap().is_empty());
    runtime.shutdown().await.unwrap();
}
