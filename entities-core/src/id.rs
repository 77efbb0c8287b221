//! Entity ids: a case-insensitive name and a case-sensitive key, written `@name@key`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The address of an entity: its name (the entity type, case-insensitive, stored lower-cased)
/// and its key (case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntityId {
    // Shared, so that the many copies the runtime makes (one per message and operation) cost
    // no allocation.
    name: Arc<str>,
    key: Arc<str>,
}

impl EntityId {
    /// Creates an id. Panics if the name is empty or contains `@`; use [`EntityId::try_new`]
    /// for names that come from outside the program.
    pub fn new(name: impl AsRef<str>, key: impl Into<String>) -> Self {
        match Self::try_new(name, key) {
            Ok(id) => id,
            Err(err) => panic!("{err}"),
        }
    }

    /// Creates an id, refusing an empty name or a name containing `@`.
    pub fn try_new(name: impl AsRef<str>, key: impl Into<String>) -> Result<Self, Error> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(Error::InvalidEntityId("the entity name is empty".into()));
        }
        if name.contains('@') {
            return Err(Error::InvalidEntityId(format!(
                "the entity name `{name}` contains `@`, which separates name and key"
            )));
        }
        Ok(Self {
            name: name.to_lowercase().into(),
            key: key.into().into(),
        })
    }

    /// The entity name, lower-cased.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entity key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

impl FromStr for EntityId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let rest = s.strip_prefix('@').ok_or_else(|| {
            Error::InvalidEntityId(format!(
                "`{s}` does not start with `@` (expected `@name@key`)"
            ))
        })?;
        let (name, key) = rest.split_once('@').ok_or_else(|| {
            Error::InvalidEntityId(format!("`{s}` has no second `@` (expected `@name@key`)"))
        })?;
        Self::try_new(name, key)
    }
}

impl TryFrom<String> for EntityId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<EntityId> for String {
    fn from(id: EntityId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_keys_are_not() {
        assert_eq!(EntityId::new("Counter", "a"), EntityId::new("counter", "a"));
        assert_ne!(EntityId::new("Counter", "a"), EntityId::new("Counter", "A"));
    }

    #[test]
    fn display_and_parse_round_trip() {
        let id = EntityId::new("Counter", "Game1@x");
        assert_eq!(id.to_string(), "@counter@Game1@x");
        assert_eq!("@counter@Game1@x".parse::<EntityId>().unwrap(), id);
        assert_eq!("@c@".parse::<EntityId>().unwrap().key(), "");
    }

    #[test]
    fn bad_ids_are_errors() {
        assert!(EntityId::try_new("", "k").is_err());
        assert!(EntityId::try_new("a@b", "k").is_err());
        assert!("counter@k".parse::<EntityId>().is_err());
        assert!("@counter".parse::<EntityId>().is_err());
        assert!("@@k".parse::<EntityId>().is_err());
    }
}
