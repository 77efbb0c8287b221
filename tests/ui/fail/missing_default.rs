use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct NoDefault {
    value: i64,
}

#[entity]
impl NoDefault {
    pub fn get(&self) -> i64 {
        self.value
    }
}

fn main() {}
