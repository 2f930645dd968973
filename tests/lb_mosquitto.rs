//! `mosquitto_pub`/`mosquitto_sub` through the LB's TLS listener to a real Mosquitto, with and
//! without client certificates, and the `client_auth = "required"` refusals.

mod common;

use std::time::Duration;

use common::*;

fn sub_pub(
    lb: std::net::SocketAddr,
    pki: &Pki,
    cert: Option<(&str, &str)>,
    topic: &str,
    msg: &str,
) -> (bool, String) {
    let ca = pki.file("ca.pem");
    let (sub_id, pub_id) = (format!("sub-{topic}"), format!("pub-{topic}"));
    let mut tls = vec!["--cafile", ca.as_str()];
    if let Some((c, k)) = cert {
        tls.extend(["--cert", c, "--key", k]);
    }
    let sub_args = [
        &["-t", topic, "-C", "1", "-W", "8", "-i", &sub_id][..],
        &tls,
    ]
    .concat();
    let mut sub = mosquitto_sub("mosquitto_sub", "127.0.0.1", lb.port(), &sub_args);
    // publish until the subscriber has its subscription in place and prints the message
    let pub_args = [&["-t", topic, "-m", msg, "-i", &pub_id][..], &tls].concat();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        mosquitto_pub("127.0.0.1", lb.port(), &pub_args);
        if sub.wait_exit(Duration::from_millis(300)).is_some() {
            break;
        }
    }
    let status = sub.wait_exit(Duration::from_secs(2));
    (status.map(|s| s.success()).unwrap_or(false), sub.logs())
}

/// On the binary: the verified CN is read from the LB's log (no metric or admin view has it).
#[test]
fn mosquitto_clients_through_tls_with_and_without_client_cert() {
    let dir = TempDir::new("mosq-tls");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let mosq = Mosquitto::start();
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "optional",
            "client_id",
            &[("mosq", mosq.addr, "none")],
            "",
        ),
    );
    let lb = Lb::start(&cfg);
    let tls = lb.addr("mqtts");

    let (ok, out) = sub_pub(tls, &pki, None, "t/nocert", "hello-anon");
    assert!(
        ok,
        "no client cert: subscriber did not get the message: {out}"
    );
    assert!(out.contains("hello-anon"), "{out}");

    let (c, k) = (pki.file("device-1.pem"), pki.file("device-1.key"));
    let (ok, out) = sub_pub(tls, &pki, Some((&c, &k)), "t/cert", "hello-cert");
    assert!(ok && out.contains("hello-cert"), "with client cert: {out}");
    // the LB logged the CN of the certificate it verified
    lb.proc.wait_log("cn=\"device-1\"", Duration::from_secs(5));
}

#[test]
fn required_client_auth_refuses_missing_or_foreign_certs() {
    let dir = TempDir::new("mosq-req");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let mosq = Mosquitto::start();
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "required",
            "client_id",
            &[("mosq", mosq.addr, "none")],
            "admin = \"127.0.0.1:0\"",
        ),
    );
    let lb = InProcLb::start(&cfg);
    let port = lb.addr("mqtts").port();
    let ca = pki.file("ca.pem");
    let run_pub = |extra: &[&str]| {
        let args = [&["--cafile", ca.as_str(), "-t", "x", "-m", "y"][..], extra].concat();
        mosquitto_pub("127.0.0.1", port, &args)
    };
    let none = run_pub(&[]);
    assert!(!none.success(), "no certificate must fail");
    let (ec, ek) = (pki.evil("intruder.pem"), pki.evil("intruder.key"));
    let foreign = run_pub(&["--cert", &ec, "--key", &ek]);
    assert!(
        !foreign.success(),
        "a certificate from another CA must fail"
    );
    let (c, k) = (pki.file("device-1.pem"), pki.file("device-1.key"));
    let good = run_pub(&["--cert", &c, "--key", &k]);
    assert!(good.success(), "our client cert must pass: {}", good.output);
    // both refusals were counted as TLS handshake failures, never forwarded
    let handshake_failures = || {
        metric(
            &lb_metrics(&lb),
            "mqedge_lb_connections_rejected_total",
            &["reason=\"tls_handshake\""],
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || handshake_failures() >= 2.0),
        "{}",
        lb.logs()
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            backend_field(lb.admin(), "mosq", "active_connections") == 0
        }),
        "the good client's connection did not close"
    );
    assert_eq!(
        backend_field(lb.admin(), "mosq", "total_connections"),
        1,
        "only the good client was forwarded"
    );
}
