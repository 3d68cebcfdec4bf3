//! Bounded bookkeeping of the assembly: recently completed files, and sets of line
//! numbers kept as ranges.

use std::collections::{BTreeMap, HashSet, VecDeque};

/// Completed files remembered, so late copies of their lines are known duplicates.
const DONE_CAPACITY: usize = 10_000;

/// Keys of recently completed files (bounded: the oldest are forgotten first).
#[derive(Default)]
pub(super) struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    pub(super) fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    pub(super) fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > DONE_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// A set of line numbers as ranges: small when lines come mostly in order, whatever a
/// header claims the file's line count is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> end (exclusive), disjoint and never adjacent.
    pub(super) ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    pub(crate) fn contains(&self, n: u64) -> bool {
        self.ranges.range(..=n).next_back().is_some_and(|(_, end)| n < *end)
    }

    /// Add `n`; false when it was there.
    pub(crate) fn insert(&mut self, n: u64) -> bool {
        if self.contains(n) {
            return false;
        }
        let mut start = n;
        if let Some((s, e)) = self.ranges.range(..n).next_back()
            && *e == n
        {
            start = *s;
        }
        let end = match self.ranges.remove(&(n + 1)) {
            Some(e) => e,
            None => n + 1,
        };
        self.ranges.insert(start, end);
        self.len += 1;
        true
    }

    /// Remove `n`; false when it was not there.
    pub(crate) fn remove(&mut self, n: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=n).next_back() else {
            return false;
        };
        if n >= e {
            return false;
        }
        self.ranges.remove(&s);
        if s < n {
            self.ranges.insert(s, n);
        }
        if n + 1 < e {
            self.ranges.insert(n + 1, e);
        }
        self.len -= 1;
        true
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}
