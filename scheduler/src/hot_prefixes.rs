//! Which shared prefixes are worth a prompt-cache file: one seen `hot_after` times, or one a
//! client named (a named cache) from its first request. Saving costs a prefill of the prefix
//! and a file; a system prompt used once would pay that for nothing.

use std::collections::HashMap;

/// Prefixes counted before the counts start again: a bound on memory under traffic whose
/// prefixes never repeat.
const MAX_COUNTED: usize = 4096;

#[derive(Debug)]
pub struct HotPrefixes {
    hot_after: u32,
    seen: HashMap<String, u32>,
}

impl HotPrefixes {
    /// `hot_after` 0: only pinned prefixes are ever hot.
    pub fn new(hot_after: u32) -> HotPrefixes {
        HotPrefixes {
            hot_after,
            seen: HashMap::new(),
        }
    }

    /// Counts one request with prefix `key`; returns whether the prefix is hot now.
    pub fn observe(&mut self, key: &str, pinned: bool) -> bool {
        if self.seen.len() >= MAX_COUNTED && !self.seen.contains_key(key) {
            // Hot ones have their file by now; the rest start counting again.
            let hot_after = self.hot_after;
            self.seen.retain(|_, n| hot_after > 0 && *n >= hot_after);
            if self.seen.len() >= MAX_COUNTED {
                self.seen.clear();
            }
        }
        let n = self.seen.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        pinned || (self.hot_after > 0 && *n >= self.hot_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_hot_from_its_nth_request_or_at_once_when_pinned() {
        let mut h = HotPrefixes::new(3);
        assert!(!h.observe("a", false));
        assert!(!h.observe("a", false));
        assert!(h.observe("a", false));
        assert!(h.observe("a", false));
        assert!(!h.observe("b", false));
        assert!(h.observe("c", true));
        let mut off = HotPrefixes::new(0);
        assert!((0..10).all(|_| !off.observe("a", false)));
        assert!(off.observe("a", true));
    }

    #[test]
    fn counting_stays_bounded_and_keeps_what_is_hot() {
        let mut h = HotPrefixes::new(2);
        h.observe("hot", false);
        h.observe("hot", false);
        for i in 0..MAX_COUNTED * 2 {
            h.observe(&i.to_string(), false);
        }
        assert!(h.seen.len() <= MAX_COUNTED);
        assert!(h.seen.contains_key("hot"));
        assert!(h.observe("hot", false));
    }
}
