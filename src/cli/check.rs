//! `mqedge check -c FILE`: validates a config with exactly the loader the role runs (plus the
//! files a broker loads at start) and prints one `ok` line, or every `file:line: what` and
//! exit 1. The role is judged from the file's top-level tables.
//!
//! `mqedge check -c lb.toml --broker node1.toml --broker node2.toml ...` also checks placement
//! (docs/cluster.md, "Placement"): an LB backend whose `addr` is a listener of a given node
//! must carry that node's name, every clustered node must be an LB backend of its name, and
//! every backend must name a given clustered node; each disagreement is one `file:line: what`
//! naming both sides, and exit 1.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mqedge_lb::config::BackendAddr;
use mqedge_shared::config::line_of;

/// Which role a config file is for, judged by its top-level tables.
fn role_of(path: &Path) -> Result<&'static str, String> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read config file: {e}", path.display()))?;
    let t: toml::Table = match toml::from_str(&src) {
        Ok(t) => t,
        // let the role parser report the syntax error with its line
        Err(_) => return Ok("lb"),
    };
    let broker = ["node", "cluster", "auth", "limits", "shared_subscriptions"]
        .iter()
        .any(|k| t.contains_key(*k));
    let lb = ["lb", "backend", "balance", "health"]
        .iter()
        .any(|k| t.contains_key(*k));
    if broker && !lb {
        return Ok("broker");
    }
    if lb {
        return Ok("lb");
    }
    // only [[listener]]: whichever role accepts it
    if mqedge_lb::config::Config::load(path).is_err()
        && mqedge_broker::config::Config::load(path).is_ok()
    {
        Ok("broker")
    } else {
        Ok("lb")
    }
}

/// Exit 0 and the `ok` line, or 1 and the problems on stderr. With `brokers`, `path` must be
/// an LB config and the placement check runs too.
pub fn run(path: &Path, brokers: &[PathBuf]) -> ExitCode {
    match role_of(path) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Ok("broker") if !brokers.is_empty() => {
            eprintln!(
                "{}: is a broker config; --broker compares the nodes with an LB config given as -c",
                path.display()
            );
            ExitCode::from(1)
        }
        Ok("broker") => check_broker(path),
        Ok(_) if !brokers.is_empty() => check_placement(path, brokers),
        Ok(_) => check_lb(path),
    }
}

fn check_broker(path: &Path) -> ExitCode {
    exit(load_broker(path).is_some())
}

fn check_lb(path: &Path) -> ExitCode {
    exit(load_lb(path).is_some())
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The broker config and its `ok` line, or `None` and its problems on stderr.
fn load_broker(path: &Path) -> Option<mqedge_broker::config::Config> {
    match mqedge_broker::config::Config::load(path) {
        // the password and ACL files are loaded (and checked) by the config itself
        Ok(c) => {
            println!(
                "{}: ok (broker config: node {}, {} listener(s))",
                path.display(),
                c.name,
                c.listeners.len()
            );
            Some(c)
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

/// The LB config and its `ok` line, or `None` and its problems on stderr.
fn load_lb(path: &Path) -> Option<mqedge_lb::config::Config> {
    match mqedge_lb::config::Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok (lb config: {} listener(s), {} backend(s))",
                path.display(),
                c.listeners.len(),
                c.backends.len()
            );
            Some(c)
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

/// One node of `--broker`, as the placement check needs it.
struct Node {
    /// Its config file, for messages.
    path: PathBuf,
    /// `[node] name`: the name the broker places sessions by.
    name: String,
    /// The line of `[node] name` (none when the default `node1` is taken).
    line: Option<usize>,
    /// Whether it has `[cluster]`: only clustered nodes hand sessions to each other, so only
    /// their names have to be the LB's.
    clustered: bool,
    /// Its MQTT listeners' binds, to find the backend it is.
    binds: Vec<SocketAddr>,
}

impl Node {
    /// `node1.toml:6` (or the file alone when the name is the default).
    fn at(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{l}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// One `[[backend]]` of the LB config, as the placement check needs it.
struct Backend {
    /// `name`: what the LB hashes client ids with.
    name: String,
    /// `addr`, to find the node behind it.
    addr: BackendAddr,
    /// `file:line` of its `name`.
    at: String,
    /// `weight`: the cluster places by equal weights.
    weight: u32,
}

/// Line of the `i`-th `[[backend]]`'s name, or of `[node] name` for `i == None`, read with
/// spans beside the real loader (which keeps none).
fn name_line(path: &Path, i: Option<usize>) -> Option<usize> {
    let src = std::fs::read_to_string(path).ok()?;
    let doc = toml::de::DeTable::parse(&src).ok()?;
    let table = match i {
        Some(i) => doc.get_ref().get("backend")?.get_ref().get(i)?,
        None => doc.get_ref().get("node")?,
    };
    let name = table.get_ref().get("name")?;
    Some(line_of(&src, name.span().start))
}

/// `-c lb.toml --broker ...`: every file checked as alone, then the names compared.
fn check_placement(path: &Path, brokers: &[PathBuf]) -> ExitCode {
    let lb = load_lb(path);
    let mut nodes = Vec::new();
    let mut failed = lb.is_none();
    for b in brokers {
        match load_broker(b) {
            Some(c) => nodes.push(Node {
                path: b.clone(),
                line: name_line(b, None),
                name: c.name,
                clustered: c.cluster.is_some(),
                binds: c.listeners.iter().map(|l| l.bind).collect(),
            }),
            None => failed = true,
        }
    }
    let Some(lb) = lb.filter(|_| !failed) else {
        return ExitCode::from(1);
    };
    let backends: Vec<Backend> = lb
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Backend {
            name: b.name.clone(),
            addr: b.addr.clone(),
            weight: b.weight,
            at: match name_line(path, Some(i)) {
                Some(l) => format!("{}:{l}", path.display()),
                None => path.display().to_string(),
            },
        })
        .collect();
    let problems = placement_problems(path, &backends, &nodes);
    if let Some(w) = weights_differ(&backends) {
        eprintln!(
            "{}: warning: backend weights differ ({w}): the cluster places sessions by equal \
             weights, so some clients reconnect to another node than the one their session \
             went to (a takeover, not a loss)",
            path.display()
        );
    }
    if problems.is_empty() {
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        println!(
            "placement: ok (the LB's backends {} are the nodes' names)",
            names.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    ExitCode::from(1)
}

/// `node1 = 1, node2 = 2` when the backends taking clients (weight above 0) do not all have
/// one weight: then the LB's weighted order is not the cluster's equal-weight one.
fn weights_differ(backends: &[Backend]) -> Option<String> {
    let live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    let first = live.first()?.weight;
    live.iter().any(|b| b.weight != first).then(|| {
        live.iter()
            .map(|b| format!("{} = {}", b.name, b.weight))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The node whose listener is exactly the backend's address, when only one is.
fn node_behind<'a>(addr: &BackendAddr, nodes: &'a [Node]) -> Option<&'a Node> {
    let BackendAddr::Ip(a) = addr else {
        return None;
    };
    let mut hit = nodes.iter().filter(|n| n.binds.contains(a));
    match (hit.next(), hit.next()) {
        (Some(n), None) => Some(n),
        _ => None,
    }
}

/// Every disagreement between the LB's backend names and the clustered nodes' names, each a
/// `file:line: what` naming both; empty when placement agrees. A backend found at a node's
/// listener is compared with that node; the names left over are compared as sets.
fn placement_problems(lb: &Path, backends: &[Backend], nodes: &[Node]) -> Vec<String> {
    let mut out = Vec::new();
    let clustered: Vec<&Node> = nodes.iter().filter(|n| n.clustered).collect();
    if clustered.is_empty() {
        return out;
    }
    // backends and node names already reported, so one mistake is one line
    let mut told_backend = HashSet::new();
    let mut told_node = HashSet::new();
    for b in backends {
        let Some(n) = node_behind(&b.addr, nodes).filter(|n| n.clustered) else {
            continue;
        };
        if n.name != b.name {
            out.push(format!(
                "{}: backend \"{}\" (addr {}) is node \"{}\" ({}), but the names differ: \
                 the LB hashes client ids over backend names and the cluster places sessions \
                 by node names, so name the backend \"{}\"",
                b.at,
                b.name,
                b.addr,
                n.name,
                n.at(),
                n.name
            ));
            told_backend.insert(b.name.as_str());
            told_node.insert(n.name.as_str());
        }
    }
    let backend_names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let node_names: Vec<&str> = clustered.iter().map(|n| n.name.as_str()).collect();
    for (i, n) in clustered.iter().enumerate() {
        if let Some(m) = clustered[..i].iter().find(|m| m.name == n.name) {
            out.push(format!(
                "{}: clustered node \"{}\" has the name of {} too: each node needs its own \
                 name, the one its LB backend carries",
                n.at(),
                n.name,
                m.at()
            ));
        }
    }
    for n in &clustered {
        if !backend_names.contains(&n.name.as_str()) && !told_node.contains(n.name.as_str()) {
            out.push(format!(
                "{}: clustered node \"{}\" is not a backend of {} (backends: {}): the cluster \
                 hands sessions to it that the LB never sends their clients to; add a \
                 [[backend]] named \"{}\"",
                n.at(),
                n.name,
                lb.display(),
                backend_names.join(", "),
                n.name
            ));
        }
    }
    for b in backends {
        if !node_names.contains(&b.name.as_str()) && !told_backend.contains(b.name.as_str()) {
            out.push(format!(
                "{}: backend \"{}\" is not the name of any clustered node given (nodes: {}): \
                 the LB places clients by a name the cluster does not know; name it as its \
                 broker's [node] name",
                b.at,
                b.name,
                node_names.join(", ")
            ));
        }
    }
    out
}
