use entities::prelude::*;
use serde::{Deserialize, Serialize};

pub struct Opaque;

#[derive(Default, Serialize, Deserialize)]
pub struct Holder {
    count: u32,
}

#[entity]
impl Holder {
    pub fn get(&self) -> Opaque {
        Opaque
    }
}

fn main() {}
