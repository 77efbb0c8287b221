//! The store conformance suite on the reference store, `MemoryStore`.

use entities_core::MemoryStore;

entities_core::store_conformance_tests!(async { MemoryStore::new() });
