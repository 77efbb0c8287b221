//! The metrics the runtime records through the [`metrics`] facade. Nothing is recorded
//! anywhere until the program installs a recorder (the HTTP API installs a Prometheus one).
//!
//! The engine counts in plain integers while it runs a batch and hands the counts to the
//! facade once per batch, so an operation costs no metrics call of its own. Gauges that only
//! the store knows (orchestrations by status, locks, scheduled backlog) are read from it by
//! [`Client::record_store_metrics`](crate::Client::record_store_metrics), which the HTTP API
//! calls at each scrape of `/metrics`.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `entities_operations_total` | counter | `outcome` = `ok`, `error` | entity operations run |
//! | `entities_signals_received_total` | counter | | one-way signals taken in from clients |
//! | `entities_calls_received_total` | counter | | two-way calls taken in from clients |
//! | `entities_batch_size` | histogram | | messages consumed per batch (one commit) |
//! | `entities_commit_seconds` | histogram | | time from queuing a batch's commit to its end |
//! | `entities_commit_failures_total` | counter | | commits that failed |
//! | `entities_messages_waiting` | gauge | | messages in memory waiting for their entity |
//! | `entities_in_memory` | gauge | | entities held in memory |
//! | `entities_orchestrations_ended_total` | counter | `status` | instances that ended, by final status |
//! | `entities_locks_held` | gauge | | entities locked by a critical section (store) |
//! | `entities_scheduled_backlog` | gauge | | stored messages scheduled for later (store) |
//! | `entities_stored_messages` | gauge | | messages stored and not yet processed (store) |
//! | `entities_orchestrations` | gauge | `status` | stored instances by status (store) |
//! | `entities_orchestrations_held` | gauge | | running instances held because their code departed from their history (store) |

use std::time::Duration;

use crate::store::{RuntimeStatus, StoreStats};

/// Entity operations run, by `outcome` (`ok` or `error`).
pub const OPERATIONS: &str = "entities_operations_total";
/// One-way signals taken in from clients.
pub const SIGNALS_RECEIVED: &str = "entities_signals_received_total";
/// Two-way calls taken in from clients.
pub const CALLS_RECEIVED: &str = "entities_calls_received_total";
/// Messages consumed per batch.
pub const BATCH_SIZE: &str = "entities_batch_size";
/// Seconds from queuing a batch's commit to its end.
pub const COMMIT_SECONDS: &str = "entities_commit_seconds";
/// Commits that failed.
pub const COMMIT_FAILURES: &str = "entities_commit_failures_total";
/// Messages in memory waiting for their entity.
pub const MESSAGES_WAITING: &str = "entities_messages_waiting";
/// Entities held in memory.
pub const IN_MEMORY: &str = "entities_in_memory";
/// Orchestration instances that ended, by final `status`.
pub const ORCHESTRATIONS_ENDED: &str = "entities_orchestrations_ended_total";
/// Entities locked by a critical section, as stored.
pub const LOCKS_HELD: &str = "entities_locks_held";
/// Stored messages scheduled for later.
pub const SCHEDULED_BACKLOG: &str = "entities_scheduled_backlog";
/// Messages stored and not yet processed.
pub const STORED_MESSAGES: &str = "entities_stored_messages";
/// Stored orchestration instances, by `status`.
pub const ORCHESTRATIONS: &str = "entities_orchestrations";
/// Running orchestration instances that are held (their code departed from their history).
pub const ORCHESTRATIONS_HELD: &str = "entities_orchestrations_held";

/// Counts of one batch, handed to the facade at once.
#[derive(Debug, Default)]
pub(crate) struct BatchCounts {
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub signals: u64,
    pub calls: u64,
    pub consumed: u64,
}

impl BatchCounts {
    /// Hands the counts and the gauges of the engine's memory to the facade, and resets the
    /// counts.
    pub(crate) fn record(&mut self, waiting: usize, in_memory: usize) {
        let counts = std::mem::take(self);
        if counts.ops_ok > 0 {
            metrics::counter!(OPERATIONS, "outcome" => "ok").increment(counts.ops_ok);
        }
        if counts.ops_failed > 0 {
            metrics::counter!(OPERATIONS, "outcome" => "error").increment(counts.ops_failed);
        }
        if counts.signals > 0 {
            metrics::counter!(SIGNALS_RECEIVED).increment(counts.signals);
        }
        if counts.calls > 0 {
            metrics::counter!(CALLS_RECEIVED).increment(counts.calls);
        }
        if counts.consumed > 0 {
            metrics::histogram!(BATCH_SIZE).record(counts.consumed as f64);
        }
        metrics::gauge!(MESSAGES_WAITING).set(waiting as f64);
        metrics::gauge!(IN_MEMORY).set(in_memory as f64);
    }
}

/// Records how long a commit took, and whether it failed.
pub(crate) fn commit_done(elapsed: Duration, ok: bool) {
    metrics::histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!(COMMIT_FAILURES).increment(1);
    }
}

/// The label of a status.
fn status_label(status: RuntimeStatus) -> &'static str {
    match status {
        RuntimeStatus::Running => "running",
        RuntimeStatus::Completed => "completed",
        RuntimeStatus::Failed => "failed",
        RuntimeStatus::Terminated => "terminated",
    }
}

/// Counts an instance that ended.
pub(crate) fn orchestration_ended(status: RuntimeStatus) {
    metrics::counter!(ORCHESTRATIONS_ENDED, "status" => status_label(status)).increment(1);
}

/// Sets the gauges only the store knows.
pub(crate) fn store_gauges(stats: &StoreStats) {
    metrics::gauge!(LOCKS_HELD).set(stats.locked_entities as f64);
    metrics::gauge!(SCHEDULED_BACKLOG).set(stats.scheduled_messages as f64);
    metrics::gauge!(STORED_MESSAGES).set(stats.messages as f64);
    metrics::gauge!(ORCHESTRATIONS_HELD).set(stats.instances_held as f64);
    for status in [
        RuntimeStatus::Running,
        RuntimeStatus::Completed,
        RuntimeStatus::Failed,
        RuntimeStatus::Terminated,
    ] {
        let count = stats
            .instances_by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(ORCHESTRATIONS, "status" => status_label(status)).set(count as f64);
    }
}
