use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity(version = 2, migrate = Self::migrate)]
impl Counter {
    // Takes the old state as a string, and forgets the version it comes from.
    fn migrate(old: String) -> Result<Self, String> {
        Ok(Self { value: old.len() as i64 })
    }

    pub fn get(&self) -> i64 {
        self.value
    }
}

fn main() {}
