//! Python paho-mqtt 2.x against the broker (in-process), MQTT 3.1.1 and 5.0: runs
//! `tests/interop/paho_interop.py` (QoS 0/1/2, retained, wills, wildcards, shared and overlapping
//! subscriptions, `$` topics, keep-alive, redelivery on reconnect, session expiry, will delay,
//! topic aliases, message expiry, receive maximum, subscription options, …) and requires every
//! check to pass. The script prints one line per check; on failure its whole output is shown.
//!
//! paho-mqtt must be installed (`.ci/run` installs it with pip): a missing module fails the test
//! rather than skipping it.

mod common;

use std::process::Command;
use std::time::Duration;

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

/// Runs the script against `host:port` to completion, or kills it at `timeout`.
fn run_script(host: &str, port: u16, timeout: Duration) -> ScriptRun {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_interop.py");
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-u").arg(script).arg(host).arg(port.to_string());
    ScriptRun::run(cmd, timeout)
}

#[test]
fn paho_v311_and_v5_interoperate() {
    require_paho();
    let broker = InProcBroker::plain("paho", "");
    let addr = broker.addr();
    let run = run_script(&addr.ip().to_string(), addr.port(), SCRIPT_TIMEOUT);
    // a broker that died mid-run shows up as a cascade of refused connections: say so first
    let broker_state = if broker.finished() {
        "the broker STOPPED during the run"
    } else {
        "the broker is still running"
    };
    run.assert_clean(
        "paho interop",
        &format!(
            "{broker_state}\n--- broker log (tail) ---\n{}",
            tail(&broker.logs(), 40)
        ),
    );
    assert!(
        run.output.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "no summary line in:\n{}",
        run.output
    );
}
