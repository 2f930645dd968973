//! MQTT.js (npm `mqtt` 5.x, the most used JavaScript client) against mqedge, MQTT 3.1.1 and 5.0:
//! runs `tests/interop/mqttjs_interop.js` (QoS 0/1/2, retained messages, wills, a persistent
//! session resumed after a reconnect, v5 properties) twice — over plain TCP straight to
//! `mqedge broker`, and over TLS with a client certificate through `mqedge lb` (client
//! certificates required) to a broker that takes the certificate CN from the PROXY v2 header as
//! the username — and requires every check to pass. The script prints one line per check; on
//! failure its whole output is shown.
//!
//! Node and the package come from `.ci/run` (apt `nodejs npm`, `npm ci` in tests/interop/). With
//! no `node` on the PATH the tests skip with a loud message, except under CI (`CI` set), where
//! that is a failure; a missing `mqtt` package always fails.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The script's watchdog ends it after 90 s; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/mqttjs_interop.js"
);

/// Whether node is there to run the script: `false` (after a loud message) when it is not and
/// this is not CI.
fn node_available() -> bool {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        other => {
            let why = match other {
                Ok(o) => format!("`node --version` failed: {}", o.status),
                Err(e) => format!("cannot run node: {e}"),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{why}; .ci/run installs node (apt nodejs npm), so CI must have it"
            );
            eprintln!(
                "\n*** SKIPPED: MQTT.js interop not run: {why}. Install node and npm, then \
                 `npm ci` in tests/interop/ (.ci/run does both). ***\n"
            );
            return false;
        }
    }
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop/node_modules/mqtt/package.json");
    assert!(
        installed.exists(),
        "the mqtt package is not installed: run `npm ci` in tests/interop/ (.ci/run does)"
    );
    true
}

/// Runs the script to completion or kills it at `timeout`; (exit status, stdout + stderr).
fn run_script(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new("node")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node {SCRIPT}: {e}"));
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

/// Fails with the failed check names, the script output and the tails of the server logs unless
/// the script passed every check. `expected` is the number of checks the script must report.
fn assert_all_passed(status: Option<i32>, output: &str, expected: usize, servers: &[&Proc]) {
    let failed: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .map(|l| l.split(':').next().unwrap_or(l))
        .collect();
    let logs: String = servers
        .iter()
        .map(|p| format!("--- {} log (tail) ---\n{}\n", p.name, tail(&p.logs(), 40)))
        .collect();
    assert!(
        status == Some(0) && failed.is_empty(),
        "MQTT.js interop failed: {} (exit {status:?}; None = killed after {SCRIPT_TIMEOUT:?})\n\
         --- script output ---\n{output}\n{logs}",
        if failed.is_empty() {
            "the script did not finish cleanly".to_string()
        } else {
            failed.join(", ")
        },
    );
    let summary = format!("{expected} passed, 0 failed");
    assert!(
        output.lines().any(|l| l == summary),
        "wanted {summary:?} in:\n{output}"
    );
}

#[test]
fn mqttjs_v311_and_v5_over_tcp() {
    if !node_available() {
        return;
    }
    let dir = TempDir::new("mqttjs-tcp");
    let cfg = dir.write("b.toml", &broker_config("127.0.0.1:0", "", ""));
    let broker = BrokerProc::start(&cfg);
    let url = format!("mqtt://{}", broker.addr());
    let (status, output) = run_script(&[&url], SCRIPT_TIMEOUT);
    // 6 checks per version, plus v5 properties
    assert_all_passed(status, &output, 13, &[&broker.proc]);
}

#[test]
fn mqttjs_v311_and_v5_over_tls_through_the_lb_with_a_client_certificate() {
    if !node_available() {
        return;
    }
    let dir = TempDir::new("mqttjs-tls");
    let pki = Pki::new(dir.path(), &["mqttjs"]);
    let bcfg = dir.write(
        "b.toml",
        r#"[node]
name = "node1"
admin = "127.0.0.1:0"

[[listener]]
name = "from-lb"
bind = "127.0.0.1:0"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
use_cn_as_username = true

[auth]
allow_anonymous = true
"#,
    );
    let broker = BrokerProc::start(&bcfg);
    let lcfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "required",
            "client_id",
            &[("node1", broker.addr(), "v2")],
            "",
        ),
    );
    let lb = Lb::start(&lcfg);
    let url = format!("mqtts://localhost:{}", lb.addr("mqtts").port());
    let (status, output) = run_script(
        &[
            &url,
            &pki.file("ca.pem"),
            &pki.file("mqttjs.pem"),
            &pki.file("mqttjs.key"),
        ],
        SCRIPT_TIMEOUT,
    );
    // 6 checks per version, a refused certificate-less client per version, v5 properties
    assert_all_passed(status, &output, 15, &[&lb.proc, &broker.proc]);
    // the certificate went through: the node saw its CN as the username, from the PROXY header
    assert!(
        broker
            .proc
            .logs()
            .lines()
            .any(|l| l.contains("client connected")
                && l.contains("client_id=mqttjs-")
                && l.contains("username=\"mqttjs\"")),
        "no MQTT.js client with username=mqttjs (the certificate CN) on the node:\n{}",
        tail(&broker.proc.logs(), 40)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
