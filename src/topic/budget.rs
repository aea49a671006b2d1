//! What the hot tier's byte budget counts, and which topics eviction takes first.
//!
//! The per-shard budget (`storage.hot_tier_max_bytes`) covers everything a topic holds on
//! its owner: the ring's messages and slots, the entry itself (name, consumer positions,
//! record) and the table's slots. This module only estimates sizes and picks the coldest
//! topics; what may be evicted, and the eviction itself, are the table's.

use std::collections::HashMap;
use std::mem::size_of;

/// What one heap allocation costs beyond the bytes asked for (allocator header and
/// rounding), on average.
pub const ALLOCATION: usize = 16;

/// Bytes of the slots of a hash map of `(K, V)` with room for `capacity` entries: it has
/// about 8/7 as many slots, each holding a pair and a control byte.
pub fn map_slots<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (capacity * 8 / 7 + 1) * (size_of::<(K, V)>() + 1) + ALLOCATION
}

/// Bytes of a string on the heap.
pub fn text(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        s.len() + ALLOCATION
    }
}

/// Bytes of a map beyond its inline part: its slots and, per key, `key_heap`.
pub fn map<K, V>(map: &HashMap<K, V>, key_heap: impl Fn(&K) -> usize) -> usize {
    map_slots::<K, V>(map.capacity()) + map.keys().map(key_heap).sum::<usize>()
}

/// The `last_used` time up to which topics must be evicted to free `need` bytes, given each
/// candidate's `(last_used, freeable bytes)`: the smallest `t` such that the candidates used
/// at or before `t` together free at least `need`. `None` when all of them together free
/// less. The slice is reordered; expected linear time (quickselect), so that a shard with
/// many topics does not sort them all each time it runs over budget.
pub fn cutoff(mut items: &mut [(u64, usize)], mut need: usize) -> Option<u64> {
    let mut found = None;
    while !items.is_empty() {
        let mid = items.len() / 2;
        items.select_nth_unstable_by_key(mid, |item| item.0);
        let pivot = items[mid].0;
        let (low, high) = items.split_at_mut(mid + 1);
        let low_sum: usize = low.iter().map(|item| item.1).sum();
        if low_sum >= need {
            // Enough at `pivot`; a smaller cutoff may be among the strictly lower half.
            found = Some(pivot);
            items = &mut low[..mid];
        } else {
            need -= low_sum;
            items = high;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference answer: sort, then walk.
    fn by_sorting(items: &[(u64, usize)], need: usize) -> Option<u64> {
        let mut sorted = items.to_vec();
        sorted.sort_unstable();
        let mut sum = 0;
        for (i, (t, f)) in sorted.iter().enumerate() {
            sum += f;
            // Every item with the same time goes with it.
            if sum >= need && sorted.get(i + 1).is_none_or(|next| next.0 != *t) {
                return Some(*t);
            }
        }
        None
    }

    #[test]
    fn cutoff_is_the_smallest_time_that_frees_enough() {
        let items = [(5, 10), (1, 10), (3, 10), (3, 5), (9, 100), (2, 1)];
        for need in [0, 1, 10, 11, 12, 21, 26, 36, 37, 136, 137] {
            let mut copy = items;
            assert_eq!(
                cutoff(&mut copy, need),
                by_sorting(&items, need),
                "need {need}"
            );
        }
        assert_eq!(cutoff(&mut [], 1), None);
    }

    #[test]
    fn cutoff_agrees_with_sorting_on_many_ties() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            seed >> 33
        };
        for _ in 0..200 {
            let items: Vec<(u64, usize)> = (0..(next() % 60))
                .map(|_| (next() % 8, (next() % 50) as usize))
                .collect();
            let total: usize = items.iter().map(|i| i.1).sum();
            let need = (next() as usize) % (total + 10);
            let mut copy = items.clone();
            assert_eq!(
                cutoff(&mut copy, need),
                by_sorting(&items, need),
                "{items:?} {need}"
            );
        }
    }

    #[test]
    fn maps_cost_their_slots_and_keys() {
        let mut m: HashMap<Box<str>, u64> = HashMap::new();
        assert_eq!(map(&m, |k| text(k)), 0, "an empty map has no heap part");
        m.insert("abc".into(), 1);
        let one = map(&m, |k| text(k));
        assert!(one >= m.capacity() * size_of::<(Box<str>, u64)>() + 3);
    }
}
