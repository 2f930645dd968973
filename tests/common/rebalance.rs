//! What the scale-out scenarios share (tests/lb_rebalance.rs: a drained member made ready;
//! tests/lb_scale_join.rs: a fresh node joins): idle persistent MQTT 5 clients that watch for
//! the LB's DISCONNECT, the QoS 1 load of [`crate::fault_load`] (rumqttc, not our client), and
//! the checks every scenario makes: only the moved share was told to go, no faster than the
//! rate, and nothing acknowledged was lost.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::cluster_nodes::{Cluster, Run, NAMES};
use crate::common::*;
use crate::fault_load::{Publisher, Received, Subscriber, Tally};
use mqedge_protocol::{ConnectProperties, Packet, Version};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The scenario's size and rate: `clients` and `rate`, or `MQEDGE_REBALANCE_CLIENTS` and
/// `MQEDGE_REBALANCE_RATE` for a larger run (docs/reliability.md).
pub fn scale(clients: usize, rate: u32) -> (usize, u32) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let clients = env("MQEDGE_REBALANCE_CLIENTS").map_or(clients, |n| n as usize);
    let rate = env("MQEDGE_REBALANCE_RATE").map_or(rate, |r| r.max(1) as u32);
    (clients, rate)
}

fn props() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    }
}

/// A persistent MQTT 5 client (keep-alive off: it idles through the whole scenario); the
/// CONNACK's Session Present.
pub async fn idle_client(lb: SocketAddr, id: &str) -> (Raw<tokio::net::TcpStream>, bool) {
    let mut c = Raw::new(tcp(lb).await, Version::V5);
    let ack = c.connect_with(id, false, 0, None, None, props()).await;
    assert_eq!(ack.code, 0, "{id}: CONNACK {ack:?}");
    (c, ack.session_present)
}

/// How an idle client's connection ended: the DISCONNECT reason (0xFF for a close without
/// one) and when; `None` when the scenario stopped watching first.
pub type End = JoinHandle<Option<(u8, Instant)>>;

/// Waits (until `stop`) for the server to end the connection.
pub fn watch_end(mut c: Raw<tokio::net::TcpStream>, mut stop: watch::Receiver<bool>) -> End {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return None,
                p = c.recv(Duration::from_secs(90)) => match p {
                    Some(Packet::Disconnect(d)) => return Some((d.code, Instant::now())),
                    Some(_) => continue,
                    None => return Some((0xFF, Instant::now())),
                },
            }
        }
    })
}

/// `clients` idle clients `{tag}-c{k}`, client `k` through `lbs[k % lbs.len()]`, each watched
/// until `stop`.
pub async fn idle_clients(
    lbs: &[SocketAddr],
    tag: &str,
    clients: usize,
    stop: &watch::Receiver<bool>,
) -> Vec<(String, End)> {
    let mut idle = Vec::new();
    for k in 0..clients {
        let id = format!("{tag}-c{k}");
        let (c, _) = idle_client(lbs[k % lbs.len()], &id).await;
        idle.push((id, watch_end(c, stop.clone())));
    }
    idle
}

/// The most instants of `ts` within any one second.
pub fn max_per_second(ts: &[Instant]) -> usize {
    let mut ts = ts.to_vec();
    ts.sort();
    (0..ts.len())
        .map(|i| {
            ts[i..]
                .iter()
                .take_while(|t| t.duration_since(ts[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The most clients any one second (as the clients see it) may be told to go: the rate plus
/// one step of the LB's pacer (a twentieth of a second's worth, at least one), which is what
/// any second of its requests to the brokers holds, plus one more step for the brokers' time
/// to move a step's sessions, which is not the same for every step (each client is told
/// once its session moved).
pub fn rate_bound(rate: u32) -> usize {
    rate as usize + 2 * (rate as usize / 20).max(1)
}

pub fn lb_metric(admin: SocketAddr, name: &str) -> f64 {
    metric(
        &parse_prometheus(&http("GET", admin, "/metrics").1),
        name,
        &[],
    )
}

/// Whether `id` is connected on the broker whose admin API is `admin`.
pub fn connected_on(admin: SocketAddr, id: &str) -> bool {
    let (_, body) = http("GET", admin, &format!("/api/clients/{id}"));
    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["connected"] == true
}

/// Two persistent QoS 1 subscribers at home on each of `names` (by the LB's hash over
/// `names`), through `lb`; returns once all are subscribed.
pub async fn subscribers(lb: SocketAddr, tag: &str, names: &[&str]) -> Vec<Subscriber> {
    let mut subs = Vec::new();
    for (k, node) in names.iter().enumerate() {
        for j in 0..2 {
            subs.push(Subscriber::start(
                lb,
                &id_for(node, names, &format!("{tag}-s{k}{j}")),
            ));
        }
    }
    let ok = eventually(Duration::from_secs(15), || {
        subs.iter().all(|s| s.subscribed())
    })
    .await;
    assert!(ok, "subscribers not subscribed");
    subs
}

/// Sorts the idle clients out once the rebalance is done: every one in `expected` was told
/// DISCONNECT 0x9C (returned with the instant each was told), every other one is still connected where
/// `stayed_home` says it belongs and was told nothing. Stops the watchers.
pub async fn told_to_go(
    idle: Vec<(String, End)>,
    expected: &[String],
    stop: watch::Sender<bool>,
    stayed_home: impl Fn(&str) -> bool,
) -> Vec<(String, Instant)> {
    let mut told = Vec::new();
    let mut stayed = Vec::new();
    for (id, task) in idle {
        if expected.contains(&id) {
            let end = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("{id}: never told to go"))
                .unwrap();
            let (code, at) = end.unwrap_or_else(|| panic!("{id}: not ended"));
            assert_eq!(code, 0x9C, "{id}: not told to use another server");
            told.push((id, at));
        } else {
            stayed.push((id, task));
        }
    }
    tokio::task::block_in_place(|| {
        for (id, _) in &stayed {
            assert!(stayed_home(id), "{id} left its home");
        }
    });
    let _ = stop.send(true);
    for (id, task) in stayed {
        assert_eq!(
            task.await.unwrap(),
            None,
            "{id}: moved, but its home did not"
        );
    }
    told
}

/// The moved idle clients come back, each through `lb(id)`: how many found their session (Session
/// Present = 1) and are connected on the broker whose admin is `home(id)` (of all the `nodes`).
pub async fn come_back(
    lb: impl Fn(&str) -> SocketAddr,
    moved: &[String],
    home: impl Fn(&str) -> SocketAddr,
    nodes: &[SocketAddr],
) -> usize {
    let mut resumed = 0;
    for id in moved {
        let (_c, present) = idle_client(lb(id), id).await;
        resumed += usize::from(present);
        let on = eventually(Duration::from_secs(3), || connected_on(home(id), id)).await;
        if !on {
            let seen: Vec<String> = nodes
                .iter()
                .map(|a| http("GET", *a, &format!("/api/clients/{id}")).1)
                .collect();
            panic!("{id} is not on its new home: {seen:#?}");
        }
    }
    resumed
}

/// Stops the load once every subscriber has every acknowledged message (or 15 s passed): the
/// tally and the sessions lost.
pub async fn finish(publisher: Publisher, subs: Vec<Subscriber>) -> (Tally, usize) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = publisher.stop().await;
    let all: BTreeSet<u64> = published.acked.iter().copied().collect();
    let _ = eventually(Duration::from_secs(15), || {
        subs.iter().all(|s| s.has_all(&all))
    })
    .await;
    let mut snaps: Vec<(String, Received)> = Vec::new();
    for s in subs {
        snaps.push((s.id.clone(), s.stop().await));
    }
    let t = Tally::count(&published, &snaps, |_, _| None);
    let sessions_lost = t.subs.iter().map(|s| s.sessions_lost).sum();
    (t, sessions_lost)
}

/// The LB file of a fleet member over `backends` (name, MQTT address, admin address):
/// `[balance] rebalance = mode` at `rate`, MQTT health checks every 300 ms, the feeds at their
/// default interval.
fn fleet_lb_config(backends: &[(&str, SocketAddr, SocketAddr)], mode: &str, rate: u32) -> String {
    let mut s = format!(
        "[lb]\nname = \"fleet\"\nadmin = \"127.0.0.1:0\"\nconnect_timeout = \"2s\"\n\
         drain_timeout = \"1s\"\n\n[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [balance]\nstrategy = \"client_id\"\nfallback = \"source_ip\"\nretries = 2\n\
         rebalance = \"{mode}\"\nrebalance_rate = {rate}\n\n\
         [health]\nkind = \"mqtt\"\ninterval = \"300ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\n\
         [placement]\ntimeout = \"2s\"\n"
    );
    for (name, addr, admin) in backends {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{addr}\"\nadmin = \"{admin}\"\n"
        ));
    }
    s
}

/// Three clustered nodes (binaries, `data_dir`) behind a fleet of LBs with their feeds, every
/// LB up on all three and past the rebalance its own start schedules. Field order is drop
/// order: the LBs stop first.
pub struct Fleet {
    pub lbs: Vec<Lb>,
    pub mqtt: Vec<SocketAddr>,
    pub admins: Vec<SocketAddr>,
    /// What each LB's file lists (name, MQTT address, admin address).
    pub backends: Vec<(&'static str, SocketAddr, SocketAddr)>,
    files: Vec<std::path::PathBuf>,
    mode: &'static str,
    pub rate: u32,
    pub cl: Cluster,
    _dir: TempDir,
}

impl Fleet {
    pub async fn start(tag: &str, lbs: usize, mode: &'static str, rate: u32) -> Fleet {
        let cl = Cluster::start_custom(tag, true, "prefer_local", Run::Binary, 5000, "").await;
        let dir = TempDir::new(&format!("{tag}-lb"));
        let backends: Vec<_> = (0..3)
            .map(|i| (NAMES[i], cl.addr(i), cl.admin(i)))
            .collect();
        let files: Vec<_> = (0..lbs)
            .map(|k| {
                let text = fleet_lb_config(&backends, mode, rate);
                dir.write(&format!("lb{k}.toml"), &text)
            })
            .collect();
        let procs: Vec<Lb> = files.iter().map(|f| Lb::start(f)).collect();
        let mqtt: Vec<SocketAddr> = procs.iter().map(|lb| lb.addr("mqtt")).collect();
        let admins: Vec<SocketAddr> = procs.iter().map(|lb| lb.admin()).collect();
        tokio::task::block_in_place(|| {
            for (admin, n) in admins.iter().flat_map(|a| NAMES.map(|n| (a, n))) {
                wait_backend_state(*admin, n, "up", Duration::from_secs(10));
            }
        });
        if mode == "auto" {
            // each LB's start schedules an auto rebalance (its backends came up): let it pass
            let settled = eventually(Duration::from_secs(10), || {
                admins
                    .iter()
                    .all(|a| get_json(*a, "/api/rebalance")["state"] == "done")
            })
            .await;
            assert!(settled, "{}", get_json(admins[0], "/api/rebalance"));
        }
        Fleet {
            lbs: procs,
            mqtt,
            admins,
            backends,
            files,
            mode,
            rate,
            cl,
            _dir: dir,
        }
    }

    /// Writes `backends` into every LB's file and reloads each (SIGHUP).
    pub fn reload(&self) {
        for (f, lb) in self.files.iter().zip(&self.lbs) {
            let text = fleet_lb_config(&self.backends, self.mode, self.rate);
            std::fs::write(f, text).unwrap();
            lb.proc.signal("HUP");
        }
    }

    /// The last lines of every LB's log.
    pub fn lb_logs(&self) -> String {
        let tails: Vec<String> = self.lbs.iter().map(|l| tail(&l.proc.logs(), 30)).collect();
        tails.join("\n")
    }
}

/// The load on a fleet: two persistent QoS 1 subscribers at home on each of `homes` (through
/// the first LB), a QoS 1 publisher at home on `pub_home` (through the last), and `clients`
/// idle clients, client `k` through LB `k % LBs`.
pub struct Load {
    pub subs: Vec<Subscriber>,
    pub publisher: Publisher,
    pub pub_id: String,
    pub idle: Vec<(String, End)>,
    /// Which LB each client came through.
    pub through: std::collections::HashMap<String, usize>,
    /// Ends the idle clients' watchers.
    pub stop: watch::Sender<bool>,
}

impl Load {
    pub async fn start(
        f: &Fleet,
        tag: &str,
        homes: &[&str],
        pub_home: &str,
        clients: usize,
    ) -> Load {
        let last = f.mqtt.len() - 1;
        let subs = subscribers(f.mqtt[0], tag, homes).await;
        let pub_id = id_for(pub_home, homes, &format!("{tag}-pub"));
        for i in 0..3 {
            f.cl.wait_routes(i, NAMES[(i + 1) % 3], ">= 1", |r| r >= 1)
                .await;
        }
        let publisher = Publisher::start(f.mqtt[last], &pub_id, 100, 8);
        let acked = eventually(Duration::from_secs(10), || publisher.acked() >= 20).await;
        assert!(acked, "no PUBACKs\n{}", f.cl.logs());
        let (stop, stop_rx) = watch::channel(false);
        let idle = idle_clients(&f.mqtt, tag, clients, &stop_rx).await;
        let through = idle
            .iter()
            .enumerate()
            .map(|(k, (id, _))| (id.clone(), k % f.mqtt.len()))
            .chain(subs.iter().map(|s| (s.id.clone(), 0)))
            .chain([(pub_id.clone(), last)])
            .collect();
        Load {
            subs,
            publisher,
            pub_id,
            idle,
            through,
            stop,
        }
    }

    /// The idle clients among `ids`.
    pub fn idle_among(&self, ids: &[String]) -> Vec<String> {
        self.idle
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| ids.contains(id))
            .collect()
    }

    /// Every client id (idle, subscribers, publisher) for which `pick` holds.
    pub fn ids(&self, pick: impl Fn(&str) -> bool) -> Vec<String> {
        self.idle
            .iter()
            .map(|(id, _)| id.clone())
            .chain(self.subs.iter().map(|s| s.id.clone()))
            .chain([self.pub_id.clone()])
            .filter(|id| pick(id))
            .collect()
    }
}
