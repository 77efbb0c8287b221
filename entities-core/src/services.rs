//! Services: values registered by type with `Runtime::builder().service(value)`, shared
//! read-only with entity operations ([`EntityContext::service`](crate::EntityContext::service))
//! and activities ([`ActivityContext::service`]). Orchestrations do not see them: they must
//! stay deterministic, so they reach services through activities.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::MissingService;

/// The services of one runtime, by type. Cheap to clone: clones share the map.
#[derive(Clone, Default)]
pub(crate) struct Services {
    by_type: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Services {
    /// Registers `value` as the service of its type; `false` if that type had one already
    /// (which is then kept).
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: Arc<T>) -> bool {
        match Arc::make_mut(&mut self.by_type).entry(TypeId::of::<T>()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value);
                true
            }
        }
    }

    /// The service of type `T`.
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Result<&T, MissingService> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|service| service.downcast_ref::<T>())
            .ok_or_else(MissingService::of::<T>)
    }

    /// The service of type `T`, shared.
    pub(crate) fn get_arc<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, MissingService> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|service| service.clone().downcast::<T>().ok())
            .ok_or_else(MissingService::of::<T>)
    }
}

/// What an activity registered with
/// [`RuntimeBuilder::activity_with_context`](crate::RuntimeBuilder::activity_with_context)
/// receives besides its input: its name, the orchestration instance that called it, and the
/// runtime's services. Cheap to clone.
#[derive(Clone)]
pub struct ActivityContext {
    name: Arc<str>,
    instance: Arc<str>,
    services: Services,
}

impl ActivityContext {
    pub(crate) fn new(name: &str, instance: &str, services: Services) -> Self {
        Self {
            name: name.into(),
            instance: instance.into(),
            services,
        }
    }

    /// The activity's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id of the orchestration instance that called the activity.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The service of type `T` registered with `Runtime::builder().service(value)`, or an
    /// error naming `T` if none was.
    pub fn service<T: Send + Sync + 'static>(&self) -> Result<&T, MissingService> {
        self.services.get::<T>()
    }

    /// The service of type `T`, shared: an `Arc` to keep across `.await`s in a spawned task.
    pub fn service_arc<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, MissingService> {
        self.services.get_arc::<T>()
    }
}

impl fmt::Debug for ActivityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityContext")
            .field("name", &self.name)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}
