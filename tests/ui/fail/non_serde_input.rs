use entities::prelude::*;
use serde::{Deserialize, Serialize};

pub struct Opaque;

#[derive(Default, Serialize, Deserialize)]
pub struct Holder {
    count: u32,
}

#[entity]
impl Holder {
    pub fn put(&mut self, _thing: Opaque) {
        self.count += 1;
    }
}

fn main() {}
