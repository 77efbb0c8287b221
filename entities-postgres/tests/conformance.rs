//! The store conformance suite of `entities-core` on `PostgresStore`: each check on a database
//! of its own, on a private server shared by the checks that run at the same time.

use std::sync::{Arc, Mutex, Weak};

use entities_core::Store;
use entities_postgres::test_server::TestServer;
use entities_postgres::{PostgresOptions, PostgresStore};

static SERVER: Mutex<Weak<TestServer>> = Mutex::new(Weak::new());

/// The running server, or a new one; the process ends here (after one line saying why) when
/// there is none and none is required.
fn server() -> Arc<TestServer> {
    let mut shared = SERVER.lock().unwrap();
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let Some(server) = TestServer::start_or_skip("the PostgreSQL store conformance suite") else {
        std::process::exit(0);
    };
    let server = Arc::new(server);
    *shared = Arc::downgrade(&server);
    server
}

/// A store on a new database that owns every partition (as a lone runtime would).
async fn fresh_store() -> (PostgresStore, Arc<TestServer>) {
    let server = server();
    let url = server.create_database().await.expect("a new database");
    let store = PostgresStore::connect_with(&url, PostgresOptions::default())
        .await
        .expect("connecting");
    store.recover(0).await.expect("taking the partitions");
    assert_eq!(store.held_partitions().len(), store.partitions() as usize);
    (store, server)
}

entities_core::store_conformance_tests!(fresh_store());
