//! The one place that builds the messages the engine sends: signals and starts from entity
//! operations, lock requests and grants, completions, releases and the steps of orchestrations.

use serde_json::Value;

use super::shared::Shared;
use crate::context::Outgoing;
use crate::id::EntityId;
use crate::message::{to_millis_ceil, Body, FailureKind, Message, Outcome, ReplyTo, Target};
use crate::orchestration::history::Action;

impl Shared {
    /// A new message with a fresh id.
    pub(crate) fn message(&self, target: Target, deliver_at: Option<u64>, body: Body) -> Message {
        Message {
            id: self.next_message_id(),
            target,
            deliver_at,
            body,
        }
    }

    /// The message for a signal or orchestration start sent by an entity operation.
    pub(crate) fn outgoing_message(&self, out: Outgoing) -> Message {
        match out {
            Outgoing::Signal {
                target,
                operation,
                input,
                at,
            } => self.message(
                Target::Entity(target),
                at.map(to_millis_ceil),
                Body::Operation {
                    name: operation,
                    input,
                    reply: None,
                    sender: None,
                },
            ),
            Outgoing::StartOrchestration {
                name,
                instance,
                input,
            } => self.message(
                Target::Instance(instance),
                None,
                Body::Start {
                    name,
                    input,
                    parent: None,
                },
            ),
        }
    }

    /// After an entity granted its lock at `position` of `ids`: the request to the next
    /// entity, or the grant to the owner once all are locked.
    pub(crate) fn next_lock_step(
        &self,
        owner: String,
        ids: Vec<EntityId>,
        position: usize,
        seq: u64,
    ) -> Message {
        if position + 1 < ids.len() {
            self.message(
                Target::Entity(ids[position + 1].clone()),
                None,
                Body::LockRequest {
                    owner,
                    ids,
                    position: position + 1,
                    seq,
                },
            )
        } else {
            self.message(
                Target::Instance(owner),
                None,
                Body::LockGranted { seq, ids },
            )
        }
    }

    /// The result of step `seq` for an orchestration instance.
    pub(crate) fn completion(&self, instance: String, seq: u64, result: Outcome) -> Message {
        self.message(
            Target::Instance(instance),
            None,
            Body::Completion { seq, result },
        )
    }

    /// An operation's result for the instance that called it.
    pub(crate) fn operation_completion(
        &self,
        instance: String,
        seq: u64,
        result: Result<Option<Value>, crate::error::OperationError>,
    ) -> Message {
        let result = match result {
            Ok(value) => Outcome::Ok(value.unwrap_or(Value::Null)),
            Err(err) => Outcome::Err(FailureKind::Operation, err.message().to_string()),
        };
        self.completion(instance, seq, result)
    }

    /// Releases `owner`'s lock on `entity`.
    pub(crate) fn release(&self, owner: &str, entity: EntityId) -> Message {
        self.message(
            Target::Entity(entity),
            None,
            Body::Release {
                owner: owner.to_string(),
            },
        )
    }

    /// The messages that carry out a step an orchestration scheduled.
    pub(crate) fn action_messages(
        &self,
        instance: &str,
        seq: u64,
        action: &Action,
    ) -> Vec<Message> {
        let reply = || {
            Some(ReplyTo::Instance {
                id: instance.to_string(),
                seq,
            })
        };
        match action.clone() {
            Action::Activity { name, input } => vec![self.message(
                Target::Activity,
                None,
                Body::Activity {
                    instance: instance.to_string(),
                    seq,
                    name,
                    input,
                },
            )],
            Action::CallEntity {
                id,
                operation,
                input,
            } => vec![self.message(
                Target::Entity(id),
                None,
                Body::Operation {
                    name: operation,
                    input,
                    reply: reply(),
                    sender: Some(instance.to_string()),
                },
            )],
            Action::SignalEntity {
                id,
                operation,
                input,
                at,
            } => vec![self.message(
                Target::Entity(id),
                at,
                Body::Operation {
                    name: operation,
                    input,
                    reply: None,
                    sender: Some(instance.to_string()),
                },
            )],
            Action::Timer { fire_at } => vec![self.message(
                Target::Instance(instance.to_string()),
                Some(fire_at),
                Body::Completion {
                    seq,
                    result: Outcome::Ok(Value::Null),
                },
            )],
            Action::SubOrchestration {
                name,
                instance: child,
                input,
            } => vec![self.message(
                Target::Instance(child),
                None,
                Body::Start {
                    name,
                    input,
                    parent: reply(),
                },
            )],
            Action::Lock { ids } => vec![self.message(
                Target::Entity(ids[0].clone()),
                None,
                Body::LockRequest {
                    owner: instance.to_string(),
                    ids,
                    position: 0,
                    seq,
                },
            )],
            Action::Release { ids } => ids
                .into_iter()
                .map(|entity| self.release(instance, entity))
                .collect(),
            Action::Patch { .. } => Vec::new(),
        }
    }
}
