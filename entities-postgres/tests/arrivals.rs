//! Arrivals are taken by a cursor over the ids of the transactions that stored them: a
//! producer that commits after a later one is still found, a poll cut short by its limit goes
//! on where it stopped, and nothing is returned twice.

mod common;

use common::{add_one, insert_arrival, store_arrivals};
use entities_core::message::{Message, MessageId};
use entities_core::Store;
use entities_postgres::test_server::TestServer;
use entities_postgres::PostgresStore;

async fn take(store: &PostgresStore, limit: usize) -> Vec<MessageId> {
    let all: Vec<u32> = (0..store.partitions()).collect();
    store
        .partitioned()
        .unwrap()
        .arrivals(&all, limit)
        .await
        .expect("arrivals")
        .iter()
        .map(|m| m.id)
        .collect()
}

#[tokio::test]
async fn arrivals_committed_out_of_order_are_all_taken_once() {
    let Some(server) = TestServer::start_or_skip("the PostgreSQL arrivals test") else {
        return;
    };
    let url = server.create_database().await.expect("a new database");
    let store = PostgresStore::connect(&url).await.expect("connecting");
    store.recover(0).await.expect("taking the partitions");
    let base = store.partitioned().unwrap().id_base();

    // A producer whose transaction started first (its id is lower) and commits last, as
    // another process's commit can.
    let (mut admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a plain connection");
    tokio::spawn(connection);
    let slow = admin.transaction().await.unwrap();
    let late = add_one(base + 100, "late");
    insert_arrival(&slow, &late, store.partitions()).await;

    let early = add_one(base, "early");
    store_arrivals(&store, vec![early.clone()]).await;
    assert_eq!(take(&store, 100).await, [early.id]);
    assert_eq!(take(&store, 100).await, Vec::<MessageId>::new());

    slow.commit().await.unwrap();
    assert_eq!(
        take(&store, 100).await,
        [late.id],
        "the arrival committed last is found though a later transaction's was taken first"
    );
    assert_eq!(take(&store, 100).await, Vec::<MessageId>::new());
    Store::shutdown(&store).await;
}

#[tokio::test]
async fn a_poll_cut_short_by_its_limit_goes_on_in_order() {
    let Some(server) = TestServer::start_or_skip("the PostgreSQL arrivals test") else {
        return;
    };
    let url = server.create_database().await.expect("a new database");
    let store = PostgresStore::connect(&url).await.expect("connecting");
    store.recover(0).await.expect("taking the partitions");
    let base = store.partitioned().unwrap().id_base();

    let first: Vec<Message> = (0..5)
        .map(|i| add_one(base + i, &format!("k{i}")))
        .collect();
    let second: Vec<Message> = (5..8)
        .map(|i| add_one(base + i, &format!("k{i}")))
        .collect();
    store_arrivals(&store, first).await;
    store_arrivals(&store, second).await;
    let mut taken = Vec::new();
    for _ in 0..4 {
        let page = take(&store, 2).await;
        assert!(page.len() <= 2, "{page:?}");
        taken.extend(page);
    }
    let want: Vec<MessageId> = (0..8).map(|i| base + i).collect();
    assert_eq!(taken, want, "every arrival once, in the order stored");
    assert_eq!(take(&store, 2).await, Vec::<MessageId>::new());
    Store::shutdown(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_recovered_is_never_an_arrival_again() {
    let Some(server) = TestServer::start_or_skip("the PostgreSQL arrivals test") else {
        return;
    };
    let url = server.create_database().await.expect("a new database");
    let store = PostgresStore::connect(&url).await.expect("connecting");
    store.recover(0).await.expect("taking the partitions");
    let base = store.partitioned().unwrap().id_base();
    let partitions = store.partitions();
    let all: Vec<u32> = (0..partitions).collect();

    // Another process stores arrivals, one per transaction, while this one recovers its
    // partitions again and again and polls between recoveries.
    let (producer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a plain connection");
    tokio::spawn(connection);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let message = add_one(base + 1_000 + n, "k");
                insert_arrival(&producer, &message, partitions).await;
                n += 1;
            }
            n
        })
    };
    let partitioned = store.partitioned().unwrap();
    let mut recovered = std::collections::HashSet::new();
    for _ in 0..200 {
        let recovery = partitioned
            .recover_partitions(&all, (u64::MAX, MessageId::MAX))
            .await
            .expect("recovery");
        recovered.extend(recovery.messages.iter().map(|m| m.id));
        let arrivals = partitioned.arrivals(&all, 1000).await.expect("arrivals");
        for message in arrivals {
            assert!(
                !recovered.contains(&message.id),
                "message {} was recovered and then returned as an arrival",
                message.id
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let produced = producing.await.unwrap();
    assert!(produced > 0, "the producer stored nothing");
    Store::shutdown(&store).await;
}
