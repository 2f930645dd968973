//! `mqedge up` as a new user runs it: dev certs generated, the LB and three clustered nodes
//! started, and the two mosquitto lines it prints, pasted as they are, deliver a message across
//! the cluster (their client ids hash to different nodes). Ctrl-C (SIGINT), SIGTERM and SIGHUP (the
//! terminal closing) stop everything; SIGKILL to `up` takes the children along (parent-death
//! signal); `--base-port` moves every port; a taken port is named, with its owner.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Ports `up` takes from `--base-port` on; the cluster three are also bound as UDP.
const PORT_COUNT: u16 = 14;
/// Offsets (from the base) of the cluster ports, which are TCP and UDP.
const UDP_OFFSETS: [u16; 3] = [9, 10, 11];
/// The defaults, in `--base-port` order.
const DEFAULT_PORTS: [u16; 14] = [
    1883, 8883, 9100, 11883, 11884, 11885, 19101, 19102, 19103, 14371, 14372, 14373, 8083, 8084,
];

/// Splits a printed shell line into arguments: whitespace outside single quotes separates.
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in line.trim().chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The value after `flag` in `args`.
fn arg_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

/// Runs the `mosquitto_sub` and `mosquitto_pub` lines `up` printed, as printed (plus `-C 1 -W
/// 15` on the subscriber so it ends), publishing until the subscriber has the message;
/// `subscribed(sub_id, node)` runs while the subscriber is connected, before the first publish.
/// Checks that the ids hash to different nodes, and that each client reached its node.
fn paste_the_printed_lines(up: &Proc, subscribed: impl FnOnce(&str, &str)) {
    let sub_line = up.wait_log("  mosquitto_sub ", Duration::from_secs(1));
    let pub_line = up.wait_log("  mosquitto_pub ", Duration::from_secs(1));
    let sub_args = shell_words(&sub_line);
    let pub_args = shell_words(&pub_line);
    let (sub_id, pub_id) = (
        arg_after(&sub_args, "-i").to_string(),
        arg_after(&pub_args, "-i").to_string(),
    );
    let names = ["node1", "node2", "node3"];
    assert_ne!(
        hashed_backend(&sub_id, &names),
        hashed_backend(&pub_id, &names),
        "the printed ids {sub_id} and {pub_id} land on one node"
    );
    let mut sub = Command::new(which(&sub_args[0]));
    sub.args(&sub_args[1..]).args(["-C", "1", "-W", "15"]);
    let mut sub = Proc::spawn("sub", sub);
    subscribed(&sub_id, &hashed_backend(&sub_id, &names));
    let deadline = Instant::now() + Duration::from_secs(15);
    while sub.count_log("demo/hello") == 0 && Instant::now() < deadline {
        let _ = Command::new(which(&pub_args[0]))
            .args(&pub_args[1..])
            .output();
        std::thread::sleep(Duration::from_millis(300));
    }
    sub.wait_exit(Duration::from_secs(2));
    assert!(
        sub.logs().contains("demo/hello hello from plain MQTT"),
        "sub: {}\nup: {}",
        sub.logs(),
        up.logs()
    );
    // the two really were on different nodes
    for (id, name) in [(&sub_id, "sub"), (&pub_id, "pub")] {
        let node = hashed_backend(id, &names);
        assert!(
            up.logs().lines().any(
                |l| l.contains(&format!("[{node}]")) && l.contains(&format!("client_id={id} "))
            ),
            "{name} {id} never reached {node}: {}",
            up.logs()
        );
    }
}

/// The pids whose parent is `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(p);
        }
    }
    out
}

/// Whether `pid` is a live process (a zombie waiting for its new parent to reap it is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !state.starts_with('Z') && !state.starts_with('X')
        }
    }
}

/// Ports of the layout (defaults, or `base..base+14`) that cannot be bound right now.
fn bound_ports(base: Option<u16>) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..PORT_COUNT {
        let port = base.map_or(DEFAULT_PORTS[i as usize], |b| b + i);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            out.push(format!("{port}/tcp"));
        }
        if UDP_OFFSETS.contains(&i) && std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            out.push(format!("{port}/udp"));
        }
    }
    out
}

/// A base port whose 14 ports (TCP, and UDP for the cluster three) are free now, below the
/// ephemeral range so an outgoing connection does not take one meanwhile. `salt` spreads the
/// tests of this binary, which run at the same time, over different blocks.
fn free_base(salt: u16) -> u16 {
    // 400 blocks of 24 ports in 20000..29600; where the scan starts depends on the process and
    // the test
    let first = std::process::id().wrapping_mul(31) % 400 + u32::from(salt) * 97;
    (0..400u32)
        .map(|i| (20_000 + (first + i) % 400 * 24) as u16)
        .find(|&b| bound_ports(Some(b)).is_empty())
        .expect("no block of 14 free ports in 20000..29600")
}

/// `mqedge up --dir WORK --base-port B` until it says it is running, with a fresh free block
/// if the chosen one got taken between the check and the start (up to three tries).
fn start_up_on_free_ports(work: &std::path::Path, salt: u16) -> (Proc, u16) {
    let mut last = String::new();
    for attempt in 0..3 {
        let base = free_base(salt + attempt * 7);
        let mut cmd = Command::new(bin());
        cmd.arg("up")
            .arg("--dir")
            .arg(work)
            .arg("--base-port")
            .arg(base.to_string());
        let mut up = Proc::spawn("up", cmd);
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if up.count_log("mqedge up: running") > 0 {
                return (up, base);
            }
            if let Ok(Some(st)) = up.child.try_wait() {
                last = format!("exit {st}: {}", up.logs());
                assert!(
                    up.logs().contains("is already in use"),
                    "up failed on base {base}: {last}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "up did not come up on base {base}: {}",
                up.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("no free block of ports after three tries; last: {last}")
}

/// Waits until every pid is gone and every port of the layout is free again.
fn assert_all_gone(pids: &[u32], base: Option<u16>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        let bound = bound_ports(base);
        if left.is_empty() && bound.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: after {within:?} children still running: {left:?}, ports still bound: {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_runs_the_local_topology_and_ctrl_c_stops_it() {
    let dir = TempDir::new("up");
    let work = dir.path().join("work");
    // on a free block of ports, not the defaults (which ports.rs's unit tests hold)
    let (mut up, base) = start_up_on_free_ports(&work, 0);
    let certs = work.join("certs");
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(certs.join(f).exists(), "missing {f}");
    }
    // the printed lines, as a user would paste them
    let sub_line = up.wait_log(
        &format!("mosquitto_sub -h localhost -p {} ", base + 1),
        Duration::from_secs(1),
    );
    assert!(
        sub_line.contains(&certs.join("client.pem").display().to_string()),
        "{sub_line}"
    );
    // where hot reload reads from: the copy, not configs/local/
    up.wait_log(
        &format!(
            "hot-reloaded when you edit it: {}",
            work.join("configs/lb.toml").display()
        ),
        Duration::from_secs(1),
    );
    let children = children_of(up.child.id());
    assert_eq!(children.len(), 4, "{children:?}");
    // the LB (admin on port 2 of the block) reads every node's placement feed
    let lb_admin = format!("127.0.0.1:{}", base + 2).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = get_json(lb_admin, "/api/placement");
        let feeds = st["feeds"].as_array().cloned().unwrap_or_default();
        if feeds.len() == 3 && feeds.iter().all(|f| f["ok"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "placement feeds: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }

    paste_the_printed_lines(&up, |sub_id, node| {
        // the TLS subscriber's node sees it through the LB: PROXY v2, the certificate CN as
        // username
        // node N's admin API is port 5 + N of the block
        let admin_port = base + 5 + node[4..].parse::<u16>().unwrap();
        let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while http("GET", admin, &format!("/api/clients/{sub_id}")).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "subscriber never reached {node}: {}",
                up.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let v = get_json(admin, &format!("/api/clients/{sub_id}"));
        assert_eq!(v["username"], "dev-client", "{v}");
        assert_eq!(v["node"], node);
        let cluster = get_json(admin, "/api/cluster");
        let up_nodes = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "up")
            .count();
        assert_eq!(up_nodes, 3, "{cluster}");
    });

    up.signal("INT");
    let st = up
        .wait_exit(Duration::from_secs(20))
        .expect("mqedge up did not stop on Ctrl-C");
    assert!(st.success(), "{st:?}");
    assert!(up.logs().contains("mqedge up: stopped"));
    // no child left behind: every port is free again
    assert_all_gone(
        &children,
        Some(base),
        Duration::from_secs(5),
        "after Ctrl-C",
    );
    let ps = Command::new("pgrep")
        .arg("-f")
        .arg(work.join("configs").display().to_string())
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "children left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn base_port_moves_every_port_and_sighup_stops_everything() {
    let dir = TempDir::new("up-hup");
    let work = dir.path().join("work");
    let (mut up, base) = start_up_on_free_ports(&work, 1);
    // every one of the 14 ports (and the 3 UDP cluster ports) is held by the topology now
    let bound = bound_ports(Some(base));
    assert_eq!(bound.len(), 17, "base {base}: only {bound:?} bound");
    for f in ["lb.toml", "node1.toml", "node2.toml", "node3.toml"] {
        let text = std::fs::read_to_string(work.join("configs").join(f)).unwrap();
        for p in DEFAULT_PORTS {
            assert!(
                !text.contains(&format!("127.0.0.1:{p}\"")),
                "{f} still has port {p}:\n{text}"
            );
        }
    }
    assert!(
        up.logs()
            .contains(&format!("mosquitto_sub -h localhost -p {} ", base + 1)),
        "{}",
        up.logs()
    );
    let children = children_of(up.child.id());
    assert_eq!(children.len(), 4, "{children:?}");
    // the pasted lines work on the moved ports too
    paste_the_printed_lines(&up, |_, _| {});
    // and MQTT over WebSocket reaches a node through the LB's ws:// listener (path /mqtt)
    assert!(
        up.logs()
            .contains(&format!("ws://127.0.0.1:{}/mqtt", base + 12)),
        "{}",
        up.logs()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(async {
        let mut s = tcp(std::net::SocketAddr::from(([127, 0, 0, 1], base + 12))).await;
        let ack = common::ws::ws_mqtt_connect(&mut s, "/mqtt", "", "up-ws-client");
        tokio::time::timeout(Duration::from_secs(5), ack).await
    });
    assert_eq!(code.ok().and_then(Result::ok), Some(0), "{}", up.logs());

    up.signal("HUP");
    let st = up
        .wait_exit(Duration::from_secs(20))
        .expect("mqedge up did not stop on SIGHUP");
    assert!(st.success(), "{st:?}: {}", up.logs());
    assert!(up.logs().contains("SIGHUP: stopping"), "{}", up.logs());
    assert!(up.logs().contains("mqedge up: stopped"), "{}", up.logs());
    assert_all_gone(
        &children,
        Some(base),
        Duration::from_secs(5),
        "after SIGHUP",
    );
}

/// What closing a terminal does to `up`: its stdout and stderr go away (writes fail with
/// EPIPE or EIO from then on) and it gets SIGHUP. It must still stop every child, and exit 0.
#[test]
fn closing_the_terminal_stops_everything() {
    use std::io::BufRead;
    let dir = TempDir::new("up-tty");
    let work = dir.path().join("work");
    let mut last = String::new();
    for attempt in 0..3 {
        let base = free_base(5 + attempt * 7);
        // one pipe for both streams, like a terminal
        let mut up = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" up --dir "$1" --base-port "$2" 2>&1"#)
            .arg(bin())
            .arg(&work)
            .arg(base.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = up.stdout.take().unwrap();
        // reads until the banner, then drops the pipe: the terminal is gone
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let running = line.contains("mqedge up: running");
                seen.push(line);
                if running {
                    return (true, seen.join("\n"));
                }
            }
            (false, seen.join("\n"))
        });
        let deadline = Instant::now() + Duration::from_secs(45);
        while !reader.is_finished() {
            if Instant::now() > deadline {
                let _ = up.kill();
                panic!("up did not come up on base {base}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (running, log) = reader.join().unwrap();
        if !running {
            let _ = up.wait();
            assert!(log.contains("is already in use"), "up failed: {log}");
            last = log;
            continue;
        }
        let children = children_of(up.id());
        assert_eq!(children.len(), 4, "{children:?}");
        // children keep logging (health checks, cluster): those writes now fail
        std::thread::sleep(Duration::from_millis(1500));
        let _ = Command::new("kill")
            .args(["-HUP", &up.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = up.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = up.kill();
                panic!("up did not stop on SIGHUP with its terminal gone");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(st.success(), "{st:?} (a panic on a failed write exits 101)");
        assert_all_gone(
            &children,
            Some(base),
            Duration::from_secs(5),
            "after the terminal closed",
        );
        return;
    }
    panic!("no free block of ports after three tries; last: {last}");
}

#[test]
fn sigterm_stops_everything() {
    let dir = TempDir::new("up-term");
    let (mut up, base) = start_up_on_free_ports(&dir.path().join("work"), 2);
    let children = children_of(up.child.id());
    assert_eq!(children.len(), 4, "{children:?}");
    up.signal("TERM");
    let st = up
        .wait_exit(Duration::from_secs(20))
        .expect("mqedge up did not stop on SIGTERM");
    assert!(st.success(), "{st:?}: {}", up.logs());
    assert!(up.logs().contains("SIGTERM: stopping"), "{}", up.logs());
    assert_all_gone(
        &children,
        Some(base),
        Duration::from_secs(5),
        "after SIGTERM",
    );
}

#[test]
fn sigkill_to_up_takes_its_children_along() {
    let dir = TempDir::new("up-kill");
    let (mut up, base) = start_up_on_free_ports(&dir.path().join("work"), 3);
    let children = children_of(up.child.id());
    assert_eq!(children.len(), 4, "{children:?}");
    up.signal("KILL");
    up.wait_exit(Duration::from_secs(5))
        .expect("SIGKILL did not end up");
    // no cleanup code of up ran: only the kernel's parent-death signal can stop them
    assert_all_gone(
        &children,
        Some(base),
        Duration::from_secs(15),
        "after SIGKILL to up",
    );
}

#[test]
fn a_taken_port_is_named_with_its_owner_and_nothing_starts() {
    let dir = TempDir::new("up-taken");
    let work = dir.path().join("work");
    let mut last = String::new();
    for attempt in 0..3 {
        let base = free_base(4 + attempt * 7);
        // the LB's plain MQTT port, taken by this test process
        let Ok(holder) = std::net::TcpListener::bind(("127.0.0.1", base)) else {
            continue;
        };
        let mut cmd = Command::new(bin());
        cmd.arg("up")
            .arg("--dir")
            .arg(&work)
            .arg("--base-port")
            .arg(base.to_string());
        let mut up = Proc::spawn("up", cmd);
        let st = up
            .wait_exit(Duration::from_secs(10))
            .expect("up did not exit with its port taken");
        let logs = up.logs();
        if !logs.contains(&format!("port {base} ")) {
            // another port of the block got taken meanwhile: try another block
            last = logs;
            continue;
        }
        assert_eq!(st.code(), Some(2), "{logs}");
        let want = format!(
            "port {base} (MQTT listener of the LB) is already in use by pid {}",
            std::process::id()
        );
        assert!(logs.contains(&want), "wanted {want:?} in:\n{logs}");
        assert!(logs.contains("--base-port N"), "{logs}");
        assert!(!logs.contains("running"), "{logs}");
        assert!(children_of(up.child.id()).is_empty());
        drop(holder);
        assert!(
            bound_ports(Some(base)).is_empty(),
            "something started anyway"
        );
        return;
    }
    panic!("no usable block of ports after three tries; last: {last}");
}

#[test]
fn readme_quick_start_lines_cross_nodes_like_the_printed_ones() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## The two commands")
        .expect("README has no quick start");
    let quick = &readme[start..start + readme[start..].find("\n## Other").unwrap()];
    // join the `\` continuation lines, then take the ids of the pasted commands
    let joined = quick.replace("\\\n", " ");
    let id = |cmd: &str| -> String {
        let line = joined
            .lines()
            .find(|l| l.trim_start().starts_with(cmd))
            .unwrap_or_else(|| panic!("no {cmd} line in the quick start:\n{quick}"));
        arg_after(&shell_words(line), "-i").to_string()
    };
    let (sub, publ) = (id("mosquitto_sub"), id("mosquitto_pub"));
    let names = ["node1", "node2", "node3"];
    assert_ne!(
        hashed_backend(&sub, &names),
        hashed_backend(&publ, &names),
        "README's {sub} and {publ} land on one node"
    );
    // and the prose says where they land
    for id in [&sub, &publ] {
        let said = format!("`{id}` to {}", hashed_backend(id, &names));
        assert!(quick.contains(&said), "README should say {said:?}");
    }
}
