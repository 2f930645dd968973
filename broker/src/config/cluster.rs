//! `[cluster]`: membership, the node channel (and its mutual TLS), the failure and restart
//! timings, retained tombstones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqedge_shared::config::{resolve_path, HumanDuration, Problems};
use serde::Deserialize;
use toml::Spanned;

use super::addr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    bind: Spanned<String>,
    #[serde(default)]
    seeds: Vec<Spanned<String>>,
    leave_timeout: Option<HumanDuration>,
    dead_after: Option<HumanDuration>,
    sync_timeout: Option<HumanDuration>,
    retained_tombstone_ttl: Option<HumanDuration>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    session_replicas: Option<Spanned<i64>>,
    replica_sync_rate: Option<Spanned<i64>>,
    drain_rate: Option<Spanned<i64>>,
    drain_timeout: Option<HumanDuration>,
    drain_ack_timeout: Option<HumanDuration>,
}

/// `[cluster]`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Gossip + node-to-node address.
    pub bind: SocketAddr,
    /// Peers to join through.
    pub seeds: Vec<SocketAddr>,
    /// How long a leaving node (SIGTERM) waits for its sessions to be confirmed elsewhere.
    pub leave_timeout: Duration,
    /// How long a peer the failure detector calls down keeps its routes (publishes toward it
    /// are refused, not acknowledged and lost) before it is taken as gone for good.
    pub dead_after: Duration,
    /// How long a starting node waits for its seeds' route snapshots before it accepts clients.
    pub sync_timeout: Duration,
    /// How long the tombstone of a retained clear is kept, so an older copy of the message
    /// coming back (a node restarted, a healed partition) loses to it.
    pub retained_tombstone_ttl: Duration,
    /// Mutual TLS on the node channel (`tls_cert`, `tls_key`, `tls_ca`); `None`: plain TCP.
    pub tls: Option<Arc<ClusterTls>>,
    /// Copies of each persistent session: 1 (its holder only) or 2 (and a replica on the next
    /// node of the LB's order), acknowledged only once durable on both.
    pub session_replicas: u8,
    /// Sessions per second copied whole to their replica (after a membership change, a
    /// restart, a new session).
    pub replica_sync_rate: u32,
    /// Clients (and offline sessions) per second a draining node moves to the other nodes.
    pub drain_rate: u32,
    /// The longest a drain runs: the node stops then, empty or not (what is left goes the
    /// graceful leave's way).
    pub drain_timeout: Duration,
    /// How long a draining node that LB health checks reach waits for an LB to acknowledge
    /// before it moves clients anyway.
    pub drain_ack_timeout: Duration,
}

/// The node channel's TLS material, loaded and checked at config load (the handshakes and the
/// identity checks are `cluster::tls`).
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// Accepts peers: this node's certificate, a client certificate chaining to `tls_ca` required.
    pub server: Arc<rustls::ServerConfig>,
    /// Dials peers: trusts only `tls_ca`, presents this node's certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// The three files, for messages.
    pub files: [PathBuf; 3],
}

impl RawCluster {
    /// Where `session_replicas` is written (for a problem found with other sections).
    pub(super) fn replicas_span(&self) -> std::ops::Range<usize> {
        self.session_replicas
            .as_ref()
            .map(|v| v.span())
            .unwrap_or_else(|| self.bind.span())
    }
}

pub(super) fn cluster(
    p: &mut Problems<'_>,
    path: &Path,
    name: &str,
    c: &RawCluster,
) -> Option<ClusterConfig> {
    let tls = cluster_tls(p, path, name, c);
    let bind = addr(p, &c.bind, "cluster bind")?;
    let seeds = c.seeds.iter().filter_map(|s| addr(p, s, "seed")).collect();
    let leave_timeout = c
        .leave_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(10));
    let dead_after = c.dead_after.map(|d| d.0).unwrap_or(Duration::from_secs(15));
    let sync_timeout = c
        .sync_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(5));
    let retained_tombstone_ttl = c
        .retained_tombstone_ttl
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(24 * 3600));
    let session_replicas = match &c.session_replicas {
        None => 1,
        Some(v) if (1..=2).contains(v.get_ref()) => *v.get_ref() as u8,
        Some(v) => {
            p.at(
                v.span(),
                format!(
                    "session_replicas = {}: must be 1 (the holder only) or 2 (the holder and \
                     one replica)",
                    v.get_ref()
                ),
            );
            1
        }
    };
    let replica_sync_rate = match &c.replica_sync_rate {
        None => 5_000,
        Some(v) if (1..=1_000_000).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            p.at(
                v.span(),
                format!(
                    "replica_sync_rate = {}: sessions per second, from 1 to 1000000",
                    v.get_ref()
                ),
            );
            5_000
        }
    };
    let drain_rate = match &c.drain_rate {
        None => 500,
        Some(v) if (1..=1_000_000).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            p.at(
                v.span(),
                format!(
                    "drain_rate = {}: clients per second, from 1 to 1000000",
                    v.get_ref()
                ),
            );
            500
        }
    };
    let drain_timeout = c
        .drain_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(300));
    let drain_ack_timeout = c
        .drain_ack_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(10));
    Some(ClusterConfig {
        drain_rate,
        drain_timeout,
        drain_ack_timeout,
        session_replicas,
        replica_sync_rate,
        bind,
        seeds,
        leave_timeout,
        dead_after,
        sync_timeout,
        retained_tombstone_ttl,
        tls,
    })
}

/// `tls_cert`, `tls_key`, `tls_ca`: all three or none; the files are loaded here (paths relative
/// to the config file), so a broken one is a `file:line` problem and not a failed handshake.
fn cluster_tls(
    p: &mut Problems<'_>,
    path: &Path,
    name: &str,
    c: &RawCluster,
) -> Option<Arc<ClusterTls>> {
    use mqedge_shared::tls;
    let keys = [&c.tls_cert, &c.tls_key, &c.tls_ca];
    let (Some(cert), Some(key), Some(ca)) = (&c.tls_cert, &c.tls_key, &c.tls_ca) else {
        if let Some(s) = keys.iter().find_map(|k| k.as_ref()) {
            p.at(
                s.span(),
                "tls_cert, tls_key and tls_ca go together: set all three (mutual TLS between \
                 nodes) or none",
            );
        }
        return None;
    };
    let file = |s: &Spanned<String>| resolve_path(path, s.get_ref());
    let (cert_f, key_f, ca_f) = (file(cert), file(key), file(ca));
    let mut bad = |s: &Spanned<String>, what: &str, e: tls::TlsError| {
        p.at(s.span(), format!("cluster {what}: {e}"));
    };
    let chain = tls::load_certs(&cert_f).map_err(|e| bad(cert, "tls_cert", e));
    let k = tls::load_key(&key_f).map_err(|e| bad(key, "tls_key", e));
    let roots = tls::load_certs(&ca_f).map_err(|e| bad(ca, "tls_ca", e));
    let (chain, k, roots) = (chain.ok()?, k.ok()?, roots.ok()?);
    let sans = chain
        .first()
        .and_then(|c| tls::CertFacts::from_der(c))
        .map(|f| f.san_values())
        .unwrap_or_default();
    if !sans.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        p.at(
            cert.span(),
            format!(
                "cluster tls_cert: {} has no DNS SAN {name:?} (the node name; peers check it; \
                 `mqedge certs --node {name}` makes one)",
                cert_f.display()
            ),
        );
        return None;
    }
    let built = tls::server_config(
        chain.clone(),
        k.clone_key(),
        Some(roots.clone()),
        tls::ClientAuth::Required,
        &[],
    )
    .and_then(|server| Ok((server, tls::client_config(roots, Some((chain, k)))?)));
    match built {
        Ok((server, client)) => Some(Arc::new(ClusterTls {
            server,
            client,
            files: [cert_f, key_f, ca_f],
        })),
        Err(e) => {
            bad(cert, "tls", e);
            None
        }
    }
}
