//! Builders for integration tests: temp dirs, certificates, in-process servers ([`inproc`]),
//! the real `mqedge` binary, real Mosquitto, a PROXY-parsing mock broker, and raw MQTT clients
//! bound to chosen 127.0.0.x source addresses. Everything started here stops when its handle drops; every wait has a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub mod bad_input;
pub mod canary;
pub mod cluster_nodes;
mod inproc;
mod mqtt_steps;
mod scripts;
pub mod ws;
#[allow(unused_imports)]
pub use inproc::{InProc, InProcBroker, InProcLb};
#[allow(unused_imports)]
pub use scripts::{tail, ScriptRun};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mqedge-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Dev PKI written to `dir/certs`: ca.pem, server.pem/key, client certs per CN, plus a second
/// unrelated CA ("evil") with its own client cert.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, cns: &[&str]) -> Pki {
        let certs = dir.join("certs");
        let opts = mqedge_shared::certs::CertOptions {
            sans: vec![],
            client_cns: cns.iter().map(|s| s.to_string()).collect(),
            reuse_ca: false,
            replace_ca: false,
        };
        mqedge_shared::certs::generate(&certs, &opts).unwrap();
        let evil = dir.join("evil");
        mqedge_shared::certs::generate(
            &evil,
            &mqedge_shared::certs::CertOptions {
                sans: vec![],
                client_cns: vec!["intruder".into()],
                reuse_ca: false,
                replace_ca: false,
            },
        )
        .unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }
    pub fn file(&self, name: &str) -> String {
        self.dir.join("certs").join(name).display().to_string()
    }
    pub fn evil(&self, name: &str) -> String {
        self.dir.join("evil").join(name).display().to_string()
    }
    /// rustls client config trusting our CA, presenting `cn`'s cert (or none).
    pub fn client_config(&self, cn: Option<&str>) -> Arc<rustls::ClientConfig> {
        let ca = mqedge_shared::tls::load_certs(Path::new(&self.file("ca.pem"))).unwrap();
        let id = cn.map(|cn| {
            (
                mqedge_shared::tls::load_certs(Path::new(&self.file(&format!("{cn}.pem"))))
                    .unwrap(),
                mqedge_shared::tls::load_key(Path::new(&self.file(&format!("{cn}.key")))).unwrap(),
            )
        });
        mqedge_shared::tls::client_config(ca, id).unwrap()
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mqedge")
}

/// A child process whose stderr is collected; SIGTERM then SIGKILL on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub name: String,
    /// The threads copying stdout/stderr into `log`: once the child exited, its last lines
    /// are in `log` only when they are done.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let tag = name.to_string();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("MQEDGE_TEST_VERBOSE").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            }));
        }
        Proc {
            child,
            log,
            name: name.to_string(),
            readers,
        }
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address in the first log line with `needle` (its ` addr=` field), waiting for it.
    pub fn addr_in_log(&self, needle: &str) -> SocketAddr {
        let line = self.wait_log(needle, Duration::from_secs(10));
        line.split(" addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{}: no address in {line:?}", self.name))
    }

    /// `mqedge ROLE -c CONFIG` named `name` (with `RUST_LOG=rust_log` unless set), once it
    /// logged `ready`.
    pub fn start_role(name: &str, role: &str, config: &Path, rust_log: &str, ready: &str) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.arg(role).arg("-c").arg(config);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", rust_log);
        }
        let proc = Proc::spawn(name, cmd);
        proc.wait_log(ready, Duration::from_secs(20));
        proc
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for exit, then (at most 2 s more: a grandchild may hold the pipes open) for the
    /// log readers to take the last lines; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                let drained = Instant::now() + Duration::from_secs(2);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("TERM");
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A running `mqedge lb`; its addresses through [`LbHandle`].
pub struct Lb {
    pub proc: Proc,
    pub config: PathBuf,
}

impl Lb {
    pub fn start(config: &Path) -> Lb {
        Lb {
            proc: Proc::start_role("lb", "lb", config, "info,mqedge_lb=debug", "listening"),
            config: config.to_path_buf(),
        }
    }

    /// The address of the named listener, read from the `listening` log line.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.proc.addr_in_log(&format!("listener={listener} addr="))
    }

    /// The admin API address, from the `admin listening` log line.
    pub fn admin(&self) -> SocketAddr {
        self.proc.addr_in_log("admin listening")
    }
}

/// A free TCP port on 127.0.0.1 (bind 0, read, release). For peers that cannot take port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP on `addr`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            panic!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn which(bin: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{bin} is not installed: .ci/run installs it (apt)");
}

/// `mosquitto_pub -h HOST -p PORT ARGS…`, run to completion (killed after 10 s).
pub fn mosquitto_pub(host: &str, port: u16, args: &[&str]) -> ScriptRun {
    let mut cmd = Command::new(which("mosquitto_pub"));
    cmd.args(["-h", host, "-p", &port.to_string()]).args(args);
    ScriptRun::run(cmd, Duration::from_secs(10))
}

/// `mosquitto_sub -h HOST -p PORT ARGS…`, running, its output collected under `name`.
pub fn mosquitto_sub(name: &str, host: &str, port: u16, args: &[&str]) -> Proc {
    let mut cmd = Command::new(which("mosquitto_sub"));
    cmd.args(["-h", host, "-p", &port.to_string()]).args(args);
    Proc::spawn(name, cmd)
}

/// A real Mosquitto broker on 127.0.0.1.
pub struct Mosquitto {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }
    pub fn start_with(extra: &str) -> Mosquitto {
        Self::start_on_with(free_port(), extra)
    }

    /// Mosquitto on `port` with `extra` config lines.
    fn start_on_with(port: u16, extra: &str) -> Mosquitto {
        let dir = TempDir::new("mosq");
        let conf = dir.write(
            "mosquitto.conf",
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}\n"
            ),
        );
        let mut cmd = Command::new(which("mosquitto"));
        cmd.arg("-c").arg(&conf);
        let proc = Proc::spawn("mosquitto", cmd);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_port(addr, Duration::from_secs(10));
        Mosquitto {
            proc,
            addr,
            _dir: dir,
        }
    }
}

/// A raw TCP connection from a chosen source IP (127.0.0.x).
pub async fn tcp_from(src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(dst).await
}

/// A TLS connection from a chosen source IP.
pub async fn tls_from(
    src: Option<IpAddr>,
    dst: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(src, dst).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Sends a CONNECT and reads a CONNACK; returns the CONNACK return code.
pub async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    client_id: &str,
) -> std::io::Result<u8> {
    let pkt = mqedge_protocol::peek::encode_connect(4, client_id, None, 30);
    s.write_all(&pkt).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNACK"))??;
    if ack[0] != 0x20 {
        return Err(std::io::Error::other(format!("not a CONNACK: {ack:?}")));
    }
    Ok(ack[3])
}

/// What the mock broker saw on one connection.
#[derive(Debug, Clone)]
pub struct Seen {
    pub backend: String,
    pub proxy: Option<mqedge_shared::proxy::ProxyInfo>,
    /// The raw header bytes (to compare layouts).
    pub proxy_raw: Vec<u8>,
    pub client_id: String,
    pub peer: SocketAddr,
}

/// A mock MQTT broker: optionally expects a PROXY header (parsed with `ppp` via mqedge-shared),
/// reads the CONNECT, answers CONNACK, then echoes nothing and keeps the connection open until the
/// client closes. Records what it saw.
pub struct MockBroker {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl MockBroker {
    pub async fn start(name: &str, expect_proxy: bool) -> MockBroker {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), expect_proxy).await
    }
    pub async fn start_on(name: &str, bind: SocketAddr, expect_proxy: bool) -> MockBroker {
        let l = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let (s2, n2) = (seen.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let (mut c, peer) = tokio::select! {
                    _ = stop_rx.changed() => break,
                    a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (seen, name) = (s2.clone(), n2.clone());
                let mut stop_c = stop_rx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut proxy = None;
                    let mut proxy_raw = Vec::new();
                    let mut off = 0;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if expect_proxy && proxy.is_none() {
                            match mqedge_shared::proxy::parse(&buf) {
                                Ok(Some((info, len))) => {
                                    proxy_raw = buf[..len].to_vec();
                                    proxy = Some(info);
                                    off = len;
                                    // a LOCAL header (health check) with nothing after it
                                }
                                Ok(None) => continue,
                                Err(_) => return,
                            }
                        }
                        match mqedge_protocol::peek::peek_connect(&buf[off..], 1 << 20) {
                            Ok(mqedge_protocol::peek::Peek::Complete(cn)) => {
                                seen.lock().unwrap().push(Seen {
                                    backend: name.clone(),
                                    proxy: proxy.clone(),
                                    proxy_raw: proxy_raw.clone(),
                                    client_id: cn.client_id.to_string(),
                                    peer,
                                });
                                if c.write_all(&[0x20, 2, 0, 0]).await.is_err() {
                                    return;
                                }
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => return,
                        }
                    }
                    // hold the connection: answer PINGREQ, until the client closes or we stop
                    let mut chunk = [0u8; 1024];
                    loop {
                        tokio::select! {
                            _ = stop_c.changed() => return,
                            r = c.read(&mut chunk) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if chunk[..n].windows(2).any(|w| w == [0xc0, 0x00]) {
                                        let _ = c.write_all(&[0xd0, 0x00]).await;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        MockBroker {
            name: name.to_string(),
            addr,
            seen,
            stop,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clients(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.client_id).collect()
    }

    /// What this broker recorded for `client_id`, waiting for it with a deadline.
    pub async fn seen_by(&self, client_id: &str) -> Seen {
        let found = eventually(Duration::from_secs(5), || {
            self.clients().iter().any(|c| c == client_id)
        })
        .await;
        assert!(
            found,
            "{} never saw {client_id:?}; it saw {:?}",
            self.name,
            self.clients()
        );
        self.seen()
            .into_iter()
            .find(|s| s.client_id == client_id)
            .unwrap()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Polls `f` (blocking the thread) until it returns true or the deadline passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Polls `f` until it returns true or the deadline passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An LB config with one plain listener and one TLS listener (client_auth as given), and the
/// given backends `(name, addr, proxy_mode)`.
pub fn lb_config(
    pki: &Pki,
    client_auth: &str,
    strategy: &str,
    backends: &[(&str, SocketAddr, &str)],
    extra_lb: &str,
) -> String {
    let mut s = format!(
        r#"[lb]
name = "test-edge"
connect_timeout = "2s"
max_connect_packet = "4KiB"
drain_timeout = "2s"
{extra_lb}

[[listener]]
name = "mqtts"
bind = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "{client_auth}"
alpn = ["mqtt"]

[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"

[balance]
strategy = "{strategy}"
fallback = "source_ip"
retries = 2

[health]
kind = "tcp"
interval = "500ms"
timeout = "500ms"
fall = 2
rise = 1
"#,
        cert = pki.file("server.pem"),
        key = pki.file("server.key"),
        ca = pki.file("ca.pem"),
    );
    for (name, addr, pp) in backends {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{addr}\"\nproxy_protocol = \"{pp}\"\n"
        ));
    }
    s
}

/// An LB config for control-plane tests: `[lb]` with an admin API on port 0 and `lb_lines`, a
/// plain listener "mqtt" and a TLS listener "mqtts" (no client certificates), `[health]` from
/// `health_lines`, and backends `(name, addr)` without PROXY headers.
pub fn admin_lb_config(
    pki: &Pki,
    lb_lines: &str,
    health_lines: &str,
    backends: &[(&str, SocketAddr)],
) -> String {
    let mut s = format!(
        r#"[lb]
admin = "127.0.0.1:0"
{lb_lines}

[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"

[[listener]]
name = "mqtts"
bind = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"

[health]
{health_lines}
"#,
        cert = pki.file("server.pem"),
        key = pki.file("server.key"),
    );
    for (n, a) in backends {
        s.push_str(&format!("\n[[backend]]\nname = \"{n}\"\naddr = \"{a}\"\n"));
    }
    s
}

/// `(name, state)` of every backend, from the admin API's `/api/backends`, in config order.
pub fn backend_states(admin: SocketAddr) -> Vec<(String, String)> {
    get_json(admin, "/api/backends")
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The state of backend `name` ("absent" when the LB does not have it).
pub fn backend_state(admin: SocketAddr, name: &str) -> String {
    backend_states(admin)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "absent".into())
}

/// Waits (blocking the thread) until backend `name` is in `state`; how long that took.
pub fn wait_backend_state(
    admin: SocketAddr,
    name: &str,
    state: &str,
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        if backend_state(admin, name) == state {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{name} not {state} within {within:?}: {:?}",
            backend_states(admin)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A field of backend `name` in `/api/backends`.
pub fn backend_field(admin: SocketAddr, name: &str, field: &str) -> serde_json::Value {
    get_json(admin, "/api/backends")
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name}"))[field]
        .clone()
}

/// A minimal HTTP/1.1 request (Connection: close); returns (status, body).
pub fn http(method: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    // what `curl -H 'X-Mqedge-Admin: 1'` sends: state-changing admin requests need the header
    let host = addr.to_string();
    http_request(
        method,
        addr,
        path,
        &[("Host", host.as_str()), ("X-Mqedge-Admin", "1")],
    )
}

/// One HTTP/1.1 request with exactly `headers` (plus `Connection: close` and an empty body);
/// its status and (de-chunked) body.
pub fn http_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = http("GET", addr, path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// Parses Prometheus text exposition strictly enough to catch a broken output: every sample
/// line is `name{labels} value`, every name was announced by `# TYPE`. Returns samples.
pub fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "bad labels in {line:?}");
                (n.to_string(), l.trim_end_matches('}').to_string())
            }
            None => (series.to_string(), String::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let base_known = typed.iter().any(|t: &String| name.starts_with(t.as_str()));
        assert!(base_known, "sample {name} without # TYPE");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((name, labels, v));
    }
    out
}

/// Sum of samples of `name` whose labels contain every `needle`.
pub fn metric(samples: &[(String, String, f64)], name: &str, needles: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && needles.iter().all(|x| l.contains(x)))
        .map(|(_, _, v)| v)
        .sum()
}

impl Mosquitto {
    /// Starts Mosquitto on a given port (to restart a killed backend at the same address).
    pub fn start_on(port: u16) -> Mosquitto {
        Self::start_on_with(port, "")
    }
}

/// The backend name a client id hashes to over `names` (equal weights), as the LB computes it.
pub fn hashed_backend(client_id: &str, names: &[&str]) -> String {
    let c: Vec<mqedge_lb::balance::Candidate<'_>> = names
        .iter()
        .map(|n| mqedge_lb::balance::Candidate {
            name: n,
            weight: 1,
            active: 0,
        })
        .collect();
    names[mqedge_lb::balance::hash_order(client_id.as_bytes(), &c)[0]].to_string()
}

/// A client id that hashes to `want` over `names`.
pub fn id_for(want: &str, names: &[&str], prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| hashed_backend(id, names) == want)
        .unwrap()
}

/// What a test reads from an LB, whether it runs in-process or as the binary.
pub trait LbHandle {
    /// The address of the named `[[listener]]`.
    fn addr(&self, listener: &str) -> SocketAddr;
    /// The admin API (`[lb] admin`).
    fn admin(&self) -> SocketAddr;
    /// The log so far, for failure messages.
    fn logs(&self) -> String;
}

/// The addresses come from the `listening` log lines.
impl LbHandle for Lb {
    fn addr(&self, listener: &str) -> SocketAddr {
        self.proc.addr_in_log(&format!("listener={listener} addr="))
    }
    fn admin(&self) -> SocketAddr {
        self.proc.addr_in_log("admin listening")
    }
    fn logs(&self) -> String {
        self.proc.logs()
    }
}

impl LbHandle for InProcLb {
    fn addr(&self, listener: &str) -> SocketAddr {
        InProcLb::addr(self, listener)
    }
    fn admin(&self) -> SocketAddr {
        InProc::admin(self)
    }
    fn logs(&self) -> String {
        InProc::logs(self)
    }
}

/// The LB's Prometheus samples, from its admin API.
pub fn lb_metrics(lb: &impl LbHandle) -> Vec<(String, String, f64)> {
    parse_prometheus(&http("GET", lb.admin(), "/metrics").1)
}

/// A running `mqedge broker`.
pub struct BrokerProc {
    pub proc: Proc,
    pub config: PathBuf,
}

impl BrokerProc {
    pub fn start(config: &Path) -> BrokerProc {
        BrokerProc {
            proc: Proc::start_role("broker", "broker", config, "info", " listener="),
            config: config.to_path_buf(),
        }
    }
    /// The address of the first MQTT listener.
    pub fn addr(&self) -> SocketAddr {
        self.proc.addr_in_log(" listener=")
    }
    pub fn addr_of(&self, listener: &str) -> SocketAddr {
        self.proc.addr_in_log(&format!("listener={listener} addr="))
    }
    pub fn admin(&self) -> SocketAddr {
        self.proc.addr_in_log("admin listening")
    }
    pub fn kill9(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// An in-process broker that takes usernames as given (anonymous allowed, no password file,
/// `trust_claimed_usernames`) under the mosquitto-format ACL `acl` (written to `dir/acl`).
pub fn broker_with_acl(dir: &TempDir, acl: &str) -> InProcBroker {
    dir.write("acl", acl);
    let cfg = dir.write(
        "b.toml",
        &broker_config(
            "127.0.0.1:0",
            "",
            "[auth]\nallow_anonymous = true\nacl_file = \"acl\"\ntrust_claimed_usernames = true\n",
        ),
    );
    InProcBroker::start(&cfg)
}

/// A broker config: `[node]` (name node1, admin on port 0, plus `node_extra` lines), one plain
/// listener named "mqtt" on `bind`, anonymous allowed unless `extra` has its own `[auth]`, then
/// `extra` TOML.
pub fn broker_config(bind: &str, node_extra: &str, extra: &str) -> String {
    let auth = if extra.contains("[auth]") {
        ""
    } else {
        "[auth]\nallow_anonymous = true\n"
    };
    format!(
        "[node]\nname = \"node1\"\nadmin = \"127.0.0.1:0\"\n{node_extra}\n\n[[listener]]\nname = \"mqtt\"\nbind = \"{bind}\"\n\n{auth}{extra}\n"
    )
}

/// A TCP connection to `addr` (from any local address).
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    tcp_from(None, addr).await.unwrap()
}

/// A PUBLISH packet with default properties.
pub fn publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    pid: Option<u16>,
    retain: bool,
) -> mqedge_protocol::Publish {
    mqedge_protocol::Publish {
        dup: false,
        qos: mqedge_protocol::QoS::from_u8(qos).unwrap(),
        retain,
        topic: topic.to_string(),
        packet_id: pid,
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    }
}

/// A success PUBACK (also the body of PUBREC, PUBREL and PUBCOMP) for `packet_id`.
pub fn ack(packet_id: u16) -> mqedge_protocol::PubAck {
    mqedge_protocol::PubAck {
        packet_id,
        code: 0,
        properties: Default::default(),
    }
}

impl Raw<TcpStream> {
    /// A client (clean start, keep-alive 30 s) connected to `addr` whose CONNACK said success.
    pub async fn client(addr: SocketAddr, v: mqedge_protocol::Version, id: &str) -> Self {
        let mut c = Raw::new(tcp(addr).await, v);
        let ack = c.connect(id, true, 30).await;
        assert_eq!(ack.code, 0, "{id}: CONNACK {ack:?}");
        c
    }

    /// A v5 client with CONNECT properties (and optionally a will) whose CONNACK said success;
    /// the CONNACK too.
    pub async fn client5(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        will: Option<mqedge_protocol::Will>,
        props: mqedge_protocol::ConnectProperties,
    ) -> (Self, mqedge_protocol::ConnAck) {
        let mut c = Raw::new(tcp(addr).await, mqedge_protocol::Version::V5);
        let ack = c.connect_with(id, clean, 30, will, None, props).await;
        assert_eq!(ack.code, 0, "{id}: CONNACK {ack:?}");
        (c, ack)
    }
}

/// A raw MQTT client over any stream, speaking through the broker's own codec, for tests that
/// need to see exact packets (reason codes, flags).
pub struct Raw<S> {
    pub s: S,
    pub v: mqedge_protocol::Version,
    buf: bytes::BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(s: S, v: mqedge_protocol::Version) -> Self {
        Raw {
            s,
            v,
            buf: bytes::BytesMut::new(),
        }
    }
    pub async fn send(&mut self, p: mqedge_protocol::Packet) {
        let mut out = bytes::BytesMut::new();
        mqedge_protocol::encode(&p, self.v, &mut out);
        self.s.write_all(&out).await.unwrap();
    }
    /// Next packet, or None when the server closed the connection (or nothing came in `t`).
    pub async fn recv(&mut self, t: Duration) -> Option<mqedge_protocol::Packet> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Ok(Some(p)) = mqedge_protocol::decode(&mut self.buf, Some(self.v), 1 << 24) {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    /// Whether the server closed the connection within `t` (packets before the close are skipped).
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
    pub async fn connect(
        &mut self,
        id: &str,
        clean: bool,
        keep_alive: u16,
    ) -> mqedge_protocol::ConnAck {
        self.connect_with(id, clean, keep_alive, None, None, Default::default())
            .await
    }
    pub async fn connect_with(
        &mut self,
        id: &str,
        clean: bool,
        keep_alive: u16,
        will: Option<mqedge_protocol::Will>,
        user: Option<(&str, &str)>,
        properties: mqedge_protocol::ConnectProperties,
    ) -> mqedge_protocol::ConnAck {
        use mqedge_protocol::*;
        self.send(Packet::Connect(Box::new(Connect {
            version: self.v,
            clean_start: clean,
            keep_alive,
            client_id: id.to_string(),
            will,
            username: user.map(|u| u.0.to_string()),
            password: user.map(|u| bytes::Bytes::copy_from_slice(u.1.as_bytes())),
            properties,
        })))
        .await;
        match self.recv(Duration::from_secs(5)).await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    pub async fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        use mqedge_protocol::*;
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid,
            properties: Default::default(),
            filters: filters
                .iter()
                .map(|(f, q)| SubscribeFilter {
                    filter: f.to_string(),
                    qos: QoS::from_u8(*q).unwrap(),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                })
                .collect(),
        }))
        .await;
        loop {
            match self.recv(Duration::from_secs(5)).await {
                Some(Packet::SubAck(a)) => {
                    assert_eq!(a.packet_id, pid);
                    return a.codes;
                }
                Some(_) => continue,
                None => panic!("no SUBACK"),
            }
        }
    }
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        pid: Option<u16>,
        retain: bool,
    ) {
        use mqedge_protocol::*;
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::from_u8(qos).unwrap(),
            retain,
            topic: topic.to_string(),
            packet_id: pid,
            properties: Default::default(),
            payload: bytes::Bytes::copy_from_slice(payload),
        }))
        .await;
    }
    /// Acknowledges `p` as a client must: PUBACK at QoS 1, PUBREC at QoS 2.
    pub async fn ack_publish(&mut self, p: &mqedge_protocol::Publish) {
        use mqedge_protocol::*;
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(ack(id))).await,
            (QoS::ExactlyOnce, Some(id)) => self.send(Packet::PubRec(ack(id))).await,
            _ => {}
        }
    }

    /// Plays the receiving side of the QoS flows for one incoming packet: a PUBLISH is
    /// acknowledged and returned, a PUBREL gets its PUBCOMP, anything else is skipped.
    pub async fn answer(&mut self, p: mqedge_protocol::Packet) -> Option<mqedge_protocol::Publish> {
        use mqedge_protocol::*;
        match p {
            Packet::Publish(p) => {
                self.ack_publish(&p).await;
                Some(p)
            }
            Packet::PubRel(r) => {
                self.send(Packet::PubComp(ack(r.packet_id))).await;
                None
            }
            _ => None,
        }
    }

    /// Collects PUBLISH packets until `t` passes with nothing new; acks QoS 1/2 as a client must.
    pub async fn collect(&mut self, t: Duration) -> Vec<mqedge_protocol::Publish> {
        let mut got = Vec::new();
        while let Some(p) = self.recv(t).await {
            got.extend(self.answer(p).await);
        }
        got
    }
}
