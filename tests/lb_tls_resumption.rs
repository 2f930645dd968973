//! TLS session resumption at the LB (`[listener.tls] session_cache`, `tickets`;
//! docs/operations.md "TLS session resumption"): a reconnect storm of many devices resumes
//! (stateless tickets, not bounded by a cache), and the knobs do what they say.
//!
//! Each device is its own rustls client config, so its own session store, as separate devices
//! are. Each connects once (full handshake, CONNECT, CONNACK: the tickets arrive after the
//! handshake), then all reconnect.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{mqtt_connect, tls_from, wait_backend_state, InProcLb, MockBroker, Pki, TempDir};
use rustls::HandshakeKind;

const DEVICES: usize = 400;

fn config(pki: &Pki, backend: std::net::SocketAddr, tls_extra: &str) -> String {
    format!(
        "[lb]\nadmin = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
         [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"500ms\"\nrise = 1\n\n\
         [[backend]]\nname = \"b1\"\naddr = \"{backend}\"\n",
        pki.file("server.pem"),
        pki.file("server.key"),
    )
}

/// Connects every device twice; returns (resumed on the second round, seconds per full
/// handshake round, seconds per resumed round).
async fn storm(tls_extra: &str, tag: &str) -> (usize, f64, f64) {
    let dir = TempDir::new(tag);
    let pki = Pki::new(dir.path(), &[]);
    let mock = MockBroker::start("b1", false).await;
    let cfg = dir.write("lb.toml", &config(&pki, mock.addr, tls_extra));
    let lb = InProcLb::start(&cfg);
    wait_backend_state(lb.admin(), "b1", "up", Duration::from_secs(5));
    let addr = lb.addr("mqtts");
    let devices: Vec<Arc<rustls::ClientConfig>> =
        (0..DEVICES).map(|_| pki.client_config(None)).collect();
    let mut rounds = Vec::new();
    let mut resumed = 0;
    for round in 0..2 {
        let t0 = Instant::now();
        for (i, d) in devices.iter().enumerate() {
            let mut s = tls_from(None, addr, d.clone()).await.expect("handshake");
            if round == 1 && s.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                resumed += 1;
            }
            assert_eq!(mqtt_connect(&mut s, &format!("dev-{i}")).await.unwrap(), 0);
        }
        rounds.push(t0.elapsed().as_secs_f64());
    }
    (resumed, rounds[0], rounds[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_resumes_with_tickets() {
    let (resumed, full, again) = storm("", "resume-tickets").await;
    let share = resumed as f64 / DEVICES as f64;
    eprintln!(
        "{DEVICES} devices: {resumed} resumed ({:.1} %); first round {full:.2} s, reconnect round {again:.2} s",
        share * 100.0
    );
    assert!(share >= 0.95, "only {resumed} of {DEVICES} resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tickets_the_cache_bounds_resumption_and_zero_turns_it_off() {
    // sessions by id only: a cache that holds the storm resumes it...
    let (resumed, _, _) = storm("tickets = false\nsession_cache = 2000", "resume-cache").await;
    eprintln!("cache of 2000, no tickets: {resumed} of {DEVICES} resumed");
    assert!(resumed as f64 >= 0.95 * DEVICES as f64, "{resumed} resumed");
    // ...one smaller than the storm does not (each full handshake of the second round pushes
    // out the sessions of the devices after it: rustls' default of 256 is such a cache)
    let (resumed, _, _) = storm("tickets = false\nsession_cache = 100", "resume-small").await;
    eprintln!("cache of 100, no tickets: {resumed} of {DEVICES} resumed");
    assert!((resumed as f64) < 0.5 * DEVICES as f64, "{resumed} resumed");
    let (resumed, _, _) = storm("tickets = false\nsession_cache = 0", "resume-off").await;
    assert_eq!(resumed, 0, "resumption without a cache or tickets");
}

/// One connection of `device` through `addr`; whether it resumed.
async fn once(addr: std::net::SocketAddr, device: &Arc<rustls::ClientConfig>, id: &str) -> bool {
    let mut s = tls_from(None, addr, device.clone())
        .await
        .expect("handshake");
    let resumed = s.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    assert_eq!(mqtt_connect(&mut s, id).await.unwrap(), 0);
    resumed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_ticket_key_file_resumes_on_another_lb_and_survives_rotation() {
    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";
    let dir = TempDir::new("resume-shared");
    let pki = Pki::new(dir.path(), &[]);
    let mock = MockBroker::start("b1", false).await;
    let keys = dir.write("ticket.keys", &format!("{K1}\n"));
    let shared = format!("ticket_keys = \"{}\"", keys.display());
    let lb1 = InProcLb::start(&dir.write("lb1.toml", &config(&pki, mock.addr, &shared)));
    let lb2 = InProcLb::start(&dir.write("lb2.toml", &config(&pki, mock.addr, &shared)));
    let lb3 = InProcLb::start(&dir.write("lb3.toml", &config(&pki, mock.addr, "")));
    for lb in [&lb1, &lb2, &lb3] {
        wait_backend_state(lb.admin(), "b1", "up", Duration::from_secs(5));
    }
    let (a1, a2, a3) = (lb1.addr("mqtts"), lb2.addr("mqtts"), lb3.addr("mqtts"));

    // a ticket from LB1 resumes on LB2 (same key file), not on LB3 (its own key)
    let d = pki.client_config(None);
    assert!(!once(a1, &d, "d1").await, "first handshake resumed");
    assert!(once(a2, &d, "d1").await, "LB2 did not take LB1's ticket");
    let d = pki.client_config(None);
    assert!(!once(a1, &d, "d2").await);
    assert!(
        !once(a3, &d, "d2").await,
        "LB3 took a ticket it has no key for"
    );

    // rotation on LB2: a new key first, the old one still there; LB1's tickets still resume
    let d = pki.client_config(None);
    assert!(!once(a1, &d, "d3").await);
    std::fs::write(&keys, format!("{K2}\n{K1}\n")).unwrap();
    let t0 = std::time::Instant::now();
    while common::get_json(lb2.admin(), "/api/reload")["generation"] != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "LB2 did not reload the key file"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        once(a2, &d, "d3").await,
        "an old ticket did not survive the rotation"
    );
}
