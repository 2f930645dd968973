//! The raw TOML shape of an LB config (`deny_unknown_fields`, spans kept for errors) and its
//! validation into [`Config`]: every problem is collected, each reported as `file:line: what`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mqedge_shared::admin::AdminAccess;
use mqedge_shared::config::{
    from_toml, read_config_file, resolve_path, ByteSize, Cidr, ConfigErrors, HumanDuration,
    Problems,
};
use mqedge_shared::tls::{self, ClientAuth};
use mqedge_shared::ws::{RawWebSocket, WsConfig};
use serde::Deserialize;
use toml::Spanned;

use super::net::{parse_bufs, parse_listener_net, RawListenerNet};
use super::{
    BackendAddr, BackendConfig, BalanceConfig, Config, HealthConfig, HealthKind, LbSettings,
    ListenerConfig, ListenerTls, ProxyMode, ProxyTlvs, Strategy,
};

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
    placement: Option<super::placement::RawPlacement>,
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
    admin_token_file: Option<Spanned<String>>,
    #[serde(default)]
    admin_hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    bind: Spanned<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    bandwidth_in: Option<Spanned<ByteSize>>,
    bandwidth_out: Option<Spanned<ByteSize>>,
    bandwidth_burst: Option<Spanned<ByteSize>>,
    sndbuf: Option<Spanned<ByteSize>>,
    rcvbuf: Option<Spanned<ByteSize>>,
    websocket: Option<RawWebSocket>,
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
    crl: Option<Spanned<CrlFiles>>,
    session_cache: Option<Spanned<i64>>,
    tickets: Option<bool>,
    ticket_keys: Option<Spanned<String>>,
}

/// `crl = "file"` or `crl = ["file", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CrlFiles {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    strategy: Option<Strategy>,
    fallback: Option<Spanned<Strategy>>,
    retries: Option<u32>,
    rebalance: Option<super::RebalanceMode>,
    rebalance_rate: Option<Spanned<u32>>,
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
    proxy_tlvs: Option<Spanned<Vec<Spanned<String>>>>,
    sndbuf: Option<Spanned<ByteSize>>,
    rcvbuf: Option<Spanned<ByteSize>>,
    /// The broker's admin API, where its placement feed is read (`super::placement`).
    admin: Option<Spanned<String>>,
}

impl Config {
    /// Reads, parses and validates a config file; every problem is reported as `file:line: what`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = read_config_file(path)?;
        Self::parse(path, &src)
    }

    /// Parses and validates config text that came from `path` (relative paths resolve against it).
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        parse(path, src)
    }
}

fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let raw: RawFile = from_toml(&file, src)?;
    let mut p = Problems::new(&file, src);
    let lb = parse_lb(path, raw.lb, &mut p);
    let listeners = parse_listeners(path, raw.listener, &mut p);
    let balance = parse_balance(raw.balance, &mut p);
    let health = parse_health(raw.health, &mut p);
    let admins = raw
        .backend
        .iter()
        .filter_map(|b| Some((b.name.get_ref().clone(), b.admin.clone()?)))
        .collect();
    let placement = super::placement::parse(path, raw.placement, admins, &mut p);
    let backends = parse_backends(raw.backend, &mut p);
    p.finish()?;
    Ok(Config {
        path: path.to_path_buf(),
        lb,
        listeners,
        balance,
        health,
        backends,
        placement: std::sync::Arc::new(placement),
    })
}

fn parse_lb(path: &Path, rl: Option<RawLb>, p: &mut Problems<'_>) -> LbSettings {
    let rl = rl.unwrap_or(RawLb {
        name: None,
        admin: None,
        workers: None,
        max_connections: None,
        connect_timeout: None,
        max_connect_packet: None,
        drain_timeout: None,
        connect_rate_per_ip: None,
        connect_burst_per_ip: None,
        admin_token_file: None,
        admin_hosts: Vec::new(),
    });
    let admin_access =
        AdminAccess::from_config(p, path, rl.admin_token_file.as_ref(), &rl.admin_hosts);
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
    LbSettings {
        name: rl.name.unwrap_or_else(|| "mqedge-lb".into()),
        admin,
        workers: rl.workers.unwrap_or(0),
        max_connections: rl.max_connections.unwrap_or(100_000),
        connect_timeout: rl.connect_timeout.unwrap_or(HumanDuration::secs(5)).0,
        max_connect_packet: max_connect_packet as usize,
        drain_timeout: rl.drain_timeout.unwrap_or(HumanDuration::secs(30)).0,
        connect_rate_per_ip: rl.connect_rate_per_ip.unwrap_or(0),
        connect_burst_per_ip: burst,
        admin_access: Arc::new(admin_access),
    }
}

fn parse_listeners(
    path: &Path,
    raw: Vec<RawListener>,
    p: &mut Problems<'_>,
) -> Vec<ListenerConfig> {
    if raw.is_empty() {
        p.top("at least one [[listener]] is required");
    }
    let mut listeners = Vec::new();
    let mut names = std::collections::HashSet::new();
    for l in raw {
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
        let mut trusted_proxies = Vec::new();
        for t in &l.trusted_proxies {
            match t.get_ref().parse::<Cidr>() {
                Ok(c) => trusted_proxies.push(c),
                Err(e) => p.at(t.span(), e),
            }
        }
        if l.proxy_protocol && l.trusted_proxies.is_empty() {
            p.at(
                l.bind.span(),
                "proxy_protocol needs trusted_proxies (the balancers allowed to send PROXY headers)",
            );
        }
        let tls = l
            .tls
            .as_ref()
            .and_then(|t| parse_tls(path, l.name.get_ref(), t, p));
        let raw_net = RawListenerNet {
            bandwidth_in: l.bandwidth_in,
            bandwidth_out: l.bandwidth_out,
            bandwidth_burst: l.bandwidth_burst,
            sndbuf: l.sndbuf,
            rcvbuf: l.rcvbuf,
        };
        let net = parse_listener_net(l.name.get_ref(), raw_net, p);
        let websocket = l.websocket.as_ref().map(|w| WsConfig::parse(w, p));
        listeners.push(ListenerConfig {
            name: l.name.into_inner(),
            bind,
            proxy_protocol: l.proxy_protocol,
            trusted_proxies,
            tls,
            net,
            websocket,
        });
    }
    listeners
}

/// Loads the listener's `crl` files (each one or more CRLs) and their paths; `None`, with the
/// problem recorded at the `crl` key, when one cannot be used.
#[allow(clippy::type_complexity)]
fn parse_crls(
    path: &Path,
    name: &str,
    t: &RawTls,
    p: &mut Problems<'_>,
) -> Option<(
    Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    Vec<std::path::PathBuf>,
)> {
    let Some(c) = &t.crl else {
        return Some((Vec::new(), Vec::new()));
    };
    if t.client_auth == ClientAuth::None {
        p.at(
            c.span(),
            format!("listener {name:?} tls: crl needs client_auth = \"optional\" or \"required\""),
        );
        return None;
    }
    let names: Vec<&String> = match c.get_ref() {
        CrlFiles::One(f) => vec![f],
        CrlFiles::Many(fs) => fs.iter().collect(),
    };
    if names.is_empty() {
        p.at(
            c.span(),
            format!("listener {name:?} tls: crl names no file"),
        );
        return None;
    }
    let (mut crls, mut files) = (Vec::new(), Vec::new());
    for f in names {
        let file = resolve_path(path, f);
        match tls::load_crls(&file) {
            Ok(mut list) => crls.append(&mut list),
            Err(e) => {
                p.at(c.span(), format!("listener {name:?} tls crl: {e}"));
                return None;
            }
        }
        files.push(file);
    }
    Some((crls, files))
}

/// Loads a listener's certificates and builds its rustls config; `None`, with the problem
/// recorded, when that fails.
fn parse_tls(
    path: &Path,
    name: &str,
    t: &Spanned<RawTls>,
    p: &mut Problems<'_>,
) -> Option<ListenerTls> {
    let span = t.span();
    let t = t.get_ref();
    let cert = resolve_path(path, &t.cert);
    let key = resolve_path(path, &t.key);
    let ca = t.client_ca.as_ref().map(|c| resolve_path(path, c));
    if t.client_auth != ClientAuth::None && ca.is_none() {
        p.at(
            span.clone(),
            format!("client_auth = {:?} needs client_ca", t.client_auth).to_lowercase(),
        );
    }
    // a bad CRL is reported, and the certificates are still loaded to report their problems
    let (crls, crl_files) = match parse_crls(path, name, t, p) {
        Some((c, f)) => (c, Some(f)),
        None => (Vec::new(), None),
    };
    let loaded = (|| {
        let chain = tls::load_certs(&cert)?;
        let k = tls::load_key(&key)?;
        let ca_certs = match &ca {
            Some(c) if t.client_auth != ClientAuth::None => Some(tls::load_certs(c)?),
            _ => None,
        };
        tls::server_config_with_crls(chain, k, ca_certs, t.client_auth, &crls, &t.alpn)
    })();
    let keys_file = t
        .ticket_keys
        .as_ref()
        .map(|k| (resolve_path(path, k.get_ref()), k.span()));
    let keys = match &keys_file {
        Some((f, span)) => match super::ticket_keys::load(f) {
            // bound to what the CA and CRL files say now (see `ticket_keys`)
            Ok(k) => {
                let trust: Vec<Vec<u8>> = ca
                    .iter()
                    .chain(crl_files.iter().flatten())
                    .map(|f| std::fs::read(f).unwrap_or_default())
                    .collect();
                Some(k.bind(&trust))
            }
            Err(e) => {
                p.at(
                    span.clone(),
                    format!("listener {name:?} tls ticket_keys: {e}"),
                );
                None
            }
        },
        None => None,
    };
    let resume = super::resume::Resumption {
        size: &t.session_cache,
        tickets: t.tickets,
        keys,
    };
    let loaded = loaded.and_then(|sc| super::resume::with_resumption(sc, resume, name, p));
    match loaded {
        Ok(sc) => Some(ListenerTls {
            server_config: sc,
            client_auth: t.client_auth,
            files: [Some(cert), Some(key), ca]
                .into_iter()
                .flatten()
                .chain(crl_files?)
                .chain(keys_file.map(|(f, _)| f))
                .collect(),
        }),
        Err(e) => {
            if !(t.client_auth != ClientAuth::None && ca.is_none()) {
                p.at(span, format!("listener {name:?} tls: {e}"));
            }
            None
        }
    }
}

fn parse_balance(rb: Option<RawBalance>, p: &mut Problems<'_>) -> BalanceConfig {
    let rb = rb.unwrap_or(RawBalance {
        strategy: None,
        fallback: None,
        retries: None,
        rebalance: None,
        rebalance_rate: None,
    });
    let rebalance_rate = match &rb.rebalance_rate {
        Some(r) if *r.get_ref() == 0 => {
            p.at(
                r.span(),
                "rebalance_rate must be at least 1 (clients per second)",
            );
            1
        }
        Some(r) => *r.get_ref(),
        None => 100,
    };
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
    BalanceConfig {
        strategy: rb.strategy.unwrap_or(Strategy::ClientId),
        fallback,
        retries: rb.retries.unwrap_or(2),
        rebalance: rb.rebalance.unwrap_or(super::RebalanceMode::Manual),
        rebalance_rate,
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
        let bufs = parse_bufs(&format!("backend {name:?}"), b.sndbuf, b.rcvbuf, p);
        let proxy_tlvs = proxy_tlvs(p, b.proxy_protocol, b.proxy_tlvs.as_ref());
        out.push(BackendConfig {
            name,
            addr,
            weight: b.weight.unwrap_or(1),
            proxy_protocol: b.proxy_protocol,
            proxy_tlvs,
            bufs,
        });
    }
    out
}

/// `[[backend]] proxy_tlvs`: names from [`ProxyTlvs::NAMES`], only with `proxy_protocol = "v2"`;
/// every one when the key is absent.
fn proxy_tlvs(
    p: &mut Problems<'_>,
    mode: ProxyMode,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
) -> ProxyTlvs {
    let Some(raw) = raw else {
        return ProxyTlvs::ALL;
    };
    if mode != ProxyMode::V2 {
        p.at(
            raw.span(),
            "proxy_tlvs needs proxy_protocol = \"v2\" (only v2 headers carry TLVs)",
        );
    }
    let mut set = ProxyTlvs::empty();
    for name in raw.get_ref() {
        match ProxyTlvs::NAMES.iter().find(|(n, _)| n == name.get_ref()) {
            Some((_, t)) => set = set.with(*t),
            None => p.at(
                name.span(),
                format!(
                    "proxy_tlvs: unknown TLV {:?}: expected \"cn\", \"dn\", \"san\" or \"fingerprint\"",
                    name.get_ref()
                ),
            ),
        }
    }
    set
}
