//! The client's methods over scheduled messages: listing one-off signals and schedules,
//! adding schedules, and cancelling either.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use super::Client;
use crate::engine::{Command, Stored};
use crate::error::{Error, Result};
use crate::id::EntityId;
use crate::message::PendingSignal;
use crate::message::{from_millis, Body, Message, MessageId, Target};
use crate::schedule::{Schedule, ScheduleId, ScheduleInfo};

impl Client {
    /// The scheduled one-off signals waiting for entity `id` (sent with a delivery time, by
    /// [`Client::signal_entity_at`] or an entity's `signal_at`, and not run yet), by due time.
    pub async fn pending_signals(&self, id: &EntityId) -> Result<Vec<PendingSignal>> {
        Ok(self
            .pending(id)
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// The stored scheduled signals of `id`, with what they show.
    async fn pending(&self, id: &EntityId) -> Result<Vec<(Message, PendingSignal)>> {
        self.scheduled_for(id, |m| match &m.body {
            Body::Operation {
                name,
                input,
                reply: None,
                ..
            } if !name.starts_with(crate::message::RESERVED_PREFIX) => Some(PendingSignal {
                id: m.id,
                operation: name.clone(),
                input: input.clone(),
                due: from_millis(m.deliver_at.unwrap_or(0)),
            }),
            _ => None,
        })
        .await
    }

    /// The stored scheduled messages of `id` that `view` shows, with what it shows of them.
    async fn scheduled_for<T>(
        &self,
        id: &EntityId,
        view: impl Fn(&Message) -> Option<T>,
    ) -> Result<Vec<(Message, T)>> {
        let stored = self
            .shared
            .store
            .scheduled_for(&Target::Entity(id.clone()))
            .await?;
        Ok(stored
            .into_iter()
            .filter_map(|m| view(&m).map(|shown| (m, shown)))
            .collect())
    }

    /// Cancels the scheduled signal `signal` of entity `id` (an id from
    /// [`Client::pending_signals`]) if it has not run yet. Returns whether it was cancelled;
    /// `false` if it ran already, is running, or is no scheduled signal of this entity. On a
    /// store shared by several processes, the cancel goes to the process that runs the
    /// entity's partition, through the store, and returns its answer.
    pub async fn cancel_signal(&self, id: &EntityId, signal: MessageId) -> Result<bool> {
        let found = self
            .pending(id)
            .await?
            .into_iter()
            .find(|(m, _)| m.id == signal);
        match found {
            Some((message, _)) => self.cancel_message(id, message).await,
            None => Ok(false),
        }
    }

    /// Has the engine drop a stored scheduled message of `id` that has not run and delete it.
    async fn cancel_message(&self, id: &EntityId, message: Message) -> Result<bool> {
        let (found_tx, found) = oneshot::channel();
        let (tx, stored) = oneshot::channel();
        let (scheduled, at) = (message.id, message.deliver_at);
        self.shared
            .commands
            .send(Command::Cancel {
                message: Box::new(message),
                found: found_tx,
                stored: Stored::new(tx, 0),
            })
            .map_err(|_| Error::Shutdown)?;
        let found = found.await.map_err(|_| Error::Shutdown)?;
        stored.await.map_err(|_| Error::Shutdown)??;
        match found {
            Some(found) => Ok(found),
            None => self.cancel_elsewhere(id, scheduled, at.unwrap_or(0)).await,
        }
    }

    /// Has the process that runs the partition of `id` cancel `message`: the cancel goes
    /// through the store like any message to another process, and its answer comes back
    /// once the deletion committed.
    async fn cancel_elsewhere(&self, id: &EntityId, message: MessageId, at: u64) -> Result<bool> {
        let waiter = self.shared.next_message_id();
        let cancel = Message {
            id: waiter,
            target: Target::Entity(id.clone()),
            deliver_at: None,
            body: Body::Cancel {
                message,
                at,
                reply: crate::message::ReplyTo::Client(waiter),
            },
        };
        let (tx, rx) = oneshot::channel();
        self.store_and_deliver(vec![cancel], Some((waiter, tx)))
            .await?;
        match rx.await.map_err(|_| Error::Shutdown)? {
            Ok(Some(serde_json::Value::Bool(cancelled))) => Ok(cancelled),
            Ok(other) => Err(Error::Store(crate::error::StoreError::new(format!(
                "the answer to a cancel of {id} is not a boolean: {other:?}"
            )))),
            Err(err) => Err(Error::Operation(err)),
        }
    }

    /// Starts a recurring schedule: entity `id` is signalled `operation` with `input` at every
    /// fire of `schedule`, until [`Client::cancel_schedule`]. Fires are durable: each fire and
    /// the storing of the next one commit together, and fires missed while no runtime ran come
    /// due once, at the next start. Resolves once the schedule is stored.
    pub async fn schedule<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
        schedule: Schedule,
    ) -> Result<ScheduleId> {
        self.shared.registry.check_entity(id)?;
        if operation.starts_with(crate::message::RESERVED_PREFIX) {
            return Err(Error::ReservedOperation(operation.to_string()));
        }
        let input = crate::json::to_value(input)?;
        let first = schedule
            .next_after(self.shared.now_millis())?
            .ok_or_else(|| Error::InvalidSchedule(format!("{schedule:?} never fires after now")))?;
        let message_id = self.shared.next_message_id();
        let message = Message {
            id: message_id,
            target: Target::Entity(id.clone()),
            deliver_at: Some(first),
            body: Body::Recurring {
                schedule: message_id,
                name: operation.to_string(),
                input: Some(input),
                every: schedule,
            },
        };
        self.store_and_deliver(vec![message], None).await?;
        Ok(ScheduleId(message_id))
    }

    /// The recurring schedules of entity `id`, by next fire.
    pub async fn schedules(&self, id: &EntityId) -> Result<Vec<ScheduleInfo>> {
        Ok(self
            .recurring(id)
            .await?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    /// The stored next fires of the schedules of `id`, with what they show.
    async fn recurring(&self, id: &EntityId) -> Result<Vec<(Message, ScheduleInfo)>> {
        self.scheduled_for(id, |m| match &m.body {
            Body::Recurring {
                schedule,
                name,
                input,
                every,
            } => Some(ScheduleInfo {
                id: ScheduleId(*schedule),
                operation: name.clone(),
                input: input.clone(),
                schedule: every.clone(),
                next_fire: from_millis(m.deliver_at.unwrap_or(0)),
            }),
            _ => None,
        })
        .await
    }

    /// Stops the recurring schedule `schedule` of entity `id`: no fire after this returns
    /// (a fire under way at that moment still signals). Returns whether the schedule existed.
    pub async fn cancel_schedule(&self, id: &EntityId, schedule: ScheduleId) -> Result<bool> {
        // A fire under way consumes the stored one and stores the next: that one is cancelled
        // once it is stored.
        for _ in 0..CANCEL_ATTEMPTS {
            let Some((message, _)) = self
                .recurring(id)
                .await?
                .into_iter()
                .find(|(_, info)| info.id == schedule)
            else {
                return Ok(false);
            };
            if self.cancel_message(id, message).await? {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(Error::Store(crate::error::StoreError::new(format!(
            "schedule {schedule} of {id} kept firing while it was being cancelled; try again"
        ))))
    }
}

/// How often [`Client::cancel_schedule`] looks again for a fire that moved on meanwhile.
const CANCEL_ATTEMPTS: usize = 200;
