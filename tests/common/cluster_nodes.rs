//! Three clustered broker nodes for the cluster test binaries (tests/cluster*.rs): each node on
//! its own loopback address (127.0.0.11, .12, .13), gossiping (chitchat, UDP) and talking over
//! the node channel (TCP) on a `[cluster] bind` port free for both protocols on that address;
//! in-process or as the `mqedge` binary (for `kill -9` and restarts). Plus raw MQTT clients over
//! the broker's own codec (to see exact packets) and their helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::*;

#[allow(unused_imports)]
pub use super::mqtt_steps::*;

pub const IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
pub const NAMES: [&str; 3] = ["node1", "node2", "node3"];
/// `[lb]` extra for the LB test: an admin API on a free port.
pub const LB_ADMIN: &str = "admin = \"127.0.0.1:0\"";

// ---------------------------------------------------------------------------------------------
// the cluster
// ---------------------------------------------------------------------------------------------

/// A port free for both TCP and UDP on `ip` (gossip and the node channel share `[cluster] bind`).
pub fn free_cluster_port(ip: &str) -> u16 {
    // below the kernel's ephemeral range (32768+): no client socket of a parallel test can take
    // the port between this check and the node's bind
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = (std::process::id() % 500) * 20;
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (20_000 + (base + n) % 12_000) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() && UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for TCP and UDP on {ip}");
}

/// How a test runs its nodes: in-process, or as the binary where it needs a real process
/// (`kill -9`, a restart over the same store).
#[derive(Clone, Copy)]
pub enum Run {
    InProcess,
    Binary,
}

/// One running node.
pub enum Node {
    InProcess(InProcBroker),
    Binary(BrokerProc),
}

impl Node {
    /// Starts node `name` and waits for its MQTT listener.
    pub fn start(name: &str, config: &Path, run: Run) -> Node {
        match run {
            Run::InProcess => Node::InProcess(InProcBroker::start(config)),
            Run::Binary => Node::Binary(BrokerProc {
                proc: Proc::start_role(
                    name,
                    "broker",
                    config,
                    "info,mqedge_broker::cluster=debug",
                    " listener=",
                ),
                config: config.to_path_buf(),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Node::InProcess(b) => b.addr(),
            Node::Binary(b) => b.addr(),
        }
    }

    pub fn admin(&self) -> SocketAddr {
        match self {
            Node::InProcess(b) => b.admin(),
            Node::Binary(b) => b.admin(),
        }
    }

    pub fn logs(&self) -> String {
        match self {
            Node::InProcess(b) => b.logs(),
            Node::Binary(b) => b.proc.logs(),
        }
    }

    /// The process, for what only a process can do (`kill -9`, reading its log for a line).
    pub fn binary(&mut self) -> &mut BrokerProc {
        match self {
            Node::Binary(b) => b,
            Node::InProcess(_) => panic!("an in-process node has no process: use Run::Binary"),
        }
    }
}

/// Starts a node per config at once and waits for every listener: a clustered node accepts
/// clients only once its seeds' route snapshots are in, so nodes started one after the other
/// would each wait for the next one (`[cluster] sync_timeout`).
fn start_all(configs: &[PathBuf], run: Run) -> Vec<Node> {
    std::thread::scope(|s| {
        let hs: Vec<_> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| s.spawn(move || Node::start(NAMES[i], c, run)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("node start"))
            .collect()
    })
}

/// Three clustered nodes; `nodes[i]` is `NAMES[i]` on `IPS[i]`. Nodes stop (SIGTERM) before
/// their directory goes (field order is drop order).
pub struct Cluster {
    pub nodes: Vec<Option<Node>>,
    pub run: Run,
    pub configs: Vec<PathBuf>,
    /// Each node's `[cluster] bind` ("ip:port").
    pub cluster_addrs: Vec<String>,
    pub old_logs: Vec<(&'static str, String)>,
    pub _dir: TempDir,
}

impl Cluster {
    /// Writes three configs (with `data_dir` when `persist`) and starts the nodes; returns
    /// once every node's `/api/cluster` shows all three up.
    pub async fn start(tag: &str, persist: bool, policy: &str, run: Run) -> Cluster {
        Cluster::start_with(tag, persist, policy, run, 5000).await
    }

    /// Like [`Cluster::start`], with `[limits] max_offline_messages` (what makes a
    /// subscriber congested at half of it).
    pub async fn start_with(
        tag: &str,
        persist: bool,
        policy: &str,
        run: Run,
        max_offline_messages: usize,
    ) -> Cluster {
        Cluster::start_custom(tag, persist, policy, run, max_offline_messages, "").await
    }

    /// Like [`Cluster::start_with`], with `cluster_extra` lines added to every node's
    /// `[cluster]` table (e.g. `retained_tombstone_ttl = "3s"`).
    pub async fn start_custom(
        tag: &str,
        persist: bool,
        policy: &str,
        run: Run,
        max_offline_messages: usize,
        cluster_extra: &str,
    ) -> Cluster {
        let limits = format!("max_offline_messages = {max_offline_messages}");
        Cluster::start_full(tag, persist, policy, run, &limits, cluster_extra, false).await
    }

    /// Like [`Cluster::start`], with `limits_extra` lines added to every node's `[limits]`
    /// table (e.g. a `max_queued_bytes` above the default for a test that queues more).
    pub async fn start_limits(tag: &str, run: Run, limits_extra: &str) -> Cluster {
        let limits = format!("max_offline_messages = 5000\n{limits_extra}");
        Cluster::start_full(tag, false, "prefer_local", run, &limits, "", false).await
    }

    /// Like [`Cluster::start`] with mutual TLS on the node channel: `certs/` in the cluster's
    /// directory holds a CA (`ca.pem`, `ca.key`) and `node-NAME.pem`/`.key` for the three
    /// nodes (`mqedge_shared::certs::generate_nodes`), named in each `[cluster]` table by
    /// paths relative to the config.
    pub async fn start_tls(tag: &str, run: Run) -> Cluster {
        let limits = "max_offline_messages = 5000";
        Cluster::start_full(tag, false, "prefer_local", run, limits, "", true).await
    }

    async fn start_full(
        tag: &str,
        persist: bool,
        policy: &str,
        run: Run,
        limits: &str,
        cluster_extra: &str,
        tls: bool,
    ) -> Cluster {
        let dir = TempDir::new(tag);
        if tls {
            let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
            mqedge_shared::certs::generate_nodes(
                &dir.path().join("certs"),
                &names,
                &Default::default(),
            )
            .unwrap();
        }
        let cluster_addrs: Vec<String> = IPS
            .iter()
            .map(|ip| format!("{ip}:{}", free_cluster_port(ip)))
            .collect();
        let seeds = cluster_addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut configs = Vec::new();
        for i in 0..3 {
            let data_dir = if persist {
                format!("data_dir = \"data-{}\"\n", NAMES[i])
            } else {
                String::new()
            };
            let tls_keys = if tls {
                tls_keys("certs", NAMES[i])
            } else {
                String::new()
            };
            let text = format!(
                r#"[node]
name = "{name}"
admin = "{ip}:0"
{data_dir}
[[listener]]
name = "mqtt"
bind = "{ip}:0"

[cluster]
bind = "{cluster}"
seeds = [{seeds}]
{cluster_extra}
{tls_keys}

[auth]
allow_anonymous = true

[limits]
{limits}

[shared_subscriptions]
policy = "{policy}"
"#,
                name = NAMES[i],
                ip = IPS[i],
                cluster = cluster_addrs[i],
            );
            configs.push(dir.write(&format!("{}.toml", NAMES[i]), &text));
        }
        let nodes = start_all(&configs, run).into_iter().map(Some).collect();
        let c = Cluster {
            nodes,
            run,
            configs,
            cluster_addrs,
            old_logs: Vec::new(),
            _dir: dir,
        };
        for i in 0..3 {
            c.wait_all_up(i, Duration::from_secs(15)).await;
        }
        c
    }

    /// Starts one more node (as the binary) that joins through this cluster's seeds: `name` on
    /// `ip`, with `cluster_extra` added to its `[cluster]` table (e.g. [`tls_keys`]; paths
    /// relative to the cluster's directory). It is not in `nodes`: the test holds (and stops) it.
    pub fn start_extra(&self, name: &str, ip: &str, cluster_extra: &str) -> Node {
        let seeds = self
            .cluster_addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[node]\nname = \"{name}\"\nadmin = \"{ip}:0\"\n\n[[listener]]\nname = \"mqtt\"\n\
             bind = \"{ip}:0\"\n\n[cluster]\nbind = \"{ip}:{port}\"\nseeds = [{seeds}]\n\
             {cluster_extra}\n[auth]\nallow_anonymous = true\n",
            port = free_cluster_port(ip),
        );
        let config = self._dir.write(&format!("{name}.toml"), &text);
        Node::start(name, &config, Run::Binary)
    }

    /// The directory the configs are in (certificates of [`Cluster::start_tls`] in `certs/`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", NAMES[i]))
    }

    /// MQTT address of node `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.node(i).addr()
    }

    /// Admin address of node `i`.
    pub fn admin(&self, i: usize) -> SocketAddr {
        self.node(i).admin()
    }

    /// Node `i`'s view of `peer`: (state, routes), or None when it does not list it.
    pub fn view(&self, i: usize, peer: &str) -> Option<(String, u64)> {
        let v = get_json(self.admin(i), "/api/cluster");
        assert_eq!(v["node"], NAMES[i], "{v}");
        v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == peer)
            .map(|n| {
                (
                    n["state"].as_str().unwrap_or("").to_string(),
                    n["routes"].as_u64().unwrap_or(0),
                )
            })
    }

    pub fn state(&self, i: usize, peer: &str) -> String {
        self.view(i, peer).map(|v| v.0).unwrap_or_default()
    }

    /// Waits until node `i` lists three nodes, all up.
    pub async fn wait_all_up(&self, i: usize, within: Duration) {
        let admin = self.admin(i);
        let ok = eventually(within, || {
            let v = get_json(admin, "/api/cluster");
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "up")
        })
        .await;
        assert!(
            ok,
            "{}: cluster not formed within {within:?}: {}\n{}",
            NAMES[i],
            get_json(admin, "/api/cluster"),
            self.logs()
        );
    }

    /// Waits until node `i` sees `peer` up with a route count for which `want` holds.
    pub async fn wait_routes(&self, i: usize, peer: &str, what: &str, want: impl Fn(u64) -> bool) {
        let ok = eventually(
            Duration::from_secs(10),
            || matches!(self.view(i, peer), Some((s, r)) if s == "up" && want(r)),
        )
        .await;
        assert!(
            ok,
            "{}'s view of {peer}: expected routes {what}, have {:?}\n{}",
            NAMES[i],
            self.view(i, peer),
            self.logs()
        );
    }

    /// A metric of node `i`.
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        let m = parse_prometheus(&http("GET", self.admin(i), "/metrics").1);
        metric(&m, name, &[])
    }

    /// `GET /api/clients/{id}` on node `i`: (status, body as JSON or Null).
    pub fn client(&self, i: usize, id: &str) -> (u16, serde_json::Value) {
        let (code, body) = http("GET", self.admin(i), &format!("/api/clients/{id}"));
        (code, serde_json::from_str(&body).unwrap_or_default())
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].as_mut() {
            n.binary().kill9();
        }
    }

    /// Starts node `i` again with the same config (after `kill9`).
    pub fn restart(&mut self, i: usize) {
        if let Some(mut old) = self.nodes[i].take() {
            old.binary().kill9();
            // kept for failure messages
            self.old_logs.push((NAMES[i], old.logs()));
        }
        self.nodes[i] = Some(Node::start(NAMES[i], &self.configs[i], self.run));
    }

    /// Kills every node (`kill -9`) and starts all of them again at once, as an orchestrator
    /// restarting the whole cluster does (each waits for its listener).
    pub fn restart_all(&mut self) {
        for (slot, name) in self.nodes.iter_mut().zip(NAMES) {
            if let Some(mut old) = slot.take() {
                old.binary().kill9();
                self.old_logs.push((name, old.logs()));
            }
        }
        for (i, n) in start_all(&self.configs, self.run).into_iter().enumerate() {
            self.nodes[i] = Some(n);
        }
    }

    /// The last lines of every node's log (for assertion messages).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (name, log) in &self.old_logs {
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(40);
            s.push_str(&format!(
                "==== {name} before its restart (last {} lines)\n",
                lines.len() - from
            ));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let all = n.logs();
            let lines: Vec<&str> = all.lines().collect();
            let from = lines.len().saturating_sub(60);
            s.push_str(&format!(
                "==== {} (last {} lines)\n",
                NAMES[i],
                lines.len() - from
            ));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

/// The `[cluster]` TLS keys for node `name` with certificates in `dir` (relative to the config):
/// `node-NAME.pem`/`.key` and `ca.pem`, as `mqedge certs --node NAME` writes them.
pub fn tls_keys(dir: &str, name: &str) -> String {
    format!(
        "tls_cert = \"{dir}/node-{name}.pem\"\ntls_key = \"{dir}/node-{name}.key\"\ntls_ca = \"{dir}/ca.pem\"\n"
    )
}

/// Polls `admin`'s `/api/cluster` from now on, in a thread, until `peer` is in `state`; the
/// thread returns how long that took (None after `within`).
pub fn watch_peer_state(
    admin: SocketAddr,
    peer: &'static str,
    state: &'static str,
    within: Duration,
) -> std::thread::JoinHandle<Option<Duration>> {
    let start = Instant::now();
    std::thread::spawn(move || {
        while start.elapsed() < within {
            let v = get_json(admin, "/api/cluster");
            let seen = v["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["name"] == peer && n["state"] == state));
            if seen {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

// ---------------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------------

pub type Client = Raw<TcpStream>;
