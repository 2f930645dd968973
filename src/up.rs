//! `mqedge up`: the local topology of DESIGN.md as child processes of this binary — dev certs
//! (generated when missing), three clustered broker nodes and the LB from `configs/local/`
//! (embedded, with paths rewritten to `--dir` and ports to `--base-port`), child output prefixed
//! with its role. Ctrl-C, SIGTERM and SIGHUP (the terminal closing) stop every child gracefully;
//! if `up` itself dies, the kernel stops them (parent-death signal), so no child is left holding
//! the ports.

mod ports;

use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use ports::Ports;

/// `(role, file name, text)` of `configs/local/`, written to `DIR/configs/` at every start.
const TEMPLATES: [(&str, &str, &str); 4] = [
    (
        "node1",
        "node1.toml",
        include_str!("../configs/local/node1.toml"),
    ),
    (
        "node2",
        "node2.toml",
        include_str!("../configs/local/node2.toml"),
    ),
    (
        "node3",
        "node3.toml",
        include_str!("../configs/local/node3.toml"),
    ),
    ("lb", "lb.toml", include_str!("../configs/local/lb.toml")),
];

/// Client ids of the lines printed to paste. Without ids mosquitto connects with an empty one
/// and the LB falls back to hashing the source address — the same for both, so they would meet
/// on one node. These two hash to different nodes (a unit test holds that), so the first
/// message a user sends crosses the cluster.
const SUB_ID: &str = "demo-subscriber";
const PUB_ID: &str = "demo-publisher";

/// The backend names of `configs/local/lb.toml`, equal weights.
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// How long the topology may take to come up (certs exist, cluster formed, CONNACK via the LB).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A line on stdout. Write errors are ignored: after the terminal closes (SIGHUP) stdout
/// returns EIO, and `up` must still stop its children instead of panicking in `println!`.
fn say(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr, "mqedge up: " first; write errors ignored as in [`say`].
fn warn(msg: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "mqedge up: {msg}");
}

fn fail(code: u8, msg: impl Display) -> ExitCode {
    warn(msg);
    ExitCode::from(code)
}

/// A phase's failure: the exit code, after its message was printed.
type Step<T> = Result<T, ExitCode>;

/// Runs the topology until Ctrl-C, SIGTERM or SIGHUP. Exit 0 after a signal, 1 for a bad
/// argument or unwritable `dir`, 2 when a port is taken or the topology does not come up.
pub fn run(dir: &Path, base_port: Option<u16>) -> ExitCode {
    match run_phases(dir, base_port) {
        Ok(code) | Err(code) => code,
    }
}

fn run_phases(dir: &Path, base_port: Option<u16>) -> Step<ExitCode> {
    let ports = Ports::new(base_port).map_err(|e| fail(1, e))?;
    // before any child exists: a signal from here on stops the topology instead of killing us
    let mut signals =
        Signals::new().map_err(|e| fail(2, format!("cannot install signal handlers: {e}")))?;
    let dir = prepare_dir(dir)?;
    check_ports(&ports)?;
    let certs = dir.join("certs");
    ensure_certs(&certs)?;
    let cfg_dir = dir.join("configs");
    let files = write_configs(&dir, &cfg_dir, &ports)?;
    let mut children = start_children(&files)?;
    if let Some(sig) = wait_ready(&ports, &mut children, &mut signals)? {
        warn(format!("{sig} while starting: stopping"));
        stop_all(&mut children);
        say("mqedge up: stopped");
        return Ok(ExitCode::SUCCESS);
    }
    print_banner(&certs, &ports, &cfg_dir);
    let sig = watch(&mut children, &mut signals);
    warn(format!("{sig}: stopping every child"));
    stop_all(&mut children);
    say("mqedge up: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `dir`, created when missing, as an absolute path (the configs name files inside it).
fn prepare_dir(dir: &Path) -> Step<PathBuf> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Err(fail(1, format!("cannot create {}: {e}", dir.display())));
    }
    dir.canonicalize()
        .map_err(|e| fail(1, format!("{}: {e}", dir.display())))
}

/// Exit 2 with a line per taken port (and the hints that free or move them).
fn check_ports(ports: &Ports) -> Step<()> {
    let taken = ports.taken();
    if taken.is_empty() {
        return Ok(());
    }
    for t in &taken {
        warn(t);
    }
    if taken
        .iter()
        .any(|t| t.contains("(mosquitto)") || t.starts_with("port 1883 "))
    {
        warn(
            "Debian's mosquitto package starts a broker on 1883 when it is installed; \
             stop it with `sudo systemctl disable --now mosquitto`",
        );
    }
    warn(format!(
        "`mqedge up --base-port N` moves all {} ports to N..N+{}",
        ports::COUNT,
        ports::COUNT - 1
    ));
    Err(ExitCode::from(2))
}

/// Dev certificates in `certs`, made when the CA or the client certificate is missing.
fn ensure_certs(certs: &Path) -> Step<()> {
    if certs.join("ca.pem").exists() && certs.join("client.pem").exists() {
        return Ok(());
    }
    // a CA that is there stays (certificates it signed keep verifying); the rest is made
    let opts = mqedge_shared::certs::CertOptions {
        reuse_ca: certs.join("ca.pem").exists() && certs.join("ca.key").exists(),
        ..Default::default()
    };
    if let Err(e) = mqedge_shared::certs::generate(certs, &opts) {
        return Err(fail(2, format!("generating dev certificates: {e}")));
    }
    say(format!(
        "mqedge up: dev certificates written to {}",
        certs.display()
    ));
    Ok(())
}

/// The templates written to `cfg_dir`, paths moved to `dir` and ports to `ports`: `(role,
/// file)` in start order.
fn write_configs(dir: &Path, cfg_dir: &Path, ports: &Ports) -> Step<Vec<(&'static str, PathBuf)>> {
    if let Err(e) = std::fs::create_dir_all(cfg_dir) {
        return Err(fail(1, format!("cannot create {}: {e}", cfg_dir.display())));
    }
    let mut files = Vec::new();
    for (role, name, text) in TEMPLATES {
        let text = ports.rewrite(&text.replace("../../.mqedge", &dir.display().to_string()));
        let p = cfg_dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            return Err(fail(1, format!("cannot write {}: {e}", p.display())));
        }
        files.push((role, p));
    }
    say(format!(
        "mqedge up: configs written to {} (from configs/local/, again at every start); \
         the LB hot-reloads {} while it runs",
        cfg_dir.display(),
        cfg_dir.join("lb.toml").display()
    ));
    Ok(files)
}

/// One child of this executable per config; on a failure the started ones are stopped.
fn start_children(files: &[(&'static str, PathBuf)]) -> Step<Vec<(&'static str, Child)>> {
    let exe = std::env::current_exe()
        .map_err(|e| fail(2, format!("cannot find this executable: {e}")))?;
    let mut children: Vec<(&str, Child)> = Vec::new();
    for (role, cfg) in files {
        let sub = if *role == "lb" { "lb" } else { "broker" };
        match spawn(&exe, sub, cfg, role) {
            Ok(c) => children.push((role, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(fail(2, format!("cannot start {role}: {e}")));
            }
        }
    }
    Ok(children)
}

/// Waits until an MQTT CONNECT through the LB's plain port gets a CONNACK from a node, the
/// cluster formed: `None`. A stop signal meanwhile: its name. A child that exits or the
/// deadline: every child stopped, exit 2. (Admin ports are probed with a bare TCP connect; MQTT
/// ports are not, to keep logs clean.)
fn wait_ready(
    ports: &Ports,
    children: &mut Vec<(&str, Child)>,
    signals: &mut Signals,
) -> Step<Option<&'static str>> {
    let admins: Vec<SocketAddr> = [
        ports.lb_admin(),
        ports.node_admin(1),
        ports.node_admin(2),
        ports.node_admin(3),
    ]
    .into_iter()
    .map(local)
    .collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let admins_up = admins
            .iter()
            .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok());
        if admins_up
            && cluster_formed(local(ports.node_admin(1)), 3)
            && admin_count(local(ports.lb_admin()), "/api/backends", "\"state\":\"up\"") >= 3
            && mqtt_probe(local(ports.lb_plain()))
        {
            return Ok(None);
        }
        if Instant::now() > deadline
            || children
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
        {
            stop_all(children);
            return Err(fail(
                2,
                "the topology did not come up; see the output above",
            ));
        }
        if let Some(sig) = signals.wait(Duration::from_millis(200)) {
            return Ok(Some(sig));
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The stop signals, registered once at start (a current-thread runtime drives them).
struct Signals {
    rt: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (int, term, hup) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        })?;
        Ok(Signals { rt, int, term, hup })
    }

    /// The name of a stop signal that arrives within `d`, or `None`.
    fn wait(&mut self, d: Duration) -> Option<&'static str> {
        let Signals { rt, int, term, hup } = self;
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => Some("SIGINT"),
                _ = term.recv() => Some("SIGTERM"),
                _ = hup.recv() => Some("SIGHUP"),
                _ = tokio::time::sleep(d) => None,
            }
        })
    }
}

/// Which node `client_id` lands on under the LB's hashing (`strategy = "client_id"`, the three
/// nodes up, equal weights), computed with the LB's own code.
fn node_of(client_id: &str) -> &'static str {
    let c: Vec<mqedge_lb::balance::Candidate<'_>> = NODES
        .iter()
        .map(|n| mqedge_lb::balance::Candidate {
            name: n,
            weight: 1,
            active: 0,
        })
        .collect();
    NODES[mqedge_lb::balance::hash_order(client_id.as_bytes(), &c)[0]]
}

/// Whether the node admin API at `admin` lists `n` nodes up in `/api/cluster`.
fn cluster_formed(admin: SocketAddr, n: usize) -> bool {
    admin_count(admin, "/api/cluster", "\"state\":\"up\"") >= n
}

/// How often `needle` occurs in the body of `GET path` on an admin API (0 when unreachable):
/// the printed lines are shown only once the LB routes to every node, so a pasted client id
/// lands on the node its hash names.
fn admin_count(admin: SocketAddr, path: &str, needle: &str) -> usize {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(300)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return 0;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.matches(needle).count()
}

/// One MQTT CONNECT → CONNACK round trip (client id `mqedge-up-probe`).
fn mqtt_probe(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let connect = mqedge_protocol::peek::encode_connect(4, "mqedge-up-probe", None, 10);
    if s.write_all(&connect).is_err() {
        return false;
    }
    let mut ack = [0u8; 4];
    let ok = s.read_exact(&mut ack).is_ok() && ack[0] == 0x20 && ack[3] == 0;
    let _ = s.write_all(&[0xe0, 0x00]);
    ok
}

/// Starts `mqedge SUB -c CFG` with its output relayed, each line prefixed with `[role]`.
fn spawn(exe: &Path, sub: &str, cfg: &Path, role: &str) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.arg(sub).arg("-c").arg(cfg);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // own process group: Ctrl-C in the terminal reaches only us, and we stop the children in
    // order (LB first)
    cmd.process_group(0);
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; it only makes two system calls (no
    // allocation, no locks), which is what a pre_exec closure of a threaded process may do.
    unsafe {
        cmd.pre_exec(move || {
            // SIGTERM (a graceful stop) when the thread that forked us dies: that is up's main
            // thread, which lives as long as up, so a SIGKILLed `up` takes its children along
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // up died between fork and prctl: the signal will never come, so do not start
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tag = format!("[{role:>5}] ");
        // keeps reading when stdout is gone (terminal closed), so a child never blocks on a
        // full pipe while it stops
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                say(format_args!("{tag}{line}"));
            }
        });
    }
    Ok(child)
}

fn print_banner(certs: &Path, p: &Ports, cfg_dir: &Path) {
    let c = |f: &str| -> PathBuf { certs.join(f) };
    say("");
    say("mqedge up: running — Ctrl-C (or SIGTERM, or closing the terminal) stops everything");
    say(format!(
        "  LB     TLS 127.0.0.1:{} (client certs optional)  plain 127.0.0.1:{}  admin http://127.0.0.1:{}/api/backends",
        p.lb_tls(),
        p.lb_plain(),
        p.lb_admin()
    ));
    say(format!(
        "  LB     WebSocket ws://127.0.0.1:{}/mqtt  wss://localhost:{}/mqtt",
        p.lb_ws(),
        p.lb_wss()
    ));
    say(format!(
        "  nodes  MQTT 127.0.0.1:{}..{} (PROXY v2 from the LB only)  admin http://127.0.0.1:{}/api/cluster ..{}  cluster {}..{}",
        p.node_mqtt(1),
        p.node_mqtt(3),
        p.node_admin(1),
        p.node_admin(3),
        p.cluster(1),
        p.cluster(3)
    ));
    say(format!(
        "  LB config, hot-reloaded when you edit it: {}",
        cfg_dir.join("lb.toml").display()
    ));
    say(format!(
        "try ({SUB_ID} lands on {}, {PUB_ID} on {}: the message crosses the cluster):",
        node_of(SUB_ID),
        node_of(PUB_ID)
    ));
    say(format!(
        "  mosquitto_sub -h localhost -p {} --cafile {} --cert {} --key {} -i {SUB_ID} -t 'demo/#' -v",
        p.lb_tls(),
        c("ca.pem").display(),
        c("client.pem").display(),
        c("client.key").display()
    ));
    say(format!(
        "  mosquitto_pub -h 127.0.0.1 -p {} -i {PUB_ID} -t demo/hello -m 'hello from plain MQTT'",
        p.lb_plain()
    ));
    say("");
}

/// Runs until a stop signal arrives (its name is returned); a child that exits is reported and
/// the rest keep running.
fn watch(children: &mut [(&str, Child)], signals: &mut Signals) -> &'static str {
    let mut reported = vec![false; children.len()];
    loop {
        if let Some(sig) = signals.wait(Duration::from_millis(500)) {
            return sig;
        }
        for (i, (role, c)) in children.iter_mut().enumerate() {
            if let (Ok(Some(st)), false) = (c.try_wait(), reported[i]) {
                reported[i] = true;
                warn(format!("{role} exited ({st}); the others keep running"));
            }
        }
    }
}

/// SIGTERM to every child (LB first, so no new clients reach a stopping node), then SIGKILL
/// whatever is left after 5 s.
fn stop_all(children: &mut Vec<(&str, Child)>) {
    children.reverse();
    for (_, c) in children.iter() {
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (role, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    warn(format!("{role} did not stop in time; killing it"));
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    children.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_client_ids_land_on_different_nodes() {
        assert_ne!(
            node_of(SUB_ID),
            node_of(PUB_ID),
            "{SUB_ID} and {PUB_ID} meet on one node: pick ids that cross the cluster"
        );
        // node_of assumes the backends and the strategy of configs/local/lb.toml
        let lb = TEMPLATES[3].2;
        for n in NODES {
            assert!(
                lb.contains(&format!("name = \"{n}\"")),
                "{n} not in lb.toml"
            );
        }
        assert!(lb.contains("strategy = \"client_id\""), "{lb}");
    }
}
