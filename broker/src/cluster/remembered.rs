//! The routes a node learned from its peers, kept in `data_dir` (through
//! [`LocalNode::save_peer_routes`]): after a restart they are held, as for a peer the failure
//! detector called down, until each peer sends a fresh snapshot or `dead_after` passes. So a
//! node that comes back before its peers (a full stop of the cluster, nodes started minutes
//! apart) refuses the publishes their sessions want instead of acknowledging them with no copy.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::node::{lock, Cluster};
use super::{LocalNode, PeerStatus};
use crate::routing::SubOptions;

/// One peer's remembered routes: `[str addr][u32 n][n × str filter]` (`str` = u32 length +
/// UTF-8).
fn encode(addr: SocketAddr, filters: &HashSet<String>) -> Vec<u8> {
    let mut b = Vec::new();
    let put = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u32).to_be_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    put(&mut b, &addr.to_string());
    b.extend_from_slice(&(filters.len() as u32).to_be_bytes());
    for f in filters {
        put(&mut b, f);
    }
    b
}

fn decode(mut b: &[u8]) -> Option<(SocketAddr, HashSet<String>)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn u32_(b: &mut &[u8]) -> Option<usize> {
        let x = take(b, 4)?;
        Some(u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    }
    fn str_(b: &mut &[u8]) -> Option<String> {
        let n = u32_(b)?;
        String::from_utf8(take(b, n)?.to_vec()).ok()
    }
    let addr = str_(&mut b)?.parse().ok()?;
    let n = u32_(&mut b)?;
    let mut filters = HashSet::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        filters.insert(str_(&mut b)?);
    }
    b.is_empty().then_some((addr, filters))
}

impl Cluster {
    /// At start: the routes remembered from the last run, held (down peers) until the peers
    /// send fresh snapshots or `dead_after` passes. Returns how many peers.
    pub(super) fn restore_peer_routes(&self, b: &Arc<dyn LocalNode>) -> usize {
        let mut n = 0;
        for (node, rec) in b.load_peer_routes() {
            let Some((addr, filters)) = decode(&rec) else {
                tracing::warn!(node = %self.node, peer = %node, "cluster: unreadable remembered routes ignored");
                continue;
            };
            if *node == *self.node {
                continue;
            }
            let peer: Arc<str> = Arc::from(node.as_str());
            for f in &filters {
                self.routes.subscribe(&peer, f, SubOptions::default());
            }
            tracing::info!(node = %self.node, peer = %peer, routes = filters.len(), "cluster: routes remembered from the last run held until the peer sends its own");
            lock(&self.saved_routes).insert(peer.clone(), filters.clone());
            lock(&self.node_filters).insert(peer.clone(), filters);
            lock(&self.status).insert(
                peer.clone(),
                PeerStatus {
                    up: false,
                    unreachable: false,
                    addr,
                    admin: None,
                    held: true,
                    draining: false,
                },
            );
            lock(&self.held).insert(peer, std::time::Instant::now());
            n += 1;
        }
        n
    }

    /// Writes the peers' routes that changed since the last call (each membership round).
    pub(super) fn save_peer_routes(&self) {
        let Some(b) = self.core() else { return };
        let now: HashMap<Arc<str>, HashSet<String>> = lock(&self.node_filters).clone();
        let mut saved = lock(&self.saved_routes);
        let gone: Vec<Arc<str>> = saved
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            saved.remove(&n);
            b.save_peer_routes(&n, None);
        }
        for (n, filters) in now {
            if saved.get(&n) == Some(&filters) {
                continue;
            }
            let addr = lock(&self.status).get(&n).map(|s| s.addr);
            if let Some(addr) = addr {
                b.save_peer_routes(&n, Some(encode(addr, &filters)));
                saved.insert(n, filters);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let f: HashSet<String> = ["a/+".to_string(), "b\n#".to_string()].into();
        let addr: SocketAddr = "127.0.0.2:7".parse().unwrap();
        let rec = encode(addr, &f);
        assert_eq!(decode(&rec), Some((addr, f)));
        for i in 0..rec.len() {
            assert_eq!(decode(&rec[..i]), None, "prefix {i}");
        }
        let mut long = rec.clone();
        long.push(0);
        assert_eq!(decode(&long), None);
    }
}
