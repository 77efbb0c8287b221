//! The poller of a shared store: a task of its own that takes the messages other processes
//! stored for the partitions run here (arrivals) and the replies to calls made from here, and
//! hands them to the engine, so that the engine never waits on the database for them.
//!
//! A reload of the engine (a recovery, a hand-over) reads every stored message of its
//! partitions, arrivals taken already included. So that none is delivered twice, the poller
//! and a reload never overlap: both hold the gate, and each reload moves the gate's
//! generation on. A poll hands its arrivals in with the generation it ran under; the engine
//! drops arrivals of an older generation (the reload gave them) but never a reply. The engine
//! also holds the gate while it claims new partitions: a poll of the others in between could
//! move the store's arrival cursor past rows of the new ones stored by a transaction that was
//! still running when the claim read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex, Notify, OwnedMutexGuard};
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::message::Message;
use crate::store::{Partitioned, RemoteReply};

/// How often the poller looks for arrivals and replies when no hint arrives.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Most arrivals taken by one poll.
const ARRIVALS_PAGE: usize = 4096;

/// Polls handed in but not taken by the engine yet: past this, the poller waits.
const QUEUED_POLLS: usize = 4;

/// What one poll took.
pub(crate) struct Polled {
    /// The gate's generation the poll ran under.
    pub generation: u64,
    /// Messages stored by other processes for the partitions run here.
    pub arrivals: Result<Vec<Message>, StoreError>,
    /// Replies to calls made from here.
    pub replies: Result<Vec<RemoteReply>, StoreError>,
}

/// The engine's side of the poller.
pub(crate) struct Poller {
    /// Polls, in the order they ran.
    pub polls: mpsc::Receiver<Polled>,
    gate: Arc<Mutex<u64>>,
    parts: watch::Sender<Vec<u32>>,
    calls_waiting: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Poller {
    /// Starts polling `store` for `parts`.
    pub(crate) fn start(store: Arc<dyn Partitioned>, parts: Vec<u32>) -> Self {
        let (tx, polls) = mpsc::channel(QUEUED_POLLS);
        let gate = Arc::new(Mutex::new(0));
        let (parts, parts_rx) = watch::channel(parts);
        let calls_waiting = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(Task {
            hint: store.hint(),
            store,
            polls: tx,
            gate: gate.clone(),
            parts: parts_rx,
            calls_waiting: calls_waiting.clone(),
        }));
        Self {
            polls,
            gate,
            parts,
            calls_waiting,
            task,
        }
    }

    /// Holds polls off (for a reload): the poll under way, if any, is handed in first.
    pub(crate) fn hold(&self) -> impl std::future::Future<Output = OwnedMutexGuard<u64>> {
        self.gate.clone().lock_owned()
    }

    /// Lets polls go on, for `parts`. After a reload (`reloaded`) the generation moves on, so
    /// that arrivals taken before it are dropped. Returns the generation.
    pub(crate) fn release(
        &self,
        mut held: OwnedMutexGuard<u64>,
        parts: Vec<u32>,
        reloaded: bool,
    ) -> u64 {
        if reloaded {
            *held += 1;
        }
        self.parts.send_replace(parts);
        *held
    }

    /// Whether calls made here wait for replies (replies are taken only then).
    pub(crate) fn calls_waiting(&self, waiting: bool) {
        self.calls_waiting.store(waiting, Ordering::Relaxed);
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The poller task's side.
struct Task {
    store: Arc<dyn Partitioned>,
    hint: Arc<Notify>,
    polls: mpsc::Sender<Polled>,
    gate: Arc<Mutex<u64>>,
    parts: watch::Receiver<Vec<u32>>,
    calls_waiting: Arc<AtomicBool>,
}

/// Polls at once, then whenever a hint arrives or the interval passed, until the engine is
/// gone.
async fn run(task: Task) {
    loop {
        // Pages follow each other at once while they come full.
        loop {
            // Room first: a poll under the gate never waits for the engine.
            let Ok(room) = task.polls.reserve().await else {
                return;
            };
            let generation = task.gate.lock().await;
            let parts = task.parts.borrow().clone();
            let take_arrivals = async {
                if parts.is_empty() {
                    Ok(Vec::new())
                } else {
                    task.store.arrivals(&parts, ARRIVALS_PAGE).await
                }
            };
            let take_replies = async {
                if task.calls_waiting.load(Ordering::Relaxed) {
                    task.store.take_replies().await
                } else {
                    Ok(Vec::new())
                }
            };
            let (arrivals, replies) = tokio::join!(take_arrivals, take_replies);
            let full = arrivals.as_ref().is_ok_and(|a| a.len() >= ARRIVALS_PAGE);
            room.send(Polled {
                generation: *generation,
                arrivals,
                replies,
            });
            drop(generation);
            if !full {
                break;
            }
        }
        tokio::select! {
            () = task.hint.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}
