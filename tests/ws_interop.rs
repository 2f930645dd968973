//! Real clients over MQTT-over-WebSocket: MQTT.js (npm `mqtt`, the library browsers use) over
//! ws:// and wss:// through the LB's WS and WSS listeners to a broker behind PROXY v2, and over
//! ws:// straight to the broker's own WebSocket listener; paho-mqtt's websocket transport both
//! ways. Each runs the interop script of tests/interop/ and requires every check to pass (for
//! paho, the checks that use paho itself: the others open raw TCP sockets, which a WebSocket
//! port rightly refuses). Node and paho come from `.ci/run`; without node outside CI the
//! MQTT.js tests skip loudly, as tests/broker_mqttjs.rs does.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The paho checks that only use paho's own client (the quick ones: the suite over plain TCP
/// is tests/broker_paho.rs).
const PAHO_CHECKS: &str = "qos_round_trip,wildcards,shared_subscriptions,unsubscribe,takeover_,\
    persistent_session,disconnect_session_expiry,user_properties,no_local,retain_as_published,\
    subscription_identifiers";

fn node_available() -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            ".ci/run installs node, so CI must have it"
        );
        eprintln!("\n*** SKIPPED: MQTT.js over WebSocket not run: no node on the PATH ***\n");
    }
    ok
}

fn mqttjs(args: &[&str]) -> ScriptRun {
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/mqttjs_interop.js"
    ))
    .args(args);
    ScriptRun::run(cmd, TIMEOUT)
}

fn paho(port: u16) -> ScriptRun {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/paho_interop.py"
        ))
        .args(["127.0.0.1", &port.to_string()])
        .env("PAHO_WS_PATH", "/mqtt")
        .env("PAHO_ONLY", PAHO_CHECKS);
    ScriptRun::run(cmd, TIMEOUT)
}

fn assert_passed(run: &ScriptRun, what: &str, expected: usize, logs: &str) {
    run.assert_clean(what, logs);
    let summary = format!("{expected} passed, 0 failed");
    assert!(
        run.output.lines().any(|l| l == summary),
        "{what}: wanted {summary:?} in:\n{}",
        run.output
    );
}

/// A broker with a plain listener for the LB (PROXY v2 required) and a WebSocket one.
fn broker(tag: &str) -> InProcBroker {
    InProcBroker::plain(
        tag,
        r#"
[[listener]]
name = "from-lb"
bind = "127.0.0.1:0"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]

[[listener]]
name = "ws"
bind = "127.0.0.1:0"
[listener.websocket]
"#,
    )
}

/// An LB with "ws" and "wss" listeners in front of `broker`'s PROXY listener.
fn lb(dir: &TempDir, pki: &Pki, broker: &InProcBroker) -> InProcLb {
    let cfg = dir.write(
        "lb.toml",
        &format!(
            r#"[lb]
connect_timeout = "5s"

[[listener]]
name = "ws"
bind = "127.0.0.1:0"
[listener.websocket]

[[listener]]
name = "wss"
bind = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"
[listener.websocket]
path = "/mqtt"

[health]
kind = "tcp"

[[backend]]
name = "node1"
addr = "{addr}"
proxy_protocol = "v2"
"#,
            cert = pki.file("server.pem"),
            key = pki.file("server.key"),
            addr = broker.addr_of("from-lb"),
        ),
    );
    InProcLb::start(&cfg)
}

#[test]
fn mqttjs_over_ws_and_wss_through_the_lb_and_over_ws_to_the_broker() {
    if !node_available() {
        return;
    }
    let dir = TempDir::new("ws-mqttjs");
    let pki = Pki::new(dir.path(), &[]);
    let b = broker("ws-mqttjs-b");
    let lb = lb(&dir, &pki, &b);
    let logs = || {
        format!(
            "--- lb ---\n{}\n--- broker ---\n{}",
            tail(&lb.logs(), 30),
            tail(&b.logs(), 30)
        )
    };
    let ws = format!("ws://127.0.0.1:{}/mqtt", lb.addr("ws").port());
    assert_passed(&mqttjs(&[&ws]), "MQTT.js ws:// via the LB", 13, &logs());
    let wss = format!("wss://localhost:{}/mqtt", lb.addr("wss").port());
    let ca = pki.file("ca.pem");
    assert_passed(
        &mqttjs(&[&wss, &ca]),
        "MQTT.js wss:// via the LB",
        13,
        &logs(),
    );
    let direct = format!("ws://127.0.0.1:{}/mqtt", b.addr_of("ws").port());
    assert_passed(
        &mqttjs(&[&direct]),
        "MQTT.js ws:// to the broker",
        13,
        &logs(),
    );
}

#[test]
fn paho_websocket_transport_through_the_lb_and_to_the_broker() {
    let dir = TempDir::new("ws-paho");
    let pki = Pki::new(dir.path(), &[]);
    let b = broker("ws-paho-b");
    let lb = lb(&dir, &pki, &b);
    let logs = || {
        format!(
            "--- lb ---\n{}\n--- broker ---\n{}",
            tail(&lb.logs(), 30),
            tail(&b.logs(), 30)
        )
    };
    // 2 versions × 5 checks, 1 v3.1.1-only, 6 v5-only ("takeover_" also picks will_takeover_v5)
    let want = 17;
    assert_passed(
        &paho(lb.addr("ws").port()),
        "paho ws via the LB",
        want,
        &logs(),
    );
    assert_passed(
        &paho(b.addr_of("ws").port()),
        "paho ws to the broker",
        want,
        &logs(),
    );
}
