//! Node bookkeeping in the `Meta` table: the routes a node learned from each peer
//! (`cluster::remembered` encodes them; here they are opaque records keyed by node name).

use super::{Op, Store, Table};

/// `Meta` key prefix of the routes remembered per peer.
const PEER_ROUTES: &[u8] = b"peer_routes/";

impl Store {
    /// Keeps (or with `None` forgets) one peer's routes record; not awaited (they are a hint
    /// for the next start, rewritten every membership round they change).
    pub fn save_peer_routes(&self, node: &str, rec: Option<Vec<u8>>) {
        let key = [PEER_ROUTES, node.as_bytes()].concat();
        let op = match rec {
            Some(value) => Op::Put {
                table: Table::Meta,
                key,
                value,
            },
            None => Op::Delete {
                table: Table::Meta,
                key,
            },
        };
        self.write_nowait(vec![op]);
    }

    /// Every peer's routes record: (node, record).
    pub fn load_peer_routes(&self) -> Vec<(String, Vec<u8>)> {
        match self.scan_prefix(Table::Meta, PEER_ROUTES) {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|(k, v)| {
                    let node = std::str::from_utf8(k.get(PEER_ROUTES.len()..)?).ok()?;
                    Some((node.to_string(), v))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: remembered peer routes unreadable");
                Vec::new()
            }
        }
    }
}
