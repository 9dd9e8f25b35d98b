//! A small map from `String` keys, kept sorted in a `Vec`.
//!
//! The audience map and the token cache hold a handful of entries each; a
//! `BTreeMap` for each of them put two more copies of the B-tree code in the
//! component (about 13 KB of wasm; `serde_json`'s `Map` keeps the third).
//! Iteration order, `Debug` output and equality are a `BTreeMap`'s.

/// Entries sorted by key, each key once.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SortedMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }
}

impl<V> SortedMap<V> {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Insert or replace the value for `key`.
    pub(crate) fn insert(&mut self, key: String, value: V) {
        match self.find(&key) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (key, value)),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// The keys, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(k, _)| k)
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for SortedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_as_a_btree_map() {
        let mut ours = SortedMap::default();
        let mut theirs = BTreeMap::new();
        for (k, v) in [("b", 1), ("a", 2), ("c", 3), ("a", 4), ("", 5), ("b", 6)] {
            ours.insert(k.to_string(), v);
            theirs.insert(k.to_string(), v);
        }
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        assert!(ours.keys().eq(theirs.keys()));
        for k in ["a", "b", "c", "", "d"] {
            assert_eq!(ours.get(k), theirs.get(k));
        }
        *ours.get_mut("c").unwrap() += 1;
        assert_eq!(ours.get("c"), Some(&4));
        assert_eq!(ours.get_mut("zz"), None);
    }
}
