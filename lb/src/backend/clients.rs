//! The client ids of a backend's open connections, for the rebalance (`control::rebalance`):
//! which clients sit on a backend that is no longer their hash pick. One entry per forwarded
//! connection with a client id, added when the backend takes it and removed when it ends
//! (the connection's [`super::ConnGuard`]); bounded by the connections open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Open connections' client ids by connection slot.
#[derive(Debug, Default)]
pub struct Clients {
    /// The next slot number (never reused).
    next: AtomicU64,
    /// slot → client id.
    open: Mutex<HashMap<u64, Arc<str>>>,
}

impl Clients {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, Arc<str>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a connection of `client_id`; its slot (never 0), or 0 for an empty client id
    /// (not listed: it has no hash home).
    pub fn add(&self, client_id: &str) -> u64 {
        if client_id.is_empty() {
            return 0;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open().insert(slot, Arc::from(client_id));
        slot
    }

    /// Forgets the connection of `slot` (0: nothing).
    pub fn remove(&self, slot: u64) {
        if slot != 0 {
            self.open().remove(&slot);
        }
    }

    /// The client ids connected now (one per connection).
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.open().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_listed_until_they_end_and_empty_ids_are_not() {
        let c = Clients::default();
        let a = c.add("a");
        assert_eq!(c.add(""), 0);
        let b = c.add("b");
        c.remove(b);
        c.remove(0);
        assert_eq!(c.ids(), vec![Arc::<str>::from("a")]);
        c.remove(a);
        assert!(c.ids().is_empty());
    }
}
