//! The fourteen ports of `mqedge up`'s topology: their default numbers, what each one is (for the
//! messages a user reads when one is taken), `--base-port` moving them all to a block of
//! consecutive ports, the rewrite of the embedded `configs/local/` templates to match, and the
//! start-up check that names the process holding a taken port (from `/proc/net/*` and
//! `/proc/*/fd`).

use std::net::{TcpListener, UdpSocket};

/// One port of the topology.
struct Spec {
    /// The number in `configs/local/` (and docs/operations.md's port table).
    default: u16,
    /// What it is, as a user reads it: "port 1883 (MQTT listener of the LB) is already in use".
    what: &'static str,
    /// Also bound as UDP (the cluster ports: chitchat gossip beside the TCP node channel).
    udp: bool,
}

const fn spec(default: u16, what: &'static str, udp: bool) -> Spec {
    Spec { default, what, udp }
}

/// In `--base-port` order: port `i` of the list becomes `base + i`.
const SPECS: [Spec; 14] = [
    spec(1883, "MQTT listener of the LB", false),
    spec(8883, "MQTT over TLS listener of the LB", false),
    spec(9100, "admin API of the LB", false),
    spec(11883, "MQTT listener of node1", false),
    spec(11884, "MQTT listener of node2", false),
    spec(11885, "MQTT listener of node3", false),
    spec(19101, "admin API of node1", false),
    spec(19102, "admin API of node2", false),
    spec(19103, "admin API of node3", false),
    spec(14371, "cluster port (TCP and UDP) of node1", true),
    spec(14372, "cluster port (TCP and UDP) of node2", true),
    spec(14373, "cluster port (TCP and UDP) of node3", true),
    spec(8083, "MQTT over WebSocket listener of the LB", false),
    spec(8084, "MQTT over secure WebSocket listener of the LB", false),
];

/// How many consecutive ports `--base-port` takes.
pub const COUNT: u16 = SPECS.len() as u16;

/// The port numbers one `mqedge up` uses, in [`SPECS`] order.
#[derive(Clone, Copy)]
pub struct Ports([u16; SPECS.len()]);

impl Ports {
    /// The defaults of `configs/local/`, or `base..base + COUNT` (an error when that passes
    /// 65535 or starts at 0).
    pub fn new(base: Option<u16>) -> Result<Ports, String> {
        let mut p = [0u16; SPECS.len()];
        match base {
            None => {
                for (slot, s) in p.iter_mut().zip(&SPECS) {
                    *slot = s.default;
                }
            }
            Some(0) => return Err("--base-port 0: pick a port from 1 up".into()),
            Some(b) => {
                if u32::from(b) + u32::from(COUNT) - 1 > 65535 {
                    return Err(format!(
                        "--base-port {b}: the topology needs {COUNT} consecutive ports, up to {}; \
                         the highest port is 65535",
                        u32::from(b) + u32::from(COUNT) - 1
                    ));
                }
                for (i, slot) in p.iter_mut().enumerate() {
                    *slot = b + i as u16;
                }
            }
        }
        Ok(Ports(p))
    }

    pub fn lb_plain(&self) -> u16 {
        self.0[0]
    }
    pub fn lb_tls(&self) -> u16 {
        self.0[1]
    }
    pub fn lb_admin(&self) -> u16 {
        self.0[2]
    }
    /// MQTT listener of node `n` (1..=3).
    pub fn node_mqtt(&self, n: usize) -> u16 {
        self.0[2 + n]
    }
    /// Admin API of node `n` (1..=3).
    pub fn node_admin(&self, n: usize) -> u16 {
        self.0[5 + n]
    }
    /// Cluster port of node `n` (1..=3).
    pub fn cluster(&self, n: usize) -> u16 {
        self.0[8 + n]
    }
    /// The LB's MQTT over WebSocket listener (path `/mqtt`).
    pub fn lb_ws(&self) -> u16 {
        self.0[12]
    }
    /// The LB's MQTT over secure WebSocket listener (path `/mqtt`).
    pub fn lb_wss(&self) -> u16 {
        self.0[13]
    }

    /// `text` (a `configs/local/` template) with every `"127.0.0.1:DEFAULT"` replaced by this
    /// layout's port. Two passes through placeholders, so a new number that equals another
    /// default (`--base-port 8882` puts the TLS listener on 8883... and the plain one on 8882)
    /// is never replaced twice.
    pub fn rewrite(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (i, s) in SPECS.iter().enumerate() {
            out = out.replace(
                &format!("\"127.0.0.1:{}\"", s.default),
                &format!("\"127.0.0.1:@PORT{i}@\""),
            );
        }
        for (i, port) in self.0.iter().enumerate() {
            out = out.replace(&format!("@PORT{i}@"), &port.to_string());
        }
        out
    }

    /// Every port that cannot be bound on 127.0.0.1 (TCP, and UDP for the cluster ports), each
    /// as one line: "port 1883 (MQTT listener of the LB) is already in use by pid 812
    /// (mosquitto)". Empty when all are free.
    pub fn taken(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (s, &port) in SPECS.iter().zip(&self.0) {
            let tcp = TcpListener::bind(("127.0.0.1", port)).is_err();
            let udp = s.udp && UdpSocket::bind(("127.0.0.1", port)).is_err();
            if !(tcp || udp) {
                continue;
            }
            let proto = if tcp { Proto::Tcp } else { Proto::Udp };
            let who = match owner(port, proto) {
                Some((pid, name)) => format!(" by pid {pid} ({name})"),
                None => " (by a process this user cannot see; `sudo ss -ltnup` names it)".into(),
            };
            let udp_only = if tcp { "" } else { " (UDP)" };
            out.push(format!(
                "port {port} ({}) is already in use{udp_only}{who}",
                s.what
            ));
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// The pid and command name of a process holding a socket bound to `port` (a TCP listener, or
/// a UDP socket), looked up through `/proc`: the socket's inode from `/proc/net/{tcp,tcp6,udp,
/// udp6}`, then the process with an fd pointing at `socket:[inode]`. `None` when it cannot be
/// seen (another user's process without root, or not Linux).
fn owner(port: u16, proto: Proto) -> Option<(u32, String)> {
    let (files, listen_state) = match proto {
        Proto::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], Some("0A")),
        Proto::Udp => (["/proc/net/udp", "/proc/net/udp6"], None),
    };
    let mut inodes = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        inodes.extend(socket_inodes(&text, port, listen_state));
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, name));
            }
        }
    }
    None
}

/// Inodes of the sockets in one `/proc/net/{tcp,udp}[6]` table whose local port is `port`
/// (and whose state is `state`, when given: `0A` is TCP LISTEN).
fn socket_inodes(table: &str, port: u16, state: Option<&str>) -> Vec<u64> {
    let port_hex = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let st = *f.get(3)?;
            let inode: u64 = f.get(9)?.parse().ok()?;
            (local_port == port_hex && (state.is_none() || state == Some(st)) && inode != 0)
                .then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_port_moves_every_port_of_every_template() {
        let ports = Ports::new(Some(8882)).unwrap();
        for (_, name, text) in super::super::TEMPLATES {
            let out = ports.rewrite(text);
            for s in &SPECS {
                let old = format!("\"127.0.0.1:{}\"", s.default);
                // 8883 is the TLS listener's new number too (8882 + 1): only lb.toml has it
                if s.default == 8883 && name == "lb.toml" {
                    assert_eq!(out.matches(&old).count(), 1, "{name}: {out}");
                    continue;
                }
                assert!(!out.contains(&old), "{name} still has {old}:\n{out}");
            }
            assert!(!out.contains("@PORT"), "{name}: {out}");
        }
        let lb = ports.rewrite(super::super::TEMPLATES[3].2);
        for p in [8882, 8883, 8884, 8885, 8886, 8887] {
            assert!(
                lb.contains(&format!("\"127.0.0.1:{p}\"")),
                "{p} missing:\n{lb}"
            );
        }
    }

    #[test]
    fn every_default_port_is_in_the_templates() {
        // a template port missing from SPECS would not move with --base-port
        let all: String = super::super::TEMPLATES.iter().map(|t| t.2).collect();
        for s in &SPECS {
            assert!(
                all.contains(&format!("\"127.0.0.1:{}\"", s.default)),
                "{} ({}) is not in configs/local/",
                s.default,
                s.what
            );
        }
        let quoted = all.matches("\"127.0.0.1:").count();
        // node1..3: listener, admin, cluster bind, 3 seeds; lb: 5 own + 3 backends + their
        // 3 admin addresses (the placement feeds)
        assert_eq!(
            quoted,
            3 * 6 + 8 + 3,
            "a 127.0.0.1 address SPECS does not know about"
        );
    }

    #[test]
    fn base_port_range_is_checked() {
        assert!(Ports::new(Some(0)).is_err());
        assert!(Ports::new(Some(65523)).is_err());
        let p = Ports::new(Some(65522)).unwrap();
        assert_eq!(p.lb_wss(), 65535);
        let d = Ports::new(None).unwrap();
        assert_eq!(
            (d.lb_plain(), d.lb_tls(), d.node_admin(2)),
            (1883, 8883, 19102)
        );
    }

    #[test]
    fn proc_net_tables_are_read_by_port_and_state() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                 0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n\
                 1: 0100007F:075B 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n\
                 2: garbage\n";
        assert_eq!(socket_inodes(t, 1883, Some("0A")), vec![4242]);
        assert_eq!(socket_inodes(t, 1883, None), vec![4242, 4343]);
        assert!(socket_inodes(t, 1884, None).is_empty());
    }

    #[test]
    fn a_taken_port_names_this_process() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (pid, _) = owner(port, Proto::Tcp).expect("own listener not found in /proc");
        assert_eq!(pid, std::process::id());
    }
}
