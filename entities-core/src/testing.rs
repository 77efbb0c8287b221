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

/// A clock that tests move by hand (see [`RuntimeBuilder::clock`](crate::RuntimeBuilder::clock)):
/// a month of timers, schedules and expiries runs in milliseconds, in process.
///
/// ```
/// # use std::time::Duration;
/// # use entities_core::{testing::ManualClock, MemoryStore, Runtime};
/// # async fn demo() -> entities_core::Result<()> {
/// let clock = ManualClock::new(); // starts at the current time
/// let runtime = Runtime::builder()
///     .store(MemoryStore::new())
///     .clock(clock.clone())
///     .start()
///     .await?;
/// clock.advance(Duration::from_secs(30 * 24 * 3600)).await; // a month later, everything due ran
/// # runtime.shutdown().await
/// # }
/// ```
///
/// [`advance`](Self::advance) moves time forward step by step, to each time something is due
/// (a timer, a scheduled signal, a schedule's fire, an entity's expiry), lets the runtimes that
/// use the clock run what is due then, and returns once the target time is reached and they
/// are idle: no operation, turn, activity or commit under way and nothing due. So a schedule
/// that fires every day fires once per day passed, in time order with everything else.
/// Activities and `async` operations that do real I/O are awaited. Operation timeouts and the
/// shutdown grace stay in real time.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: std::sync::Mutex<std::time::SystemTime>,
    /// Tells the engines that the time moved.
    moves: tokio::sync::watch::Sender<()>,
    /// The runtimes using the clock (dropped ones are skipped).
    runtimes: std::sync::Mutex<Vec<std::sync::Weak<crate::engine::Shared>>>,
    /// One move at a time.
    moving: tokio::sync::Mutex<()>,
}

impl ManualClock {
    /// A clock at the current time (in whole milliseconds), which then moves only by hand.
    pub fn new() -> Self {
        Self::at(std::time::SystemTime::now())
    }

    /// A clock at `time`. The clock counts whole milliseconds, as the stores do: a time
    /// between two is taken as the earlier.
    pub fn at(time: std::time::SystemTime) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                now: std::sync::Mutex::new(whole_ms(time)),
                moves: tokio::sync::watch::Sender::new(()),
                runtimes: std::sync::Mutex::new(Vec::new()),
                moving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The clock's time.
    pub fn now(&self) -> std::time::SystemTime {
        *self
            .inner
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the clock forward by `by`, running everything due up to the new time in time
    /// order; returns once the runtimes using it are idle at the new time.
    pub async fn advance(&self, by: std::time::Duration) {
        let _one = self.inner.moving.lock().await;
        let target = self.now() + by;
        self.run_until(crate::time::from_millis(crate::time::to_millis_ceil(
            target,
        )))
        .await;
    }

    /// Sets the clock to `time` (in whole milliseconds, rounded up): forward, as
    /// [`advance`](Self::advance) does; backward, the time is set (nothing runs again) and the
    /// call returns once the runtimes are idle.
    pub async fn set(&self, time: std::time::SystemTime) {
        let _one = self.inner.moving.lock().await;
        let time = crate::time::from_millis(crate::time::to_millis_ceil(time));
        if time >= self.now() {
            self.run_until(time).await;
        } else {
            self.move_to(time);
            for shared in self.runtimes() {
                settle(&shared).await;
            }
        }
    }

    /// The engines' receiver of the clock's moves.
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<()> {
        self.inner.moves.subscribe()
    }

    /// Adds a runtime that reads this clock.
    pub(crate) fn attach(&self, shared: &Arc<crate::engine::Shared>) {
        self.inner
            .runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(shared));
    }

    /// The runtimes still running.
    fn runtimes(&self) -> Vec<Arc<crate::engine::Shared>> {
        let mut runtimes = self
            .inner
            .runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runtimes.retain(|r| r.upgrade().is_some_and(|s| !s.is_stopped()));
        runtimes
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    fn move_to(&self, time: std::time::SystemTime) {
        *self
            .inner
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = time;
        self.inner.moves.send_replace(());
    }

    /// Steps to each time something is due up to `target`, running it, then to `target`.
    async fn run_until(&self, target: std::time::SystemTime) {
        let target_ms = crate::time::to_millis(target);
        loop {
            let now_ms = crate::time::to_millis(self.now());
            let mut next: Option<u64> = None;
            let mut earliest = |at: Option<u64>| {
                if let Some(at) = at.filter(|at| *at > now_ms && *at <= target_ms) {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            };
            for shared in self.runtimes() {
                let client = crate::Client::new(shared.clone());
                if let Err(err) = crate::expiry::sweep_once(&client).await {
                    tracing::warn!(error = %err, "expiry sweep of a manual clock's step failed");
                }
                earliest(settle(&shared).await);
                match crate::expiry::next_expiry(&client, now_ms, target_ms).await {
                    Ok(at) => earliest(at),
                    Err(err) => tracing::warn!(error = %err, "cannot find the next expiry"),
                }
            }
            match next {
                Some(at) => self.move_to(crate::time::from_millis(at)),
                None => break,
            }
        }
        self.move_to(target.max(self.now()));
        for shared in self.runtimes() {
            let client = crate::Client::new(shared.clone());
            if let Err(err) = crate::expiry::sweep_once(&client).await {
                tracing::warn!(error = %err, "expiry sweep of a manual clock's step failed");
            }
            crate::client::forget_keys_once(&client).await;
            settle(&shared).await;
        }
    }
}

/// `time` without the part below a millisecond.
fn whole_ms(time: std::time::SystemTime) -> std::time::SystemTime {
    crate::time::from_millis(crate::time::to_millis(time))
}

/// Waits until the runtime of `shared` is idle; the time its next scheduled message is due.
async fn settle(shared: &crate::engine::Shared) -> Option<u64> {
    let (done, idle) = tokio::sync::oneshot::channel();
    shared
        .commands
        .send(crate::engine::Command::Settle(done))
        .ok()?;
    idle.await.ok().flatten()
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

impl crate::clock::Clock for ManualClock {
    fn now(&self) -> std::time::SystemTime {
        ManualClock::now(self)
    }

    fn as_manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}
