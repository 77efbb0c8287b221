use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Everything {
    value: i64,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    value: i64,
}

#[entity(name = "All")]
impl Everything {
    pub fn none(&mut self) {}
    pub fn one(&mut self, amount: i64) {
        self.value += amount;
    }
    pub fn several(&mut self, a: i64, b: String, c: Vec<u8>) -> usize {
        self.value += a;
        b.len() + c.len()
    }
    pub fn context_first(&self, ctx: &EntityContext, extra: i64) -> String {
        format!("{}{}", ctx.id(), extra)
    }
    pub fn context_mut_last(&mut self, amount: i64, ctx: &mut EntityContext) {
        let _ = ctx.operation_name();
        self.value += amount;
    }
    pub async fn later(&self) -> i64 {
        self.value
    }
    pub fn report(&self) -> Report {
        Report { value: self.value }
    }
    pub fn fallible(&mut self) -> Result<i64, String> {
        Ok(self.value)
    }
    pub fn fallible_unit(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
    pub fn unit(&self) -> () {}
    pub fn r#type(&self) -> String {
        "raw identifiers work".into()
    }
    fn helper(&self, _borrowed: &str) -> &str {
        "helpers may borrow"
    }
}

fn main() {
    let _ = EntityId::of::<Everything>("k");
    assert_eq!(<Everything as Entity>::NAME, "All");
}
