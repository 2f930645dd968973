//! The README's quickstart, run as written: certs, check, Mosquitto, the LB from
//! configs/quickstart/lb.toml, a TLS subscriber with the client cert, and TLS and plain
//! publishers. Only the ports move: the committed 21883 (Mosquitto), 8883 and 1883 (the LB)
//! become ports from the OS, so the test runs beside anything that holds those.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn readme_quickstart_works_as_written() {
    let dir = TempDir::new("quickstart");
    let root = env!("CARGO_MANIFEST_DIR");
    // the config as committed, next to freshly generated certs, with ports from the OS
    let mosq_port = free_port();
    let mut text = std::fs::read_to_string(format!("{root}/configs/quickstart/lb.toml")).unwrap();
    for (from, to) in [
        ("\"127.0.0.1:8883\"", "\"127.0.0.1:0\"".to_string()),
        ("\"127.0.0.1:1883\"", "\"127.0.0.1:0\"".to_string()),
        ("\"127.0.0.1:21883\"", format!("\"127.0.0.1:{mosq_port}\"")),
    ] {
        assert!(
            text.contains(from),
            "configs/quickstart/lb.toml has no {from}"
        );
        text = text.replace(from, &to);
    }
    let cfg = dir.write("lb.toml", &text);
    let certs = dir.path().join("certs");
    let out = Command::new(bin())
        .args(["certs", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut m = Command::new(which("mosquitto"));
    m.args(["-p", &mosq_port.to_string()]);
    let _mosq = Proc::spawn("mosquitto", m);
    wait_port(
        format!("127.0.0.1:{mosq_port}").parse().unwrap(),
        Duration::from_secs(10),
    );
    let lb = Lb::start(&cfg);
    let (tls, plain) = (lb.addr("mqtts").port(), lb.addr("mqtt").port());
    wait_port(lb.addr("mqtts"), Duration::from_secs(10));

    let c = |n: &str| certs.join(n).display().to_string();
    let (ca, cert, key) = (c("ca.pem"), c("client.pem"), c("client.key"));
    let mut sub = mosquitto_sub(
        "mosquitto_sub",
        "localhost",
        tls,
        &[
            "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "demo/#", "-v", "-C", "2", "-W",
            "15",
        ],
    );
    // publish (repeating until the subscription is in place) over TLS and plain
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while sub.count_log("hi from") < 2 && std::time::Instant::now() < deadline {
        if sub.count_log("hi from TLS") == 0 {
            let tls_pub = ["--cafile", &ca, "-t", "demo/hello", "-m", "hi from TLS"];
            mosquitto_pub("localhost", tls, &tls_pub);
        } else {
            mosquitto_pub(
                "127.0.0.1",
                plain,
                &["-t", "demo/hello", "-m", "hi from plain"],
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    sub.wait_exit(Duration::from_secs(3));
    let got = sub.logs();
    assert!(got.contains("demo/hello hi from TLS"), "{got}");
    assert!(got.contains("demo/hello hi from plain"), "{got}");
    lb.proc
        .wait_log("cn=\"dev-client\"", Duration::from_secs(5));
}
