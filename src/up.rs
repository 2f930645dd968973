//! `mqedge up`: the local topology of DESIGN.md as child processes of this binary — dev certs
//! (generated when missing), three clustered broker nodes and the LB from `configs/local/`
//! (embedded, with paths rewritten to `--dir`), child output prefixed with its role, Ctrl-C
//! stops every child.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// Ports of the topology (DESIGN.md): what they are, where (checked free before starting).
const PORTS: [(&str, &str); 12] = [
    ("LB TLS", "127.0.0.1:8883"),
    ("LB plain", "127.0.0.1:1883"),
    ("LB admin", "127.0.0.1:9100"),
    ("node1 MQTT", "127.0.0.1:11883"),
    ("node2 MQTT", "127.0.0.1:11884"),
    ("node3 MQTT", "127.0.0.1:11885"),
    ("node1 admin", "127.0.0.1:19101"),
    ("node2 admin", "127.0.0.1:19102"),
    ("node3 admin", "127.0.0.1:19103"),
    ("node1 cluster", "127.0.0.1:14371"),
    ("node2 cluster", "127.0.0.1:14372"),
    ("node3 cluster", "127.0.0.1:14373"),
];

/// Admin endpoints probed for readiness.
const ADMINS: [&str; 4] = [
    "127.0.0.1:9100",
    "127.0.0.1:19101",
    "127.0.0.1:19102",
    "127.0.0.1:19103",
];

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("mqedge up: {msg}");
    ExitCode::from(1)
}

/// Runs the topology until Ctrl-C / SIGTERM.
pub fn run(dir: &Path) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return fail(format!("cannot create {}: {e}", dir.display()));
    }
    let dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() || !certs.join("client.pem").exists() {
        let opts = mqedge_shared::certs::CertOptions::default();
        if let Err(e) = mqedge_shared::certs::generate(&certs, &opts) {
            return fail(format!("generating dev certificates: {e}"));
        }
        println!("mqedge up: dev certificates written to {}", certs.display());
    }
    for (what, addr) in PORTS {
        if TcpListener::bind(addr).is_err() {
            return fail(format!(
                "{what} port {addr} is already in use (another mqedge up, or a local broker?)"
            ));
        }
    }
    let cfg_dir = dir.join("configs");
    if let Err(e) = std::fs::create_dir_all(&cfg_dir) {
        return fail(format!("cannot create {}: {e}", cfg_dir.display()));
    }
    let mut files = Vec::new();
    for (role, name, text) in TEMPLATES {
        let text = text.replace("../../.mqedge", &dir.display().to_string());
        let p = cfg_dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            return fail(format!("cannot write {}: {e}", p.display()));
        }
        files.push((role, p));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find this executable: {e}")),
    };
    let mut children: Vec<(&str, Child)> = Vec::new();
    for (role, cfg) in &files {
        let sub = if *role == "lb" { "lb" } else { "broker" };
        match spawn(&exe, sub, cfg, role) {
            Ok(c) => children.push((role, c)),
            Err(e) => {
                stop_all(&mut children);
                return fail(format!("cannot start {role}: {e}"));
            }
        }
    }
    // ready when an MQTT CONNECT through the LB's plain port gets a CONNACK from node1
    // (admin ports are probed with a bare TCP connect; MQTT ports are not, to keep logs clean)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let admins_up = ADMINS
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .all(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok());
        if admins_up && cluster_formed("127.0.0.1:19101", 3) && mqtt_probe("127.0.0.1:1883") {
            break;
        }
        if Instant::now() > deadline
            || children
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
        {
            stop_all(&mut children);
            return ExitCode::from(fail_code(
                "the topology did not come up; see the output above".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    print_banner(&certs);
    let code = wait(&mut children);
    stop_all(&mut children);
    println!("mqedge up: stopped");
    code
}

/// Whether node1's `/api/cluster` lists `n` nodes up.
fn cluster_formed(admin: &str, n: usize) -> bool {
    use std::io::{Read, Write};
    let Ok(a) = admin.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /api/cluster HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.matches("\"state\":\"up\"").count() >= n
}

/// One MQTT CONNECT → CONNACK round trip (client id `mqedge-up-probe`).
fn mqtt_probe(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(a) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let connect = mqedge_shared::peek::encode_connect(4, "mqedge-up-probe", None, 10);
    if s.write_all(&connect).is_err() {
        return false;
    }
    let mut ack = [0u8; 4];
    let ok = s.read_exact(&mut ack).is_ok() && ack[0] == 0x20 && ack[3] == 0;
    let _ = s.write_all(&[0xe0, 0x00]);
    ok
}

fn fail_code(msg: String) -> u8 {
    eprintln!("mqedge up: {msg}");
    2
}

fn spawn(exe: &Path, sub: &str, cfg: &Path, role: &str) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.arg(sub).arg("-c").arg(cfg);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // own process group: Ctrl-C reaches only us, and we stop the children in order
    cmd.process_group(0);
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
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                println!("{tag}{line}");
            }
        });
    }
    Ok(child)
}

fn print_banner(certs: &Path) {
    let c = |f: &str| -> PathBuf { certs.join(f) };
    println!();
    println!("mqedge up: running — Ctrl-C stops everything");
    println!("  LB     TLS 127.0.0.1:8883 (client certs optional)  plain 127.0.0.1:1883  admin http://127.0.0.1:9100/api/backends");
    println!(
        "  node1  127.0.0.1:11883 (PROXY v2 from 127.0.0.1)   admin http://127.0.0.1:19101/metrics"
    );
    println!("try:");
    println!(
        "  mosquitto_sub -h localhost -p 8883 --cafile {} --cert {} --key {} -t 'demo/#' -v",
        c("ca.pem").display(),
        c("client.pem").display(),
        c("client.key").display()
    );
    println!("  mosquitto_pub -h 127.0.0.1 -p 1883 -t demo/hello -m 'hello from plain MQTT'");
    println!();
}

/// Waits for Ctrl-C/SIGTERM; a child that exits is reported and the rest keep running.
fn wait(children: &mut [(&str, Child)]) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    let mut reported = vec![false; children.len()];
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    for (i, (role, c)) in children.iter_mut().enumerate() {
                        if let (Ok(Some(st)), false) = (c.try_wait(), reported[i]) {
                            reported[i] = true;
                            eprintln!("mqedge up: {role} exited ({st}); the others keep running");
                        }
                    }
                }
            }
        }
    });
    ExitCode::SUCCESS
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
                    eprintln!("mqedge up: {role} did not stop in time; killing it");
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
