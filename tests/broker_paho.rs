//! Python paho-mqtt 2.x against `mqedge broker`, MQTT 3.1.1 and 5.0: runs
//! `tests/interop/paho_interop.py` (QoS 0/1/2, retained, wills, wildcards, shared and overlapping
//! subscriptions, `$` topics, keep-alive, redelivery on reconnect, session expiry, will delay,
//! topic aliases, message expiry, receive maximum, subscription options, …) and requires every
//! check to pass. The script prints one line per check; on failure its whole output is shown.
//!
//! paho-mqtt must be installed (`.ci/run` installs it with pip): a missing module fails the test
//! rather than skipping it.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The script's own checks are bounded and take well under a minute; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The interpreter `.ci/run` installs paho-mqtt for.
const PYTHON: &str = "python3";

fn require_paho() {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import paho.mqtt.client as m; assert hasattr(m, 'CallbackAPIVersion')",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", PYTHON));
    assert!(
        out.status.success(),
        "paho-mqtt 2.x is not importable by {} (pip install paho-mqtt; .ci/run installs it):\n{}",
        PYTHON,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the script to completion or kills it at `timeout`; (exit status, stdout + stderr).
fn run_script(host: &str, port: u16, timeout: Duration) -> (Option<i32>, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_interop.py");
    let mut child = Command::new(PYTHON)
        .arg("-u")
        .arg(script)
        .arg(host)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
    // drain both pipes while waiting, so a chatty script cannot block on a full pipe
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut p| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("");
    (status, output)
}

#[test]
fn paho_v311_and_v5_interoperate() {
    require_paho();
    let dir = TempDir::new("paho");
    let cfg = dir.write("b.toml", &broker_config("127.0.0.1:0", "", ""));
    let mut broker = BrokerProc::start(&cfg);
    let addr = broker.addr();
    let (status, output) = run_script(&addr.ip().to_string(), addr.port(), SCRIPT_TIMEOUT);
    // a broker that died mid-run shows up as a cascade of refused connections: say so first
    let broker_state = match broker.proc.child.try_wait() {
        Ok(Some(exit)) => format!("the broker EXITED during the run ({exit})"),
        _ => "the broker is still running".to_string(),
    };
    // the check names only; the reasons are in the script output below
    let failed: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .map(|l| l.split(':').next().unwrap_or(l))
        .collect();
    assert!(
        status == Some(0) && failed.is_empty(),
        "paho interop failed: {} (exit {status:?}; None = killed after {SCRIPT_TIMEOUT:?}); \
         {broker_state}\n--- script output ---\n{output}\n--- broker log (tail) ---\n{}",
        if failed.is_empty() {
            "the script did not finish cleanly".to_string()
        } else {
            failed.join(", ")
        },
        tail(&broker.proc.logs(), 40)
    );
    assert!(
        output.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "no summary line in:\n{output}"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
