//! The keyspaces (`Table`), the changes the broker makes to them (`Op`), and the byte arithmetic
//! that turns "every key starting with a prefix" into a key range. Imports nothing of the store.

use redb::TableDefinition;

/// Which keyspace. Each is its own redb table, so a key means different things in each and a
/// scan of one never walks the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Persistent sessions (expiry, version, username), keyed by client id.
    Sessions,
    /// Their subscriptions, one row per filter keyed `client_id 0x00 filter`: a SUBSCRIBE
    /// writes its filters, not the session's whole set.
    Subscriptions,
    /// Messages queued for offline or in-flight persistent sessions.
    Messages,
    /// Retained messages, keyed by topic.
    Retained,
    /// Node-level bookkeeping (format versions, counters) the broker wants to survive restarts.
    Meta,
    /// Copies of other nodes' persistent sessions this node is the replica of
    /// (`[cluster] session_replicas = 2`): the holder's rows under a one-byte kind prefix.
    Standby,
}

impl Table {
    /// Every table, so a fresh store can create them all up front.
    pub(super) const ALL: [Table; 6] = [
        Table::Sessions,
        Table::Subscriptions,
        Table::Messages,
        Table::Retained,
        Table::Meta,
        Table::Standby,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Subscriptions => "subscriptions",
            Table::Messages => "messages",
            Table::Retained => "retained",
            Table::Meta => "meta",
            Table::Standby => "standby",
        }
    }

    /// Slot of this table in a per-transaction array of open tables.
    pub(super) fn index(self) -> usize {
        match self {
            Table::Sessions => 0,
            Table::Messages => 1,
            Table::Retained => 2,
            Table::Meta => 3,
            Table::Subscriptions => 4,
            Table::Standby => 5,
        }
    }

    /// The redb definition: byte keys to byte values, named after the table.
    pub(super) fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// One change. A `Vec<Op>` is the unit the broker hands over, so a session and its queue can
/// change together in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace `key`.
    Put {
        /// Keyspace.
        table: Table,
        /// Key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove `key`; removing an absent key is not an error.
    Delete {
        /// Keyspace.
        table: Table,
        /// Key.
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix` (an empty prefix empties the table), e.g. all
    /// queued messages of one client.
    DeletePrefix {
        /// Keyspace.
        table: Table,
        /// Key prefix.
        prefix: Vec<u8>,
    },
}

impl Op {
    /// The keyspace the op changes, so the writer opens each table once per commit.
    pub(super) fn table(&self) -> Table {
        match self {
            Op::Put { table, .. } | Op::Delete { table, .. } | Op::DeletePrefix { table, .. } => {
                *table
            }
        }
    }

    /// Bytes this op carries, for the batch size cap.
    pub(super) fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::DeletePrefix { prefix, .. } => prefix.len(),
        }
    }
}

/// The smallest key greater than every key starting with `prefix`: the prefix with its last
/// byte below 0xFF incremented and what follows dropped. `None` when there is none (the prefix
/// is empty or all 0xFF): the range then runs to the end of the table.
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
