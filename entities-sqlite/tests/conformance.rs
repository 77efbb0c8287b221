//! The store conformance suite of `entities-core` on `SqliteStore`, each check on a database
//! file of its own in a temporary directory.

use entities_sqlite::SqliteStore;
use tempfile::TempDir;

/// A store on a new database file; the directory lives as long as the returned pair.
async fn temp_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().join("store.db")).expect("opening the store");
    (store, dir)
}

entities_core::store_conformance_tests!(temp_store());
