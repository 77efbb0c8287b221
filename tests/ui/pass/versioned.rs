use entities::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Profile {
    first: String,
    last: String,
}

// A `pub` migration function is not an operation; the path may name any function of the
// right signature.
#[entity(version = 2, migrate = Self::migrate)]
impl Profile {
    pub fn migrate(from_version: u32, old: serde_json::Value) -> Result<Self, String> {
        match from_version {
            1 => {
                let name = old["name"].as_str().ok_or("no name")?;
                let (first, last) = name.split_once(' ').unwrap_or((name, ""));
                Ok(Self {
                    first: first.into(),
                    last: last.into(),
                })
            }
            other => Err(format!("no migration from version {other}")),
        }
    }

    pub fn first(&self) -> String {
        self.first.clone()
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct Other {
    value: i64,
}

fn migrate_other(_from: u32, old: serde_json::Value) -> Result<Other, String> {
    Ok(Other {
        value: old.as_i64().unwrap_or(0),
    })
}

#[entity(version = 7, migrate = migrate_other)]
impl Other {
    pub fn get(&self) -> i64 {
        self.value
    }
}

fn main() {
    assert_eq!(<Profile as Entity>::VERSION, 2);
    assert_eq!(<Other as Entity>::VERSION, 7);
    let migrated = <Profile as Entity>::migrate_state(1, serde_json::json!({"name": "Ada Lovelace"}));
    assert_eq!(
        migrated,
        Ok(serde_json::json!({"first": "Ada", "last": "Lovelace"}))
    );
}
