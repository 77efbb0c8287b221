//! The orchestration side of the engine.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::warn;

use crate::engine::Shared;
use crate::error::StoreError;
use crate::message::Message;
use crate::store::Batch;

/// Active orchestration instances and activity work.
pub(crate) struct Orchestrations {
    #[allow(dead_code)]
    shared: Arc<Shared>,
    watchers: HashMap<String, Vec<oneshot::Sender<()>>>,
}

impl Orchestrations {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            watchers: HashMap::new(),
        }
    }

    pub(crate) fn has_work(&self) -> bool {
        false
    }

    pub(crate) fn deliver(&mut self, message: Message) {
        warn!(
            message = message.id,
            "orchestration message kept stored; orchestrations are not run by this version"
        );
    }

    pub(crate) fn watch(&mut self, id: String, done: oneshot::Sender<()>) {
        self.watchers.entry(id).or_default().push(done);
    }

    pub(crate) async fn run_steps(
        &mut self,
        _batch: &mut Batch,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    pub(crate) fn finished(&mut self, instances: Vec<String>) {
        for id in instances {
            for done in self.watchers.remove(&id).unwrap_or_default() {
                let _ = done.send(());
            }
        }
    }

    pub(crate) fn unload_idle(&mut self) {}
}
