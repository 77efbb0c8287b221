//! Scheduled messages waiting for their time. Only those due within a horizon are held in
//! memory; the later ones stay in the store and are paged in as their time approaches, so
//! memory follows the near schedule, not the stored backlog.
//!
//! Invariant: every stored scheduled message at or before `cursor` (by `(deliver_at, id)`) is
//! in memory (here, or delivered), and none after it is.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use std::sync::Arc;

use crate::clock::Clock;
use crate::message::{Message, MessageId};

/// A scheduled message.
struct Timer {
    at: u64,
    message: Message,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.message.id) == (other.at, other.message.id)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.message.id).cmp(&(other.at, other.message.id))
    }
}

/// The scheduled messages held in memory, and how far the store has been read.
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    cursor: (u64, MessageId),
    horizon: u64,
    /// Cancelled messages after the cursor: a page that still reads them drops them.
    cancelled: BTreeSet<(u64, MessageId)>,
    clock: Arc<dyn Clock>,
}

/// A read of the next page of scheduled messages.
pub(crate) struct PageRequest {
    pub after: (u64, MessageId),
    pub until: u64,
    pub limit: usize,
}

/// Most scheduled messages read from the store at once.
const PAGE: usize = 10_000;

impl Timers {
    /// Timers after a recovery that read every message due at or before `loaded_until`.
    pub(crate) fn new(horizon: Duration, loaded_until: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            heap: BinaryHeap::new(),
            cursor: (loaded_until, MessageId::MAX),
            horizon: horizon.as_millis().max(2) as u64,
            cancelled: BTreeSet::new(),
            clock,
        }
    }

    fn now(&self) -> u64 {
        crate::clock::now_millis(&*self.clock)
    }

    /// When the next message held here is due; `None` if none is. Messages stored after the
    /// cursor are not counted (see [`Timers::cursor`]).
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(t)| t.at)
    }

    /// How far the store has been read: every stored scheduled message at or before this
    /// `(deliver_at, id)` pair is in memory or delivered.
    pub(crate) fn cursor(&self) -> (u64, MessageId) {
        self.cursor
    }

    /// Takes a stored message: returns it if it is due, keeps it if it is due before the
    /// cursor, and forgets it otherwise (it is stored; a later page brings it back).
    pub(crate) fn schedule(&mut self, message: Message) -> Option<Message> {
        let Some(at) = message.deliver_at else {
            return Some(message);
        };
        if at <= self.now() {
            return Some(message);
        }
        if (at, message.id) <= self.cursor {
            self.heap.push(Reverse(Timer { at, message }));
        }
        None
    }

    /// Cancels the scheduled message `id` due at `at` if it is still waiting here or in the
    /// store (after the cursor); returns whether it was.
    pub(crate) fn cancel(&mut self, at: u64, id: MessageId) -> bool {
        if (at, id) > self.cursor {
            return self.cancelled.insert((at, id));
        }
        let before = self.heap.len();
        self.heap.retain(|Reverse(t)| t.message.id != id);
        self.heap.len() < before
    }

    /// The messages whose time has come.
    pub(crate) fn take_due(&mut self) -> Vec<Message> {
        let now = self.now();
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|Reverse(t)| t.at <= now) {
            due.push(self.heap.pop().expect("peeked").0.message);
        }
        due
    }

    /// How long until a timer fires or the next page is due.
    pub(crate) fn next_deadline(&self) -> Duration {
        let now = self.now();
        let page_at = self.cursor.0.saturating_sub(self.horizon / 2);
        let at = match self.heap.peek() {
            Some(Reverse(timer)) => timer.at.min(page_at),
            None => page_at,
        };
        Duration::from_millis(at.saturating_sub(now).clamp(1, 3_600_000))
    }

    /// The next page to read, once the cursor is less than half a horizon ahead.
    pub(crate) fn page_due(&self) -> Option<PageRequest> {
        let now = self.now();
        (self.cursor.0 < now.saturating_add(self.horizon / 2)).then(|| PageRequest {
            after: self.cursor,
            until: now.saturating_add(self.horizon),
            limit: PAGE,
        })
    }

    /// Takes a page read for `request`: keeps its messages (returning the due ones) and moves
    /// the cursor past them (to `until` unless the page was full).
    pub(crate) fn paged(&mut self, request: &PageRequest, messages: Vec<Message>) -> Vec<Message> {
        let full = messages.len() >= request.limit;
        let last = messages.last().map(|m| (m.deliver_at.unwrap_or(0), m.id));
        self.cursor = match (full, last) {
            (true, Some(last)) => last,
            _ => (request.until, MessageId::MAX),
        };
        let cancelled = std::mem::take(&mut self.cancelled);
        let due = messages
            .into_iter()
            .filter(|m| !cancelled.contains(&(m.deliver_at.unwrap_or(0), m.id)))
            .filter_map(|m| self.schedule(m))
            .collect();
        // Cancellations the cursor passed are done: their messages were read or deleted.
        let cursor = self.cursor;
        self.cancelled = cancelled.into_iter().filter(|c| *c > cursor).collect();
        due
    }
}
