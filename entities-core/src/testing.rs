//! Helpers for tests: [`replay`] checks orchestration code against recorded histories, and
//! [`ManualClock`] moves time by hand.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::orchestration::{OrchestrationAdapter, OrchestrationContext};

/// A recorded orchestration history, in one of the forms this crate gives it out.
pub trait RecordedHistory {
    /// The instance id, when the form has it, and the events in order.
    fn instance_and_events(&self) -> Result<(Option<String>, Vec<Value>), Error>;
}

/// The events as `Client::orchestration_history` returns them.
impl RecordedHistory for [Value] {
    fn instance_and_events(&self) -> Result<(Option<String>, Vec<Value>), Error> {
        Ok((None, self.to_vec()))
    }
}

/// The events as `Client::orchestration_history` returns them.
impl RecordedHistory for Vec<Value> {
    fn instance_and_events(&self) -> Result<(Option<String>, Vec<Value>), Error> {
        self.as_slice().instance_and_events()
    }
}

/// A JSON array of events; or an object with the events under `history` (what
/// `entities orchestration ID --history --json` prints) or `events` (what
/// `GET /orchestrations/{id}/history` answers), and the instance id under `id`.
impl RecordedHistory for Value {
    fn instance_and_events(&self) -> Result<(Option<String>, Vec<Value>), Error> {
        if let Some(events) = self.as_array() {
            return Ok((None, events.clone()));
        }
        let events = self
            .get("history")
            .or_else(|| self.get("events"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::Serialization(
                    "a recorded history is an array of events, or an object with the events \
                     under `history` or `events`"
                        .into(),
                )
            })?;
        let id = self.get("id").and_then(Value::as_str).map(str::to_string);
        Ok((id, events.clone()))
    }
}

/// Replays a recorded `history` against `orchestration`, without a store or a runtime, and
/// checks that the code schedules the steps the history records, turn by turn: the check to
/// run in CI on histories kept from production before deploying new code.
///
/// `history` is what `Client::orchestration_history` returns, or what
/// `entities orchestration ID --history --json` prints (see [`RecordedHistory`]). Every
/// entity, activity and orchestration name counts as registered, and nothing the code
/// schedules is carried out: the recorded results are what it receives.
///
/// Returns `Err(Error::NonDeterminism(..))` naming the step where the code departs from the
/// history and how (the history's step and the code's), which a runtime would hold the
/// instance for; `Err(Error::Serialization(..))` when `history` is not an orchestration
/// history. A history that `ctx.patched` markers guard replays as a runtime would replay it.
///
/// ```
/// # use entities_core::{Error, OrchestrationContext};
/// # use serde_json::json;
/// async fn greet(ctx: OrchestrationContext, name: String) -> Result<String, Error> {
///     ctx.call_activity::<String>("hello", &name).await
/// }
/// async fn greet_twice(ctx: OrchestrationContext, name: String) -> Result<String, Error> {
///     ctx.call_activity::<String>("log", &name).await?;
///     ctx.call_activity::<String>("hello", &name).await
/// }
/// # let history = vec![
/// #     json!({"Turn": {"time": 1}}),
/// #     json!({"Started": {"name": "greet", "input": "ann", "parent": null, "first_seq": 0}}),
/// #     json!({"Scheduled": {"seq": 0, "action": {"Activity": {"name": "hello", "input": "ann"}}}}),
/// # ];
/// // `history` as `client.orchestration_history(&id)` returned it
/// assert!(entities_core::testing::replay(greet, &history).is_ok());
/// let err = entities_core::testing::replay(greet_twice, &history).unwrap_err();
/// assert!(matches!(err, Error::NonDeterminism(_)));
/// ```
pub fn replay<F, Fut, I, O, H>(orchestration: F, history: &H) -> Result<(), Error>
where
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Error>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    H: RecordedHistory + ?Sized,
{
    let (instance, events) = history.instance_and_events()?;
    let function = Arc::new(OrchestrationAdapter::new(orchestration));
    crate::engine::orchestrations::check_replay(
        function,
        instance.as_deref().unwrap_or("replay"),
        events,
    )
}

pub use crate::clock::ManualClock;
