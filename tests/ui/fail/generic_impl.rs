use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Wrapper<T> {
    inner: T,
}

#[entity]
impl<T> Wrapper<T> {
    pub fn get(&self) -> i64 {
        0
    }
}

fn main() {}
