//! The commit pipeline: the one owner of the engine's writes. Batches are queued with the
//! store in order and complete in that order; what waits for a commit (answers to senders,
//! replies, ended instances, activities) travels with it as its [`Effects`].

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};

use super::protocol::Stored;
use crate::error::StoreError;
use crate::message::CallReply;
use crate::message::Message;
use crate::store::{Batch, InstanceRecord, Store};

/// Effects released once a batch has committed.
#[derive(Default)]
pub(crate) struct Effects {
    /// Clients waiting for the batch's deletions (cancelled scheduled messages).
    pub stored: Vec<Stored>,
    /// Clients whose messages the batch stores.
    pub sends: Vec<Stored>,
    /// On a shared store, the client messages the batch took in, with their keys: sent
    /// again if the commit fails without applying (see [`super::protocol::resendable`]).
    pub resend: Option<(Vec<Message>, Vec<crate::store::IdempotencyKey>)>,
    /// Replies to client calls.
    pub replies: Vec<(u64, CallReply)>,
    /// Messages delivered only after the commit (activities: side effects outside).
    pub deferred: Vec<Message>,
    /// The final records of instances that ended.
    pub finished_instances: Vec<InstanceRecord>,
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.stored.is_empty()
            && self.sends.is_empty()
            && self.replies.is_empty()
            && self.deferred.is_empty()
            && self.finished_instances.is_empty()
    }
}

/// A commit that finished, with its effects.
pub(crate) type Done = (Result<(), StoreError>, Effects);

/// Commits queued with the store and not finished yet, in queue order.
pub(crate) struct Commits {
    store: Arc<dyn Store>,
    inflight: FuturesOrdered<BoxFuture<'static, Done>>,
}

impl Commits {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            inflight: FuturesOrdered::new(),
        }
    }

    /// Queues `batch` with the store now (so commits apply in call order); its effects are
    /// released when it is done. A batch that changes nothing and waits for nothing is skipped.
    pub(crate) fn queue(&mut self, batch: Batch, effects: Effects) {
        if batch.is_empty() && effects.is_empty() {
            return;
        }
        let span = tracing::debug_span!(
            "commit",
            entities = batch.entities.len(),
            consumed = batch.consumed.len(),
            produced = batch.produced.len(),
        );
        // The store is called inside the span: a store that hands the write to another
        // thread can carry the span along.
        let commit = span.in_scope(|| self.store.commit(batch));
        let started = std::time::Instant::now();
        let done = commit.map(move |result| {
            crate::metrics::commit_done(started.elapsed(), result.is_ok());
            (result.map(drop), effects)
        });
        self.inflight
            .push_back(Box::pin(tracing::Instrument::instrument(done, span)));
    }

    /// Commits under way.
    pub(crate) fn len(&self) -> usize {
        self.inflight.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// The next commit to finish (pending forever when none is under way).
    pub(crate) async fn next(&mut self) -> Done {
        match self.inflight.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// The next commit if it has finished already.
    pub(crate) fn try_next(&mut self) -> Option<Done> {
        self.inflight.next().now_or_never().flatten()
    }
}
