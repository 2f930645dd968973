//! A session's subscriptions and its incoming QoS 2 ids, allocated only while it has some.
//!
//! Every session keeps both for its whole life, yet most hold none (an idle or publish-only
//! client) or hold them briefly (QoS 2 ids until PUBREL): as plain `HashMap`/`HashSet` they
//! cost 96 bytes in each session; boxed, 16. Reads go through `Deref` to the collection (an
//! empty shared one when none is allocated); writes allocate on the first insert and free the
//! collection when its last entry goes.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::LazyLock;

use super::Sub;

static NO_SUBS: LazyLock<HashMap<String, Sub>> = LazyLock::new(HashMap::new);
static NO_PIDS: LazyLock<HashSet<u16>> = LazyLock::new(HashSet::new);

/// Subscriptions by filter string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[allow(clippy::box_collection)] // the point: 8 bytes in every session, not an empty map's 48
pub struct SubMap(Option<Box<HashMap<String, Sub>>>);

impl SubMap {
    /// Adds or replaces a subscription; the one it replaced.
    pub fn insert(&mut self, filter: String, sub: Sub) -> Option<Sub> {
        self.0.get_or_insert_default().insert(filter, sub)
    }

    /// Removes a subscription (freeing the map with the last one).
    pub fn remove(&mut self, filter: &str) -> Option<Sub> {
        let m = self.0.as_mut()?;
        let old = m.remove(filter);
        if m.is_empty() {
            self.0 = None;
        }
        old
    }

    /// The filters, consuming the map.
    pub fn into_keys(self) -> impl Iterator<Item = String> {
        self.into_iter().map(|(f, _)| f)
    }
}

impl Deref for SubMap {
    type Target = HashMap<String, Sub>;

    fn deref(&self) -> &HashMap<String, Sub> {
        self.0.as_deref().unwrap_or(&NO_SUBS)
    }
}

impl IntoIterator for SubMap {
    type Item = (String, Sub);
    type IntoIter = std::iter::Flatten<std::option::IntoIter<HashMap<String, Sub>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|m| *m).into_iter().flatten()
    }
}

impl<'a> IntoIterator for &'a SubMap {
    type Item = (&'a String, &'a Sub);
    type IntoIter = std::collections::hash_map::Iter<'a, String, Sub>;

    fn into_iter(self) -> Self::IntoIter {
        self.deref().iter()
    }
}

/// Incoming QoS 2 packet ids received and not yet released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[allow(clippy::box_collection)] // as `SubMap`
pub struct PidSet(Option<Box<HashSet<u16>>>);

impl PidSet {
    /// Holds `pid`; false when it already was.
    pub fn insert(&mut self, pid: u16) -> bool {
        self.0.get_or_insert_default().insert(pid)
    }

    /// Releases `pid` (freeing the set with the last one); whether it was held.
    pub fn remove(&mut self, pid: &u16) -> bool {
        let Some(s) = self.0.as_mut() else {
            return false;
        };
        let had = s.remove(pid);
        if s.is_empty() {
            self.0 = None;
        }
        had
    }
}

impl Extend<u16> for PidSet {
    fn extend<I: IntoIterator<Item = u16>>(&mut self, iter: I) {
        for pid in iter {
            self.insert(pid);
        }
    }
}

impl Deref for PidSet {
    type Target = HashSet<u16>;

    fn deref(&self) -> &HashSet<u16> {
        self.0.as_deref().unwrap_or(&NO_PIDS)
    }
}

impl IntoIterator for PidSet {
    type Item = u16;
    type IntoIter = std::iter::Flatten<std::option::IntoIter<HashSet<u16>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|s| *s).into_iter().flatten()
    }
}

impl<'a> IntoIterator for &'a PidSet {
    type Item = &'a u16;
    type IntoIter = std::collections::hash_set::Iter<'a, u16>;

    fn into_iter(self) -> Self::IntoIter {
        self.deref().iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QoS, RetainHandling};

    fn sub() -> Sub {
        Sub {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
            id: None,
        }
    }

    #[test]
    fn allocated_only_while_not_empty() {
        let mut m = SubMap::default();
        assert!(m.is_empty() && m.0.is_none());
        assert_eq!(m.insert("a".into(), sub()), None);
        assert!(m.contains_key("a") && m.len() == 1);
        assert_eq!(m.remove("b"), None);
        assert_eq!(m.remove("a"), Some(sub()));
        assert!(m.0.is_none(), "the last one frees the map");
        m.insert("x".into(), sub());
        assert_eq!(m.clone().into_keys().collect::<Vec<_>>(), ["x"]);
        assert_eq!((&m).into_iter().count(), 1);

        let mut p = PidSet::default();
        assert!(!p.remove(&1));
        p.extend([1, 2]);
        assert!(!p.insert(1));
        assert!(p.contains(&2) && p.len() == 2);
        assert!(p.remove(&1) && p.remove(&2));
        assert!(p.0.is_none(), "the last one frees the set");
    }
}
