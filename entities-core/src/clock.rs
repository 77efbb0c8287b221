//! [`Clock`]: where a runtime reads the time. The system's clock by default; tests move a
//! [`ManualClock`](crate::testing::ManualClock) by hand.

use std::fmt;
use std::time::SystemTime;

use crate::time::to_millis;

/// Where a runtime reads the time: the stored times (`last_modified`, `created`, `updated`),
/// `ctx.current_time()`, timers, scheduled signals, recurring schedules, entity TTLs and the
/// retention of idempotency keys all follow it. Operation timeouts, the shutdown grace and the
/// waits for a store that does not answer stay in real time: they guard real work.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The clock as a [`ManualClock`](crate::testing::ManualClock), if it is one: the runtime
    /// then waits for it to be moved instead of for real time to pass.
    fn as_manual(&self) -> Option<&crate::testing::ManualClock> {
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
