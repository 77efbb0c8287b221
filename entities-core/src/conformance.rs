//! The store conformance suite: the checks every [`Store`] must pass, one function per part of
//! the contract, and [`store_conformance_tests!`](crate::store_conformance_tests) to run them
//! all as tests of a store crate (after matrix-rust-sdk's `statestore_integration_tests!`).
//!
//! Enable the `conformance` feature of `entities-core` in the store crate's dev-dependencies,
//! then, in a test file, pass the macro an expression that gives a future of a fresh, empty
//! store:
//!
//! ```
//! use entities_core::MemoryStore;
//!
//! entities_core::store_conformance_tests!(async { MemoryStore::new() });
//! # fn main() {}
//! ```
//!
//! or of a `(store, guard)` pair, the guard kept alive as long as the store is used, such as a
//! temporary directory (from `entities-sqlite/tests/conformance.rs`):
//!
//! ```ignore
//! async fn temp_store() -> (SqliteStore, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
//!     (store, dir)
//! }
//!
//! entities_core::store_conformance_tests!(temp_store());
//! ```
//!
//! The macro expands to a module `store_conformance` with one `#[test]` per check, each on a
//! store of its own, run on a multi-threaded Tokio runtime of its own with a time limit. The
//! constructor expression is evaluated inside that module, which imports everything of the
//! module the macro is called in.
//!
//! The checks drive the store through the [`Store`] trait only; each asserts concrete values,
//! so that a store that breaks the contract fails them. A failure that must refuse later
//! batches is triggered without help from the store: a batch storing a message under an id
//! that is stored already (see [`Batch::produced`]).

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::StoreErrorKind;
use crate::id::EntityId;
use crate::message::{Body, Message, MessageId, Target};
use crate::store::{
    Batch, EntityQuery, EntityRecord, IdempotencyKey, InstanceQuery, InstanceRecord, InstanceWrite,
    RuntimeStatus, Store,
};

/// Expands to one `#[test]` per conformance check (a module `store_conformance`), each on a
/// fresh store from `$constructor`: an expression giving a future of a [`Store`], or of a
/// `(store, guard)` pair (see [`Fixture`](crate::conformance::Fixture)). Needs the
/// `conformance` feature of `entities-core`. See [the module](crate::conformance).
#[macro_export]
macro_rules! store_conformance_tests {
    ($constructor:expr $(,)?) => {
        $crate::__store_conformance_tests! {
            $constructor;
            commits_apply_in_call_order,
            a_conflicting_batch_applies_nothing,
            a_failed_commit_refuses_later_batches_until_resume,
            a_conflict_fails_only_its_own_batch,
            a_closed_store_refuses_writes,
            reads_see_whole_committed_batches,
            entities_are_written_and_read_back,
            entity_queries_filter_and_page,
            delete_empty_entities_removes_only_empty_rows,
            instances_are_created_updated_and_read_back,
            histories_append_across_commits,
            purge_removes_an_instance_and_its_history,
            running_instances_lists_instances_not_ended,
            recovery_returns_due_messages_in_id_order,
            scheduled_messages_page_by_time_then_id,
            read_entity_counts_pending_messages,
            instance_queries_filter_and_page,
            locks_and_stats_count_what_is_stored,
            count_entities_counts_states_by_name,
            idempotency_keys_are_claimed_answered_and_forgotten,
            idle_entities_and_scheduled_for_find_their_rows,
            state_versions_are_kept,
            purge_instances_deletes_the_ended_instances_a_query_selects,
            a_restart_replaces_the_history_and_the_input,
        }
    };
}

/// The expansion of [`store_conformance_tests!`]: one test per named check.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_tests {
    ($constructor:expr; $($check:ident),* $(,)?) => {
        /// The store conformance suite of `entities-core`, one test per check.
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $check() {
                    $crate::conformance::run(async {
                        let fixture = $constructor.await;
                        let store = $crate::conformance::Fixture::store(&fixture);
                        $crate::conformance::$check(store).await;
                    });
                }
            )*
        }
    };
}

/// What the constructor of [`store_conformance_tests!`](crate::store_conformance_tests) gives:
/// a store, or a store and a guard that must outlive it (a temporary directory, a server).
pub trait Fixture {
    /// The store under test.
    fn store(&self) -> &dyn Store;
}

impl<S: Store> Fixture for S {
    fn store(&self) -> &dyn Store {
        self
    }
}

impl<S: Store, G> Fixture for (S, G) {
    fn store(&self) -> &dyn Store {
        &self.0
    }
}

/// How long one check may take before it fails.
pub const CHECK_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Runs one check on a multi-threaded Tokio runtime of its own (two workers), failing it if it
/// takes longer than [`CHECK_TIME_LIMIT`].
pub fn run(check: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a Tokio runtime for the conformance check");
    runtime.block_on(async {
        tokio::time::timeout(CHECK_TIME_LIMIT, check)
            .await
            .expect("the conformance check did not finish in time: a commit or read hangs");
    });
}

// Building blocks of the checks.

/// The entity `counter` with `key`.
fn counter(key: &str) -> EntityId {
    EntityId::new("Counter", key)
}

/// A signal `add(id)` to `target`, delivered at `deliver_at`.
fn message_to(id: MessageId, target: Target, deliver_at: Option<u64>) -> Message {
    Message {
        id,
        target,
        deliver_at,
        body: Body::Operation {
            name: "add".into(),
            input: Some(json!(id)),
            reply: None,
            sender: None,
        },
    }
}

/// A signal to `counter(key)`.
fn signal(id: MessageId, key: &str, deliver_at: Option<u64>) -> Message {
    message_to(id, Target::Entity(counter(key)), deliver_at)
}

/// An entity record with `state` and no lock.
fn entity(id: EntityId, state: Option<Value>) -> EntityRecord {
    EntityRecord {
        id,
        state,
        state_version: 1,
        lock_owner: None,
        last_modified: 1,
        pending_messages: 0,
    }
}

/// The record of instance `id` of orchestration `orch`, with `status`.
fn instance(id: &str, status: RuntimeStatus) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        name: "orch".into(),
        status,
        input: json!({ "id": id }),
        output: None,
        created: 10,
        updated: 10,
        held: None,
    }
}

/// A write of `record` appending `events` from `first_event`.
fn instance_write(
    record: InstanceRecord,
    first_event: u64,
    events: Vec<Value>,
    create: bool,
) -> InstanceWrite {
    InstanceWrite {
        record,
        first_event,
        events,
        create,
        restart: false,
    }
}

/// A batch creating the running instance `id` with `events`.
fn create(id: &str, events: Vec<Value>) -> Batch {
    Batch {
        instances: vec![instance_write(
            instance(id, RuntimeStatus::Running),
            0,
            events,
            true,
        )],
        ..Batch::default()
    }
}

/// A batch storing `messages`.
fn produce(messages: Vec<Message>) -> Batch {
    Batch {
        produced: messages,
        ..Batch::default()
    }
}

/// A batch deleting `ids`.
fn consume(ids: Vec<MessageId>) -> Batch {
    Batch {
        consumed: ids,
        ..Batch::default()
    }
}

/// A batch writing `records`.
fn write(records: Vec<EntityRecord>) -> Batch {
    Batch {
        entities: records,
        ..Batch::default()
    }
}

/// Commits `batch` and waits for it, failing the check if it fails.
async fn commit(store: &dyn Store, batch: Batch) {
    if let Err(err) = store.commit(batch).await {
        panic!("a commit failed: {err}");
    }
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// The ids of the messages `recover(u64::MAX)` returns.
async fn stored_ids(store: &dyn Store) -> Vec<MessageId> {
    let mut ids = ids(&store.recover(u64::MAX).await.expect("recover").messages);
    ids.sort_unstable();
    ids
}

/// The order a recovery returns the messages `due` in: by id, or for a store shared by
/// several processes, in the order stored (`stored`), which keeps each sender's order when
/// ids come from different processes.
fn recovery_order(store: &dyn Store, stored: &[MessageId], due: &[MessageId]) -> Vec<MessageId> {
    if store.partitioned().is_some() {
        stored
            .iter()
            .copied()
            .filter(|id| due.contains(id))
            .collect()
    } else {
        let mut due = due.to_vec();
        due.sort_unstable();
        due
    }
}

/// The committed state of `id`: `None` if it has no row, `Some(None)` if it has no state.
async fn state(store: &dyn Store, id: &EntityId) -> Option<Option<Value>> {
    store
        .read_entity(id)
        .await
        .expect("read_entity")
        .map(|record| record.state)
}

/// A message as JSON, to compare messages field by field.
fn as_json(message: &Message) -> Value {
    serde_json::to_value(message).expect("a message serializes")
}

/// The ids of the instances `running_instances` lists, sorted.
async fn running_ids(store: &dyn Store) -> Vec<String> {
    let mut ids: Vec<String> = store
        .running_instances()
        .await
        .expect("running_instances")
        .into_iter()
        .map(|record| record.id)
        .collect();
    ids.sort();
    ids
}

// The checks.

/// Batches apply in the order `commit` was called, also when they are queued before any is
/// awaited and awaited in the other order: a batch consuming a message stored by the batch
/// queued before it, entity writes (the last one stays), history appends.
pub async fn commits_apply_in_call_order(store: &dyn Store) {
    let store_it = store.commit(produce(vec![signal(1, "k", None)]));
    let consume_it = store.commit(consume(vec![1]));
    consume_it.await.expect("the consuming batch commits");
    store_it.await.expect("the storing batch commits");
    assert_eq!(
        stored_ids(store).await,
        Vec::<MessageId>::new(),
        "message 1 was consumed by the batch queued after the one storing it"
    );

    let k = counter("k");
    let writes: Vec<_> = (1..=3)
        .map(|n| store.commit(write(vec![entity(k.clone(), Some(json!(n)))])))
        .collect();
    for pending in writes.into_iter().rev() {
        pending.await.expect("an entity write commits");
    }
    assert_eq!(
        state(store, &k).await,
        Some(Some(json!(3))),
        "the entity has the state of the last batch queued"
    );

    let running = instance("o", RuntimeStatus::Running);
    let first = store.commit(create("o", vec![json!("e0")]));
    let second = store.commit(Batch {
        instances: vec![instance_write(
            running.clone(),
            1,
            vec![json!("e1"), json!("e2")],
            false,
        )],
        ..Batch::default()
    });
    let third = store.commit(Batch {
        instances: vec![instance_write(running, 3, vec![json!("e3")], false)],
        ..Batch::default()
    });
    third.await.expect("the third step commits");
    second.await.expect("the second step commits");
    first.await.expect("the creation commits");
    assert_eq!(
        store.read_history("o").await.expect("read_history"),
        [json!("e0"), json!("e1"), json!("e2"), json!("e3")]
    );

    // A message stored, consumed and stored again (a new id), all queued at once.
    let a = store.commit(produce(vec![signal(2, "k", None), signal(3, "k", None)]));
    let b = store.commit(Batch {
        consumed: vec![2],
        produced: vec![signal(4, "k", None)],
        entities: vec![entity(k.clone(), Some(json!(4)))],
        ..Batch::default()
    });
    let c = store.commit(consume(vec![4]));
    let (a, b, c) = futures::join!(a, b, c);
    a.expect("batch a commits");
    b.expect("batch b commits");
    c.expect("batch c commits");
    assert_eq!(stored_ids(store).await, [3]);
    assert_eq!(state(store, &k).await, Some(Some(json!(4))));
}

/// A batch that conflicts (it creates an instance that exists) applies nothing: not its
/// entity writes, not its consumed or produced messages, not its other instance writes or
/// history events.
pub async fn a_conflicting_batch_applies_nothing(store: &dyn Store) {
    let k = counter("k");
    let mut setup = create("o", vec![json!("first")]);
    setup.entities = vec![entity(k.clone(), Some(json!(1)))];
    setup.produced = vec![signal(1, "k", None)];
    commit(store, setup).await;

    let mut other = instance("o", RuntimeStatus::Running);
    other.name = "another".into();
    other.input = json!("another input");
    let conflicting = Batch {
        entities: vec![
            entity(k.clone(), Some(json!(2))),
            entity(counter("new"), Some(json!(5))),
        ],
        consumed: vec![1],
        produced: vec![signal(2, "k", None), signal(3, "new", Some(50))],
        instances: vec![
            instance_write(instance("p", RuntimeStatus::Running), 0, vec![], true),
            instance_write(other, 0, vec![json!("second")], true),
            instance_write(
                instance("q", RuntimeStatus::Running),
                0,
                vec![json!("q0")],
                false,
            ),
        ],
        ..Batch::default()
    };
    let err = store
        .commit(conflicting)
        .await
        .expect_err("creating an instance that exists must fail");
    assert!(err.is_conflict(), "the failure is a conflict: {err}");

    assert_eq!(state(store, &k).await, Some(Some(json!(1))));
    assert_eq!(state(store, &counter("new")).await, None);
    assert_eq!(
        stored_ids(store).await,
        [1],
        "no message consumed or stored"
    );
    let record = store.read_instance("o").await.expect("read_instance");
    assert_eq!(record, Some(instance("o", RuntimeStatus::Running)));
    assert_eq!(
        store.read_history("o").await.expect("read_history"),
        [json!("first")]
    );
    for id in ["p", "q"] {
        assert_eq!(store.read_instance(id).await.expect("read_instance"), None);
        assert!(store
            .read_history(id)
            .await
            .expect("read_history")
            .is_empty());
    }
    let record = store.read_entity(&k).await.expect("read_entity").unwrap();
    assert_eq!(record.pending_messages, 1);
}

/// A failed commit (here: a batch storing a message under an id that is stored already)
/// applies nothing, and every batch queued after it fails too, until `resume`; a batch queued
/// before `resume` is refused, one queued after it is accepted, even before `resume` is
/// awaited.
pub async fn a_failed_commit_refuses_later_batches_until_resume(store: &dyn Store) {
    commit(
        store,
        produce(vec![signal(1, "k", None), signal(10, "k", None)]),
    )
    .await;

    // Queued together: the bad batch, then a good one that may build on it.
    let bad = store.commit(Batch {
        entities: vec![entity(counter("x"), Some(json!(1)))],
        consumed: vec![10],
        produced: vec![signal(2, "k", None), signal(1, "k", None)],
        ..Batch::default()
    });
    let later = store.commit(Batch {
        entities: vec![entity(counter("y"), Some(json!(1)))],
        produced: vec![signal(3, "k", None)],
        ..Batch::default()
    });
    let (bad, later) = futures::join!(bad, later);
    let bad = bad.expect_err("storing message 1 twice must fail");
    assert!(
        !bad.is_conflict(),
        "a duplicate message is no conflict: {bad}"
    );
    assert_ne!(bad.kind(), StoreErrorKind::Closed, "{bad}");
    later.expect_err("a batch queued after a failed one must fail");
    store
        .commit(produce(vec![signal(4, "k", None)]))
        .await
        .expect_err("every batch is refused until resume");

    assert_eq!(
        stored_ids(store).await,
        [1, 10],
        "nothing of the refused batches"
    );
    assert_eq!(state(store, &counter("x")).await, None);
    assert_eq!(state(store, &counter("y")).await, None);

    let refused = store.commit(produce(vec![signal(5, "k", None)]));
    let resumed = store.resume();
    let accepted = store.commit(produce(vec![signal(6, "k", None)]));
    refused
        .await
        .expect_err("a batch queued before resume is refused");
    resumed
        .await
        .expect("resume succeeds on a store that works");
    accepted
        .await
        .expect("a batch queued after resume is accepted");
    commit(store, write(vec![entity(counter("y"), Some(json!(2)))])).await;
    assert_eq!(stored_ids(store).await, [1, 6, 10]);
    assert_eq!(state(store, &counter("y")).await, Some(Some(json!(2))));

    store
        .resume()
        .await
        .expect("resume succeeds when nothing failed");
    commit(store, produce(vec![signal(7, "k", None)])).await;
    assert_eq!(stored_ids(store).await, [1, 6, 7, 10]);
}

/// A conflict fails only its own batch: the batches queued before and after it commit, and
/// later ones need no `resume`. Creating one instance twice in a batch conflicts too.
pub async fn a_conflict_fails_only_its_own_batch(store: &dyn Store) {
    commit(store, create("o", vec![])).await;

    let before = store.commit(produce(vec![signal(1, "k", None)]));
    let mut duplicate = create("o", vec![]);
    duplicate.produced = vec![signal(2, "k", None)];
    let duplicate = store.commit(duplicate);
    let after = store.commit(produce(vec![signal(3, "k", None)]));
    let (before, duplicate, after) = futures::join!(before, duplicate, after);
    before.expect("the batch before the conflict commits");
    let err = duplicate.expect_err("creating `o` again must fail");
    assert!(err.is_conflict(), "{err}");
    after.expect("the batch after a conflict commits");
    commit(store, produce(vec![signal(4, "k", None)])).await;
    assert_eq!(stored_ids(store).await, [1, 3, 4]);

    let mut twice = create("q", vec![]);
    twice.instances.push(twice.instances[0].clone());
    let err = store
        .commit(twice)
        .await
        .expect_err("creating `q` twice in one batch must fail");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.read_instance("q").await.expect("read_instance"), None);

    commit(store, create("p", vec![])).await;
    assert_eq!(running_ids(store).await, ["o", "p"]);
}

/// After `close`, commits, clean-ups, purges and `resume` fail with kind `Closed`, and
/// reads still see what was committed.
pub async fn a_closed_store_refuses_writes(store: &dyn Store) {
    let k = counter("k");
    let mut setup = create("o", vec![json!("e0")]);
    setup.entities = vec![
        entity(k.clone(), Some(json!(1))),
        entity(counter("e"), None),
    ];
    commit(store, setup).await;
    store.close();

    let err = store
        .commit(write(vec![entity(k.clone(), Some(json!(2)))]))
        .await
        .expect_err("a closed store refuses commits");
    assert_eq!(err.kind(), StoreErrorKind::Closed, "{err}");
    let err = store
        .resume()
        .await
        .expect_err("a closed store cannot resume");
    assert_eq!(err.kind(), StoreErrorKind::Closed, "{err}");
    let err = store
        .commit(produce(vec![signal(1, "k", None)]))
        .await
        .expect_err("still refused after resume");
    assert_eq!(err.kind(), StoreErrorKind::Closed, "{err}");
    let err = store
        .delete_empty_entities()
        .await
        .expect_err("a closed store refuses clean-ups");
    assert_eq!(err.kind(), StoreErrorKind::Closed, "{err}");
    let err = store
        .purge_instance("o")
        .await
        .expect_err("a closed store refuses purges");
    assert_eq!(err.kind(), StoreErrorKind::Closed, "{err}");

    assert_eq!(state(store, &k).await, Some(Some(json!(1))));
    assert_eq!(state(store, &counter("e")).await, Some(None));
    assert_eq!(stored_ids(store).await, Vec::<MessageId>::new());
    assert_eq!(
        store.read_history("o").await.expect("read_history"),
        [json!("e0")]
    );
}

/// Reads see a batch once its commit has resolved, and never part of one: readers running
/// while batches that change many entities and messages together commit see, in each read,
/// all of them changed or none.
pub async fn reads_see_whole_committed_batches(store: &dyn Store) {
    let ids: Vec<EntityId> = (0..40).map(|n| counter(&format!("e{n:02}"))).collect();
    let round_batch = |round: u64| Batch {
        entities: ids
            .iter()
            .map(|id| entity(id.clone(), Some(json!(round))))
            .collect(),
        consumed: if round == 0 { vec![] } else { vec![round] },
        produced: vec![signal(round + 1, "e00", None)],
        ..Batch::default()
    };
    commit(store, round_batch(0)).await;
    assert_eq!(state(store, &ids[0]).await, Some(Some(json!(0))));
    assert_eq!(stored_ids(store).await, [1]);

    for round in 1..=60u64 {
        let committing = store.commit(round_batch(round));
        let reading = async {
            for _ in 0..4 {
                let records = store
                    .load_entities(ids.clone())
                    .await
                    .expect("load_entities");
                assert_eq!(records.len(), ids.len());
                let first = records[0].state.clone();
                assert!(
                    records.iter().all(|r| r.state == first),
                    "one read saw part of a batch: {:?}",
                    records.iter().map(|r| r.state.clone()).collect::<Vec<_>>()
                );
                let messages = stored_ids(store).await;
                assert_eq!(
                    messages.len(),
                    1,
                    "a read saw part of a batch: {messages:?}"
                );
                tokio::task::yield_now().await;
            }
        };
        let (committed, ()) = futures::join!(committing, reading);
        committed.expect("a round commits");
        // Once the commit has resolved, every read sees it.
        let records = store
            .load_entities(ids.clone())
            .await
            .expect("load_entities");
        assert!(records.iter().all(|r| r.state == Some(json!(round))));
        assert_eq!(stored_ids(store).await, [round + 1]);
        assert_eq!(
            store
                .read_entity(&ids[0])
                .await
                .expect("read_entity")
                .unwrap()
                .pending_messages,
            1
        );
    }
}

/// Entity records come back as written: state (any JSON, or none), lock owner and time;
/// `load_entities` leaves out missing ones and keeps the order asked for.
pub async fn entities_are_written_and_read_back(store: &dyn Store) {
    let state_value = json!({
        "text": "héllo \u{0} wörld",
        "list": [1, -2, 3.5, true, null],
        "big": u64::MAX,
        "nested": { "deep": [[[]]] }
    });
    let full = EntityRecord {
        id: EntityId::new("Account", "K@y é"),
        state: Some(state_value.clone()),
        state_version: 4,
        lock_owner: Some("orchestration-1".into()),
        last_modified: 1_700_000_000_123,
        pending_messages: 0,
    };
    let empty = EntityRecord {
        id: counter(""),
        state: None,
        state_version: 1,
        lock_owner: None,
        last_modified: 7,
        pending_messages: 0,
    };
    commit(store, write(vec![full.clone(), empty.clone()])).await;

    let read = store.read_entity(&full.id).await.expect("read_entity");
    assert_eq!(read, Some(full.clone()));
    assert_eq!(
        store
            .read_entity(&EntityId::new("ACCOUNT", "K@y é"))
            .await
            .expect("read_entity"),
        Some(full.clone()),
        "names are case-insensitive"
    );
    assert_eq!(
        store
            .read_entity(&EntityId::new("Account", "k@y é"))
            .await
            .expect("read_entity"),
        None,
        "keys are case-sensitive"
    );
    assert_eq!(
        store.read_entity(&empty.id).await.expect("read_entity"),
        Some(empty.clone())
    );

    let loaded = store
        .load_entities(vec![empty.id.clone(), counter("missing"), full.id.clone()])
        .await
        .expect("load_entities");
    assert_eq!(loaded, [empty.clone(), full.clone()]);

    // A rewrite replaces state, lock and time; a state set to none stays a row.
    let rewritten = EntityRecord {
        state: None,
        state_version: 2,
        lock_owner: None,
        last_modified: 9,
        ..full.clone()
    };
    commit(store, write(vec![rewritten.clone()])).await;
    assert_eq!(
        store.read_entity(&full.id).await.expect("read_entity"),
        Some(rewritten)
    );
}

/// The version stored with a state comes back from every entity read (`read_entity`,
/// `load_entities`, `query_entities` with and without states), over the whole `u32` range;
/// a rewrite replaces it, also down to a lower version.
pub async fn state_versions_are_kept(store: &dyn Store) {
    let versions = [1, 2, 7, u32::MAX];
    let records: Vec<EntityRecord> = versions
        .iter()
        .map(|&v| EntityRecord {
            state_version: v,
            ..entity(counter(&format!("v{v}")), Some(json!({ "v": v })))
        })
        .collect();
    commit(store, write(records.clone())).await;
    for record in &records {
        let read = store.read_entity(&record.id).await.expect("read_entity");
        assert_eq!(read.map(|r| r.state_version), Some(record.state_version));
    }
    let ids = records.iter().map(|r| r.id.clone()).collect();
    let loaded = store.load_entities(ids).await.expect("load_entities");
    assert_eq!(
        loaded.iter().map(|r| r.state_version).collect::<Vec<_>>(),
        versions,
        "load_entities returns the stored versions"
    );
    for include_state in [true, false] {
        let page = store
            .query_entities(&EntityQuery {
                name: Some("counter".into()),
                include_state,
                ..EntityQuery::default()
            })
            .await
            .expect("query_entities");
        let mut found: Vec<(String, u32)> = page
            .entities
            .iter()
            .map(|r| (r.id.key().to_string(), r.state_version))
            .collect();
        found.sort();
        let mut expected: Vec<(String, u32)> =
            versions.iter().map(|v| (format!("v{v}"), *v)).collect();
        expected.sort();
        assert_eq!(
            found, expected,
            "query_entities (include_state: {include_state})"
        );
    }
    let lowered = EntityRecord {
        state_version: 3,
        state: Some(json!("rewritten")),
        ..records[3].clone()
    };
    commit(store, write(vec![lowered.clone()])).await;
    assert_eq!(
        store.read_entity(&lowered.id).await.expect("read_entity"),
        Some(lowered)
    );
}

/// Entity queries: ordered by name then key (as bytes), the name filter case-insensitive, the
/// key prefix compared as bytes (also with a NUL or non-ASCII characters), stateless entities
/// and states left out when asked, pending messages counted, pages chained by continuation
/// tokens (a full last page has none), a page size of 0 taken as 1, a bad token refused.
pub async fn entity_queries_filter_and_page(store: &dyn Store) {
    let stateful = ["a", "a\0", "a\0b", "a\u{1}", "ab", "b", "z", "é", "éa", "A"];
    let mut records: Vec<EntityRecord> = stateful
        .iter()
        .enumerate()
        .map(|(n, key)| entity(counter(key), Some(json!(n))))
        .collect();
    let mut locked = entity(counter("a-locked"), None);
    locked.lock_owner = Some("o".into());
    records.push(locked);
    records.push(entity(counter("a-waiting"), None));
    records.push(entity(EntityId::new("Account", "a"), Some(json!("acc"))));
    records.push(entity(EntityId::new("Other", "a"), Some(json!("other"))));
    commit(
        store,
        Batch {
            entities: records,
            produced: vec![
                signal(1, "a-waiting", None),
                signal(2, "a-waiting", Some(1_000)),
                signal(3, "b", None),
            ],
            ..Batch::default()
        },
    )
    .await;

    let query = |name: Option<&str>, prefix: Option<&str>, stateless: bool| EntityQuery {
        name: name.map(str::to_string),
        key_prefix: prefix.map(str::to_string),
        include_state: true,
        include_stateless: stateless,
        page_size: 100,
        continuation: None,
    };
    let keys = |page: &crate::store::EntityRecordPage| -> Vec<String> {
        page.entities
            .iter()
            .map(|e| e.id.key().to_string())
            .collect()
    };
    let run = |q: EntityQuery| async move { store.query_entities(&q).await.expect("query") };

    let page = run(query(Some("COUNTER"), None, false)).await;
    assert_eq!(
        keys(&page),
        ["A", "a", "a\0", "a\0b", "a\u{1}", "ab", "b", "z", "é", "éa"],
        "counters with a state, by key as bytes (name matched case-insensitively)"
    );
    assert!(page.entities.iter().all(|e| e.id.name() == "counter"));
    assert_eq!(page.continuation, None);
    let b = page.entities.iter().find(|e| e.id.key() == "b").unwrap();
    assert_eq!((b.state.clone(), b.pending_messages), (Some(json!(5)), 1));

    let page = run(query(Some("counter"), None, true)).await;
    assert_eq!(
        keys(&page),
        [
            "A",
            "a",
            "a\0",
            "a\0b",
            "a\u{1}",
            "a-locked",
            "a-waiting",
            "ab",
            "b",
            "z",
            "é",
            "éa"
        ],
        "stateless entities too"
    );
    let waiting = &page.entities[6];
    assert_eq!((waiting.state.clone(), waiting.pending_messages), (None, 2));
    assert_eq!(page.entities[5].lock_owner.as_deref(), Some("o"));

    let names: Vec<String> = run(query(None, Some("a"), false))
        .await
        .entities
        .iter()
        .filter(|e| e.id.key() == "a")
        .map(|e| e.id.name().to_string())
        .collect();
    assert_eq!(
        names,
        ["account", "counter", "other"],
        "ordered by name first"
    );

    let with_prefix = |prefix: &'static str| async move {
        keys(&run(query(Some("Counter"), Some(prefix), true)).await)
    };
    assert_eq!(with_prefix("a\0").await, ["a\0", "a\0b"]);
    assert_eq!(with_prefix("a\0b").await, ["a\0b"]);
    assert_eq!(with_prefix("a\u{1}").await, ["a\u{1}"]);
    assert_eq!(with_prefix("a-").await, ["a-locked", "a-waiting"]);
    assert_eq!(with_prefix("é").await, ["é", "éa"]);
    assert_eq!(with_prefix("éa").await, ["éa"]);
    assert_eq!(with_prefix("A").await, ["A"], "keys are case-sensitive");
    assert_eq!(with_prefix("").await.len(), 12);
    assert!(with_prefix("zz").await.is_empty());

    let mut q = query(Some("counter"), None, false);
    q.include_state = false;
    let page = run(q).await;
    assert_eq!(page.entities.len(), 10);
    assert!(
        page.entities.iter().all(|e| e.state.is_none()),
        "no states when include_state is false"
    );
    let b = page.entities.iter().find(|e| e.id.key() == "b").unwrap();
    assert_eq!(b.pending_messages, 1);

    // Pages of 3 over the counters with a state, then pages of 2 with a prefix and stateless.
    let mut q = query(Some("counter"), None, false);
    q.page_size = 3;
    let mut pages = Vec::new();
    loop {
        let page = run(q.clone()).await;
        pages.push(keys(&page));
        match page.continuation {
            Some(token) => q.continuation = Some(token),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(
        pages,
        [
            vec!["A", "a", "a\0"],
            vec!["a\0b", "a\u{1}", "ab"],
            vec!["b", "z", "é"],
            vec!["éa"]
        ]
    );
    let mut q = query(Some("counter"), Some("a"), true);
    q.page_size = 2;
    let first = run(q.clone()).await;
    assert_eq!(keys(&first), ["a", "a\0"]);
    q.continuation = first.continuation;
    let second = run(q.clone()).await;
    assert_eq!(keys(&second), ["a\0b", "a\u{1}"]);
    q.continuation = second.continuation;
    let third = run(q.clone()).await;
    assert_eq!(keys(&third), ["a-locked", "a-waiting"]);
    q.continuation = third.continuation;
    let fourth = run(q).await;
    assert_eq!(keys(&fourth), ["ab"]);
    assert_eq!(fourth.continuation, None);

    let mut q = query(Some("counter"), Some("a\0"), false);
    q.page_size = 2;
    let page = run(q).await;
    assert_eq!(keys(&page), ["a\0", "a\0b"]);
    assert_eq!(
        page.continuation, None,
        "a full last page has no continuation"
    );

    let mut q = query(Some("counter"), None, false);
    q.page_size = 0;
    let page = run(q).await;
    assert_eq!(keys(&page), ["A"], "a page size of 0 counts as 1");
    assert!(page.continuation.is_some());

    let mut q = query(None, None, false);
    q.continuation = Some("not a continuation token".into());
    store
        .query_entities(&q)
        .await
        .expect_err("a bad continuation token is refused");

    assert!(run(query(Some("missing"), None, true))
        .await
        .entities
        .is_empty());
}

/// `delete_empty_entities` removes the entities with no state, no lock and no pending
/// message (scheduled or not), and counts them.
pub async fn delete_empty_entities_removes_only_empty_rows(store: &dyn Store) {
    let mut locked = entity(counter("locked"), None);
    locked.lock_owner = Some("o".into());
    commit(
        store,
        Batch {
            entities: vec![
                entity(counter("full"), Some(json!(1))),
                entity(counter("falsy"), Some(json!(null))),
                entity(counter("empty"), None),
                entity(counter("empty2"), None),
                locked,
                entity(counter("waiting"), None),
                entity(counter("scheduled"), None),
            ],
            produced: vec![
                signal(1, "waiting", None),
                signal(2, "scheduled", Some(u32::MAX as u64)),
                signal(3, "never-written", None),
                message_to(4, Target::Instance("@counter@empty".into()), None),
            ],
            ..Batch::default()
        },
    )
    .await;

    assert_eq!(store.delete_empty_entities().await.expect("delete"), 2);
    for key in ["empty", "empty2"] {
        assert_eq!(state(store, &counter(key)).await, None, "{key} is deleted");
    }
    assert_eq!(state(store, &counter("full")).await, Some(Some(json!(1))));
    assert_eq!(
        state(store, &counter("falsy")).await,
        Some(Some(json!(null)))
    );
    for key in ["locked", "waiting", "scheduled"] {
        assert_eq!(state(store, &counter(key)).await, Some(None), "{key} stays");
    }
    assert_eq!(store.delete_empty_entities().await.expect("delete"), 0);

    commit(store, consume(vec![1, 2])).await;
    assert_eq!(store.delete_empty_entities().await.expect("delete"), 2);
    assert_eq!(state(store, &counter("waiting")).await, None);
    assert_eq!(state(store, &counter("scheduled")).await, None);
    assert_eq!(stored_ids(store).await, [3, 4], "messages are not touched");
}

/// Instances: a creation stores the record; a later write (without `create`) changes its
/// status, output and update time; a write without `create` of an instance that does not
/// exist stores it.
pub async fn instances_are_created_updated_and_read_back(store: &dyn Store) {
    assert_eq!(store.read_instance("o").await.expect("read_instance"), None);
    commit(store, create("o", vec![])).await;
    assert_eq!(
        store.read_instance("o").await.expect("read_instance"),
        Some(instance("o", RuntimeStatus::Running))
    );

    let mut held = instance("o", RuntimeStatus::Running);
    held.held = Some("step 2: the history has a timer, but the code now schedules a `é`".into());
    held.updated = 15;
    commit(
        store,
        Batch {
            instances: vec![instance_write(held.clone(), 0, vec![], false)],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.read_instance("o").await.expect("read_instance"),
        Some(held)
    );

    let mut done = instance("o", RuntimeStatus::Completed);
    done.output = Some(json!({ "total": 3, "é": [null] }));
    done.updated = 20;
    commit(
        store,
        Batch {
            instances: vec![instance_write(done.clone(), 0, vec![], false)],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.read_instance("o").await.expect("read_instance"),
        Some(done)
    );

    let mut failed = instance("sub", RuntimeStatus::Failed);
    failed.output = Some(json!("it failed"));
    failed.updated = 30;
    commit(
        store,
        Batch {
            instances: vec![instance_write(failed.clone(), 0, vec![json!(1)], false)],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.read_instance("sub").await.expect("read_instance"),
        Some(failed)
    );
    assert_eq!(
        store.read_history("sub").await.expect("history"),
        [json!(1)]
    );
    assert_eq!(store.read_instance("O").await.expect("read_instance"), None);
}

/// Histories: events appended by several commits (and several writes of one batch) read
/// back in order, each instance its own; an unknown instance has none.
pub async fn histories_append_across_commits(store: &dyn Store) {
    let events: Vec<Value> = vec![
        json!({ "type": "started", "input": [1, 2] }),
        json!("second"),
        json!(3),
        json!(null),
        json!({ "nested": { "é": "\u{0}" } }),
    ];
    commit(store, create("o", events[..2].to_vec())).await;
    commit(store, create("p", vec![json!("p0")])).await;
    let running = instance("o", RuntimeStatus::Running);
    commit(
        store,
        Batch {
            instances: vec![instance_write(
                running.clone(),
                2,
                vec![events[2].clone()],
                false,
            )],
            ..Batch::default()
        },
    )
    .await;
    commit(
        store,
        Batch {
            instances: vec![instance_write(running.clone(), 3, vec![], false)],
            ..Batch::default()
        },
    )
    .await;
    commit(
        store,
        Batch {
            instances: vec![
                instance_write(running.clone(), 3, vec![events[3].clone()], false),
                instance_write(running, 4, vec![events[4].clone()], false),
                instance_write(
                    instance("p", RuntimeStatus::Running),
                    1,
                    vec![json!("p1")],
                    false,
                ),
            ],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(store.read_history("o").await.expect("read_history"), events);
    assert_eq!(
        store.read_history("p").await.expect("read_history"),
        [json!("p0"), json!("p1")]
    );
    assert!(store
        .read_history("unknown")
        .await
        .expect("read_history")
        .is_empty());
}

/// `purge_instance` deletes an instance and its history and says whether it existed; the id
/// can be created again, with a new history.
pub async fn purge_removes_an_instance_and_its_history(store: &dyn Store) {
    commit(store, create("o", vec![json!("o0"), json!("o1")])).await;
    commit(store, create("p", vec![json!("p0")])).await;

    assert!(store.purge_instance("o").await.expect("purge"));
    assert_eq!(store.read_instance("o").await.expect("read_instance"), None);
    assert!(store
        .read_history("o")
        .await
        .expect("read_history")
        .is_empty());
    assert!(
        !store.purge_instance("o").await.expect("purge"),
        "gone already"
    );
    assert!(!store.purge_instance("nope").await.expect("purge"));
    assert_eq!(running_ids(store).await, ["p"]);
    assert_eq!(
        store.read_history("p").await.expect("read_history"),
        [json!("p0")]
    );

    commit(store, create("o", vec![json!("new")])).await;
    assert_eq!(
        store.read_history("o").await.expect("read_history"),
        [json!("new")],
        "the old history does not come back"
    );
}

/// `running_instances` lists exactly the instances with status `Running`, as stored.
pub async fn running_instances_lists_instances_not_ended(store: &dyn Store) {
    assert!(running_ids(store).await.is_empty());
    let statuses = [
        ("a", RuntimeStatus::Running),
        ("b", RuntimeStatus::Completed),
        ("c", RuntimeStatus::Failed),
        ("d", RuntimeStatus::Terminated),
        ("e", RuntimeStatus::Running),
    ];
    commit(
        store,
        Batch {
            instances: statuses
                .iter()
                .map(|(id, status)| instance_write(instance(id, *status), 0, vec![], true))
                .collect(),
            ..Batch::default()
        },
    )
    .await;
    let mut running = store.running_instances().await.expect("running_instances");
    running.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        running,
        [
            instance("a", RuntimeStatus::Running),
            instance("e", RuntimeStatus::Running)
        ]
    );

    let mut ended = instance("e", RuntimeStatus::Terminated);
    ended.output = Some(json!("stopped"));
    commit(
        store,
        Batch {
            instances: vec![instance_write(ended, 0, vec![], false)],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(running_ids(store).await, ["a"]);
}

/// `recover(horizon)` returns the unscheduled messages and those due at or before the
/// horizon, in id order whatever the order they were stored in, as stored; and the highest
/// stored message id, counting those after the horizon.
pub async fn recovery_returns_due_messages_in_id_order(store: &dyn Store) {
    let empty = store.recover(u64::MAX).await.expect("recover");
    assert!(empty.messages.is_empty());
    assert_eq!((empty.max_message_id, empty.set_aside), (0, 0));

    let first = vec![
        signal(5, "k", None),
        signal(2, "k", Some(100)),
        signal(9, "other", Some(300)),
    ];
    let second = vec![
        signal(3, "k", Some(150)),
        signal(7, "k", None),
        Message {
            body: Body::Start {
                name: "orch".into(),
                input: json!({ "n": 1 }),
                parent: None,
            },
            ..message_to(4, Target::Instance("o".into()), Some(200))
        },
        message_to(6, Target::Activity, None),
    ];
    let all: Vec<Message> = first.iter().chain(&second).cloned().collect();
    commit(store, produce(first)).await;
    commit(store, produce(second)).await;

    let stored = [5, 2, 9, 3, 7, 4, 6];
    let due = store.recover(150).await.expect("recover");
    assert_eq!(
        ids(&due.messages),
        recovery_order(store, &stored, &[2, 3, 5, 6, 7])
    );
    assert_eq!(due.max_message_id, 9, "counts messages after the horizon");
    assert_eq!(due.set_aside, 0);
    assert_eq!(
        ids(&store.recover(149).await.unwrap().messages),
        recovery_order(store, &stored, &[2, 5, 6, 7])
    );
    assert_eq!(
        ids(&store.recover(99).await.unwrap().messages),
        recovery_order(store, &stored, &[5, 6, 7])
    );
    assert_eq!(
        ids(&store.recover(0).await.unwrap().messages),
        recovery_order(store, &stored, &[5, 6, 7])
    );
    let everything = store.recover(u64::MAX).await.expect("recover");
    assert_eq!(
        ids(&everything.messages),
        recovery_order(store, &stored, &[2, 3, 4, 5, 6, 7, 9])
    );
    for message in &everything.messages {
        let stored = all.iter().find(|m| m.id == message.id).unwrap();
        assert_eq!(as_json(message), as_json(stored), "read back as stored");
    }

    commit(store, consume(vec![3, 5])).await;
    let after = store.recover(u64::MAX).await.expect("recover");
    assert_eq!(
        ids(&after.messages),
        recovery_order(store, &stored, &[2, 4, 6, 7, 9])
    );
    assert_eq!(after.max_message_id, 9);
}

/// `scheduled_messages(after, until, limit)`: the scheduled messages strictly after the
/// `(deliver_at, id)` cursor and at or before `until`, by time then id, at most `limit`;
/// unscheduled messages never.
pub async fn scheduled_messages_page_by_time_then_id(store: &dyn Store) {
    let times = [10, 20, 20, 20, 30, 40];
    let mut messages: Vec<Message> = (1..)
        .zip(times)
        .map(|(id, at)| signal(id, "k", Some(at)))
        .collect();
    messages.push(signal(7, "k", None));
    // Stored out of order: paging follows the times, not the order of storing.
    messages.push(signal(8, "k", Some(15)));
    messages.push(message_to(9, Target::Instance("o".into()), Some(20)));
    messages.reverse();
    let stored = messages.clone();
    commit(store, produce(messages)).await;

    let page = |after: (u64, MessageId), until: u64, limit: usize| async move {
        ids(&store
            .scheduled_messages(after, until, limit)
            .await
            .expect("scheduled_messages"))
    };
    assert_eq!(page((0, 0), 1000, 3).await, [1, 8, 2]);
    assert_eq!(page((20, 2), 1000, 2).await, [3, 4], "same time, later ids");
    assert_eq!(page((20, 4), 1000, 2).await, [9, 5]);
    assert_eq!(page((30, 5), 1000, 2).await, [6]);
    assert_eq!(page((40, 6), 1000, 2).await, Vec::<MessageId>::new());
    assert_eq!(
        page((0, 0), 20, 10).await,
        [1, 8, 2, 3, 4, 9],
        "until is inclusive"
    );
    assert_eq!(page((20, 3), 30, 10).await, [4, 9, 5]);
    assert_eq!(
        page((10, MessageId::MAX), 1000, 10).await,
        [8, 2, 3, 4, 9, 5, 6]
    );
    assert_eq!(
        page((10, 0), 1000, 1).await,
        [1],
        "the cursor's time, a later id"
    );
    assert_eq!(page((30, 0), 20, 10).await, Vec::<MessageId>::new());
    assert_eq!(page((0, 0), u64::MAX, 0).await, Vec::<MessageId>::new());
    assert_eq!(page((0, 0), u64::MAX, 100).await, [1, 8, 2, 3, 4, 9, 5, 6]);

    let read = store
        .scheduled_messages((0, 0), u64::MAX, 100)
        .await
        .expect("scheduled_messages");
    for message in &read {
        let original = stored.iter().find(|m| m.id == message.id).unwrap();
        assert_eq!(as_json(message), as_json(original), "read back as stored");
    }

    commit(store, consume(vec![2, 9])).await;
    assert_eq!(page((15, 8), 20, 10).await, [3, 4]);
}

/// `count_entities` counts the entities with a state, per name, ordered by name; rows with no
/// state (a lock or messages only) do not count.
pub async fn count_entities_counts_states_by_name(store: &dyn Store) {
    assert_eq!(
        store.count_entities().await.expect("count_entities"),
        vec![]
    );
    let mut entities: Vec<EntityRecord> = (0..1205)
        .map(|n| entity(counter(&format!("k{n}")), Some(json!(n))))
        .collect();
    entities.push(entity(counter("stateless"), None));
    entities.push(entity(EntityId::new("Another", "a"), Some(json!(1))));
    entities.push(entity(EntityId::new("Zebra", "z"), Some(json!(1))));
    commit(
        store,
        Batch {
            entities,
            ..Batch::default()
        },
    )
    .await;
    let names = |name: &str| EntityId::new(name, "x").name().to_string();
    assert_eq!(
        store.count_entities().await.expect("count_entities"),
        vec![
            (names("Another"), 1),
            (names("Counter"), 1205),
            (names("Zebra"), 1)
        ]
    );
}

/// `read_entity` counts the stored messages that target the entity, scheduled or not, and
/// only those (not those to another entity, an instance or the activities); consuming one
/// lowers the count. An entity with messages but no row reads as none.
pub async fn read_entity_counts_pending_messages(store: &dyn Store) {
    let k = counter("k");
    let kx = counter("k@x");
    commit(
        store,
        Batch {
            entities: vec![
                entity(k.clone(), Some(json!(1))),
                entity(kx.clone(), None),
                entity(EntityId::new("Other", "k"), Some(json!(2))),
            ],
            produced: vec![
                signal(1, "k", None),
                signal(2, "k", Some(1_000)),
                signal(3, "k@x", None),
                message_to(4, Target::Entity(EntityId::new("Other", "k")), None),
                message_to(5, Target::Instance("@counter@k".into()), None),
                message_to(6, Target::Activity, None),
                signal(7, "no-row", None),
            ],
            ..Batch::default()
        },
    )
    .await;

    let pending = |id: EntityId| async move {
        store
            .read_entity(&id)
            .await
            .expect("read_entity")
            .map(|record| record.pending_messages)
    };
    assert_eq!(pending(k.clone()).await, Some(2));
    assert_eq!(pending(kx.clone()).await, Some(1));
    assert_eq!(pending(EntityId::new("OTHER", "k")).await, Some(1));
    assert_eq!(pending(counter("no-row")).await, None);

    commit(store, consume(vec![1])).await;
    assert_eq!(pending(k.clone()).await, Some(1));
    commit(
        store,
        Batch {
            consumed: vec![2, 3],
            produced: vec![signal(8, "k", Some(5))],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(pending(k).await, Some(1));
    assert_eq!(pending(kx).await, Some(0));
}

/// `query_instances` filters by name, status and creation time and pages in creation order,
/// each instance once.
pub async fn instance_queries_filter_and_page(store: &dyn Store) {
    let specs = [
        ("i1", "alpha", RuntimeStatus::Running, 100),
        ("i2", "beta", RuntimeStatus::Completed, 200),
        ("i3", "alpha", RuntimeStatus::Completed, 300),
        ("i4", "alpha", RuntimeStatus::Failed, 400),
        ("i5", "beta", RuntimeStatus::Running, 500),
        ("i6", "alpha", RuntimeStatus::Running, 600),
    ];
    // One batch per instance: creation order is the order of the commits.
    for (id, name, status, created) in specs {
        let mut record = instance(id, status);
        record.name = name.into();
        if id == "i5" {
            record.held = Some("held".into());
        }
        record.created = created;
        record.updated = created;
        commit(
            store,
            Batch {
                instances: vec![instance_write(record, 0, vec![], true)],
                ..Batch::default()
            },
        )
        .await;
    }
    let all = |query: InstanceQuery| async move {
        let mut query = query;
        let mut ids = Vec::new();
        loop {
            let page = store
                .query_instances(&query)
                .await
                .expect("query_instances");
            assert!(page.instances.len() <= query.page_size.max(1));
            ids.extend(page.instances.into_iter().map(|r| r.id));
            match page.continuation {
                Some(next) => query.continuation = Some(next),
                None => return ids,
            }
        }
    };
    let query = |page_size| InstanceQuery {
        page_size,
        ..InstanceQuery::default()
    };
    assert_eq!(all(query(2)).await, ["i1", "i2", "i3", "i4", "i5", "i6"]);
    assert_eq!(all(query(0)).await, ["i1", "i2", "i3", "i4", "i5", "i6"]);
    assert_eq!(all(query(100)).await, ["i1", "i2", "i3", "i4", "i5", "i6"]);
    let alpha = InstanceQuery {
        name: Some("alpha".into()),
        ..query(1)
    };
    assert_eq!(all(alpha.clone()).await, ["i1", "i3", "i4", "i6"]);
    let alpha_running = InstanceQuery {
        status: Some(RuntimeStatus::Running),
        ..alpha
    };
    assert_eq!(all(alpha_running).await, ["i1", "i6"]);
    let window = InstanceQuery {
        created_from: Some(200),
        created_to: Some(500),
        ..query(2)
    };
    assert_eq!(all(window).await, ["i2", "i3", "i4"]);
    let held = InstanceQuery {
        held: Some(true),
        ..query(1)
    };
    assert_eq!(all(held).await, ["i5"]);
    let running_not_held = InstanceQuery {
        held: Some(false),
        status: Some(RuntimeStatus::Running),
        ..query(1)
    };
    assert_eq!(all(running_not_held).await, ["i1", "i6"]);
    let none = InstanceQuery {
        name: Some("ALPHA".into()),
        ..query(5)
    };
    assert!(all(none).await.is_empty());
    let bad = InstanceQuery {
        continuation: Some("not a token".into()),
        ..query(5)
    };
    assert!(store.query_instances(&bad).await.is_err());
}

/// `locked_entities` lists the locked entities by name then key with their holders, and
/// `stats` counts instances by status, locks and stored messages.
pub async fn locks_and_stats_count_what_is_stored(store: &dyn Store) {
    assert!(store.locked_entities().await.expect("locked").is_empty());
    let mut b = entity(counter("b"), Some(json!(1)));
    b.lock_owner = Some("o2".into());
    let mut a = entity(counter("a"), None);
    a.lock_owner = Some("o1".into());
    let mut account = entity(EntityId::new("Account", "z"), None);
    account.lock_owner = Some("o1".into());
    commit(
        store,
        Batch {
            entities: vec![b, a, account, entity(counter("c"), Some(json!(2)))],
            produced: vec![signal(1, "a", None), signal(2, "c", Some(u64::MAX / 2))],
            instances: vec![
                instance_write(instance("o1", RuntimeStatus::Running), 0, vec![], true),
                instance_write(
                    InstanceRecord {
                        held: Some("step 0: differs".into()),
                        ..instance("o2", RuntimeStatus::Running)
                    },
                    0,
                    vec![],
                    true,
                ),
                instance_write(instance("o3", RuntimeStatus::Completed), 0, vec![], true),
            ],
            ..Batch::default()
        },
    )
    .await;
    let locks: Vec<(String, String)> = store
        .locked_entities()
        .await
        .expect("locked")
        .into_iter()
        .map(|lock| (lock.id.to_string(), lock.owner))
        .collect();
    assert_eq!(
        locks,
        [
            ("@account@z".to_string(), "o1".to_string()),
            ("@counter@a".to_string(), "o1".to_string()),
            ("@counter@b".to_string(), "o2".to_string()),
        ]
    );
    let mut stats = store.stats().await.expect("stats");
    stats.instances_by_status.retain(|(_, n)| *n > 0);
    stats
        .instances_by_status
        .sort_by_key(|(s, _)| format!("{s:?}"));
    assert_eq!(
        stats.instances_by_status,
        [(RuntimeStatus::Completed, 1), (RuntimeStatus::Running, 2)]
    );
    assert_eq!(stats.instances_held, 1);
    assert_eq!(stats.locked_entities, 3);
    assert_eq!(stats.scheduled_messages, 1);
    assert_eq!(stats.messages, 2);
}

/// Idempotency keys: a claim is stored with its batch (not at all if the batch fails), an
/// outcome replaces the outcome of a stored key only, a claim of a stored key replaces it,
/// and forgetting deletes the keys created before the given time, and only those.
pub async fn idempotency_keys_are_claimed_answered_and_forgotten(store: &dyn Store) {
    let key = |key: &str, created: u64, outcome: Value| IdempotencyKey {
        key: key.to_string(),
        created,
        outcome,
    };
    assert_eq!(store.idempotency_key("a").await.expect("read a key"), None);
    commit(
        store,
        Batch {
            produced: vec![signal(1, "k", None)],
            keys: vec![key("a", 100, json!("claimed")), key("b", 200, json!("b"))],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.idempotency_key("a").await.expect("read a key"),
        Some(key("a", 100, json!("claimed")))
    );
    // One batch: an outcome for a stored key and for none.
    commit(
        store,
        Batch {
            key_outcomes: vec![
                ("a".into(), json!({"answer": 1})),
                ("nobody".into(), json!(0)),
            ],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.idempotency_key("a").await.expect("read a key"),
        Some(key("a", 100, json!({"answer": 1})))
    );
    assert_eq!(store.idempotency_key("nobody").await.expect("read"), None);
    // A claim and its outcome in one batch: the outcome wins.
    commit(
        store,
        Batch {
            keys: vec![key("c", 300, json!("claimed"))],
            key_outcomes: vec![("c".into(), json!("answered"))],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.idempotency_key("c").await.expect("read"),
        Some(key("c", 300, json!("answered")))
    );
    // A failed batch stores none of its claims.
    let failed = store
        .commit(Batch {
            produced: vec![signal(1, "k", None)],
            keys: vec![key("d", 400, json!("claimed"))],
            ..Batch::default()
        })
        .await;
    assert!(failed.is_err(), "a batch storing message 1 twice fails");
    store.resume().await.expect("resume");
    assert_eq!(store.idempotency_key("d").await.expect("read"), None);
    // Forgetting: created before 200 only.
    commit(
        store,
        Batch {
            forget_keys_before: Some(200),
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(store.idempotency_key("a").await.expect("read"), None);
    assert!(store.idempotency_key("b").await.expect("read").is_some());
    assert!(store.idempotency_key("c").await.expect("read").is_some());
    // A new claim of a stored key replaces it.
    commit(
        store,
        Batch {
            keys: vec![key("b", 500, json!("again"))],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.idempotency_key("b").await.expect("read"),
        Some(key("b", 500, json!("again")))
    );
    // Exclusive claims: a key created at or after `keys_binding_since` refuses the batch as a
    // conflict, applying none of it; an older one is replaced.
    let refused = store
        .commit(Batch {
            produced: vec![signal(7, "k", None)],
            keys: vec![key("b", 600, json!("mine"))],
            keys_binding_since: Some(500),
            ..Batch::default()
        })
        .await
        .expect_err("b was claimed at 500, which still binds");
    assert!(refused.is_conflict(), "{refused}");
    store.resume().await.expect("resume");
    assert_eq!(
        store.idempotency_key("b").await.expect("read"),
        Some(key("b", 500, json!("again")))
    );
    assert!(
        !stored_ids(store).await.contains(&7),
        "a refused claim stored its message"
    );
    commit(
        store,
        Batch {
            produced: vec![signal(7, "k", None)],
            keys: vec![key("b", 700, json!("mine")), key("e", 700, json!("e"))],
            keys_binding_since: Some(501),
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.idempotency_key("b").await.expect("read"),
        Some(key("b", 700, json!("mine")))
    );
    assert!(store.idempotency_key("e").await.expect("read").is_some());
}

/// `idle_entities` lists the entities of one name with a state, no lock and no stored
/// message, written before the given time, at most `limit`; `scheduled_for` lists the
/// scheduled messages of one target by time.
pub async fn idle_entities_and_scheduled_for_find_their_rows(store: &dyn Store) {
    let at = |key: &str, last_modified: u64| EntityRecord {
        last_modified,
        ..entity(counter(key), Some(json!(1)))
    };
    let mut locked = at("locked", 10);
    locked.lock_owner = Some("owner".into());
    commit(
        store,
        Batch {
            entities: vec![
                at("old", 10),
                at("old2", 20),
                at("new", 1000),
                locked,
                at("waiting", 10),
                entity(counter("empty"), None),
                EntityRecord {
                    last_modified: 10,
                    ..entity(EntityId::new("Other", "old"), Some(json!(1)))
                },
            ],
            produced: vec![
                signal(1, "waiting", Some(5000)),
                signal(2, "waiting", Some(4000)),
                signal(3, "waiting", None),
                signal(4, "old", None),
            ],
            consumed: vec![],
            ..Batch::default()
        },
    )
    .await;
    // "old" has a message waiting until it is consumed.
    commit(
        store,
        Batch {
            consumed: vec![4],
            ..Batch::default()
        },
    )
    .await;
    let name = counter("x").name().to_string();
    let mut idle = store.idle_entities(&name, 500, 10).await.expect("idle");
    idle.sort();
    assert_eq!(idle, vec![counter("old"), counter("old2")]);
    assert_eq!(
        store
            .idle_entities(&name, 500, 1)
            .await
            .expect("idle")
            .len(),
        1
    );
    assert_eq!(
        store.idle_entities(&name, 15, 10).await.expect("idle"),
        vec![counter("old")]
    );
    let scheduled = store
        .scheduled_for(&Target::Entity(counter("waiting")))
        .await
        .expect("scheduled_for");
    assert_eq!(ids(&scheduled), vec![2, 1]);
    assert!(store
        .scheduled_for(&Target::Entity(counter("old")))
        .await
        .expect("scheduled_for")
        .is_empty());
}

/// `purge_instances` deletes up to `page_size` of the ended instances a query selects (by
/// name, status, creation and end time), oldest first, with their histories, and never a
/// running one; `query_instances` filters by end time the same way.
pub async fn purge_instances_deletes_the_ended_instances_a_query_selects(store: &dyn Store) {
    let specs = [
        ("r1", "alpha", RuntimeStatus::Running, 100),
        ("c1", "alpha", RuntimeStatus::Completed, 200),
        ("f1", "alpha", RuntimeStatus::Failed, 300),
        ("t1", "beta", RuntimeStatus::Terminated, 400),
        ("c2", "alpha", RuntimeStatus::Completed, 500),
        ("r2", "beta", RuntimeStatus::Running, 600),
    ];
    for (id, name, status, time) in specs {
        let mut record = instance(id, status);
        record.name = name.into();
        record.created = time;
        record.updated = time;
        commit(
            store,
            Batch {
                instances: vec![instance_write(record, 0, vec![json!(id)], true)],
                ..Batch::default()
            },
        )
        .await;
    }
    let ids = |page: crate::store::InstanceRecordPage| {
        page.instances.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let ended_before = InstanceQuery {
        ended_before: Some(450),
        page_size: 100,
        ..InstanceQuery::default()
    };
    assert_eq!(
        ids(store.query_instances(&ended_before).await.expect("query")),
        ["c1", "f1", "t1"]
    );
    // Running instances are never purged, even when asked for by status.
    let running = InstanceQuery {
        status: Some(RuntimeStatus::Running),
        page_size: 100,
        ..InstanceQuery::default()
    };
    assert_eq!(store.purge_instances(&running).await.expect("purge"), 0);
    // Held instances are running ones: asking for them purges nothing.
    let held = InstanceQuery {
        held: Some(true),
        page_size: 100,
        ..InstanceQuery::default()
    };
    assert_eq!(store.purge_instances(&held).await.expect("purge"), 0);
    // By name and end time, one at a time, oldest first.
    let alpha_early = InstanceQuery {
        name: Some("alpha".into()),
        ended_before: Some(450),
        page_size: 1,
        ..InstanceQuery::default()
    };
    assert_eq!(store.purge_instances(&alpha_early).await.expect("purge"), 1);
    assert_eq!(store.read_instance("c1").await.expect("read"), None);
    assert!(store.read_history("c1").await.expect("history").is_empty());
    assert!(store.read_instance("f1").await.expect("read").is_some());
    assert_eq!(store.purge_instances(&alpha_early).await.expect("purge"), 1);
    assert_eq!(store.read_instance("f1").await.expect("read"), None);
    assert_eq!(store.purge_instances(&alpha_early).await.expect("purge"), 0);
    // By status.
    let terminated = InstanceQuery {
        status: Some(RuntimeStatus::Terminated),
        page_size: 10,
        ..InstanceQuery::default()
    };
    assert_eq!(store.purge_instances(&terminated).await.expect("purge"), 1);
    // Everything ended.
    let everything = InstanceQuery {
        page_size: 10,
        ..InstanceQuery::default()
    };
    assert_eq!(store.purge_instances(&everything).await.expect("purge"), 1);
    assert_eq!(
        ids(store.query_instances(&everything).await.expect("query")),
        ["r1", "r2"]
    );
    assert_eq!(
        store.read_history("r1").await.expect("history"),
        [json!("r1")]
    );
}

/// A write with `restart` replaces the stored history with its events and the stored input
/// with its record's; later writes append to the new history.
pub async fn a_restart_replaces_the_history_and_the_input(store: &dyn Store) {
    commit(store, create("o", vec![json!(0), json!(1), json!(2)])).await;
    commit(store, create("p", vec![json!("p0")])).await;
    let mut record = instance("o", RuntimeStatus::Running);
    record.input = json!("second run");
    record.updated = 20;
    let mut restart = instance_write(record.clone(), 0, vec![json!("a")], false);
    restart.restart = true;
    commit(
        store,
        Batch {
            instances: vec![restart],
            ..Batch::default()
        },
    )
    .await;
    assert_eq!(
        store.read_history("o").await.expect("history"),
        [json!("a")]
    );
    let stored = store
        .read_instance("o")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(stored.input, json!("second run"));
    assert_eq!(stored.updated, 20);
    assert_eq!(stored.created, 10);
    // A turn, then a restart, then a turn of the new run, queued together (a store may merge
    // them into one transaction).
    let mut again = instance_write(record.clone(), 0, vec![json!("x")], false);
    again.restart = true;
    again.record.input = json!("third run");
    let writes = [
        instance_write(record.clone(), 1, vec![json!("b")], false),
        again,
        instance_write(record, 1, vec![json!("y")], false),
    ];
    let pending: Vec<_> = writes
        .into_iter()
        .map(|write| {
            store.commit(Batch {
                instances: vec![write],
                ..Batch::default()
            })
        })
        .collect();
    for commit in pending {
        commit.await.expect("commit");
    }
    assert_eq!(
        store.read_history("o").await.expect("history"),
        [json!("x"), json!("y")]
    );
    assert_eq!(
        store
            .read_instance("o")
            .await
            .expect("read")
            .expect("exists")
            .input,
        json!("third run")
    );
    assert_eq!(
        store.read_history("p").await.expect("history"),
        [json!("p0")]
    );
}
