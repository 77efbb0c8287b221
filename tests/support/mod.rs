//! Fixtures shared by the integration tests that declare `mod support;`: those of
//! `entities-test-support`, under the names the tests use.
#![allow(unused_imports)] // each test file uses its own share

pub(crate) use entities_test_support::{counter, state_of};
