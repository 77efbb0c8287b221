use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity(version = 2, migrate = Self::migrate)]
impl Counter {
    // Returns an `Option` instead of `Result<Self, String>`.
    fn migrate(_from_version: u32, old: serde_json::Value) -> Option<Self> {
        old.as_i64().map(|value| Self { value })
    }

    pub fn get(&self) -> i64 {
        self.value
    }
}

fn main() {}
