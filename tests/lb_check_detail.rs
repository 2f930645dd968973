//! What `/api/backends` and the log say about health checks, against backends that answer
//! wrongly over real sockets: one that closes at once, one that sends garbage, one that refuses
//! with "server unavailable", one that refuses the check client (still up), a TLS-only port, a
//! silent one, and a real Mosquitto sent a PROXY header it does not expect. The LB runs at the
//! default log level, as in production.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a scripted backend answers each connection.
#[derive(Clone)]
enum Answer {
    /// Reads the CONNECT, then closes without a byte.
    Close,
    /// Reads the CONNECT, answers text.
    Garbage,
    /// Reads the CONNECT, answers a CONNACK with this return code.
    Connack(u8),
    /// Reads the CONNECT, then says nothing (until the LB gives up).
    Silent,
    /// A TLS server: the handshake fails on the LB's plain CONNECT.
    Tls(Arc<rustls::ServerConfig>),
}

async fn scripted(answer: Answer) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                if let Answer::Tls(cfg) = answer {
                    let _ = tokio_rustls::TlsAcceptor::from(cfg).accept(c).await;
                    return;
                }
                let mut buf = [0u8; 1024];
                if !matches!(c.read(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
                match answer {
                    Answer::Garbage => {
                        let _ = c.write_all(b"garbage\r\n").await;
                    }
                    Answer::Connack(code) => {
                        let _ = c.write_all(&[0x20, 2, 0, code]).await;
                    }
                    Answer::Silent => tokio::time::sleep(Duration::from_secs(5)).await,
                    Answer::Close | Answer::Tls(_) => {}
                }
            });
        }
    });
    addr
}

fn tls_server(pki: &Pki) -> Arc<rustls::ServerConfig> {
    use mqedge_shared::tls::*;
    server_config(
        load_certs(std::path::Path::new(&pki.file("server.pem"))).unwrap(),
        load_key(std::path::Path::new(&pki.file("server.key"))).unwrap(),
        None,
        ClientAuth::None,
        &[],
    )
    .unwrap()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_checks_say_what_came_and_what_to_do() {
    let dir = TempDir::new("detail");
    let pki = Pki::new(dir.path(), &[]);
    let good = MockBroker::start("good", false).await;
    let mosquitto = Mosquitto::start();
    let backends: Vec<(&str, SocketAddr, &str)> = vec![
        ("good", good.addr, "none"),
        ("closer", scripted(Answer::Close).await, "none"),
        ("garbage", scripted(Answer::Garbage).await, "none"),
        ("unavailable", scripted(Answer::Connack(3)).await, "none"),
        ("refuses", scripted(Answer::Connack(5)).await, "none"),
        ("tls", scripted(Answer::Tls(tls_server(&pki))).await, "none"),
        ("silent", scripted(Answer::Silent).await, "none"),
        ("mosq-v2", mosquitto.addr, "v2"),
    ];
    let mut text = String::from(
        r#"[lb]
name = "detail"
admin = "127.0.0.1:0"

[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"

[health]
kind = "mqtt"
interval = "300ms"
timeout = "500ms"
"#,
    );
    for (n, a, pp) in &backends {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{n}\"\naddr = \"{a}\"\nproxy_protocol = \"{pp}\"\n"
        ));
    }
    let cfg = dir.write("lb.toml", &text);
    let started = unix_ms();
    // the default log level, as an operator runs it
    let mut cmd = Command::new(bin());
    cmd.arg("lb").arg("-c").arg(&cfg).env_remove("RUST_LOG");
    let lb = Lb {
        proc: Proc::spawn("lb", cmd),
        config: cfg.clone(),
    };
    lb.proc.wait_log("listening", Duration::from_secs(20));
    let admin = lb.admin();
    // two rounds of checks at least
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = get_json(admin, "/api/backends");
    let b = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {v}"))
            .clone()
    };
    let error = |name: &str| {
        b(name)["last_check_error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    eprintln!("{v:#}");

    // healthy: a plausible duration and time, no error
    let g = b("good");
    assert_eq!(g["state"], "up", "{g}");
    let ms = g["last_check_ms"].as_f64().unwrap();
    assert!(ms > 0.0 && ms < 500.0, "last_check_ms {ms}");
    let at = g["last_check_at"].as_u64().unwrap();
    assert!(at >= started && at <= unix_ms(), "last_check_at {at}");
    assert!(g["last_check_error"].is_null(), "{g}");

    // a refused check client is still a working broker
    assert_eq!(b("refuses")["state"], "up", "{}", b("refuses"));
    assert!(b("refuses")["last_check_error"].is_null());

    for (name, needles) in [
        (
            "closer",
            &[
                "expected a CONNACK, but the backend closed the connection after 0 bytes",
                "PROXY header",
                "TLS",
            ][..],
        ),
        (
            "garbage",
            &[
                "expected a CONNACK (0x20), got bytes 67 61 72 62 (\"garb\"), which is not MQTT",
                "MQTT listener",
            ][..],
        ),
        (
            "unavailable",
            &["CONNACK return code 3 (server unavailable)"][..],
        ),
        (
            "tls",
            &["expected a CONNACK (0x20), got a TLS alert", "speaks TLS"][..],
        ),
        (
            "silent",
            &["expected a CONNACK, got 0 bytes and then nothing within 500ms"][..],
        ),
        (
            "mosq-v2",
            &[
                "expected a CONNACK",
                "sends a PROXY v2 header: does the backend accept one",
            ][..],
        ),
    ] {
        assert_eq!(b(name)["state"], "down", "{}", b(name));
        let e = error(name);
        for n in needles {
            assert!(e.contains(n), "{name}: {n:?} not in {e:?}");
        }
        assert!(!e.contains("early eof"), "{name}: {e}");
        // the state change is logged at the default level, with the same text
        let line = lb.proc.wait_log(
            &format!("backend state changed backend={name} "),
            Duration::from_secs(2),
        );
        assert!(line.contains("WARN") && line.contains(needles[0]), "{line}");
        let ms = b(name)["last_check_ms"].as_f64().unwrap();
        assert!(ms > 0.0 && ms < 1000.0, "{name}: last_check_ms {ms}");
    }
    // per-check lines are debug: not at the default level
    assert_eq!(
        lb.proc.count_log("health check failed"),
        0,
        "{}",
        lb.proc.logs()
    );
    let up = lb.proc.wait_log(
        "backend state changed backend=good ",
        Duration::from_secs(1),
    );
    assert!(up.contains("INFO") && up.contains("state=\"up\""), "{up}");
}
