//! The names a runtime knows: entity functions, orchestrations and activities.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::entity::EntityFunction;
use crate::error::{Error, StateVersionError};
use crate::id::EntityId;
use crate::orchestration::{ActivityFn, OrchestrationFn};
use crate::services::Services;
use crate::store::EntityRecord;

/// The functions registered with one runtime.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) entities: HashMap<String, Arc<dyn EntityFunction>>,
    pub(crate) orchestrations: HashMap<String, Arc<dyn OrchestrationFn>>,
    pub(crate) activities: HashMap<String, Arc<dyn ActivityFn>>,
    /// Time to live of idle entities, by (lower-cased) entity name.
    pub(crate) ttls: HashMap<String, Duration>,
    pub(crate) services: Services,
    /// Accepts every name (for replay checks without a runtime, see `testing::replay`).
    pub(crate) open: bool,
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
        if self.open || self.entities.contains_key(id.name()) {
            Ok(())
        } else {
            Err(Error::UnknownEntity(id.name().to_string()))
        }
    }

    /// Brings a state read from the store to the version its entity's code reads (see
    /// `EntityFunction::versioning`), for the client's reads; a record without a state, or of
    /// a name not registered here, is left as it is.
    pub(crate) fn upgrade_record(
        &self,
        record: &mut EntityRecord,
    ) -> Result<(), StateVersionError> {
        let Some(function) = self.entity(record.id.name()) else {
            return Ok(());
        };
        if record.state.is_some() {
            let (state, version) = crate::entity::upgrade_state(
                &**function,
                &record.id,
                record.state.take(),
                record.state_version,
            )?;
            record.state = state;
            record.state_version = version;
        }
        Ok(())
    }

    /// Whether an orchestration of this name is registered.
    pub(crate) fn has_orchestration(&self, name: &str) -> bool {
        self.open || self.orchestrations.contains_key(name)
    }

    /// Whether an activity named `name` is registered.
    pub(crate) fn has_activity(&self, name: &str) -> bool {
        self.open || self.activities.contains_key(name)
    }
}
