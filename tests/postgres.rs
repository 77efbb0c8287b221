//! The runtime on PostgreSQL, in one test process: each runtime has its own store connection,
//! so two runtimes here are two processes to the database (two nodes, sharing partitions).

mod support;

use std::time::Duration;

use entities::prelude::*;
use entities_postgres::test_server::TestServer;
use entities_postgres::{PostgresOptions, PostgresStore};
use support::{counter, state_of};

fn options() -> PostgresOptions {
    PostgresOptions {
        partitions: 8,
        lease: Duration::from_millis(1500),
        ..Default::default()
    }
}

async fn runtime(url: &str) -> Runtime {
    runtime_on(PostgresStore::connect_with(url, options()).await.unwrap()).await
}

/// A runtime of the counter on `store`.
async fn runtime_on(store: PostgresStore) -> Runtime {
    Runtime::builder()
        .store(store)
        .entity_fn("Counter", counter)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_and_calls_on_postgres() {
    let Some(server) = TestServer::start_or_skip("signals_and_calls_on_postgres") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let rt = runtime(&url).await;
    let client = rt.client();
    for key in 0..20 {
        let id = EntityId::new("Counter", format!("k{key}"));
        client.signal_entity(&id, "add", &key).await.unwrap();
        client.signal_entity(&id, "add", &1).await.unwrap();
    }
    for key in 0..20 {
        let id = EntityId::new("Counter", format!("k{key}"));
        let value: i64 = client.call_entity(&id, "get", &()).await.unwrap();
        assert_eq!(value, key + 1);
        assert_eq!(
            state_of(&client, &id).await,
            Some(serde_json::json!(key + 1))
        );
    }
    rt.shutdown().await.unwrap();
    // A new runtime (a new process to the database) finds the states.
    let rt = runtime(&url).await;
    let id = EntityId::new("Counter", "k7");
    let value: i64 = rt.client().call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(value, 8);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_share_partitions_and_calls_cross() {
    let Some(server) = TestServer::start_or_skip("two_runtimes_share_partitions") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let a = runtime(&url).await;
    let b = runtime(&url).await;
    // Partitions spread: each holds some.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (ca, cb) = (a.client(), b.client());
    loop {
        // Every call from either side is answered, whoever runs the entity.
        for key in 0..16 {
            let id = EntityId::new("Counter", format!("k{key}"));
            ca.signal_entity(&id, "add", &1).await.unwrap();
            cb.signal_entity(&id, "add", &1).await.unwrap();
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tokio::time::Instant::now() + Duration::from_secs(8) > deadline {
            break;
        }
    }
    let mut total_a = 0;
    for key in 0..16 {
        let id = EntityId::new("Counter", format!("k{key}"));
        let from_a: i64 = ca.call_entity(&id, "get", &()).await.unwrap();
        let from_b: i64 = cb.call_entity(&id, "get", &()).await.unwrap();
        assert!(from_b >= from_a);
        total_a += from_a;
    }
    assert!(total_a > 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Schedules, scheduled signals, expiry and idempotent sends on PostgreSQL, with one runtime
/// (so that it runs every partition) and across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgres() {
    let Some(server) = TestServer::start_or_skip("lifecycle_on_postgres") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let start = || async {
        let store = PostgresStore::connect_with(&url, options()).await.unwrap();
        Runtime::builder()
            .store(store)
            .entity_fn("Counter", counter)
            .entity_fn("Idle", counter)
            .entity_ttl("Idle", Duration::from_millis(300))
            .start()
            .await
            .unwrap()
    };
    let rt = start().await;
    let client = rt.client();
    let ticking = EntityId::new("Counter", "ticking");
    let schedule = client
        .schedule(
            &ticking,
            "add",
            &1,
            entities::Schedule::every(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let waiting = EntityId::new("Counter", "waiting");
    client
        .signal_entity_at(&waiting, "add", &1, later)
        .await
        .unwrap();
    let pending = client.pending_signals(&waiting).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(client.cancel_signal(&waiting, pending[0].id).await.unwrap());
    assert!(client.pending_signals(&waiting).await.unwrap().is_empty());

    let keyed = EntityId::new("Counter", "keyed");
    for _ in 0..3 {
        client
            .idempotent("pg-key")
            .signal_entity(&keyed, "add", &5)
            .await
            .unwrap();
    }
    let idle = EntityId::new("Idle", "i");
    client.signal_entity(&idle, "add", &1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    rt.shutdown().await.unwrap();

    let rt = start().await;
    let client = rt.client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state_of(&client, &idle).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle entity did not expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = state_of(&client, &ticking).await.unwrap().as_i64().unwrap();
    while state_of(&client, &ticking).await.unwrap().as_i64().unwrap() < before + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule stopped firing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.cancel_schedule(&ticking, schedule).await.unwrap());
    client
        .idempotent("pg-key")
        .signal_entity(&keyed, "add", &5)
        .await
        .unwrap();
    let value: i64 = client.call_entity(&keyed, "get", &()).await.unwrap();
    assert_eq!(value, 5, "one key, applied once");
    rt.shutdown().await.unwrap();
}

/// Cancels reach the process that runs the entity: a scheduled signal and a recurring
/// schedule cancelled from the other process never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_a_process_that_does_not_run_the_entity() {
    let Some(server) = TestServer::start_or_skip("cancel_from_a_non_owner") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let store_a = PostgresStore::connect_with(&url, options()).await.unwrap();
    let store_b = PostgresStore::connect_with(&url, options()).await.unwrap();
    let a = runtime_on(store_a.clone()).await;
    let b = runtime_on(store_b.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store_a.held_partitions().len() != 4 || store_b.held_partitions().len() != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions never spread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Entities run by `a`, cancelled from `b`'s client.
    let keys: Vec<EntityId> = (0..64)
        .map(|k| EntityId::new("Counter", format!("c{k}")))
        .filter(|id| {
            let part = entities::partition_of(&entities::message::Target::Entity(id.clone()), 8);
            store_a.held_partitions().contains(&part)
        })
        .take(3)
        .collect();
    assert_eq!(keys.len(), 3);
    let (ca, cb) = (a.client(), b.client());
    let due = std::time::SystemTime::now() + Duration::from_secs(2);
    for id in &keys {
        ca.signal_entity_at(id, "add", &100, due).await.unwrap();
        let pending = cb.pending_signals(id).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert!(
            cb.cancel_signal(id, pending[0].id).await.unwrap(),
            "a scheduled signal is cancelled from a process that does not run {id}"
        );
        assert!(!cb.cancel_signal(id, pending[0].id).await.unwrap());
        let schedule = cb
            .schedule(
                id,
                "add",
                &1000,
                Schedule::every(Duration::from_millis(500)),
            )
            .await
            .unwrap();
        assert!(cb.cancel_schedule(id, schedule).await.unwrap());
        assert!(cb.schedules(id).await.unwrap().is_empty());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in &keys {
        let value: i64 = ca.call_entity(id, "get", &()).await.unwrap();
        assert_eq!(value, 0, "{id}: a cancelled signal or schedule ran");
        assert!(cb.pending_signals(id).await.unwrap().is_empty());
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A ticket counter: `next` adds one to the state and returns the new value.
fn tickets(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "next" => {
            ctx.set_state(&(value + 1))?;
            ctx.set_result(&(value + 1))?;
        }
        "get" => ctx.set_result(&value)?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// One idempotency key sent from two processes at the same moment is applied once, and both
/// senders get the first send's outcome: the claim is decided in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_from_two_processes_applies_once() {
    let Some(server) = TestServer::start_or_skip("one_key_from_two_processes") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let start = |url: String| async move {
        Runtime::builder()
            .store(PostgresStore::connect_with(&url, options()).await.unwrap())
            .entity_fn("Tickets", tickets)
            .start()
            .await
            .unwrap()
    };
    let a = start(url.clone()).await;
    let b = start(url.clone()).await;
    let (ca, cb) = (a.client(), b.client());
    let tries = 60;
    for n in 0..tries {
        // Entities of every partition, so both processes run some of them.
        let id = EntityId::new("Tickets", format!("t{}", n % 16));
        let key = format!("call-{n}");
        let (ka, kb) = (ca.idempotent(&key), cb.idempotent(&key));
        let (first, second) = tokio::join!(
            ka.call_entity::<i64, _>(&id, "next", &()),
            kb.call_entity::<i64, _>(&id, "next", &()),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(
            first, second,
            "key {key}: the two calls got different answers"
        );
        let key = format!("signal-{n}");
        let (ka, kb) = (ca.idempotent(&key), cb.idempotent(&key));
        let (first, second) = tokio::join!(
            ka.signal_entity(&id, "next", &()),
            kb.signal_entity(&id, "next", &()),
        );
        first.unwrap();
        second.unwrap();
    }
    // Each try applied its call once and its signal once.
    let mut total = 0;
    for n in 0..16 {
        let id = EntityId::new("Tickets", format!("t{n}"));
        total += ca.call_entity::<i64, _>(&id, "get", &()).await.unwrap();
    }
    assert_eq!(total, 2 * tries as i64, "a key was applied more than once");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// An entity whose operations never return.
struct Hang;

#[async_trait::async_trait]
impl EntityFunction for Hang {
    async fn run(&self, _ctx: &mut EntityContext) -> Result<(), OperationError> {
        std::future::pending().await
    }
}

/// The engine never waits on the database for a poll: while another session holds a row lock
/// on a reply stored for this process (so that the poll taking replies blocks), calls run in
/// this process are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_poll_does_not_stop_the_engine() {
    let Some(server) = TestServer::start_or_skip("a_blocked_poll_does_not_stop_the_engine") else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let rt = Runtime::builder()
        .store(PostgresStore::connect_with(&url, options()).await.unwrap())
        .entity_fn("Counter", counter)
        .entity_fn("Hang", Hang)
        .shutdown_grace(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = rt.client();
    let id = EntityId::new("Counter", "local");
    client.signal_entity(&id, "add", &1).await.unwrap();
    let _: i64 = client.call_entity(&id, "get", &()).await.unwrap();
    // A call that never returns keeps a caller waiting, so every poll takes replies.
    let hanging = client.clone();
    tokio::spawn(async move {
        let _ = hanging
            .call_entity::<(), _>(&EntityId::new("Hang", "h"), "hang", &())
            .await;
    });

    // A reply for a call this process never made, locked by another session: taking the
    // replies stored for this process waits for that lock.
    let (locker, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The poller may take the reply between its insert and its lock: then lock a new one.
    loop {
        locker
            .batch_execute(
                "INSERT INTO entities_replies (waiter, node, reply) \
                 SELECT -1, node, 'null' FROM entities_members",
            )
            .await
            .unwrap();
        locker.batch_execute("BEGIN").await.unwrap();
        let locked = locker
            .query(
                "SELECT * FROM entities_replies WHERE waiter = -1 FOR UPDATE",
                &[],
            )
            .await
            .unwrap();
        if !locked.is_empty() {
            break;
        }
        locker.batch_execute("ROLLBACK").await.unwrap();
    }
    let poll_waits = || async {
        // Not `pg_stat_activity`: inside the locker's open transaction it is a snapshot taken
        // at its first read, which misses the sessions the pool opens later; `pg_locks` is
        // read anew at every query.
        locker
            .query_one(
                "SELECT count(DISTINCT pid) FROM pg_locks \
                 WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // Calls wait for replies, so the poller takes replies, and blocks on the lock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut expected = 1;
    while poll_waits().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll never reached the lock"
        );
        let call = client.call_entity::<i64, _>(&id, "get", &());
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(value) => assert_eq!(value.unwrap(), expected),
            Err(_) => panic!("a call run here waited for a blocked poll"),
        }
        client.signal_entity(&id, "add", &1).await.unwrap();
        expected += 1;
    }
    for n in 0..20 {
        client.signal_entity(&id, "add", &1).await.unwrap();
        let value: i64 =
            tokio::time::timeout(Duration::from_secs(10), client.call_entity(&id, "get", &()))
                .await
                .expect("a call run here waited for a blocked poll")
                .unwrap();
        assert_eq!(value, expected + n + 1);
    }
    assert_eq!(
        poll_waits().await,
        1,
        "the poll stopped waiting on the lock"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_clock_moves_a_runtime_on_postgres() {
    let Some(server) = TestServer::start_or_skip("a_manual_clock_moves_a_runtime_on_postgres")
    else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let day = Duration::from_secs(24 * 3600);
    let clock = entities::testing::ManualClock::new();
    let rt = Runtime::builder()
        .store(PostgresStore::connect_with(&url, options()).await.unwrap())
        .entity_fn("Counter", counter)
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let client = rt.client();
    let start = clock.now();
    let daily = EntityId::new("Counter", "daily");
    let once = EntityId::new("Counter", "once");
    // Both partitions owned before the clock moves.
    for id in [&daily, &once] {
        let _: i64 = client.call_entity(id, "get", &()).await.unwrap();
    }
    client
        .schedule(&daily, "add", &1, Schedule::every(day))
        .await
        .unwrap();
    client
        .signal_entity_at(&once, "add", &5, start + 3 * day)
        .await
        .unwrap();
    clock.advance(10 * day).await;
    assert_eq!(state_of(&client, &daily).await, Some(10.into()));
    assert_eq!(state_of(&client, &once).await, Some(5.into()));
    // Stored at the clock's time: the last fire, on day 10.
    let meta = client.get_entity_raw(&daily).await.unwrap().unwrap();
    assert_eq!(meta.last_modified, start + 10 * day);
    rt.shutdown().await.unwrap();
}
