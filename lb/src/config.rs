//! The LB config in two stages: the raw TOML shape (`deny_unknown_fields`, spans kept for
//! errors) and the validated runtime `Config` (parsed addresses, loaded certificates). `mqedge
//! check` and `mqedge lb` both go through [`Config::load`], so what check accepts is what runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqedge_shared::config::{
    from_toml, read_config_file, resolve_path, ByteSize, ConfigErrors, HumanDuration, Problems,
};
use mqedge_shared::tls::{self, ClientAuth};
use serde::Deserialize;
use toml::Spanned;

use crate::balance::Strategy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    lb: Option<RawLb>,
    #[serde(default)]
    listener: Vec<RawListener>,
    balance: Option<RawBalance>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLb {
    name: Option<String>,
    admin: Option<Spanned<String>>,
    workers: Option<usize>,
    max_connections: Option<u64>,
    connect_timeout: Option<HumanDuration>,
    max_connect_packet: Option<Spanned<ByteSize>>,
    drain_timeout: Option<HumanDuration>,
    connect_rate_per_ip: Option<u32>,
    connect_burst_per_ip: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    bind: Spanned<String>,
    #[serde(default)]
    proxy_protocol: bool,
    tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
    #[serde(default)]
    client_auth: ClientAuth,
    #[serde(default)]
    alpn: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    strategy: Option<Strategy>,
    fallback: Option<Spanned<Strategy>>,
    retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<HealthKind>,
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    fall: Option<Spanned<u32>>,
    rise: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Spanned<String>,
    addr: Spanned<String>,
    weight: Option<u32>,
    #[serde(default)]
    proxy_protocol: ProxyMode,
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
    /// Binary header with TLVs (SSL, CN, ALPN, SNI, connection id, cert fingerprint).
    V2,
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
    /// TLS termination, or plain TCP when `None`.
    pub tls: Option<ListenerTls>,
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
}

impl Config {
    /// Reads, parses and validates a config file; every problem is reported as `file:line: what`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = read_config_file(path)?;
        Self::parse(path, &src)
    }

    /// Parses and validates config text that came from `path` (relative paths resolve against it).
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let raw: RawFile = from_toml(&file, src)?;
        let mut p = Problems::new(&file, src);

        let rl = raw.lb.unwrap_or(RawLb {
            name: None,
            admin: None,
            workers: None,
            max_connections: None,
            connect_timeout: None,
            max_connect_packet: None,
            drain_timeout: None,
            connect_rate_per_ip: None,
            connect_burst_per_ip: None,
        });
        let admin = rl
            .admin
            .as_ref()
            .and_then(|a| match a.get_ref().parse::<SocketAddr>() {
                Ok(s) => Some(s),
                Err(_) => {
                    p.at(
                        a.span(),
                        format!("admin: invalid address {:?}: expected ip:port", a.get_ref()),
                    );
                    None
                }
            });
        let max_connect_packet = rl
            .max_connect_packet
            .as_ref()
            .map(|s| s.get_ref().0)
            .unwrap_or(64 * 1024);
        if let Some(s) = &rl.max_connect_packet {
            if s.get_ref().0 < 16 || s.get_ref().0 > 16 << 20 {
                p.at(s.span(), "max_connect_packet must be between 16B and 16MiB");
            }
        }
        let burst = rl
            .connect_burst_per_ip
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(20);
        if let Some(b) = &rl.connect_burst_per_ip {
            if *b.get_ref() == 0 {
                p.at(b.span(), "connect_burst_per_ip must be at least 1");
            }
        }
        let lb = LbSettings {
            name: rl.name.unwrap_or_else(|| "mqedge-lb".into()),
            admin,
            workers: rl.workers.unwrap_or(0),
            max_connections: rl.max_connections.unwrap_or(100_000),
            connect_timeout: rl.connect_timeout.unwrap_or(HumanDuration::secs(5)).0,
            max_connect_packet: max_connect_packet as usize,
            drain_timeout: rl.drain_timeout.unwrap_or(HumanDuration::secs(30)).0,
            connect_rate_per_ip: rl.connect_rate_per_ip.unwrap_or(0),
            connect_burst_per_ip: burst,
        };

        if raw.listener.is_empty() {
            p.top("at least one [[listener]] is required");
        }
        let mut listeners = Vec::new();
        let mut names = std::collections::HashSet::new();
        for l in raw.listener {
            if l.name.get_ref().is_empty() {
                p.at(l.name.span(), "listener name must not be empty");
            } else if !names.insert(l.name.get_ref().clone()) {
                p.at(
                    l.name.span(),
                    format!("duplicate listener name {:?}", l.name.get_ref()),
                );
            }
            let bind = match l.bind.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    p.at(
                        l.bind.span(),
                        format!(
                            "bind: invalid address {:?}: expected ip:port, like \"0.0.0.0:8883\"",
                            l.bind.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let tls = match &l.tls {
                None => None,
                Some(t) => {
                    let span = t.span();
                    let t = t.get_ref();
                    let cert = resolve_path(path, &t.cert);
                    let key = resolve_path(path, &t.key);
                    let ca = t.client_ca.as_ref().map(|c| resolve_path(path, c));
                    if t.client_auth != ClientAuth::None && ca.is_none() {
                        p.at(
                            span.clone(),
                            format!("client_auth = {:?} needs client_ca", t.client_auth)
                                .to_lowercase(),
                        );
                    }
                    let loaded = (|| {
                        let chain = tls::load_certs(&cert)?;
                        let k = tls::load_key(&key)?;
                        let ca_certs = match &ca {
                            Some(c) if t.client_auth != ClientAuth::None => {
                                Some(tls::load_certs(c)?)
                            }
                            _ => None,
                        };
                        tls::server_config(chain, k, ca_certs, t.client_auth, &t.alpn)
                    })();
                    match loaded {
                        Ok(sc) => Some(ListenerTls {
                            server_config: sc,
                            client_auth: t.client_auth,
                            files: [Some(cert), Some(key), ca].into_iter().flatten().collect(),
                        }),
                        Err(e) => {
                            if !(t.client_auth != ClientAuth::None && ca.is_none()) {
                                p.at(span, format!("listener {:?} tls: {e}", l.name.get_ref()));
                            }
                            None
                        }
                    }
                }
            };
            listeners.push(ListenerConfig {
                name: l.name.into_inner(),
                bind,
                proxy_protocol: l.proxy_protocol,
                tls,
            });
        }

        let rb = raw.balance.unwrap_or(RawBalance {
            strategy: None,
            fallback: None,
            retries: None,
        });
        let fallback = match &rb.fallback {
            Some(f) if *f.get_ref() == Strategy::ClientId => {
                p.at(
                    f.span(),
                    "fallback cannot be client_id (it is used when the client id is empty)",
                );
                Strategy::SourceIp
            }
            Some(f) => *f.get_ref(),
            None => Strategy::SourceIp,
        };
        let balance = BalanceConfig {
            strategy: rb.strategy.unwrap_or(Strategy::ClientId),
            fallback,
            retries: rb.retries.unwrap_or(2),
        };

        let health = parse_health(raw.health, &mut p);
        let backends = parse_backends(raw.backend, &mut p);
        p.finish()?;
        Ok(Config {
            path: path.to_path_buf(),
            lb,
            listeners,
            balance,
            health,
            backends,
        })
    }
}

fn parse_health(rh: Option<RawHealth>, p: &mut Problems<'_>) -> HealthConfig {
    let rh = rh.unwrap_or(RawHealth {
        kind: None,
        interval: None,
        timeout: None,
        fall: None,
        rise: None,
    });
    let dur =
        |d: &Option<Spanned<HumanDuration>>, def: u64, what: &str, p: &mut Problems<'_>| match d {
            Some(d) if d.get_ref().0 < Duration::from_millis(10) => {
                p.at(d.span(), format!("{what} must be at least 10ms"));
                Duration::from_secs(def)
            }
            Some(d) => d.get_ref().0,
            None => Duration::from_secs(def),
        };
    let count = |c: &Option<Spanned<u32>>, def: u32, what: &str, p: &mut Problems<'_>| match c {
        Some(c) if *c.get_ref() == 0 => {
            p.at(c.span(), format!("{what} must be at least 1"));
            def
        }
        Some(c) => *c.get_ref(),
        None => def,
    };
    HealthConfig {
        kind: rh.kind.unwrap_or_default(),
        interval: dur(&rh.interval, 2, "interval", p),
        timeout: dur(&rh.timeout, 1, "timeout", p),
        fall: count(&rh.fall, 2, "fall", p),
        rise: count(&rh.rise, 3, "rise", p),
    }
}

fn parse_backends(raw: Vec<RawBackend>, p: &mut Problems<'_>) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = Vec::new();
    for b in raw {
        let addr = match b.addr.get_ref().parse::<BackendAddr>() {
            Ok(a) => a,
            Err(e) => {
                p.at(b.addr.span(), e);
                continue;
            }
        };
        let name = b.name.get_ref().clone();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            p.at(
                b.name.span(),
                format!("backend name {name:?} must be 1-64 characters of [A-Za-z0-9._-]"),
            );
            continue;
        }
        if out.iter().any(|o| o.name == name) {
            p.at(b.name.span(), format!("duplicate backend name {name:?}"));
            continue;
        }
        out.push(BackendConfig {
            name,
            addr,
            weight: b.weight.unwrap_or(1),
            proxy_protocol: b.proxy_protocol,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("lb.toml"), s)
    }

    const MIN: &str = "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n";

    #[test]
    fn defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.lb.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.lb.max_connect_packet, 65536);
        assert_eq!(c.lb.max_connections, 100_000);
        assert_eq!(c.lb.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.lb.connect_burst_per_ip, 20);
        assert_eq!(c.balance.strategy, Strategy::ClientId);
        assert_eq!(c.balance.fallback, Strategy::SourceIp);
        assert_eq!(c.balance.retries, 2);
        assert_eq!(c.health.kind, HealthKind::Mqtt);
        assert_eq!((c.health.fall, c.health.rise), (2, 3));
        assert!(c.backends.is_empty());
    }

    #[test]
    fn backends_and_errors_with_lines() {
        let ok = format!(
            "{MIN}[[backend]]\nname = \"node1\"\naddr = \"127.0.0.1:11883\"\nproxy_protocol = \"v2\"\n[[backend]]\nname = \"node2\"\naddr = \"broker-1.broker:1883\"\nweight = 3\n"
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.backends[0].proxy_protocol, ProxyMode::V2);
        assert_eq!(
            c.backends[1].addr,
            BackendAddr::Host("broker-1.broker".into(), 1883)
        );
        assert_eq!(c.backends[1].weight, 3);

        let e = parse(&format!(
            "{MIN}[[backend]]\nname = \"a\"\naddr = \"nope\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("lb.toml:6: invalid backend address"), "{e}");
        let e = parse(&format!("{MIN}[lb]\nconnect_timeout = \"5 parsecs\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("lb.toml:5: invalid duration"), "{e}");
        let e = parse(&format!("{MIN}[lb]\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("lb.toml:5: unknown field `bogus`"), "{e}");
        let e = parse("[[listener]]\nname = \"x\"\nbind = \"localhost\"\n[health]\nfall = 0\n")
            .unwrap_err();
        assert_eq!(e.0.len(), 2, "all problems at once: {e}");
        assert!(
            e.0[0]
                .to_string()
                .starts_with("lb.toml:3: bind: invalid address"),
            "{e}"
        );
        assert!(
            e.0[1]
                .to_string()
                .starts_with("lb.toml:5: fall must be at least 1"),
            "{e}"
        );
        let e = parse(&format!("{MIN}[balance]\nstrategy = \"coin_flip\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("lb.toml:5: unknown variant `coin_flip`"),
            "{e}"
        );
        let e = parse(&format!("{MIN}[[backend]]\nname = \"a\"\naddr = \"1.2.3.4:1\"\n[[backend]]\nname = \"a\"\naddr = \"1.2.3.4:2\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lb.toml:8: duplicate backend name"), "{e}");
        let e = parse("[[listener]]\nname = \"x\"\nbind = \"127.0.0.1:1\"\n[listener.tls]\ncert = \"/nonexistent.pem\"\nkey = \"/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("lb.toml:4") || e.starts_with("lb.toml:5"),
            "{e}"
        );
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }
}
