use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[entity(version = 3)]
impl Counter {
    pub fn get(&self) -> i64 {
        self.value
    }
}

fn main() {}
