//! Recurring schedules and what the client shows of scheduled messages: the values. The
//! client's methods over them are in `client/schedules.rs`.
//!
//! A schedule is one stored message at a time: its next fire. When the fire comes due, the
//! entity's engine consumes it and, in the same commit, stores the fire after it and signals
//! the scheduled operation to the entity. A crash either keeps the fire (it runs again) or
//! commits both, so every fire runs once. Fires missed while no runtime ran come due together
//! as one: the next fire is computed from the time the fire runs, never from the time it was
//! due.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// When a recurring schedule fires: at a fixed interval, or on a cron expression (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Schedule {
    /// Every `millis` milliseconds, counted from the previous fire.
    Every {
        /// The interval, in milliseconds (at least 1).
        millis: u64,
    },
    /// On a cron expression with seconds (`sec min hour day-of-month month day-of-week
    /// [year]`), in UTC.
    Cron {
        /// The expression, as given.
        expression: String,
    },
}

impl Schedule {
    /// Fires every `interval` (rounded up to whole milliseconds, at least one).
    pub fn every(interval: Duration) -> Schedule {
        let millis = interval.as_nanos().div_ceil(1_000_000).max(1);
        Schedule::Every {
            millis: u64::try_from(millis).unwrap_or(u64::MAX),
        }
    }

    /// Fires on a cron expression with a seconds field, such as `"0 */5 * * * *"` (every five
    /// minutes), in UTC. Fails with [`Error::InvalidSchedule`] on an expression that does not
    /// parse or never fires.
    pub fn cron(expression: &str) -> Result<Schedule> {
        let schedule = Schedule::Cron {
            expression: expression.to_string(),
        };
        let now = crate::time::now_millis();
        match schedule.next_after(now)? {
            Some(_) => Ok(schedule),
            None => Err(Error::InvalidSchedule(format!(
                "the cron expression `{expression}` never fires after now"
            ))),
        }
    }

    /// The first fire strictly after `after` (milliseconds since the Unix epoch), or `None`
    /// if there is none.
    pub(crate) fn next_after(&self, after: u64) -> Result<Option<u64>> {
        match self {
            Schedule::Every { millis } => Ok(after.checked_add((*millis).max(1))),
            Schedule::Cron { expression } => {
                let parsed = cron::Schedule::from_str(expression).map_err(|err| {
                    Error::InvalidSchedule(format!(
                        "the cron expression `{expression}` does not parse: {err}"
                    ))
                })?;
                let Some(start) = i64::try_from(after)
                    .ok()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                else {
                    return Ok(None);
                };
                Ok(parsed
                    .after(&start)
                    .next()
                    .and_then(|t| u64::try_from(t.timestamp_millis()).ok()))
            }
        }
    }
}

/// The id of a recurring schedule, returned by [`Client::schedule`](crate::Client::schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScheduleId(pub u64);

impl std::fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A recurring schedule of an entity (see [`Client::schedules`](crate::Client::schedules)).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleInfo {
    /// The schedule's id.
    pub id: ScheduleId,
    /// The operation each fire signals.
    pub operation: String,
    /// Its input, if any.
    pub input: Option<Value>,
    /// When it fires.
    pub schedule: Schedule,
    /// Its next fire.
    pub next_fire: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_adds_its_interval() {
        let s = Schedule::every(Duration::from_micros(1500));
        assert_eq!(s, Schedule::Every { millis: 2 });
        assert_eq!(s.next_after(1000).unwrap(), Some(1002));
        assert_eq!(
            Schedule::every(Duration::ZERO).next_after(5).unwrap(),
            Some(6)
        );
    }

    #[test]
    fn cron_fires_on_its_expression() {
        let s = Schedule::cron("0 */5 * * * *").unwrap();
        // 2026-01-01T00:01:00Z -> 00:05:00Z
        let at = 1_767_225_660_000;
        assert_eq!(s.next_after(at).unwrap(), Some(1_767_225_900_000));
    }

    #[test]
    fn bad_cron_is_an_error() {
        let err = Schedule::cron("every now and then").unwrap_err();
        assert!(matches!(err, Error::InvalidSchedule(_)), "{err}");
        assert!(err.to_string().contains("every now and then"));
    }
}
