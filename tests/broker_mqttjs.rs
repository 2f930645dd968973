//! MQTT.js (npm `mqtt` 5.x, the most used JavaScript client) against mqedge, MQTT 3.1.1 and 5.0:
//! runs `tests/interop/mqttjs_interop.js` (QoS 0/1/2, retained messages, wills, a persistent
//! session resumed after a reconnect, v5 properties) twice — over plain TCP straight to a broker
//! run in-process, and over TLS with a client certificate through `mqedge lb` (client
//! certificates required) to a broker that takes the certificate CN from the PROXY v2 header as
//! the username — and requires every check to pass. The script prints one line per check; on
//! failure its whole output is shown.
//!
//! Node and the package come from `.ci/run` (apt `nodejs npm`, `npm ci` in tests/interop/). With
//! no `node` on the PATH the tests skip with a loud message, except under CI (`CI` set), where
//! that is a failure; a missing `mqtt` package always fails.

mod common;

use std::process::Command;
use std::time::Duration;

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

/// Runs the script with `args` to completion, or kills it at `timeout`.
fn run_script(args: &[&str], timeout: Duration) -> ScriptRun {
    let mut cmd = Command::new("node");
    cmd.arg(SCRIPT).args(args);
    ScriptRun::run(cmd, timeout)
}

/// Fails with the failed check names, the script output and the tails of the server logs
/// (`(name, log)`) unless the script passed every check. `expected` is the number of checks the
/// script must report.
fn assert_all_passed(run: &ScriptRun, expected: usize, servers: &[(&str, String)]) {
    let logs: String = servers
        .iter()
        .map(|(name, log)| format!("--- {name} log (tail) ---\n{}\n", tail(log, 40)))
        .collect();
    run.assert_clean("MQTT.js interop", &logs);
    let summary = format!("{expected} passed, 0 failed");
    assert!(
        run.output.lines().any(|l| l == summary),
        "wanted {summary:?} in:\n{}",
        run.output
    );
}

#[test]
fn mqttjs_v311_and_v5_over_tcp() {
    if !node_available() {
        return;
    }
    let broker = InProcBroker::plain("mqttjs-tcp", "");
    let url = format!("mqtt://{}", broker.addr());
    let run = run_script(&[&url], SCRIPT_TIMEOUT);
    // 6 checks per version, plus v5 properties
    assert_all_passed(&run, 13, &[("broker", broker.logs())]);
}

/// On the binaries: the CN-as-username check reads the node's `client connected` log line (the
/// admin API names clients by id, and the script's ids are random).
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
    let run = run_script(
        &[
            &url,
            &pki.file("ca.pem"),
            &pki.file("mqttjs.pem"),
            &pki.file("mqttjs.key"),
        ],
        SCRIPT_TIMEOUT,
    );
    // 6 checks per version, a refused certificate-less client per version, v5 properties
    assert_all_passed(
        &run,
        15,
        &[("lb", lb.proc.logs()), ("broker", broker.proc.logs())],
    );
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
