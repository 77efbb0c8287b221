//! [`Clock`]: where a runtime reads the time. The system's clock by default; tests move a
//! [`ManualClock`] (exported as `testing::ManualClock`) by hand, which drives the runtimes
//! that read it through [`Driven`].

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;

use crate::time::{from_millis, to_millis, to_millis_ceil};

/// Where a runtime reads the time: the stored times (`last_modified`, `created`, `updated`),
/// `ctx.current_time()`, timers, scheduled signals, recurring schedules, entity TTLs and the
/// retention of idempotency keys all follow it. Operation timeouts, the shutdown grace and the
/// waits for a store that does not answer stay in real time: they guard real work.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The clock as a [`ManualClock`], if it is one: the runtime then waits for it to be moved
    /// instead of for real time to pass.
    fn as_manual(&self) -> Option<&ManualClock> {
        None
    }
}

/// The system's clock, the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The current time of `clock` in milliseconds since the Unix epoch.
pub(crate) fn now_millis(clock: &dyn Clock) -> u64 {
    to_millis(clock.now())
}

/// What a [`ManualClock`] asks of a runtime that reads it (implemented by the runtime).
pub(crate) trait Driven: Send + Sync {
    /// Whether the runtime has stopped.
    fn is_stopped(&self) -> bool;
    /// Runs an expiry sweep at the clock's time.
    fn sweep(&self) -> BoxFuture<'_, ()>;
    /// Waits until the runtime is idle; the time its next scheduled message is due, if any.
    fn settle(&self) -> BoxFuture<'_, Option<u64>>;
    /// The earliest time after `now`, at most `until`, at which an idle entity expires.
    fn next_expiry(&self, now: u64, until: u64) -> BoxFuture<'_, Option<u64>>;
    /// Forgets the idempotency keys past their retention at the clock's time.
    fn forget_keys(&self) -> BoxFuture<'_, ()>;
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
    runtimes: std::sync::Mutex<Vec<std::sync::Weak<dyn Driven>>>,
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
        self.run_until(from_millis(to_millis_ceil(target))).await;
    }

    /// Sets the clock to `time` (in whole milliseconds, rounded up): forward, as
    /// [`advance`](Self::advance) does; backward, the time is set (nothing runs again) and the
    /// call returns once the runtimes are idle.
    pub async fn set(&self, time: std::time::SystemTime) {
        let _one = self.inner.moving.lock().await;
        let time = from_millis(to_millis_ceil(time));
        if time >= self.now() {
            self.run_until(time).await;
        } else {
            self.move_to(time);
            for runtime in self.runtimes() {
                runtime.settle().await;
            }
        }
    }

    /// The engines' receiver of the clock's moves.
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<()> {
        self.inner.moves.subscribe()
    }

    /// Adds a runtime that reads this clock; it is driven while `runtime` lives.
    pub(crate) fn attach(&self, runtime: &Arc<dyn Driven>) {
        self.inner
            .runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(runtime));
    }

    /// The runtimes still running.
    fn runtimes(&self) -> Vec<Arc<dyn Driven>> {
        let mut runtimes = self
            .inner
            .runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runtimes.retain(|r| r.upgrade().is_some_and(|r| !r.is_stopped()));
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
        let target_ms = to_millis(target);
        loop {
            let now_ms = to_millis(self.now());
            let mut next: Option<u64> = None;
            let mut earliest = |at: Option<u64>| {
                if let Some(at) = at.filter(|at| *at > now_ms && *at <= target_ms) {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            };
            for runtime in self.runtimes() {
                runtime.sweep().await;
                earliest(runtime.settle().await);
                earliest(runtime.next_expiry(now_ms, target_ms).await);
            }
            match next {
                Some(at) => self.move_to(from_millis(at)),
                None => break,
            }
        }
        self.move_to(target.max(self.now()));
        for runtime in self.runtimes() {
            runtime.sweep().await;
            runtime.forget_keys().await;
            runtime.settle().await;
        }
    }
}

/// `time` without the part below a millisecond.
fn whole_ms(time: std::time::SystemTime) -> std::time::SystemTime {
    from_millis(to_millis(time))
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

impl Clock for ManualClock {
    fn now(&self) -> std::time::SystemTime {
        ManualClock::now(self)
    }

    fn as_manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}
