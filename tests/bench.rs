//! `mqedge bench` as an operator runs it, against a real `mqedge broker` (and the LB for TLS):
//! the counts it reports match what was sent and received, `--json` parses, percentiles are
//! ordered, `conn` and `hold` count their connections, `--src` spreads clients over source
//! addresses, and failures are one clear line with the documented exit code.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Runs `mqedge bench ARGS` to completion (killed after `timeout`): (exit code, stdout, stderr).
fn bench(args: &[&str], timeout: Duration) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mqedge bench {args:?} still running after {timeout:?}; stderr:\n{}",
                e.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        o.join().unwrap(),
        e.join().unwrap(),
    )
}

/// Runs a bench that must succeed with `--json` and returns the parsed object.
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = bench(&all, Duration::from_secs(60));
    assert_eq!(
        code, 0,
        "mqedge bench {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line: {out}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The broker the bench drives, in-process (the binary under test is `mqedge bench`).
fn broker(dir: &TempDir) -> (InProcBroker, SocketAddr) {
    let cfg = dir.write("broker.toml", &broker_config("127.0.0.1:0", "", ""));
    let b = InProcBroker::start(&cfg);
    let addr = b.addr();
    (b, addr)
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

fn assert_latency_ordered(j: &Value) {
    let l = &j["latency_us"];
    let (p50, p90, p99, p999, max) = (
        l["p50"].as_u64().unwrap(),
        l["p90"].as_u64().unwrap(),
        l["p99"].as_u64().unwrap(),
        l["p999"].as_u64().unwrap(),
        l["max"].as_u64().unwrap(),
    );
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "unordered percentiles: {l}"
    );
}

#[test]
fn pubsub_qos1_counts_every_delivery() {
    let dir = TempDir::new("bench-q1");
    let (_b, addr) = broker(&dir);
    let j = bench_json(&[
        "pubsub",
        "-p",
        &port(addr),
        "--pubs",
        "2",
        "--subs",
        "2",
        "-q",
        "1",
        "-n",
        "100",
    ]);
    assert_eq!(j["scenario"], "pubsub");
    assert_eq!(j["clients"], 4);
    assert_eq!(j["sent"], 200);
    assert_eq!(j["acked"], 200);
    // every subscriber gets every message
    assert_eq!(j["received"], 400, "{j}");
    assert_eq!(j["expected"], 400);
    assert_eq!(j["missing"], 0);
    assert_eq!(j["errors"], 0);
    assert_eq!(j["latency_us"]["samples"], 400);
    assert!(j["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["duration_s"].as_f64().unwrap() > 0.0);
    assert_latency_ordered(&j);
}

#[test]
fn pubsub_qos0_and_qos2_v5() {
    let dir = TempDir::new("bench-q0q2");
    let (_b, addr) = broker(&dir);
    let j = bench_json(&[
        "pubsub",
        "-p",
        &port(addr),
        "--pubs",
        "2",
        "--subs",
        "1",
        "-q",
        "0",
        "-n",
        "50",
        "-s",
        "32",
    ]);
    assert_eq!(j["sent"], 100);
    assert_eq!(j["received"], 100, "{j}");
    assert_eq!(j["acked"], 0);
    assert_eq!(j["payload_bytes"], 32);
    assert_eq!(j["errors"], 0);
    assert_latency_ordered(&j);

    let j = bench_json(&[
        "pubsub",
        "-p",
        &port(addr),
        "-V",
        "5",
        "--pubs",
        "1",
        "--subs",
        "2",
        "-q",
        "2",
        "-n",
        "50",
        "-t",
        "q2/%i",
        "--sub-topic",
        "q2/+",
    ]);
    assert_eq!(j["sent"], 50);
    assert_eq!(j["acked"], 50, "every PUBCOMP: {j}");
    assert_eq!(j["received"], 100, "{j}");
    assert_eq!(j["errors"], 0);
}

#[test]
fn shared_group_delivers_each_message_once() {
    let dir = TempDir::new("bench-shared");
    let (_b, addr) = broker(&dir);
    let j = bench_json(&[
        "pubsub",
        "-p",
        &port(addr),
        "--pubs",
        "2",
        "--subs",
        "2",
        "--shared",
        "g1",
        "-q",
        "1",
        "-n",
        "100",
    ]);
    assert_eq!(j["sent"], 200);
    assert_eq!(j["expected"], 200);
    assert_eq!(j["received"], 200, "{j}");
    assert_eq!(j["errors"], 0);
}

#[test]
fn rate_and_duration_pace_the_publishers() {
    let dir = TempDir::new("bench-rate");
    let (_b, addr) = broker(&dir);
    let j = bench_json(&[
        "pubsub",
        "-p",
        &port(addr),
        "--pubs",
        "2",
        "--subs",
        "1",
        "-q",
        "1",
        "-r",
        "50",
        "-d",
        "1s",
    ]);
    // 2 publishers x 50/s x 1 s, give or take a tick
    let sent = j["sent"].as_u64().unwrap();
    assert!((95..=102).contains(&sent), "sent {sent}: {j}");
    assert_eq!(j["received"], j["sent"]);
    assert_eq!(j["errors"], 0);
}

#[test]
fn conn_storm_counts_connections() {
    let dir = TempDir::new("bench-conn");
    let (_b, addr) = broker(&dir);
    let j = bench_json(&["conn", "-p", &port(addr), "-c", "50", "--concurrency", "10"]);
    assert_eq!(j["scenario"], "conn");
    assert_eq!(j["connections"], 50);
    assert_eq!(j["errors"], 0);
    assert!(j["connects_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["latency_us"]["samples"], 50);
    assert_latency_ordered(&j);
}

#[test]
fn hold_keeps_connections_and_spreads_source_addresses() {
    let dir = TempDir::new("bench-hold");
    let (b, addr) = broker(&dir);
    let admin = b.admin();
    let mut cmd = Command::new(bin());
    cmd.args([
        "bench",
        "hold",
        "-p",
        &port(addr),
        "-c",
        "20",
        "-d",
        "2s",
        "--src",
        "127.0.0.2-127.0.0.5",
        "--prefix",
        "held",
        "--json",
    ]);
    let mut p = Proc::spawn("bench", cmd);
    p.wait_log("20 connection(s) up", Duration::from_secs(20));
    // client i bound source address 127.0.0.(2 + i % 4)
    for i in [0usize, 1, 2, 3, 5] {
        let c = get_json(admin, &format!("/api/clients/held-hold-{i}"));
        let peer: SocketAddr = c["peer_addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            peer.ip().to_string(),
            format!("127.0.0.{}", 2 + i % 4),
            "{c}"
        );
        assert_eq!(c["connected"], true);
    }
    let status = p.wait_exit(Duration::from_secs(20)).expect("hold ends");
    assert!(status.success(), "{}", p.logs());
    let line = p
        .logs()
        .lines()
        .find(|l| l.starts_with('{'))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no JSON: {}", p.logs()));
    let j: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["scenario"], "hold");
    assert_eq!(j["connections"], 20);
    assert_eq!(j["held"], 20);
    assert_eq!(j["errors"], 0);
    assert!(j["held_s"].as_f64().unwrap() >= 2.0);
}

#[test]
fn tls_through_the_lb_with_client_certificates() {
    let dir = TempDir::new("bench-tls");
    let pki = Pki::new(dir.path(), &["bench"]);
    let (_b, broker_addr) = broker(&dir);
    let lb_cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "required",
            "client_id",
            &[("node1", broker_addr, "none")],
            "",
        ),
    );
    let lb = InProcLb::start(&lb_cfg);
    let tls = lb.addr("mqtts");
    let (ca, cert, key) = (
        pki.file("ca.pem"),
        pki.file("bench.pem"),
        pki.file("bench.key"),
    );
    let tls_args = ["--cafile", &ca, "--cert", &cert, "--key", &key];

    let tls_port = port(tls);
    let mut args = vec![
        "pubsub", "-p", &tls_port, "--pubs", "2", "--subs", "1", "-q", "1", "-n", "50",
    ];
    args.extend(tls_args);
    let j = bench_json(&args);
    assert_eq!(j["sent"], 100);
    assert_eq!(j["received"], 100, "{j}");
    assert_eq!(j["errors"], 0);

    let mut args = vec!["conn", "-p", &tls_port, "-c", "20", "--src", "127.0.0.1-3"];
    args.extend(tls_args);
    let j = bench_json(&args);
    assert_eq!(j["connections"], 20);
    assert_eq!(j["errors"], 0);

    // --insecure: no --cafile, the server is not checked, the client certificate still is
    let j = bench_json(&[
        "conn",
        "-p",
        &tls_port,
        "-c",
        "20",
        "--close-each",
        "--insecure",
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert_eq!(j["connections"], 20, "{j}");
    assert_eq!(j["errors"], 0);
    assert!(j.get("resumed").is_none(), "full handshakes only: {j}");

    // --resume: the fleet connects once, then every client comes back with its own ticket
    // (the LB issues tickets by default), 8 at a time
    let j = bench_json(&[
        "conn",
        "-p",
        &tls_port,
        "-c",
        "40",
        "--concurrency",
        "8",
        "--close-each",
        "--insecure",
        "--resume",
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert_eq!(j["connections"], 40, "{j}");
    assert_eq!(j["resumed"], 40, "every client resumed: {j}");

    // no client certificate: the LB refuses the handshake, one line, exit 2 (with or without
    // --insecure: skipping the client's checks does not skip the server's)
    for trust in [vec!["--cafile", ca.as_str()], vec!["--insecure"]] {
        let mut args = vec!["conn", "-p", &tls_port, "-c", "5"];
        args.extend(trust);
        let (code, out, err) = bench(&args, Duration::from_secs(30));
        assert_eq!(code, 2, "{args:?}: stdout: {out}\nstderr: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("mqedge bench: TLS handshake with"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn dead_port_fails_with_one_line() {
    let dead = free_port();
    for scenario in ["pubsub", "conn", "hold"] {
        let (code, out, err) = bench(
            &[scenario, "-p", &dead.to_string(), "--json"],
            Duration::from_secs(30),
        );
        assert_eq!(code, 2, "{scenario}: stdout: {out}\nstderr: {err}");
        assert!(out.is_empty(), "{scenario}: {out}");
        assert_eq!(err.lines().count(), 1, "{scenario}: {err}");
        assert_eq!(
            err.trim_end(),
            format!("mqedge bench: cannot connect to 127.0.0.1:{dead}: Connection refused"),
        );
    }
}

#[test]
fn bad_arguments_and_fd_limit_exit_1() {
    let (code, _, err) = bench(&["pubsub", "-q", "3"], Duration::from_secs(10));
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = bench(
        &["conn", "--src", "127.0.0.9-127.0.0.1"],
        Duration::from_secs(10),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("mqedge bench: --src"), "{err}");
    // --insecure replaces --cafile; both at once is a contradiction
    let (code, _, err) = bench(
        &["conn", "--insecure", "--cafile", "ca.pem"],
        Duration::from_secs(10),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--insecure"), "{err}");
    // far more than any open-files limit: refused before a single connection is tried
    let (code, _, err) = bench(
        &["hold", "-p", "1", "-c", "100000000"],
        Duration::from_secs(10),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("file descriptors"), "{err}");
}
