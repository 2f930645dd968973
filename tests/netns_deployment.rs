//! The deployment of docs/deployment.md, built from Linux network namespaces (needs root and
//! iproute2 + nftables; CI runs as root and .ci/run installs both):
//!
//! ```text
//!  public ns                 edge ns                           private ns
//!  device 198.51.100.2 ──── 198.51.100.1  mqedge lb  192.0.2.1 ──── 192.0.2.11 node1 ┐
//!  (mosquitto_pub/sub,       :8883 TLS, client cert required      192.0.2.12 node2 ├ cluster :4370
//!   client certificates)     admin 192.0.2.1:9100                 192.0.2.13 node3 ┘ MQTT :11883, admin :19100
//! ```
//!
//! The edge namespace forwards packets on purpose, and the private one routes back to the public
//! subnet, so what keeps the device away from the brokers is the nftables ruleset of
//! docs/deployment.md (applied in the private and edge namespaces), not a missing route. The test
//! checks that the device reaches neither a broker's MQTT, cluster nor admin port, nor the LB's
//! admin port, and that the firewall dropped those packets; that the LB (and nothing else outside
//! the brokers) reaches MQTT and not the cluster port; that the three brokers form a cluster; that
//! a device's message goes through the LB (TLS, client certificate) to a subscriber on another
//! node; and that the brokers see the device's own address through PROXY v2 and its certificate
//! CN as username (with the ACL applied to it).
//!
//! Every namespace has a pid-unique name and is deleted when the test ends, panics included.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const CLIENT_IP: &str = "198.51.100.2";
const LB_PUBLIC_IP: &str = "198.51.100.1";
const LB_PRIVATE_IP: &str = "192.0.2.1";
const BROKER_IPS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];
const NODES: [&str; 3] = ["node1", "node2", "node3"];
const MQTT_PORT: u16 = 11883;
const CLUSTER_PORT: u16 = 4370;
const ADMIN_PORT: u16 = 19100;
const LB_ADMIN_PORT: u16 = 9100;

/// The private subnet's firewall, as docs/deployment.md shows it (one table for all three
/// brokers, since they share the namespace here).
const PRIVATE_RULES: &str = r#"
table inet mqedge {
    set lbs { type ipv4_addr; elements = { 192.0.2.1 } }
    set brokers { type ipv4_addr; elements = { 192.0.2.11, 192.0.2.12, 192.0.2.13 } }
    set monitoring { type ipv4_addr; flags interval; elements = { 192.0.2.0/24 } }
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        tcp dport 11883 ip saddr @lbs accept
        tcp dport 4370 ip saddr @brokers accept
        udp dport 4370 ip saddr @brokers accept
        tcp dport 19100 ip saddr @monitoring accept
        counter drop
    }
}
"#;

/// The edge host's firewall: devices reach the client ports only; the admin API answers the
/// private subnet only.
const EDGE_RULES: &str = r#"
table inet mqedge {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        tcp dport { 1883, 8883 } accept
        tcp dport 9100 ip saddr 192.0.2.0/24 accept
        counter drop
    }
}
"#;

/// The three namespaces; deleted on drop (after killing anything still running inside them,
/// which can only be a process this test started).
struct Netns {
    public: String,
    edge: String,
    private: String,
}

impl Netns {
    fn create() -> Netns {
        sweep_stale();
        let id = std::process::id();
        let n = Netns {
            public: format!("mqend{id}-public"),
            edge: format!("mqend{id}-edge"),
            private: format!("mqend{id}-private"),
        };
        for ns in n.all() {
            let out = run("ip", &["netns", "add", ns]);
            if !out.status.success() {
                panic!(
                    "`ip netns add {ns}` failed: {}\nthis test needs root and network \
                     namespaces (CI runs it as root)",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        n
    }

    fn all(&self) -> [&str; 3] {
        [&self.public, &self.edge, &self.private]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.all() {
            let pids = run("ip", &["netns", "pids", ns]);
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Deletes namespaces that an earlier run of this test left behind when it was killed (their
/// name carries the pid of a test process that no longer exists), with what still runs in them.
fn sweep_stale() {
    let list = run("ip", &["netns", "list"]);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("mqend") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            // what still runs inside was started by that run of this test
            let pids = run("ip", &["netns", "pids", name]);
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Runs a command inside a namespace and insists that it succeeds.
fn ns_ok(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    let out = run("ip", &all);
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a TCP connect from `ns` to `ip:port` succeeds within 2 s.
fn reaches(ns: &str, ip: &str, port: u16) -> bool {
    let port = port.to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "timeout",
            "2",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/$0/$1",
            ip,
            &port,
        ],
    )
    .status
    .success()
}

/// `GET path` over HTTP/1.0 from inside `ns`: (status, body), or `None` when it fails.
fn http_in(ns: &str, ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let port = port.to_string();
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "timeout",
            "5",
            "bash",
            "-c",
            r#"exec 3<>/dev/tcp/$0/$1 && printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$2" "$0" "$1" >&3 && cat <&3"#,
            ip,
            &port,
            path,
        ],
    );
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn json_in(ns: &str, ip: &str, port: u16, path: &str) -> Option<serde_json::Value> {
    match http_in(ns, ip, port, path) {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("{what}: not within {timeout:?}\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The packet count of the `counter drop` rule of a namespace's `inet mqedge` table.
fn dropped(ns: &str) -> u64 {
    let rules = ns_ok(ns, &["nft", "list", "chain", "inet", "mqedge", "input"]);
    rules
        .lines()
        .find(|l| l.contains("counter packets") && l.trim_end().ends_with("drop"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in {ns}:\n{rules}"))
}

fn broker_config(i: usize) -> String {
    let seeds: Vec<String> = BROKER_IPS
        .iter()
        .map(|ip| format!("\"{ip}:{CLUSTER_PORT}\""))
        .collect();
    format!(
        r#"[node]
name = "{name}"
admin = "{ip}:{ADMIN_PORT}"

[[listener]]
name = "from-lb"
bind = "{ip}:{MQTT_PORT}"
proxy_protocol = "required"
trusted_proxies = ["{LB_PRIVATE_IP}/32"]
use_cn_as_username = true

[cluster]
bind = "{ip}:{CLUSTER_PORT}"
seeds = [{seeds}]

[auth]
allow_anonymous = false
acl_file = "acl"
"#,
        name = NODES[i],
        ip = BROKER_IPS[i],
        seeds = seeds.join(", "),
    )
}

fn lb_config() -> String {
    let mut s = format!(
        r#"[lb]
name = "edge-1"
admin = "{LB_PRIVATE_IP}:{LB_ADMIN_PORT}"
drain_timeout = "2s"

[[listener]]
name = "mqtts"
bind = "{LB_PUBLIC_IP}:8883"
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"
client_auth = "required"

[balance]
strategy = "client_id"

[health]
kind = "mqtt"
interval = "500ms"
timeout = "1s"
fall = 2
rise = 2
"#
    );
    for (name, ip) in NODES.iter().zip(BROKER_IPS) {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{ip}:{MQTT_PORT}\"\nproxy_protocol = \"v2\"\n"
        ));
    }
    s
}

/// The ACL: a device may publish only under its own CN; the dashboard reads everything.
const ACL: &str = "pattern write sensors/%u/#\n\nuser dashboard\ntopic read sensors/#\n";

#[test]
fn device_reaches_brokers_only_through_the_lb_and_keeps_its_address() {
    let started = Instant::now();
    let out = run("id", &["-u"]);
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "netns_deployment needs root (network namespaces, veth pairs, nftables); CI runs it as root"
    );
    let ip = which("ip");
    which("nft");
    let mosquitto_sub = which("mosquitto_sub");
    let mosquitto_pub = which("mosquitto_pub");

    let dir = TempDir::new("netns");
    let n = Netns::create();
    let (public, edge, private) = (n.public.as_str(), n.edge.as_str(), n.private.as_str());

    // links: public <-> edge <-> private (each line runs inside the namespace it names)
    let setup = format!(
        "{public}  ip link set lo up
         {edge}    ip link set lo up
         {private} ip link set lo up
         {public}  ip link add pub0 type veth peer name edge-pub netns {edge}
         {edge}    ip link add edge-priv type veth peer name priv0 netns {private}
         {public}  ip addr add {CLIENT_IP}/24 dev pub0
         {public}  ip link set pub0 up
         {public}  ip route add default via {LB_PUBLIC_IP}
         {edge}    ip addr add {LB_PUBLIC_IP}/24 dev edge-pub
         {edge}    ip addr add {LB_PRIVATE_IP}/24 dev edge-priv
         {edge}    ip link set edge-pub up
         {edge}    ip link set edge-priv up
         {private} ip addr add {b0}/24 dev priv0
         {private} ip addr add {b1}/24 dev priv0
         {private} ip addr add {b2}/24 dev priv0
         {private} ip link set priv0 up
         {private} ip route add 198.51.100.0/24 via {LB_PRIVATE_IP}",
        b0 = BROKER_IPS[0],
        b1 = BROKER_IPS[1],
        b2 = BROKER_IPS[2],
    );
    for line in setup.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        ns_ok(words[0], &words[1..]);
    }
    // the edge routes between the subnets on purpose: the firewall must do the keeping out
    ns_ok(
        edge,
        &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
    );
    let route = ns_ok(public, &["ip", "route", "get", BROKER_IPS[0]]);
    assert!(route.contains(&format!("via {LB_PUBLIC_IP}")), "{route}");

    // firewalls
    let rules = dir.write("private.nft", PRIVATE_RULES);
    ns_ok(private, &["nft", "-f", &rules.display().to_string()]);
    let rules = dir.write("edge.nft", EDGE_RULES);
    ns_ok(edge, &["nft", "-f", &rules.display().to_string()]);

    // certificates: the server cert names the LB's public address; one client cert per CN
    let certs = dir.path().join("certs");
    let out = Command::new(bin())
        .args(["certs", "--out"])
        .arg(&certs)
        .args(["--san", LB_PUBLIC_IP, "--client-cn", "device-42"])
        .args(["--client-cn", "dashboard"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = |f: &str| certs.join(f).display().to_string();

    // three brokers in the private namespace, then the LB on the edge
    dir.write("acl", ACL);
    let mut brokers = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let cfg = dir.write(&format!("{node}.toml"), &broker_config(i));
        let out = Command::new(bin())
            .arg("check")
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = Command::new(&ip);
        cmd.args(["netns", "exec", private, bin(), "broker", "-c"])
            .arg(&cfg);
        let p = Proc::spawn(node, cmd);
        p.wait_log(" listener=", Duration::from_secs(15));
        brokers.push(p);
    }
    let broker_logs = |brokers: &[Proc]| {
        brokers
            .iter()
            .map(|b| format!("--- {}\n{}", b.name, b.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for b in BROKER_IPS {
        wait_for(
            &format!("{b} sees three nodes up"),
            Duration::from_secs(15),
            || {
                json_in(private, b, ADMIN_PORT, "/api/cluster").is_some_and(|v| {
                    v["nodes"]
                        .as_array()
                        .is_some_and(|n| n.len() == 3 && n.iter().all(|x| x["state"] == "up"))
                })
            },
            || broker_logs(&brokers),
        );
    }

    let lb_cfg = dir.write("lb.toml", &lb_config());
    let mut cmd = Command::new(&ip);
    cmd.args(["netns", "exec", edge, bin(), "lb", "-c"])
        .arg(&lb_cfg);
    let lb = Proc::spawn("lb", cmd);
    lb.wait_log("listening", Duration::from_secs(15));
    wait_for(
        "the LB sees every broker up",
        Duration::from_secs(10),
        || {
            json_in(edge, LB_PRIVATE_IP, LB_ADMIN_PORT, "/api/backends").is_some_and(|v| {
                v.as_array()
                    .is_some_and(|a| a.len() == 3 && a.iter().all(|b| b["state"] == "up"))
            })
        },
        || lb.logs(),
    );

    // what the firewall lets through, probed in parallel (a dropped SYN takes the 2 s timeout)
    let before = dropped(private);
    let edge_before = dropped(edge);
    let probes: Vec<(&str, &str, &str, u16, bool)> = vec![
        (
            "device → broker MQTT",
            public,
            BROKER_IPS[0],
            MQTT_PORT,
            false,
        ),
        (
            "device → broker cluster",
            public,
            BROKER_IPS[1],
            CLUSTER_PORT,
            false,
        ),
        (
            "device → broker admin",
            public,
            BROKER_IPS[2],
            ADMIN_PORT,
            false,
        ),
        (
            "device → LB admin",
            public,
            LB_PRIVATE_IP,
            LB_ADMIN_PORT,
            false,
        ),
        (
            "device → LB MQTT over TLS",
            public,
            LB_PUBLIC_IP,
            8883,
            true,
        ),
        (
            "LB host → broker MQTT",
            edge,
            BROKER_IPS[1],
            MQTT_PORT,
            true,
        ),
        (
            "LB host → broker cluster",
            edge,
            BROKER_IPS[2],
            CLUSTER_PORT,
            false,
        ),
    ];
    let results: Vec<(String, bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|(what, ns, ip, port, want)| {
                s.spawn(move || (what.to_string(), reaches(ns, ip, *port), *want))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (what, got, want) in &results {
        assert_eq!(got, want, "{what}: reachable = {got}, expected {want}");
    }
    assert!(
        dropped(private) > before,
        "the private firewall dropped nothing: the probes did not arrive"
    );
    assert!(
        dropped(edge) > edge_before,
        "the edge firewall dropped nothing"
    );

    // a subscriber and a device, hashed to different nodes, both through the LB with their
    // client certificates
    let sub_id = id_for("node1", &NODES, "dashboard");
    let pub_id = id_for("node3", &NODES, "device-42");
    let tls = |cn: &str| {
        vec![
            "-h".to_string(),
            LB_PUBLIC_IP.to_string(),
            "-p".to_string(),
            "8883".to_string(),
            "--cafile".to_string(),
            cert("ca.pem"),
            "--cert".to_string(),
            cert(&format!("{cn}.pem")),
            "--key".to_string(),
            cert(&format!("{cn}.key")),
        ]
    };
    let mut cmd = Command::new(&ip);
    cmd.args(["netns", "exec", public, &mosquitto_sub])
        .args(tls("dashboard"))
        .args([
            "-i",
            &sub_id,
            "-q",
            "1",
            "-t",
            "sensors/#",
            "-v",
            "-C",
            "1",
            "-W",
            "30",
        ]);
    let mut sub = Proc::spawn("sub", cmd);
    let path = format!("/api/clients/{sub_id}");
    wait_for(
        "the subscriber is connected on node1",
        Duration::from_secs(10),
        || {
            json_in(private, BROKER_IPS[0], ADMIN_PORT, &path)
                .is_some_and(|v| v["connected"] == true)
        },
        || {
            format!(
                "{}\n--- lb\n{}\n--- sub\n{}",
                broker_logs(&brokers),
                lb.logs(),
                sub.logs()
            )
        },
    );
    let v = json_in(private, BROKER_IPS[0], ADMIN_PORT, &path).unwrap();
    assert!(
        v["peer_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{CLIENT_IP}:"))),
        "node1 should see the device's own address, not the LB's: {v}"
    );
    assert_eq!(v["username"], "dashboard", "{v}");
    assert_eq!(v["node"], "node1", "{v}");
    wait_for(
        "node3 learns node1's route",
        Duration::from_secs(10),
        || {
            json_in(private, BROKER_IPS[2], ADMIN_PORT, "/api/cluster").is_some_and(|v| {
                v["nodes"].as_array().is_some_and(|n| {
                    n.iter()
                        .any(|x| x["name"] == "node1" && x["routes"].as_u64() >= Some(1))
                })
            })
        },
        || broker_logs(&brokers),
    );

    // the device first tries another device's topic (the ACL drops it), then its own
    let publish = |topic: &str, msg: &str| {
        let mut cmd = Command::new(&ip);
        cmd.args(["netns", "exec", public, &mosquitto_pub])
            .args(tls("device-42"))
            .args(["-i", &pub_id, "-c", "-q", "1", "-t", topic, "-m", msg]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish("sensors/device-7/temp", "not mine");
    publish("sensors/device-42/temp", "21.5");
    let status = sub.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "subscriber did not get the message: {status:?}\n{}\n--- lb\n{}",
        sub.logs(),
        lb.logs()
    );
    wait_for(
        "the subscriber's output",
        Duration::from_secs(2),
        || sub.logs().contains("sensors/device-42/temp 21.5"),
        || sub.logs(),
    );
    assert!(
        !sub.logs().contains("not mine"),
        "the ACL let another device's topic through"
    );

    // node3 holds the device's persistent session: its address and CN came through PROXY v2
    let v = json_in(
        private,
        BROKER_IPS[2],
        ADMIN_PORT,
        &format!("/api/clients/{pub_id}"),
    )
    .unwrap_or_else(|| panic!("node3 does not know {pub_id}\n{}", broker_logs(&brokers)));
    assert!(
        v["peer_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{CLIENT_IP}:"))),
        "{v}"
    );
    assert_eq!(v["username"], "device-42", "{v}");
    // and the message crossed the cluster from node3 to node1
    let (code, metrics) = http_in(private, BROKER_IPS[2], ADMIN_PORT, "/metrics").unwrap();
    assert_eq!(code, 200);
    let forwarded = metric(
        &parse_prometheus(&metrics),
        "mqedge_broker_cluster_forwarded_messages_total",
        &[],
    );
    assert!(forwarded >= 1.0, "{metrics}");

    drop(sub);
    drop(lb);
    drop(brokers);
    drop(n);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
