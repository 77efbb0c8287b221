use entities::prelude::*;
use serde::{Deserialize, Serialize};

use std::borrow::Cow;

#[derive(Default, Serialize, Deserialize)]
pub struct Greeter {
    greeting: String,
}

#[entity]
impl Greeter {
    pub fn set(&mut self, greeting: Cow<'static, str>) {
        self.greeting = greeting.into_owned();
    }
}

fn main() {}
