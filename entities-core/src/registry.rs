//! The names a runtime knows: entity functions, orchestrations and activities.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::entity::EntityFunction;
use crate::error::Error;
use crate::id::EntityId;
use crate::orchestration::{ActivityFn, OrchestrationFn};

/// The functions registered with one runtime.
#[derive(Default)]
pub struct Registry {
    pub(crate) entities: HashMap<String, Arc<dyn EntityFunction>>,
    pub(crate) orchestrations: HashMap<String, Arc<dyn OrchestrationFn>>,
    pub(crate) activities: HashMap<String, Arc<dyn ActivityFn>>,
    /// Time to live of idle entities, by (lower-cased) entity name.
    pub(crate) ttls: HashMap<String, Duration>,
}

impl Registry {
    /// The entity function for a (lower-cased) entity name.
    pub(crate) fn entity(&self, name: &str) -> Option<&Arc<dyn EntityFunction>> {
        self.entities.get(name)
    }

    /// Whether entities named `name` expire, so that each operation refreshes their time.
    pub(crate) fn expires(&self, name: &str) -> bool {
        !self.ttls.is_empty() && self.ttls.contains_key(name)
    }

    /// `Ok` if an entity of this id's name is registered.
    pub(crate) fn check_entity(&self, id: &EntityId) -> Result<(), Error> {
        if self.entities.contains_key(id.name()) {
            Ok(())
        } else {
            Err(Error::UnknownEntity(id.name().to_string()))
        }
    }

    /// Whether an orchestration of this name is registered.
    pub(crate) fn has_orchestration(&self, name: &str) -> bool {
        self.orchestrations.contains_key(name)
    }
}
