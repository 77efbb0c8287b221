use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity(version = 0, migrate = Self::migrate)]
impl Counter {
    fn migrate(_from_version: u32, _old: serde_json::Value) -> Result<Self, String> {
        Ok(Self::default())
    }

    pub fn get(&self) -> i64 {
        self.value
    }
}

fn main() {}
