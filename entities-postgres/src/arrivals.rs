//! The cursor over arrivals: which messages stored for this process's partitions by other
//! processes were taken already, without writing anything to the database.
//!
//! Every message row records the id of the transaction that stored it (`xid`). A poll reads
//! the fresh rows of the owned partitions with `xid >= low`, in `(xid, seq)` order, together
//! with its snapshot's `xmin`: the oldest transaction still running when the poll read. Every
//! transaction below `xmin` has ended, so every row it stored is visible to the poll, and none
//! will ever appear below `xmin` again. Rows above `xmin` may come from transactions that
//! commit later, out of order, so the cursor cannot move past them; those read already are
//! remembered as taken until the cursor passes them.
//!
//! A poll cut short by its limit read every visible row below the `xid` of its last row, so
//! the cursor moves to the lower of that `xid` and `xmin`.

use std::collections::HashMap;

/// A row as a poll read it: its message id and the transaction that stored it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) id: i64,
    pub(crate) xid: i64,
}

/// Where the next poll starts and what it must skip.
#[derive(Debug, Default)]
pub(crate) struct ArrivalCursor {
    /// Every fresh row stored by a transaction below this was taken (or is gone).
    low: i64,
    /// Rows taken at or above `low`, by id, with their transaction.
    taken: HashMap<i64, i64>,
}

impl ArrivalCursor {
    /// The lowest transaction id the next poll reads.
    pub(crate) fn low(&self) -> i64 {
        self.low
    }

    /// How many rows the next poll must read to return `limit` new ones at most: it reads the
    /// taken rows at or above `low` again.
    pub(crate) fn read_limit(&self, limit: usize) -> usize {
        limit + self.taken.len()
    }

    /// Records a poll that read `rows` (in `(xid, seq)` order, `read_limit` at most, all at or
    /// above `low`) with snapshot `xmin`; returns, for each row, whether it was not taken
    /// before.
    pub(crate) fn advance(&mut self, rows: &[Seen], xmin: i64, read_limit: usize) -> Vec<bool> {
        let new: Vec<bool> = rows
            .iter()
            .map(|row| self.taken.insert(row.id, row.xid).is_none())
            .collect();
        let cut_short = rows.len() >= read_limit;
        let bound = match rows.last() {
            Some(last) if cut_short => xmin.min(last.xid),
            _ => xmin,
        };
        self.low = self.low.max(bound);
        let low = self.low;
        self.taken.retain(|_, xid| *xid >= low);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: i64, xid: i64) -> Seen {
        Seen { id, xid }
    }

    #[test]
    fn rows_above_xmin_are_skipped_until_the_cursor_passes_them() {
        let mut cursor = ArrivalCursor::default();
        // Transaction 10 is still running; 12 committed.
        let first = [seen(1, 12)];
        assert_eq!(cursor.advance(&first, 10, cursor.read_limit(100)), [true]);
        assert_eq!(cursor.low(), 10);
        // 10 commits later with a row stored before 12's.
        let second = [seen(2, 10), seen(1, 12)];
        assert_eq!(
            cursor.advance(&second, 13, cursor.read_limit(100)),
            [true, false]
        );
        assert_eq!(cursor.low(), 13);
        // Both lie below the cursor now and are forgotten.
        assert_eq!(cursor.read_limit(100), 100);
    }

    #[test]
    fn a_poll_cut_short_moves_the_cursor_to_its_last_transaction_only() {
        let mut cursor = ArrivalCursor::default();
        let limit = cursor.read_limit(2);
        // Transaction 5 stored three rows; the limit cut after two of them.
        let first = [seen(1, 5), seen(2, 5)];
        assert_eq!(cursor.advance(&first, 9, limit), [true, true]);
        assert_eq!(cursor.low(), 5);
        // The next poll reads the two again and skips them.
        let limit = cursor.read_limit(2);
        assert_eq!(limit, 4);
        let second = [seen(1, 5), seen(2, 5), seen(3, 5), seen(4, 7)];
        assert_eq!(
            cursor.advance(&second, 9, limit),
            [false, false, true, true]
        );
        assert_eq!(cursor.low(), 7);
        assert_eq!(cursor.read_limit(0), 1);
    }

    #[test]
    fn an_empty_poll_moves_the_cursor_to_xmin() {
        let mut cursor = ArrivalCursor::default();
        assert!(cursor.advance(&[], 42, cursor.read_limit(10)).is_empty());
        assert_eq!(cursor.low(), 42);
        // The cursor never moves back.
        assert!(cursor.advance(&[], 40, cursor.read_limit(10)).is_empty());
        assert_eq!(cursor.low(), 42);
    }
}
