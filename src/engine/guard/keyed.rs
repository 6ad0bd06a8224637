//! A map from (dimension, key) to a value, looked up by `&str`: the detector judges thousands
//! of keys a second, and a map keyed by `(Dimension, String)` needs an owned `String` to look
//! one up.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use hashbrown::HashMap as KeyMap;

use crate::api::traffic_guard::AggregationKey as Dimension;

/// Values per dimension, per key.
#[derive(Clone, Debug)]
pub struct Keyed<V> {
    /// hashbrown's `entry_ref` finds or inserts a key by `&str` in one lookup.
    maps: HashMap<Dimension, KeyMap<String, V, RandomState>, RandomState>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Self { maps: HashMap::default() }
    }
}

impl<V> Keyed<V> {
    pub fn get(&self, dim: Dimension, key: &str) -> Option<&V> {
        self.maps.get(&dim)?.get(key)
    }

    pub fn contains(&self, dim: Dimension, key: &str) -> bool {
        self.get(dim, key).is_some()
    }

    /// The value of `key`, made by `make` when it has none; the key is copied only then.
    pub fn get_or_insert_with(&mut self, dim: Dimension, key: &str, make: impl FnOnce() -> V) -> &mut V {
        self.maps.entry(dim).or_default().entry_ref(key).or_insert_with(make)
    }

    pub fn insert(&mut self, dim: Dimension, key: &str, value: V) {
        self.maps.entry(dim).or_default().entry_ref(key).insert(value);
    }

    pub fn iter(&self) -> impl Iterator<Item = (Dimension, &str, &V)> {
        self.maps.iter().flat_map(|(&d, m)| m.iter().map(move |(k, v)| (d, k.as_str(), v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.maps.values().flat_map(KeyMap::values)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.maps.values_mut().flat_map(KeyMap::values_mut)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        for m in self.maps.values_mut() {
            m.retain(|_, v| keep(v));
        }
    }

    pub fn len(&self) -> usize {
        self.maps.values().map(KeyMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_dimension() {
        let mut m = Keyed::default();
        m.insert(Dimension::Asn, "64500", 1);
        m.insert(Dimension::Country, "64500", 2);
        *m.get_or_insert_with(Dimension::Asn, "64500", || 0) += 10;
        assert_eq!(m.get(Dimension::Asn, "64500"), Some(&11));
        assert_eq!(m.get(Dimension::Country, "64500"), Some(&2));
        assert!(!m.contains(Dimension::Ip, "64500"));
        m.insert(Dimension::Asn, "64500", 5);
        assert_eq!(m.len(), 2);
        m.retain(|v| *v > 3);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(Dimension::Asn, "64500", &5)]);
    }
}
