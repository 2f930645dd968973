//! The LB's control plane against real Mosquitto backends and mock brokers: active MQTT health
//! checks (kill and restart a broker), hot reload under live `mosquitto_sub` sessions, a refused
//! broken config, the admin API, `/metrics`, drain, `max_connections` and the per-IP rate limit.
//! The LB runs in-process, except where a test needs a signal or reads the log.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn config(pki: &Pki, backends: &[(&str, SocketAddr)], extra_lb: &str, kind: &str) -> String {
    admin_lb_config(
        pki,
        &format!(
            "name = \"ctl\"\ndrain_timeout = \"1500ms\"\nconnect_timeout = \"2s\"\n{extra_lb}"
        ),
        &format!(
            "kind = \"{kind}\"\ninterval = \"300ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 2"
        ),
        backends,
    )
}

/// `mqedge_lb_backend_up` of backend `name`.
fn backend_up(admin: SocketAddr, name: &str) -> f64 {
    metric(
        &parse_prometheus(&http("GET", admin, "/metrics").1),
        "mqedge_lb_backend_up",
        &[&format!("backend=\"{name}\"")],
    )
}

#[test]
fn mqtt_health_checks_follow_a_killed_and_restarted_mosquitto() {
    let dir = TempDir::new("health");
    let pki = Pki::new(dir.path(), &[]);
    let m1 = Mosquitto::start();
    let m2 = Mosquitto::start();
    let cfg = dir.write(
        "lb.toml",
        &config(&pki, &[("m1", m1.addr), ("m2", m2.addr)], "", "mqtt"),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    assert_eq!(
        backend_states(admin),
        vec![("m1".into(), "up".into()), ("m2".into(), "up".into())]
    );
    let v = get_json(admin, "/api/backends");
    for k in [
        "name",
        "addr",
        "state",
        "active_connections",
        "total_connections",
        "last_check_ms",
    ] {
        assert!(v[0].get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v[0]["addr"], m1.addr.to_string());

    let port2 = m2.addr.port();
    drop(m2); // SIGTERM: the broker goes away
              // fall (2) x interval (300ms) + timeout (500ms) + 1s
    let took = wait_backend_state(
        admin,
        "m2",
        "down",
        Duration::from_millis(2 * 300 + 500 + 1000),
    );
    eprintln!("m2 seen down after {took:?}");
    assert_eq!(backend_up(admin, "m2"), 0.0);
    // new clients all go to m1, including those whose id hashes to m2
    let id = id_for("m2", &["m1", "m2"], "dev");
    let on_m1 = backend_field(admin, "m1", "total_connections");
    let out = mosquitto_pub(
        "127.0.0.1",
        lb.addr("mqtt").port(),
        &["-i", &id, "-t", "x", "-m", "y"],
    );
    assert!(out.success(), "{}", out.output);
    assert_eq!(
        backend_field(admin, "m1", "total_connections"),
        on_m1.as_u64().unwrap() + 1,
        "{id} not forwarded to m1:\n{}",
        lb.logs()
    );
    assert_eq!(backend_field(admin, "m2", "total_connections"), 0);

    let _m2 = Mosquitto::start_on(port2);
    // rise (2) checks
    let took = wait_backend_state(admin, "m2", "up", Duration::from_secs(3));
    eprintln!("m2 seen up again after {took:?}");
    assert_eq!(backend_up(admin, "m2"), 1.0);
}

#[test]
fn hot_reload_keeps_untouched_sessions_and_drains_removed_backends() {
    let dir = TempDir::new("reload");
    let pki = Pki::new(dir.path(), &[]);
    let (a, b, c) = (Mosquitto::start(), Mosquitto::start(), Mosquitto::start());
    let cfg = dir.write(
        "lb.toml",
        &config(&pki, &[("a", a.addr), ("b", b.addr)], "", "mqtt"),
    );
    let lb = InProcLb::start(&cfg);
    // forwarded connections that ended, by backend and reason
    let closed = |backend: &str, reason: &str| {
        metric(
            &lb_metrics(&lb),
            "mqedge_lb_connections_closed_total",
            &[
                &format!("backend=\"{backend}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
    };

    let admin = lb.admin();
    let forwarded = |backend: &str| backend_field(admin, backend, "total_connections").as_u64();
    let port = lb.addr("mqtt").port();
    let ida = id_for("a", &["a", "b"], "keep");
    let idb = id_for("b", &["a", "b"], "moved");
    // ids that stay on a when c joins and b leaves: rendezvous hashing guarantees it
    assert_eq!(hashed_backend(&ida, &["a", "c"]), "a");

    let sub = |id: &str| {
        mosquitto_sub(
            id,
            "127.0.0.1",
            port,
            &["-i", id, "-t", "news", "-q", "1", "-v"],
        )
    };
    let sa = sub(&ida);
    let sb = sub(&idb);
    // wait until both are subscribed: publish to each backend directly until each receives
    let publish_direct = |addr: SocketAddr, msg: &str| {
        mosquitto_pub("127.0.0.1", addr.port(), &["-t", "news", "-m", msg]);
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while (sa.count_log("news warmup-a") == 0 || sb.count_log("news warmup-b") == 0)
        && Instant::now() < deadline
    {
        publish_direct(a.addr, "warmup-a");
        publish_direct(b.addr, "warmup-b");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sa.count_log("news warmup-a") > 0,
        "subscriber on a: {}",
        sa.logs()
    );
    assert!(
        sb.count_log("news warmup-b") > 0,
        "subscriber on b: {}",
        sb.logs()
    );
    // one connection each: sa's on a, sb's on b
    let forwarded_before = forwarded("a");
    assert_eq!(forwarded("b"), Some(1));

    // the reload: c joins, b leaves
    let t0 = Instant::now();
    std::fs::write(
        &cfg,
        config(&pki, &[("a", a.addr), ("c", c.addr)], "", "mqtt"),
    )
    .unwrap();
    loop {
        let s = backend_states(admin);
        if s == vec![
            ("a".to_string(), "up".to_string()),
            ("c".to_string(), "up".to_string()),
        ] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "new set not shown within 2s: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!("new backend set live after {:?}", t0.elapsed());
    assert_eq!(get_json(admin, "/api/reload")["generation"], 2);
    assert!(get_json(admin, "/api/reload")["last_error"].is_null());

    // the untouched session keeps receiving, without a reconnect
    publish_direct(a.addr, "after-reload");
    assert!(
        (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            sa.count_log("news after-reload") > 0
        }),
        "{}",
        sa.logs()
    );
    // the removed backend's session is closed after drain_timeout (1.5s)
    while closed("b", "drained") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "b's session not closed by the drain: {}",
            lb.logs()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "closed before drain_timeout"
    );
    let on_a: f64 = [
        "closed",
        "error",
        "half_close_timeout",
        "drained",
        "shutdown",
    ]
    .iter()
    .map(|r| closed("a", r))
    .sum();
    assert_eq!(on_a, 0.0, "the untouched session must not have been closed");
    assert_eq!(forwarded("a"), forwarded_before, "nor reconnected");
    // a new client that hashes to c lands on c
    let idc = id_for("c", &["a", "c"], "new");
    let out = mosquitto_pub("127.0.0.1", port, &["-i", &idc, "-t", "x", "-m", "y"]);
    assert!(out.success());
    assert_eq!(forwarded("c"), Some(1), "{}", lb.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reloads_change_nothing_and_are_reported() {
    let dir = TempDir::new("badreload");
    let pki = Pki::new(dir.path(), &[]);
    let m = MockBroker::start("m", false).await;
    let good = config(&pki, &[("m", m.addr)], "", "tcp");
    let cfg = dir.write("lb.toml", &good);
    // on the binary: SIGHUP, and the refusal's log line
    let lb = Lb::start(&cfg);
    let admin = lb.admin();
    let plain = lb.addr("mqtt");
    let failures = |admin| {
        metric(
            &parse_prometheus(&http("GET", admin, "/metrics").1),
            "mqedge_lb_config_reload_failures_total",
            &[],
        )
    };
    assert_eq!(failures(admin), 0.0);
    let bad_files = [
        (format!("{good}\n[balance\n"), "lb.toml:"),
        (
            format!("{good}\n[health]\nbogus = 1\n").replace("[health]\nkind", "[health]\nkind"),
            "lb.toml:",
        ),
        (
            good.replace(&m.addr.to_string(), "10.0.0.1:99999"),
            "invalid backend address",
        ),
    ];
    for (i, (text, needle)) in bad_files.iter().enumerate() {
        std::fs::write(&cfg, text).unwrap();
        let t0 = Instant::now();
        loop {
            let f = failures(admin);
            if f >= (i + 1) as f64 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "reload failure {i} not counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = get_json(admin, "/api/reload");
        assert_eq!(r["generation"], 1, "nothing changed");
        let err = r["last_error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains(needle), "{err}");
        // traffic still flows to the old set
        let mut s = tcp_from(None, plain).await.unwrap();
        assert_eq!(
            mqtt_connect(&mut s, &format!("still-{i}")).await.unwrap(),
            0
        );
        assert_eq!(
            backend_states(admin),
            vec![("m".to_string(), "up".to_string())]
        );
    }
    assert!(lb
        .proc
        .logs()
        .contains("config reload refused, nothing changed"));
    // fixing the file clears the error; SIGHUP forces a re-read too
    std::fs::write(&cfg, &good).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || get_json(admin, "/api/reload")
            ["last_error"]
            .is_null())
        .await
    );
    let g = get_json(admin, "/api/reload")["generation"]
        .as_u64()
        .unwrap();
    lb.proc.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || get_json(admin, "/api/reload")
            ["generation"]
            .as_u64()
            == Some(g + 1))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metrics_drain_and_limits() {
    let dir = TempDir::new("admin");
    let pki = Pki::new(dir.path(), &[]);
    let m1 = MockBroker::start("m1", false).await;
    let m2 = MockBroker::start("m2", false).await;
    let cfg = dir.write(
        "lb.toml",
        &config(
            &pki,
            &[("m1", m1.addr), ("m2", m2.addr)],
            "max_connections = 30\nconnect_rate_per_ip = 5\nconnect_burst_per_ip = 10",
            "tcp",
        ),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    let plain = lb.addr("mqtt");
    assert_eq!(http("GET", admin, "/healthz").0, 200);
    assert_eq!(http("GET", admin, "/nope").0, 404);
    let before = parse_prometheus(&http("GET", admin, "/metrics").1);

    // some traffic from 127.0.0.2
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = tcp_from(Some("127.0.0.2".parse().unwrap()), plain)
            .await
            .unwrap();
        assert_eq!(mqtt_connect(&mut s, &format!("c{i}")).await.unwrap(), 0);
        held.push(s);
    }
    let after = parse_prometheus(&http("GET", admin, "/metrics").1);
    let acc = |s: &[(String, String, f64)]| {
        metric(
            s,
            "mqedge_lb_connections_accepted_total",
            &["listener=\"mqtt\""],
        )
    };
    assert_eq!(acc(&after) - acc(&before), 4.0);
    assert_eq!(
        metric(&after, "mqedge_lb_backend_connections_active", &[]),
        4.0
    );
    assert!(
        metric(
            &after,
            "mqedge_lb_backend_bytes_total",
            &["direction=\"in\""]
        ) > 0.0
    );
    assert_eq!(metric(&after, "mqedge_lb_backend_up", &[]), 2.0);
    assert!(metric(&after, "mqedge_lb_backend_connect_seconds_count", &[]) >= 4.0);
    assert!(metric(&after, "mqedge_lb_backend_check_seconds_count", &[]) >= 2.0);
    let v = get_json(admin, "/api/backends");
    let total: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["active_connections"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);

    // rate limit: a flood from 127.0.0.3 gets its burst (10), the rest are refused at once
    let mut ok = 0;
    for i in 0..40 {
        let mut s = tcp_from(Some("127.0.0.3".parse().unwrap()), plain)
            .await
            .unwrap();
        if let Ok(0) = mqtt_connect(&mut s, &format!("flood{i}")).await {
            ok += 1;
        }
    }
    assert!(
        (10..=13).contains(&ok),
        "burst 10 (+ refill at 5/s) expected, got {ok}"
    );
    // another address is unaffected
    let mut s = tcp_from(Some("127.0.0.4".parse().unwrap()), plain)
        .await
        .unwrap();
    assert_eq!(mqtt_connect(&mut s, "other-ip").await.unwrap(), 0);
    held.push(s);
    let m = parse_prometheus(&http("GET", admin, "/metrics").1);
    assert!(
        metric(
            &m,
            "mqedge_lb_connections_rejected_total",
            &["reason=\"rate_limited\""]
        ) >= 27.0
    );

    // max_connections (30): hold connections from many addresses until refused
    let mut refused = 0;
    for i in 0..40u8 {
        let src = format!("127.0.1.{}", i + 1).parse().unwrap();
        let mut s = tcp_from(Some(src), plain).await.unwrap();
        match mqtt_connect(&mut s, &format!("hold{i}")).await {
            Ok(0) => held.push(s),
            _ => refused += 1,
        }
    }
    assert!(
        held.len() <= 30 && refused >= 10,
        "held {} refused {refused}",
        held.len()
    );
    let m = parse_prometheus(&http("GET", admin, "/metrics").1);
    assert!(
        metric(
            &m,
            "mqedge_lb_connections_rejected_total",
            &["reason=\"over_limit\""]
        ) >= 10.0
    );
    // below the limit again, new clients are served
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = tcp_from(Some("127.0.0.5".parse().unwrap()), plain)
        .await
        .unwrap();
    assert_eq!(mqtt_connect(&mut s, "after-flood").await.unwrap(), 0);

    // drain m1: state draining, no new connections there, its leftovers closed after 1.5s
    let (code, body) = http("POST", admin, "/api/backends/m1/drain");
    assert_eq!(code, 200, "{body}");
    assert_eq!(http("POST", admin, "/api/backends/zzz/drain").0, 404);
    assert!(backend_states(admin).contains(&("m1".to_string(), "draining".to_string())));
    let n1 = m1.clients().len();
    for i in 0..5 {
        let mut s = tcp_from(Some("127.0.0.6".parse().unwrap()), plain)
            .await
            .unwrap();
        assert_eq!(
            mqtt_connect(&mut s, &format!("post-drain-{i}"))
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(
        m1.clients().len(),
        n1,
        "a draining backend takes no new connections"
    );
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(4), || {
            get_json(admin, "/api/backends")[0]["active_connections"].as_u64() == Some(0)
        })
        .await
    );
    assert!(t0.elapsed() >= Duration::from_millis(1000));
    drop(held);
}

/// Certificate rotation: new files at the same paths are picked up without touching the
/// config and without a restart; open connections keep their session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_served_to_new_connections() {
    let dir = TempDir::new("rotate");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let m = MockBroker::start("m", false).await;
    let cfg = dir.write("lb.toml", &config(&pki, &[("m", m.addr)], "", "tcp"));
    let lb = InProcLb::start(&cfg);
    let tls = lb.addr("mqtts");
    let sans = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| -> Vec<String> {
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        mqedge_shared::tls::CertFacts::from_der(der.as_ref())
            .unwrap()
            .san_values()
    };
    let mut before = tls_from(None, tls, pki.client_config(None)).await.unwrap();
    assert!(!sans(&before).contains(&"rotated.example".to_string()));
    assert_eq!(mqtt_connect(&mut before, "old").await.unwrap(), 0);
    // renew the server certificate in place (same CA), as certbot or cert-manager would
    let out = Command::new(bin())
        .args(["certs", "--reuse-ca", "--san", "rotated.example", "--out"])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    loop {
        let s = tls_from(None, tls, pki.client_config(None)).await.unwrap();
        if sans(&s).contains(&"rotated.example".to_string()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "renewed certificate not served within 3s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_json(lb.admin(), "/api/reload")["generation"], 2);
    // the connection opened before the renewal still works
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    before.write_all(&[0xc0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(3), before.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, [0xd0, 0x00]);
}
