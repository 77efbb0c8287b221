use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Greeter {
    greeting: String,
}

#[entity]
impl Greeter {
    pub fn set(&mut self, greeting: &str) {
        self.greeting = greeting.to_string();
    }
}

fn main() {}
