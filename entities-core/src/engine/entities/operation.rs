//! Running one operation: inline, or, once it suspends, on a task of its own under its
//! entity's timeout; and the operations the runtime reserves (fired schedules, set state).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tracing::{debug, warn};

use super::slot::Slot;
use super::{Part, Timeouts};
use crate::context::EntityContext;
use crate::engine::shared::Shared;
use crate::entity::EntityFunction;
use crate::error::{panic_message, OperationError};
use crate::id::EntityId;
use crate::message::{Body, MessageId, ReplyTo, Target, SET_STATE_OPERATION};

/// An `async` operation's future. It owns the operation's context and gives it back with the
/// outcome, so that it can be polled in the batch and, if it suspends, moved to a task.
pub(super) type OperationFuture = BoxFuture<'static, (EntityContext, Result<(), OperationError>)>;

/// An operation that suspended: it goes on on a task of its own.
pub(super) struct Suspended {
    pub(super) span: tracing::Span,
    pub(super) message: MessageId,
    pub(super) future: OperationFuture,
    pub(super) reply: Option<ReplyTo>,
}

/// An operation that finished on its own task.
pub(crate) struct OperationDone {
    pub(super) id: EntityId,
    pub(super) message: MessageId,
    pub(super) ctx: EntityContext,
    pub(super) outcome: Result<(), OperationError>,
    pub(super) reply: Option<ReplyTo>,
}

/// Runs the runnable messages of one entity, in order, as long as they finish without
/// suspending. Returns the operation that suspended, if one did (to go on under its entity's
/// timeout); the entity's later messages wait for it.
pub(super) fn run_entity_now(
    shared: &Arc<Shared>,
    function: &Arc<dyn EntityFunction>,
    id: &EntityId,
    slot: &mut Slot,
    cap: usize,
    timeouts: &Timeouts,
    part: &mut Part,
) -> Option<Suspended> {
    while part.consumed.len() < cap {
        let Some(index) = slot.runnable() else { break };
        let message = slot.queue.remove(index).expect("runnable index");
        if !slot.waits.is_empty() {
            slot.waits.remove(&message.id);
        }
        match message.body {
            Body::Operation {
                name,
                input,
                reply,
                sender: _,
            } if name == SET_STATE_OPERATION => {
                part.consumed.push(message.id);
                set_state(id, slot, input, reply, shared, part);
            }
            Body::Operation {
                name,
                input,
                reply,
                sender: _,
            } => {
                let span = tracing::debug_span!("operation", entity = %id, operation = %name);
                let entered = span.enter();
                let ctx = EntityContext::new(
                    id.clone(),
                    name,
                    input,
                    slot.state.take(),
                    slot.state_version,
                    shared.registry.clone(),
                );
                let mut ctx = ctx;
                let outcome = if let Some(poison) = &slot.poisoned {
                    Err(OperationError::new(poison))
                } else {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| function.run_now(&mut ctx)))
                    {
                        Ok(Some(outcome)) => outcome,
                        Ok(None) => {
                            // An `async` operation. The operation takes the state; if earlier
                            // operations of this round changed it, the batch writes it, so
                            // the slot keeps a copy of it as it was before this operation.
                            let before = if part.written {
                                ctx.state_raw().cloned()
                            } else {
                                None
                            };
                            let mut future =
                                operation_future(function.clone(), ctx, timeouts.of(id));
                            match future
                                .as_mut()
                                .poll(&mut Context::from_waker(Waker::noop()))
                            {
                                Poll::Ready((done, outcome)) => {
                                    ctx = done;
                                    outcome
                                }
                                Poll::Pending => {
                                    // It goes on on a task, whose first poll gives it the
                                    // task's waker. Until it finishes, the state stays what it
                                    // was.
                                    slot.state = before;
                                    drop(entered);
                                    return Some(Suspended {
                                        span,
                                        message: message.id,
                                        future,
                                        reply,
                                    });
                                }
                            }
                        }
                        Err(panic) => Err(panicked(&ctx, &panic)),
                    }
                };
                part.consumed.push(message.id);
                finish_operation(shared, id, slot, ctx, outcome, reply, part);
                drop(entered);
            }
            Body::LockRequest {
                owner,
                ids,
                position,
                seq,
            } => {
                part.consumed.push(message.id);
                slot.lock = Some(owner.clone());
                // What is queued already waits from now on (it arrived while unlocked).
                let now = Instant::now();
                for queued in &slot.queue {
                    slot.waits.entry(queued.id).or_insert(now);
                }
                part.written = true;
                part.produced
                    .push(shared.next_lock_step(owner, ids, position, seq));
            }
            Body::Release { owner } => {
                part.consumed.push(message.id);
                if slot.lock.as_deref() == Some(owner.as_str()) {
                    slot.lock = None;
                    part.written = true;
                }
            }
            Body::Recurring {
                schedule,
                name,
                input,
                every,
            } => {
                part.consumed.push(message.id);
                fire_schedule(shared, id, schedule, name, input, every, part);
            }
            Body::Expire { ttl_ms } => {
                part.consumed.push(message.id);
                let idle = slot.lock.is_none()
                    && slot.queue.is_empty()
                    && slot.poisoned.is_none()
                    && slot.state.is_some()
                    && slot.last_modified.saturating_add(ttl_ms) <= shared.now_millis();
                if idle {
                    debug!(entity = %id, ttl_ms, "idle entity expired; its state is deleted");
                    slot.state = None;
                    slot.last_modified = shared.now_millis();
                    part.written = true;
                }
            }
            other => {
                part.consumed.push(message.id);
                warn!(entity = %id, message = ?other, "message kind not meant for an entity; dropped");
            }
        }
    }
    None
}

/// Runs one fire of a recurring schedule: signals its operation to the entity (it runs next,
/// in this batch) and stores the fire after it, counted from now, so that fires missed while
/// no runtime ran come out as one.
pub(super) fn fire_schedule(
    shared: &Arc<Shared>,
    id: &EntityId,
    schedule: u64,
    name: String,
    input: Option<Value>,
    every: crate::schedule::Schedule,
    part: &mut Part,
) {
    match every.next_after(shared.now_millis()) {
        Ok(Some(at)) => part.produced.push(shared.message(
            Target::Entity(id.clone()),
            Some(at),
            Body::Recurring {
                schedule,
                name: name.clone(),
                input: input.clone(),
                every,
            },
        )),
        Ok(None) => debug!(entity = %id, schedule, "schedule has no fire left; it ends"),
        Err(err) => {
            warn!(entity = %id, schedule, error = %err, "schedule cannot compute its next fire; it ends");
        }
    }
    part.produced.push(shared.message(
        Target::Entity(id.clone()),
        None,
        Body::Operation {
            name,
            input,
            reply: None,
            sender: None,
        },
    ));
}

/// Runs the reserved operation of `Client::set_entity_state`: the input becomes the state,
/// and the caller hears back.
pub(super) fn set_state(
    id: &EntityId,
    slot: &mut Slot,
    input: Option<Value>,
    reply: Option<ReplyTo>,
    shared: &Arc<Shared>,
    part: &mut Part,
) {
    let result = match input {
        // Its stored row could not be read, lock included: writing it would drop a lock.
        Some(_) if slot.poisoned.is_some() => {
            let poison = slot.poisoned.as_deref().unwrap_or_default();
            warn!(entity = %id, reason = poison, "set_entity_state refused: the stored state cannot be read");
            Err(OperationError::new(format!(
                "set_entity_state of {id} is refused, so that its stored row (lock included) is \
                 not overwritten: {poison}"
            )))
        }
        Some(state) => {
            slot.state = Some(state);
            // A class entity's raw state is taken as of its code's version; a function
            // entity's keeps its version.
            if let Some(versioning) = shared
                .registry
                .entity(id.name())
                .and_then(|f| f.versioning())
            {
                slot.state_version = versioning.current;
            }
            slot.last_modified = shared.now_millis();
            part.written = true;
            Ok(None)
        }
        None => Err(OperationError::new("set_entity_state needs a state")),
    };
    match &result {
        Ok(_) => part.ok += 1,
        Err(err) => {
            part.failed += 1;
            shared
                .failures
                .record(id, SET_STATE_OPERATION, err.to_string(), shared.clock.now());
        }
    }
    match reply {
        None => {}
        Some(ReplyTo::Client(waiter)) => part.replies.push((waiter, result)),
        Some(ReplyTo::Keyed {
            waiter,
            key,
            request,
        }) => {
            let outcome = crate::keys::KeyOutcome::answer(&result, request.as_deref());
            part.key_outcomes.push((key, outcome));
            part.replies.push((waiter, result));
        }
        Some(ReplyTo::Instance { id: instance, seq }) => part
            .produced
            .push(shared.operation_completion(instance, seq, result)),
    }
}

/// The future of an `async` operation of `function` on `ctx`: a panic becomes the operation's
/// error, and so does running longer than `timeout` after its first suspension.
pub(super) fn operation_future(
    function: Arc<dyn EntityFunction>,
    mut ctx: EntityContext,
    timeout: Duration,
) -> OperationFuture {
    Box::pin(async move {
        let run = AssertUnwindSafe(async {
            Deadline {
                future: function.run(&mut ctx),
                limit: timeout,
                timer: None,
            }
            .await
        })
        .catch_unwind()
        .await;
        let outcome = match run {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                let id = ctx.id();
                warn!(entity = %id, operation = ctx.operation_name(), ?timeout, "operation timed out; its changes are rolled back");
                Err(OperationError::new(format!(
                    "operation `{}` of entity `{id}` timed out after {timeout:?}; its changes \
                     are rolled back",
                    ctx.operation_name()
                )))
            }
            Err(panic) => Err(panicked(&ctx, &panic)),
        };
        (ctx, outcome)
    })
}

/// A future limited to `limit` from its first suspension (`None` once over it). The timer is
/// made only then, so that an operation that finishes without suspending costs none.
pub(super) struct Deadline<F> {
    pub(super) future: F,
    pub(super) limit: Duration,
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F: Future + Unpin> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = this.future.poll_unpin(cx) {
            return Poll::Ready(Some(output));
        }
        let limit = this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    }
}

/// The error of an operation that panicked.
pub(super) fn panicked(
    ctx: &EntityContext,
    panic: &Box<dyn std::any::Any + Send>,
) -> OperationError {
    OperationError::new(format!(
        "operation `{}` panicked: {}",
        ctx.operation_name(),
        panic_message(panic)
    ))
}

/// Applies a finished operation to its entity: the new state, the messages it sends and the
/// reply to its caller.
pub(super) fn finish_operation(
    shared: &Arc<Shared>,
    id: &EntityId,
    slot: &mut Slot,
    ctx: EntityContext,
    outcome: Result<(), OperationError>,
    reply: Option<ReplyTo>,
    part: &mut Part,
) {
    let finished = ctx.finish(outcome);
    match &finished.result {
        Ok(_) => part.ok += 1,
        Err(err) => {
            part.failed += 1;
            shared
                .failures
                .record(id, &finished.operation, err.to_string(), shared.clock.now());
        }
    }
    slot.state = finished.state;
    if finished.state_version != slot.state_version {
        // Only a function entity without versioning picks its state's version.
        match shared
            .registry
            .entity(id.name())
            .and_then(|f| f.versioning())
        {
            Some(versioning) => warn!(
                entity = %id,
                asked = finished.state_version,
                version = versioning.current,
                "set_state_version ignored: this entity's version is its code's"
            ),
            None => slot.state_version = finished.state_version,
        }
    }
    // An entity that expires counts its time from its last operation, whatever it did.
    if finished.state_written || (slot.state.is_some() && shared.registry.expires(id.name())) {
        part.written = true;
        slot.last_modified = shared.now_millis();
    }
    for out in finished.outgoing {
        part.produced.push(shared.outgoing_message(out));
    }
    match reply {
        None => {
            if let Err(err) = &finished.result {
                warn!(entity = %id, error = %err, "signalled operation failed");
            }
        }
        Some(ReplyTo::Client(waiter)) => part.replies.push((waiter, finished.result)),
        Some(ReplyTo::Keyed {
            waiter,
            key,
            request,
        }) => {
            let outcome = crate::keys::KeyOutcome::answer(&finished.result, request.as_deref());
            part.key_outcomes.push((key, outcome));
            part.replies.push((waiter, finished.result));
        }
        Some(ReplyTo::Instance { id: instance, seq }) => part
            .produced
            .push(shared.operation_completion(instance, seq, finished.result)),
    }
}
