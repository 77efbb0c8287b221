//! State versions (issue 14): `#[entity(version = N, migrate = ..)]` over entities stored in
//! SQLite by older code, across runtime restarts: a chain 1 -> 2 -> 3, a failing migration, a
//! state from a newer version, reads of migrated states, and function entities reading the
//! stored version from their context.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::path::Path;
use std::time::Duration;

use entities::prelude::*;
use entities::{Error, RuntimeBuilder, StateVersionError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The first shape: one name.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct ProfileV1 {
    name: String,
}

#[entity(name = "Profile")]
impl ProfileV1 {
    pub fn set_name(&mut self, name: String) {
        self.name = name;
    }
    pub fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The second shape: the name split in two.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct ProfileV2 {
    first: String,
    last: String,
}

#[entity(name = "Profile", version = 2, migrate = Self::migrate)]
impl ProfileV2 {
    fn migrate(from_version: u32, old: Value) -> Result<Self, String> {
        match from_version {
            1 => {
                let name = old["name"].as_str().ok_or("the state has no name")?;
                if name == "Boom Boom" {
                    panic!("the migration exploded on {name}");
                }
                let (first, last) = name
                    .split_once(' ')
                    .ok_or_else(|| format!("cannot split the name `{name}` in two"))?;
                Ok(Self {
                    first: first.into(),
                    last: last.into(),
                })
            }
            other => Err(format!("no migration from version {other}")),
        }
    }
    pub fn set_last(&mut self, last: String) {
        self.last = last;
    }
    pub fn meddle(&mut self, ctx: &mut EntityContext) -> u32 {
        ctx.set_state_version(9);
        self.last = "meddled".into();
        ctx.state_version()
    }
    pub fn describe(&self) -> String {
        format!("{} / {}", self.first, self.last)
    }
}

/// The third shape: tags added, recording which version each state came from.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct ProfileV3 {
    first: String,
    last: String,
    tags: Vec<String>,
}

#[entity(name = "Profile", version = 3, migrate = Self::migrate)]
impl ProfileV3 {
    fn migrate(from_version: u32, old: Value) -> Result<Self, String> {
        let v2 = match from_version {
            1 => ProfileV2::migrate(1, old)?,
            2 => serde_json::from_value(old).map_err(|e| e.to_string())?,
            other => return Err(format!("no migration from version {other}")),
        };
        Ok(Self {
            first: v2.first,
            last: v2.last,
            tags: vec![format!("from-v{from_version}")],
        })
    }
    pub fn tag(&mut self, tag: String) {
        self.tags.push(tag);
    }
    pub fn describe(&self) -> String {
        format!("{} / {} {:?}", self.first, self.last, self.tags)
    }
}

/// A function entity that keeps its own versions: a number at version 1, `{"n": number}` at
/// version 2, upgraded by the function itself.
fn tally(ctx: &mut EntityContext) -> Result<(), OperationError> {
    match ctx.operation_name() {
        "version" => {
            let version = ctx.state_version();
            ctx.set_result(&version)?;
        }
        "add_v1" => {
            let n: i64 = ctx.state_or_default()?;
            ctx.set_state(&(n + ctx.input::<i64>()?))?;
        }
        "add_v2" => {
            let n = match ctx.state_version() {
                1 => ctx.state_or_default::<i64>()?,
                _ => ctx
                    .state::<Value>()
                    .map_or(0, |v| v["n"].as_i64().unwrap_or(0)),
            };
            ctx.set_state(&json!({ "n": n + ctx.input::<i64>()? }))?;
            ctx.set_state_version(2);
        }
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

async fn runtime(path: &Path, register: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> Runtime {
    register(
        Runtime::builder()
            .store(SqliteStore::open(path).unwrap())
            .entity_fn("Tally", tally),
    )
    .start()
    .await
    .unwrap()
}

/// `(state, state_version)` of a stored profile, read from the database file itself.
fn stored(path: &Path, key: &str) -> (Value, u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT state, state_version FROM entities WHERE name = ?1 AND key = ?2",
        rusqlite::params!["profile", key],
        |row| {
            let state: String = row.get(0)?;
            Ok((serde_json::from_str(&state).unwrap(), row.get(1)?))
        },
    )
    .unwrap()
}

fn profile(key: &str) -> EntityId {
    EntityId::new("Profile", key)
}

#[tokio::test]
async fn a_migration_chain_runs_over_stored_states_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("versions.db");

    // Version 1 stores two profiles.
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV1>).await;
    let client = rt.client();
    for (key, name) in [("ada", "Ada Lovelace"), ("alan", "Alan Turing")] {
        client
            .call::<ProfileV1>(key)
            .set_name(name.into())
            .await
            .unwrap();
    }
    rt.shutdown().await.unwrap();
    assert_eq!(stored(&path, "ada"), (json!({"name": "Ada Lovelace"}), 1));

    // Version 2: reads return the migrated value; a write stores version 2; a read-only
    // operation and a read leave the stored state as it was.
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV2>).await;
    let client = rt.client();
    let read = client
        .get_entity::<ProfileV2>("ada")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.state,
        ProfileV2 {
            first: "Ada".into(),
            last: "Lovelace".into()
        }
    );
    assert_eq!(
        client.call::<ProfileV2>("alan").describe().await.unwrap(),
        "Alan / Turing"
    );
    client
        .call::<ProfileV2>("ada")
        .set_last("King".into())
        .await
        .unwrap();
    let page = client
        .query_entities(EntityQuery {
            name: Some("Profile".into()),
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    let states: Vec<Value> = page.entities.into_iter().filter_map(|m| m.state).collect();
    assert_eq!(
        states,
        [
            json!({"first": "Ada", "last": "King"}),
            json!({"first": "Alan", "last": "Turing"})
        ],
        "queries return migrated states"
    );
    rt.shutdown().await.unwrap();
    assert_eq!(
        stored(&path, "ada"),
        (json!({"first": "Ada", "last": "King"}), 2)
    );
    assert_eq!(
        stored(&path, "alan"),
        (json!({"name": "Alan Turing"}), 1),
        "only a write stores the new version"
    );

    // Version 3: `ada` migrates from 2, `alan` from 1.
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV3>).await;
    let client = rt.client();
    assert_eq!(
        client.call::<ProfileV3>("ada").describe().await.unwrap(),
        r#"Ada / King ["from-v2"]"#
    );
    let alan = client
        .get_entity::<ProfileV3>("alan")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alan.state.tags, ["from-v1"]);
    client
        .call::<ProfileV3>("alan")
        .tag("x".into())
        .await
        .unwrap();
    client
        .call::<ProfileV3>("ada")
        .tag("y".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    assert_eq!(
        stored(&path, "alan"),
        (
            json!({"first": "Alan", "last": "Turing", "tags": ["from-v1", "x"]}),
            3
        )
    );
    assert_eq!(stored(&path, "ada").1, 3);

    // Once at version 3, version 3 code reads the states as they are (no migration).
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV3>).await;
    assert_eq!(
        rt.client()
            .call::<ProfileV3>("ada")
            .describe()
            .await
            .unwrap(),
        r#"Ada / King ["from-v2", "y"]"#
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_migration_fails_the_entity_and_leaves_its_state_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failing.db");
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV1>).await;
    let client = rt.client();
    client
        .call::<ProfileV1>("plato")
        .set_name("Plato".into())
        .await
        .unwrap();
    client
        .call::<ProfileV1>("ada")
        .set_name("Ada Lovelace".into())
        .await
        .unwrap();
    client
        .call::<ProfileV1>("boom")
        .set_name("Boom Boom".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();

    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV2>).await;
    let client = rt.client();
    // A migration that panics fails its entity only, from operations and from reads.
    let err = client
        .call::<ProfileV2>("boom")
        .describe()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the migration panicked: the migration exploded on Boom Boom"),
        "{err}"
    );
    assert!(matches!(
        client.get_entity::<ProfileV2>("boom").await,
        Err(Error::StateVersion(StateVersionError::Migration { .. }))
    ));
    let err = client
        .call::<ProfileV2>("plato")
        .set_last("X".into())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot split the name `Plato` in two"),
        "the operation fails with the migration's message: {err}"
    );
    client
        .signal::<ProfileV2>("plato")
        .set_last("Y".into())
        .await
        .unwrap();
    let err = client
        .call::<ProfileV2>("plato")
        .describe()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Plato"), "{err}");
    match client.get_entity::<ProfileV2>("plato").await {
        Err(Error::StateVersion(StateVersionError::Migration {
            from, to, message, ..
        })) => {
            assert_eq!((from, to), (1, 2));
            assert_eq!(message, "cannot split the name `Plato` in two");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }
    // An operator's repair is refused too: the row is never overwritten while it cannot be
    // read.
    assert!(client
        .set_entity_state(&profile("plato"), &json!({"first": "P", "last": "Q"}))
        .await
        .is_err());
    // Other entities of the same type go on.
    assert_eq!(
        client.call::<ProfileV2>("ada").describe().await.unwrap(),
        "Ada / Lovelace"
    );
    rt.shutdown().await.unwrap();
    assert_eq!(stored(&path, "plato"), (json!({"name": "Plato"}), 1));
    assert_eq!(stored(&path, "boom"), (json!({"name": "Boom Boom"}), 1));

    // The version 1 code still reads it.
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV1>).await;
    assert_eq!(
        rt.client()
            .call::<ProfileV1>("plato")
            .describe()
            .await
            .unwrap(),
        "Plato"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_state_from_a_newer_version_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV1>).await;
    rt.client()
        .call::<ProfileV1>("ada")
        .set_name("Ada Lovelace".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV3>).await;
    rt.client()
        .call::<ProfileV3>("ada")
        .tag("v3".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    let at_v3 = stored(&path, "ada");
    assert_eq!(at_v3.1, 3);

    // Rolled back to version 2 code: every operation fails, saying what to do.
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV2>).await;
    let client = rt.client();
    let err = client
        .call::<ProfileV2>("ada")
        .set_last("Byron".into())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("version 3") && message.contains("newer than version 2"),
        "{message}"
    );
    client
        .signal::<ProfileV2>("ada")
        .set_last("Byron".into())
        .await
        .unwrap();
    assert!(client.call::<ProfileV2>("ada").describe().await.is_err());
    match client.get_entity::<ProfileV2>("ada").await {
        Err(Error::StateVersion(StateVersionError::Newer {
            stored, current, ..
        })) => assert_eq!((stored, current), (3, 2)),
        other => panic!("expected a newer-version error, got {other:?}"),
    }
    rt.shutdown().await.unwrap();
    // Version 1 code (no `version` at all) refuses it too.
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV1>).await;
    let err = rt
        .client()
        .call::<ProfileV1>("ada")
        .set_name("Ada".into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer than version 1"), "{err}");
    rt.shutdown().await.unwrap();
    assert_eq!(stored(&path, "ada"), at_v3, "the stored row is untouched");
}

#[tokio::test]
async fn function_entities_read_and_set_their_stored_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    let id = EntityId::new("Tally", "t");
    let rt = runtime(&path, |b| b).await;
    let client = rt.client();
    let version = |client: Client| {
        let id = id.clone();
        async move {
            client
                .call_entity::<u32, _>(&id, "version", &())
                .await
                .unwrap()
        }
    };
    assert_eq!(version(client.clone()).await, 1, "no state yet");
    client
        .call_entity::<(), _>(&id, "add_v1", &5)
        .await
        .unwrap();
    assert_eq!(version(client.clone()).await, 1);
    rt.shutdown().await.unwrap();

    let rt = runtime(&path, |b| b).await;
    let client = rt.client();
    assert_eq!(version(client.clone()).await, 1, "stored at version 1");
    client
        .call_entity::<(), _>(&id, "add_v2", &2)
        .await
        .unwrap();
    assert_eq!(version(client.clone()).await, 2);
    rt.shutdown().await.unwrap();

    let rt = runtime(&path, |b| b).await;
    let client = rt.client();
    assert_eq!(
        version(client.clone()).await,
        2,
        "the version survives a restart"
    );
    client
        .call_entity::<(), _>(&id, "add_v2", &1)
        .await
        .unwrap();
    assert_eq!(
        client.get_entity_raw(&id).await.unwrap().unwrap().state,
        json!({"n": 8})
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_migrated_state_in_memory_is_written_with_the_new_version_by_a_lock() {
    // A critical section writes the row of an entity it locks (its lock), without an operation
    // changing the state: the row then carries the migrated state and the new version, never
    // the old state under the new version.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.db");
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV1>).await;
    rt.client()
        .call::<ProfileV1>("ada")
        .set_name("Ada Lovelace".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();

    async fn lock_it(ctx: OrchestrationContext, (): ()) -> entities::Result<String> {
        let section = ctx.lock(&[EntityId::new("Profile", "ada")]).await?;
        let described = ctx.call::<ProfileV2>("ada").describe().await?;
        drop(section);
        Ok(described)
    }
    let rt = runtime(&path, |b| {
        b.entity::<ProfileV2>().orchestration("lock_it", lock_it)
    })
    .await;
    let client = rt.client();
    let instance = client.start_orchestration("lock_it", &()).await.unwrap();
    let done = client
        .wait_for_orchestration(&instance, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.output::<String>().unwrap(), "Ada / Lovelace");
    rt.shutdown().await.unwrap();
    assert_eq!(
        stored(&path, "ada"),
        (json!({"first": "Ada", "last": "Lovelace"}), 2)
    );
}

#[tokio::test]
async fn a_class_entity_cannot_pick_its_stored_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meddle.db");
    let rt = runtime(&path, entities::RuntimeBuilder::entity::<ProfileV2>).await;
    let client = rt.client();
    client
        .call::<ProfileV2>("ada")
        .set_last("L".into())
        .await
        .unwrap();
    client.call::<ProfileV2>("ada").meddle().await.unwrap();
    assert_eq!(
        client.call::<ProfileV2>("ada").describe().await.unwrap(),
        " / meddled"
    );
    rt.shutdown().await.unwrap();
    assert_eq!(
        stored(&path, "ada"),
        (json!({"first": "", "last": "meddled"}), 2),
        "the code's version is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_stored_and_migrated_on_postgres() {
    use entities_postgres::test_server::TestServer;
    use entities_postgres::{PostgresOptions, PostgresStore};
    let Some(server) = TestServer::start_or_skip("versions_are_stored_and_migrated_on_postgres")
    else {
        return;
    };
    let url = server.create_database().await.unwrap();
    let start = |register: fn(RuntimeBuilder) -> RuntimeBuilder| {
        let url = url.clone();
        async move {
            let options = PostgresOptions {
                partitions: 4,
                lease: Duration::from_millis(1500),
                ..Default::default()
            };
            let store = PostgresStore::connect_with(&url, options).await.unwrap();
            register(Runtime::builder().store(store))
                .start()
                .await
                .unwrap()
        }
    };
    let rt = start(entities::RuntimeBuilder::entity::<ProfileV1>).await;
    rt.client()
        .call::<ProfileV1>("ada")
        .set_name("Ada Lovelace".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();

    let rt = start(entities::RuntimeBuilder::entity::<ProfileV2>).await;
    let client = rt.client();
    assert_eq!(
        client
            .get_entity::<ProfileV2>("ada")
            .await
            .unwrap()
            .unwrap()
            .state,
        ProfileV2 {
            first: "Ada".into(),
            last: "Lovelace".into()
        }
    );
    client
        .call::<ProfileV2>("ada")
        .set_last("King".into())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();

    // Stored at version 2: version 1 code refuses it, version 2 code reads it as it is.
    let rt = start(entities::RuntimeBuilder::entity::<ProfileV1>).await;
    let err = rt
        .client()
        .call::<ProfileV1>("ada")
        .describe()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has version 2"), "{err}");
    rt.shutdown().await.unwrap();
    let rt = start(entities::RuntimeBuilder::entity::<ProfileV2>).await;
    assert_eq!(
        rt.client()
            .call::<ProfileV2>("ada")
            .describe()
            .await
            .unwrap(),
        "Ada / King"
    );
    rt.shutdown().await.unwrap();
}
