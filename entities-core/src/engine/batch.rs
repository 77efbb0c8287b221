//! Building a batch: rounds of entity operations and orchestration turns whose effects commit
//! together.

use std::collections::{HashMap, HashSet};

use super::commits::Effects;
use super::entities::RoundOutput;
use super::Engine;
use crate::error::StoreError;
use crate::id::EntityId;
use crate::message::{MessageId, Target};
use crate::store::{Batch, EntityRecord, RemoteReply};

/// Most rounds in one batch (a round runs what the previous round made ready).
const MAX_ROUNDS: usize = 32;

/// A batch being built: what it will commit, and what waits for the commit.
#[derive(Default)]
struct Building {
    batch: Batch,
    /// Messages produced in this batch (and client messages it took in): stored with it
    /// unless consumed in it.
    local: HashSet<MessageId>,
    /// Messages of `local` consumed in the batch: never stored.
    dropped: HashSet<MessageId>,
    /// The last record of each entity the batch changed.
    writes: HashMap<EntityId, EntityRecord>,
    effects: Effects,
}

impl Engine {
    /// Runs one batch, then queues its commit. A batch runs in rounds: the operations that
    /// finished on their own tasks and the ready operations of entities and turns of
    /// orchestrations, then those made ready by the messages the round produced, and so on. A
    /// message produced and consumed in one batch commits (or is lost) with its producer, so
    /// it is never stored; only effects seen outside (client replies, ended instances,
    /// activities) wait for the commit. Client messages taken in since the last batch count
    /// as produced by this one: their senders hear back after its commit.
    ///
    /// With `only_finished` (when stopping), it records finished operations and stores the
    /// client messages taken in, and runs nothing else.
    pub(super) async fn run_batch(&mut self, only_finished: bool) -> Result<(), StoreError> {
        self.batch_no += 1;
        // On a shared store a commit can fail without applying (the partition moved, the
        // database went away): the client messages are kept to be sent again.
        let resend = self
            .partitioned
            .as_ref()
            .map(|_| (self.ingested.clone(), self.ingested_keys.clone()));
        let mut b = Building {
            local: self.ingested.iter().map(|m| m.id).collect(),
            batch: Batch {
                produced: std::mem::take(&mut self.ingested),
                consumed: std::mem::take(&mut self.cancelled),
                keys: std::mem::take(&mut self.ingested_keys),
                ..Batch::default()
            },
            effects: Effects {
                stored: std::mem::take(&mut self.cancel_acks),
                sends: std::mem::take(&mut self.ingested_acks),
                replies: std::mem::take(&mut self.cancel_replies),
                resend,
                ..Effects::default()
            },
            ..Building::default()
        };
        let span = tracing::debug_span!("batch", batch = self.batch_no);
        let rounds = self.run_rounds(&mut b, only_finished);
        if let Err(err) = tracing::Instrument::instrument(rounds, span.clone()).await {
            // The senders of the client messages it took in hear why they are not stored, or
            // are kept to be sent again.
            self.failed_effects(std::mem::take(&mut b.effects), &err);
            return Err(err);
        }
        let Building {
            mut batch,
            dropped,
            writes,
            effects,
            ..
        } = b;
        self.counts.consumed = (batch.consumed.len() + dropped.len()) as u64;
        batch.produced.retain(|m| !dropped.contains(&m.id));
        batch.entities = writes.into_values().collect();
        let mut effects = effects;
        if self.partitioned.is_some() {
            // Messages for partitions run elsewhere are picked up by their owner; replies to
            // calls made elsewhere go back through the store.
            batch.remote = batch
                .produced
                .iter()
                .filter(|m| !self.ownership.owns(m))
                .map(|m| m.id)
                .collect();
            let (here, elsewhere): (Vec<_>, Vec<_>) = std::mem::take(&mut effects.replies)
                .into_iter()
                .partition(|(waiter, _)| self.waiters.contains_key(waiter));
            effects.replies = here;
            batch.replies = elsewhere
                .into_iter()
                .map(|(waiter, reply)| RemoteReply {
                    waiter,
                    reply: serde_json::to_value(&reply).unwrap_or(serde_json::Value::Null),
                })
                .collect();
        }
        // Queued now, so batches commit in order.
        span.in_scope(|| self.commits.queue(batch, effects));
        (self.counts.ops_ok, self.counts.ops_failed) = self.entities.take_outcomes();
        self.counts
            .record(self.entities.waiting(), self.entities.len());
        Ok(())
    }

    /// Runs the rounds of a batch into `b`.
    async fn run_rounds(
        &mut self,
        b: &mut Building,
        only_finished: bool,
    ) -> Result<(), StoreError> {
        let mut ops = 0;
        for _ in 0..MAX_ROUNDS {
            if ops >= self.config.max_batch || !self.has_work() {
                break;
            }
            let mut round = Batch::default();
            let out = RoundOutput {
                round: &mut round,
                writes: &mut b.writes,
                replies: &mut b.effects.replies,
            };
            self.entities
                .run_round(out, self.batch_no, self.config.max_batch, only_finished)
                .await;
            if !only_finished {
                let ended = self.orchestrations.run_steps(&mut round).await?;
                b.effects.finished_instances.extend(ended);
            }
            if round.is_empty() {
                break; // only entities waiting for a lock or an operation were ready
            }
            ops += round.consumed.len();
            for id in round.consumed {
                if b.local.remove(&id) {
                    b.dropped.insert(id);
                } else {
                    b.batch.consumed.push(id);
                }
            }
            for message in round.produced {
                if matches!(message.target, Target::Activity) {
                    b.effects.deferred.push(message.clone());
                } else if self.ownership.owns(&message) {
                    b.local.insert(message.id);
                    self.deliver(message.clone());
                }
                b.batch.produced.push(message);
            }
            b.batch.instances.extend(round.instances);
            b.batch.key_outcomes.extend(round.key_outcomes);
        }
        Ok(())
    }
}
