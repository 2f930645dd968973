//! The broker config in two stages (raw TOML with `deny_unknown_fields` → validated [`Config`]
//! with the password and ACL files loaded), reported as `file:line: what is wrong`.
//! `mqedge check` and `mqedge broker` share this code. Imports `auth` for the two file parsers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mqedge_shared::admin::AdminAccess;

use mqedge_shared::config::{
    from_toml, read_config_file, resolve_path, Cidr, ConfigErrors, Problems,
};
use serde::Deserialize;
use toml::Spanned;

use crate::auth::{Acl, PasswordFile};

mod auth_http;
mod auth_postgres;
mod cluster;
mod flow;
mod identity;
mod limits;

pub use auth_http::{AuthHttpConfig, OnUnavailable};
pub use auth_postgres::PostgresConfig;
use cluster::RawCluster;
pub use cluster::{ClusterConfig, ClusterTls};
pub use flow::{FlowConfig, SlowConsumerPolicy};
pub use identity::{CertUsername, UsernameFrom};
pub use limits::LimitsConfig;
use limits::{limits, RawLimits};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    node: Option<RawNode>,
    #[serde(default)]
    listener: Vec<RawListener>,
    cluster: Option<RawCluster>,
    auth: Option<RawAuth>,
    limits: Option<RawLimits>,
    shared_subscriptions: Option<RawShared>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
    data_dir: Option<String>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    #[serde(default)]
    admin_hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    bind: Spanned<String>,
    #[serde(default)]
    proxy_protocol: ProxyIn,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    use_cn_as_username: bool,
    username_from: Option<Spanned<UsernameFrom>>,
    websocket: Option<mqedge_shared::ws::RawWebSocket>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    allow_anonymous: Option<bool>,
    password_file: Option<Spanned<String>>,
    acl_file: Option<Spanned<String>>,
    max_concurrent_password_checks: Option<Spanned<i64>>,
    trust_claimed_usernames: Option<bool>,
    http: Option<auth_http::RawAuthHttp>,
    http_acl: Option<auth_http::RawAuthHttp>,
    postgres: Option<auth_postgres::RawAuthPostgres>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    policy: Option<SharedPolicy>,
}

/// Whether a listener expects a PROXY header first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyIn {
    /// Never: the TCP peer is the client.
    #[default]
    Off,
    /// Accepted when present (only from trusted proxies).
    Optional,
    /// Every connection must start with one, from a trusted proxy.
    Required,
}

/// How a `$share` group picks a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedPolicy {
    /// Members on the receiving node when there are any, else anywhere.
    #[default]
    PreferLocal,
    /// Only members on the receiving node.
    LocalOnly,
    /// In turn.
    RoundRobin,
    /// At random.
    Random,
}

/// One MQTT listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name (metrics label); defaults to the bind address.
    pub name: String,
    /// Address.
    pub bind: SocketAddr,
    /// PROXY header expectation.
    pub proxy_protocol: ProxyIn,
    /// Who may send a PROXY header.
    pub trusted_proxies: Vec<Cidr>,
    /// Which field of the verified certificate in the PROXY v2 header is the username
    /// (`username_from`, or `use_cn_as_username`), if any.
    pub cert_username: Option<CertUsername>,
    /// MQTT over WebSocket on this listener (`websocket = { path = "/mqtt" }`).
    pub websocket: Option<mqedge_shared::ws::WsConfig>,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// `user:argon2-PHC` file.
    pub password_file: Option<PathBuf>,
    /// mosquitto-format ACL file.
    pub acl_file: Option<PathBuf>,
    /// The users of `password_file`, loaded in stage 2.
    pub passwords: Option<PasswordFile>,
    /// The rules of `acl_file`, loaded in stage 2.
    pub acl: Option<Acl>,
    /// argon2 checks running at once (default: the cores available); CONNECTs past them wait.
    pub max_concurrent_password_checks: usize,
    /// Give an unchecked CONNECT username (anonymous allowed, no password file) the ACL rights
    /// of that user; off by default: only a certificate CN or a checked password names a user.
    pub trust_claimed_usernames: bool,
    /// `[auth.http]`: the external authentication service, asked first.
    pub http: Option<AuthHttpConfig>,
    /// `[auth.http_acl]`: the external authorization service, asked after the ACL file.
    pub http_acl: Option<AuthHttpConfig>,
    /// `[auth.postgres]`: users and ACL rows in PostgreSQL.
    pub postgres: Option<PostgresConfig>,
}

/// A validated broker config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Node name.
    pub name: String,
    /// Persistence directory; `None` = memory only.
    pub data_dir: Option<PathBuf>,
    /// Admin HTTP address.
    pub admin: Option<SocketAddr>,
    /// `admin_hosts` and the `admin_token_file` token the admin API asks for.
    pub admin_access: Arc<AdminAccess>,
    /// MQTT listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Clustering.
    pub cluster: Option<ClusterConfig>,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Shared subscription policy.
    pub shared_policy: SharedPolicy,
    /// The slow-consumer keys of `[limits]`.
    pub flow: FlowConfig,
}

fn addr(p: &mut Problems<'_>, s: &Spanned<String>, what: &str) -> Option<SocketAddr> {
    match s.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.at(
                s.span(),
                format!(
                    "{what}: invalid address {:?}: expected ip:port",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

impl Config {
    /// Reads and validates a broker config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = read_config_file(path)?;
        Self::parse(path, &src)
    }

    /// Validates config text that came from `path`: stage 1 checks every value and reports all
    /// problems at once; stage 2 (only when stage 1 found none) loads the password and ACL files
    /// it names, so `mqedge check` and `mqedge broker` refuse the same broken files.
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let raw: RawFile = from_toml(&file, src)?;
        let mut p = Problems::new(&file, src);
        let node = raw.node.unwrap_or(RawNode {
            name: None,
            data_dir: None,
            admin: None,
            admin_token_file: None,
            admin_hosts: Vec::new(),
        });
        let admin_access = AdminAccess::from_config(
            &mut p,
            path,
            node.admin_token_file.as_ref(),
            &node.admin_hosts,
        );
        let name = node_name(&mut p, node.name.as_ref());
        let admin = node.admin.as_ref().and_then(|a| addr(&mut p, a, "admin"));
        let data_dir = node.data_dir.as_ref().map(|d| resolve_path(path, d));
        let listeners = listeners(&mut p, &raw.listener);
        let cluster = raw
            .cluster
            .as_ref()
            .and_then(|c| cluster::cluster(&mut p, path, &name, c));
        if let (Some(raw_c), Some(c), None) = (&raw.cluster, &cluster, &data_dir) {
            if c.session_replicas > 1 {
                p.at(
                    raw_c.replicas_span(),
                    "session_replicas = 2 needs [node] data_dir: a replica is a copy on disk",
                );
            }
        }
        let mut auth = auth(&mut p, path, raw.auth);
        let flow = flow::flow(&mut p, raw.limits.as_ref());
        let limits = limits(&mut p, raw.limits);
        p.finish()?;
        auth.load_files()?;
        Ok(Config {
            path: path.to_path_buf(),
            name,
            data_dir,
            admin,
            admin_access: Arc::new(admin_access),
            listeners,
            cluster,
            auth,
            limits,
            shared_policy: raw
                .shared_subscriptions
                .and_then(|s| s.policy)
                .unwrap_or_default(),
            flow,
        })
    }
}

fn node_name(p: &mut Problems<'_>, name: Option<&Spanned<String>>) -> String {
    match name {
        Some(n) if n.get_ref().is_empty() || n.get_ref().contains(['/', '+', '#', ' ']) => {
            p.at(
                n.span(),
                "node name must be non-empty without '/', '+', '#' or spaces",
            );
            String::new()
        }
        Some(n) => n.get_ref().clone(),
        None => "node1".into(),
    }
}

fn listeners(p: &mut Problems<'_>, raw: &[RawListener]) -> Vec<ListenerConfig> {
    if raw.is_empty() {
        p.top("at least one [[listener]] is required");
    }
    let mut listeners = Vec::new();
    for l in raw {
        let Some(bind) = addr(p, &l.bind, "bind") else {
            continue;
        };
        let mut trusted = Vec::new();
        for t in &l.trusted_proxies {
            match t.get_ref().parse::<Cidr>() {
                Ok(c) => trusted.push(c),
                Err(e) => p.at(t.span(), e),
            }
        }
        if l.proxy_protocol != ProxyIn::Off && l.trusted_proxies.is_empty() {
            p.at(l.bind.span(), "proxy_protocol needs trusted_proxies (the load balancers allowed to send PROXY headers)");
        }
        let cert_username = identity::cert_username(
            p,
            &l.bind,
            l.proxy_protocol,
            l.use_cn_as_username,
            l.username_from.as_ref(),
        );
        listeners.push(ListenerConfig {
            name: l.name.clone().unwrap_or_else(|| bind.to_string()),
            bind,
            proxy_protocol: l.proxy_protocol,
            trusted_proxies: trusted,
            cert_username,
            websocket: l
                .websocket
                .as_ref()
                .map(|w| mqedge_shared::ws::WsConfig::parse(w, p)),
        });
    }
    listeners
}

/// Stage 1 of `[auth]`: the files must exist; they are loaded by [`AuthConfig::load_files`].
fn auth(p: &mut Problems<'_>, path: &Path, raw: Option<RawAuth>) -> AuthConfig {
    let ra = raw.unwrap_or(RawAuth {
        allow_anonymous: None,
        password_file: None,
        acl_file: None,
        max_concurrent_password_checks: None,
        trust_claimed_usernames: None,
        http: None,
        http_acl: None,
        postgres: None,
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_checks = match &ra.max_concurrent_password_checks {
        Some(m) if !(1..=1024).contains(m.get_ref()) => {
            p.at(
                m.span(),
                "max_concurrent_password_checks must be between 1 and 1024",
            );
            cores
        }
        Some(m) => *m.get_ref() as usize,
        None => cores,
    };
    let mut check_file = |f: &Option<Spanned<String>>| {
        f.as_ref().map(|f| {
            let r = resolve_path(path, f.get_ref());
            if !r.is_file() {
                p.at(
                    f.span(),
                    format!("{} does not exist or is not a file", r.display()),
                );
            }
            r
        })
    };
    AuthConfig {
        allow_anonymous: ra.allow_anonymous.unwrap_or(false),
        password_file: check_file(&ra.password_file),
        acl_file: check_file(&ra.acl_file),
        passwords: None,
        acl: None,
        max_concurrent_password_checks: max_checks,
        trust_claimed_usernames: ra.trust_claimed_usernames.unwrap_or(false),
        http: ra.http.and_then(|h| auth_http::parse("auth.http", h, p)),
        http_acl: ra
            .http_acl
            .and_then(|h| auth_http::parse("auth.http_acl", h, p)),
        postgres: ra.postgres.and_then(|r| auth_postgres::parse(r, p)),
    }
}

impl AuthConfig {
    /// Stage 2: parses the password and ACL files, each broken one reported as its own
    /// `file:line: what` (or `file: what` when it cannot be read).
    fn load_files(&mut self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        if let Some(f) = &self.password_file {
            match PasswordFile::load(f) {
                Ok(pw) => self.passwords = Some(pw),
                Err(e) => errors.push(e.into_located(f)),
            }
        }
        if let Some(f) = &self.acl_file {
            match Acl::load(f) {
                Ok(acl) => self.acl = Some(acl),
                Err(e) => errors.push(e.into_located(f)),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse(
            Path::new("b.toml"),
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n",
        )
        .unwrap();
        assert_eq!(c.name, "node1");
        assert_eq!(c.shared_policy, SharedPolicy::PreferLocal);
        assert!(!c.auth.allow_anonymous);
        let e = Config::parse(
            Path::new("b.toml"),
            "[[listener]]\nbind = \"127.0.0.1:1883\"\nproxy_protocol = \"required\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("b.toml:4: invalid CIDR"), "{e}");
        let e = Config::parse(Path::new("b.toml"), "[node]\nnom = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("b.toml:2: unknown field `nom`"), "{e}");
        let e = Config::parse(
            Path::new("b.toml"),
            "[[listener]]\nbind = \"x\"\n[shared_subscriptions]\npolicy = \"sticky\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("b.toml:4: unknown variant `sticky`"), "{e}");
    }

    #[test]
    fn max_concurrent_password_checks() {
        let parse = |v: &str| {
            let src = format!("[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\n{v}\n");
            Config::parse(Path::new("b.toml"), &src).map_err(|e| e.to_string())
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = parse("").unwrap();
        assert_eq!(c.auth.max_concurrent_password_checks, cores);
        let c = parse("max_concurrent_password_checks = 1").unwrap();
        assert_eq!(c.auth.max_concurrent_password_checks, 1);
        let e = parse("max_concurrent_password_checks = 0").unwrap_err();
        assert!(
            e.starts_with("b.toml:4: max_concurrent_password_checks must be between 1 and 1024"),
            "{e}"
        );
    }

    #[test]
    fn retained_tombstone_ttl() {
        let cfg = |extra: &str| {
            Config::parse(
                Path::new("b.toml"),
                &format!("[[listener]]\nbind = \"127.0.0.1:1883\"\n[cluster]\nbind = \"127.0.0.1:4370\"\n{extra}"),
            )
        };
        let ttl = |c: Config| c.cluster.map(|c| c.retained_tombstone_ttl);
        assert_eq!(ttl(cfg("").unwrap()), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(
            ttl(cfg("retained_tombstone_ttl = \"90s\"\n").unwrap()),
            Some(Duration::from_secs(90))
        );
        let e = cfg("retained_tombstone_ttl = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("b.toml:5: invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn stage_two_reports_every_broken_auth_file() {
        let dir = std::env::temp_dir().join(format!("mqedge-config-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("passwd"), "# users\nno-colon\n").unwrap();
        std::fs::write(dir.join("acl"), "topic read a/#\nbogus line\n").unwrap();
        let cfg = dir.join("b.toml");
        let src = "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\npassword_file = \"passwd\"\nacl_file = \"acl\"\n";
        let e = Config::parse(&cfg, src).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(
            lines[0].starts_with(&format!("{}:2: ", dir.join("passwd").display())),
            "{e}"
        );
        assert!(
            lines[1].starts_with(&format!("{}:2: ", dir.join("acl").display())),
            "{e}"
        );
    }

    #[test]
    fn cluster_tls_keys_go_together_and_their_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("mqedge-config-tls-{}", std::process::id()));
        let names = ["node1".to_string()];
        mqedge_shared::certs::generate_nodes(&dir.join("certs"), &names, &Default::default())
            .unwrap();
        let cfg = dir.join("b.toml");
        let head = "[node]\nname = \"node1\"\n[[listener]]\nbind = \"127.0.0.1:1883\"\n\
                    [cluster]\nbind = \"127.0.0.1:7946\"\n";
        let keys = |cert: &str, ca: &str| {
            format!(
                "{head}tls_cert = \"{cert}\"\ntls_key = \"certs/node-node1.key\"\ntls_ca = \"{ca}\"\n"
            )
        };
        let ok = Config::parse(&cfg, &keys("certs/node-node1.pem", "certs/ca.pem"));
        let only_one = Config::parse(&cfg, &format!("{head}tls_ca = \"certs/ca.pem\"\n"));
        let missing = Config::parse(&cfg, &keys("certs/node-node1.pem", "certs/nope.pem"));
        let other = Config::parse(
            &cfg,
            &keys("certs/node-node1.pem", "certs/ca.pem").replace("\"node1\"", "\"node2\""),
        );
        let _ = std::fs::remove_dir_all(&dir);
        let tls = ok.unwrap().cluster.unwrap().tls.unwrap();
        assert_eq!(tls.files[2], dir.join("certs/ca.pem"));
        let e = only_one.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}:7: tls_cert, tls_key and tls_ca go together",
                cfg.display()
            )),
            "{e}"
        );
        let e = missing.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:9: cluster tls_ca: ", cfg.display()))
                && e.contains("nope.pem"),
            "{e}"
        );
        let e = other.unwrap_err().to_string();
        assert!(
            e.contains(":7: cluster tls_cert: ") && e.contains("no DNS SAN \"node2\""),
            "{e}"
        );
    }
}
