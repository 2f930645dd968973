//! The LB config in two stages: the raw TOML shape (`deny_unknown_fields`, spans kept for
//! errors) and the validated runtime `Config` (parsed addresses, loaded certificates). `mqedge
//! check` and `mqedge lb` both go through [`Config::load`], so what check accepts is what runs.
//! This file holds the runtime types; `validate.rs` the raw shape, the checks and
//! [`Config::load`].
//!
//! A leaf: imports nothing else of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mqedge_shared::config::Cidr;
use mqedge_shared::tls::ClientAuth;
use serde::Deserialize;

pub mod net;
pub mod placement;
mod resume;
#[cfg(test)]
mod tests;
pub mod ticket_keys;
mod validate;

pub use net::{ListenerNet, SocketBufs};
pub use placement::PlacementConfig;

/// Which key a connection is hashed on.
///
/// Chosen per listener in the config; the hashed variants keep a client on one backend, the
/// others spread load without affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Hash the MQTT client id, so a client's persistent session stays on one broker.
    ClientId,
    /// Hash the client IP (not the port), for clients whose id is empty or not yet known.
    SourceIp,
    /// Rotate the first backend on each connection; no affinity.
    RoundRobin,
    /// Prefer the backend with the fewest connections per unit of weight; no affinity.
    LeastConnections,
}

/// What header, if any, a backend wants in front of the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyMode {
    /// Plain TCP: the backend sees the LB's address.
    #[default]
    None,
    /// Text header: addresses only.
    V1,
    /// Binary header with TLVs (SSL, CN, ALPN, SNI, connection id, the certificate's
    /// fingerprint, subject DN and SANs).
    V2,
}

/// The optional client-certificate TLVs a `v2` backend gets (`[[backend]] proxy_tlvs`), as a
/// bit set so a reload can swap it in one atomic store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTlvs(u8);

impl ProxyTlvs {
    /// The CN sub-TLV `0x22` of the SSL TLV.
    pub const CN: ProxyTlvs = ProxyTlvs(1);
    /// The subject DN, `0xE1`.
    pub const DN: ProxyTlvs = ProxyTlvs(2);
    /// The SANs, `0xE2`.
    pub const SAN: ProxyTlvs = ProxyTlvs(4);
    /// The SHA-256 fingerprint, `0xE0`.
    pub const FINGERPRINT: ProxyTlvs = ProxyTlvs(8);
    /// Every one of them: the default.
    pub const ALL: ProxyTlvs = ProxyTlvs(15);
    /// The names `proxy_tlvs` takes, with their bits.
    pub const NAMES: [(&'static str, ProxyTlvs); 4] = [
        ("cn", ProxyTlvs::CN),
        ("dn", ProxyTlvs::DN),
        ("san", ProxyTlvs::SAN),
        ("fingerprint", ProxyTlvs::FINGERPRINT),
    ];

    /// None of them.
    pub const fn empty() -> ProxyTlvs {
        ProxyTlvs(0)
    }
    /// This set and `other`'s.
    pub const fn with(self, other: ProxyTlvs) -> ProxyTlvs {
        ProxyTlvs(self.0 | other.0)
    }
    /// Whether every TLV of `t` is in the set.
    #[inline]
    pub const fn has(self, t: ProxyTlvs) -> bool {
        self.0 & t.0 == t.0
    }
    /// The bits, for an atomic.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// The set of these bits (unknown bits dropped).
    pub const fn from_bits(b: u8) -> ProxyTlvs {
        ProxyTlvs(b & 15)
    }
}

impl Default for ProxyTlvs {
    fn default() -> Self {
        ProxyTlvs::ALL
    }
}

/// How health checks talk to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// A real MQTT CONNECT that must be answered by a CONNACK.
    #[default]
    Mqtt,
    /// A TCP connect only.
    Tcp,
}

/// Process-wide settings (`[lb]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LbSettings {
    /// Instance name, for logs and connection ids.
    pub name: String,
    /// Admin HTTP address; `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    /// Over this many client connections, new ones are accepted and closed at once.
    pub max_connections: u64,
    /// Deadline for PROXY-in + TLS handshake + CONNECT.
    pub connect_timeout: Duration,
    /// Largest CONNECT packet accepted, bytes.
    pub max_connect_packet: usize,
    /// How long removed/drained backends' connections (and shutdown) may linger.
    pub drain_timeout: Duration,
    /// New connections per second per source IP; 0 = unlimited.
    pub connect_rate_per_ip: u32,
    /// Token bucket size for the rate above.
    pub connect_burst_per_ip: u32,
    /// `admin_hosts` and the `admin_token_file` token, read per admin request so a reload
    /// applies them.
    pub admin_access: Arc<mqedge_shared::admin::AdminAccess>,
}

/// TLS on a listener, loaded and ready.
#[derive(Clone)]
pub struct ListenerTls {
    /// The rustls config built from the files.
    pub server_config: Arc<rustls::ServerConfig>,
    /// Client certificate mode.
    pub client_auth: ClientAuth,
    /// The files it came from (for change detection on reload).
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("client_auth", &self.client_auth)
            .field("files", &self.files)
            .finish()
    }
}

/// One client-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name, used as the metrics label.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Whether to expect a PROXY v1/v2 header from an upstream L4 balancer.
    pub proxy_protocol: bool,
    /// The upstream balancers allowed to send that header (never empty when `proxy_protocol`):
    /// anyone else could claim any client address.
    pub trusted_proxies: Vec<Cidr>,
    /// TLS termination, or plain TCP when `None`.
    pub tls: Option<ListenerTls>,
    /// Bandwidth limits and socket buffers per connection (reloadable).
    pub net: ListenerNet,
    /// MQTT over WebSocket (`[listener.websocket]`): the LB terminates it (after TLS on a WSS
    /// listener) and forwards plain MQTT.
    pub websocket: Option<mqedge_shared::ws::WsConfig>,
}

/// `[balance]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceConfig {
    /// What to hash on.
    pub strategy: Strategy,
    /// What to hash on when the client id is empty.
    pub fallback: Strategy,
    /// Further backends to try, in hash order, when a connect fails.
    pub retries: u32,
    /// When a rebalance runs (`manual`: `POST /api/rebalance` only).
    pub rebalance: RebalanceMode,
    /// Clients a rebalance moves per second.
    pub rebalance_rate: u32,
}

/// `[balance] rebalance`: when the clients whose hash pick moved to a backend are moved there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebalanceMode {
    /// Only on `POST /api/rebalance`.
    Manual,
    /// Also when a backend becomes `up` that was not (it joined, or came back).
    Auto,
}

/// `[health]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Check kind.
    pub kind: HealthKind,
    /// Time between checks.
    pub interval: Duration,
    /// Deadline of one check (and of one backend connect while forwarding).
    pub timeout: Duration,
    /// Consecutive failures that mark a backend down.
    pub fall: u32,
    /// Consecutive successes that mark it up.
    pub rise: u32,
}

/// Where a backend lives: an IP literal, or a host name resolved at connect time (DNS-based
/// service discovery such as a Kubernetes headless service).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    /// `10.0.0.2:1883`.
    Ip(SocketAddr),
    /// `broker-0.broker:1883`.
    Host(String, u16),
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Ip(a) => write!(f, "{a}"),
            BackendAddr::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl std::str::FromStr for BackendAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(BackendAddr::Ip(a));
        }
        let bad =
            || format!("invalid backend address {s:?}: expected host:port, like \"10.0.0.2:1883\"");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !host_ok || port == 0 || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        Ok(BackendAddr::Host(host.to_string(), port))
    }
}

/// One backend (`[[backend]]`), the hot-reloadable part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique name; the hash is over names, so renaming moves clients, re-addressing does not.
    pub name: String,
    /// Address.
    pub addr: BackendAddr,
    /// Relative share of clients; 0 takes none.
    pub weight: u32,
    /// Header to send first.
    pub proxy_protocol: ProxyMode,
    /// The certificate TLVs of a `v2` header.
    pub proxy_tlvs: ProxyTlvs,
    /// Socket buffers of the connections to it (new connections take a reload's values).
    pub bufs: SocketBufs,
}

/// A validated LB config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (watched for reloads).
    pub path: PathBuf,
    /// `[lb]`.
    pub lb: LbSettings,
    /// `[[listener]]`.
    pub listeners: Vec<ListenerConfig>,
    /// `[balance]`.
    pub balance: BalanceConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// `[[backend]]`.
    pub backends: Vec<BackendConfig>,
    /// `[placement]` and the backends' `admin` feeds.
    pub placement: Arc<PlacementConfig>,
}
