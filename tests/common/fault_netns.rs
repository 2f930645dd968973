//! A network namespace of the test's own, for faults made with nftables: the test re-executes
//! its own binary, for just itself, under `unshare -n` with `lo` up, so its nftables rules live
//! and die with that namespace and never touch the host's. Inside, [`ChannelCut`] drops the node
//! channel (TCP) between two nodes while their gossip (UDP on the same port) goes on.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the re-executed test: it is already inside its namespace.
const INSIDE: &str = "MQEDGE_FAULTS_IN_NETNS";

/// Whether this process runs inside the namespace [`rerun_in_netns`] made.
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Runs test `name` of this binary again, alone, in a new network namespace with `lo` up, and
/// passes its output on. Ok(true) when it passed; Ok(false) when it failed or ran over `within`
/// (its output says why); Err when `unshare` could not be started. Check [`netns_possible`]
/// first.
pub fn rerun_in_netns(name: &str, within: Duration) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>, to_err: bool| {
        std::thread::spawn(move || {
            use std::io::BufRead;
            let Some(r) = r else { return };
            for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                // through print!/eprint! so the harness captures it as this test's output
                if to_err {
                    eprintln!("[netns] {l}");
                } else {
                    println!("[netns] {l}");
                }
            }
        })
    };
    let t_out = pipe(out.map(|o| Box::new(o) as Box<_>), false);
    let t_err = pipe(err.map(|e| Box::new(e) as Box<_>), true);
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = (t_out.join(), t_err.join());
    match status {
        Some(s) => Ok(s.success()),
        None => {
            eprintln!("the namespaced run took over {within:?}: killed");
            Ok(false)
        }
    }
}

/// Whether this process may make a network namespace (checked by making one).
pub fn netns_possible() -> Result<(), String> {
    let out = Command::new("unshare")
        .args(["-n", "--", "ip", "link", "set", "lo", "up"])
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Drops TCP between two nodes' cluster addresses (both directions, both dialers), in an
/// nftables table of its own, removed on drop. Only inside a namespace of the test's own.
pub struct ChannelCut {
    table: String,
}

impl ChannelCut {
    /// Cuts the node channel between cluster addresses `a` and `b` ("ip:port").
    pub fn between(a: &str, b: &str) -> Result<ChannelCut, String> {
        assert!(
            inside(),
            "nftables rules only inside the test's own namespace"
        );
        let split = |s: &str| {
            s.rsplit_once(':')
                .map(|(ip, port)| (ip.to_string(), port.to_string()))
                .ok_or_else(|| format!("not ip:port: {s}"))
        };
        let ((ip_a, port_a), (ip_b, port_b)) = (split(a)?, split(b)?);
        let table = "mqedge_fault_cut".to_string();
        let mut rules = String::new();
        for (from, to) in [(&ip_a, &ip_b), (&ip_b, &ip_a)] {
            for dir in ["dport", "sport"] {
                rules.push_str(&format!(
                    " ip saddr {from} ip daddr {to} tcp {dir} {{ {port_a}, {port_b} }} drop\n"
                ));
            }
        }
        let script = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n{rules} }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(script.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "nft: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(ChannelCut { table })
    }
}

impl Drop for ChannelCut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}
