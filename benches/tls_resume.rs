//! A full TLS 1.3 handshake against a resumed one, on the LB's own listener config (the
//! certificate from `mqedge certs`, the ticketer and cache that `[listener.tls]` sets), in
//! memory: the handshake's CPU cost alone, both sides, with no sockets.
//! `cargo bench --bench tls_resume` (docs/operations.md "TLS session resumption").
//! `tls13_handshake/full_client_cert/server_side` is the crypto floor of the LB's full
//! handshake row in docs/benchmarks.md: the same listener config as `benches/compare.py`
//! (client certificates required), timing only the server's share of each handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::{ClientConnection, Connection, HandshakeKind, ServerConnection};

/// Sends what `from` has to write to `to`.
fn flight(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

/// Moves TLS records between the two sides until neither is handshaking, then the tickets
/// the server sends after it.
fn handshake(client: &mut Connection, server: &mut Connection) {
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        flight(client, server, &mut buf);
        flight(server, client, &mut buf);
    }
    flight(server, client, &mut buf);
}

fn connect(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> HandshakeKind {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).unwrap());
    let mut s = Connection::Server(ServerConnection::new(server.clone()).unwrap());
    handshake(&mut c, &mut s);
    match c {
        Connection::Client(c) => c.handshake_kind().unwrap(),
        Connection::Server(_) => unreachable!(),
    }
}

fn resume(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("mqedge-bench-tls-{}", std::process::id()));
    mqedge_shared::certs::generate(&dir, &Default::default()).unwrap();
    let toml = format!(
        "[[listener]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n",
        d = dir.display()
    );
    let cfg = mqedge_lb::config::Config::parse(&dir.join("lb.toml"), &toml).unwrap();
    let server = cfg.listeners[0].tls.as_ref().unwrap().server_config.clone();
    let ca = mqedge_shared::tls::load_certs(&dir.join("ca.pem")).unwrap();
    let fresh = || mqedge_shared::tls::client_config(ca.clone(), None).unwrap();

    c.bench_function("tls13_handshake/full", |b| {
        b.iter(|| assert_eq!(connect(&fresh(), &server), HandshakeKind::Full))
    });
    let client = fresh();
    assert_eq!(connect(&client, &server), HandshakeKind::Full);
    c.bench_function("tls13_handshake/resumed_ticket", |b| {
        b.iter(|| assert_eq!(connect(&client, &server), HandshakeKind::Resumed))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// One full handshake with a client certificate; returns the time the server side spent in
/// rustls (building its connection, reading each client flight, writing its own).
fn server_side(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) -> Duration {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut spent = t.elapsed();
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        spent += t.elapsed();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    spent
}

fn client_cert_floor(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("mqedge-bench-mtls-{}", std::process::id()));
    mqedge_shared::certs::generate(&dir, &Default::default()).unwrap();
    let toml = format!(
        "[[listener]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\nclient_ca = \"{d}/ca.pem\"\nclient_auth = \"required\"\n",
        d = dir.display()
    );
    let cfg = mqedge_lb::config::Config::parse(&dir.join("lb.toml"), &toml).unwrap();
    let server = cfg.listeners[0].tls.as_ref().unwrap().server_config.clone();
    let ca = mqedge_shared::tls::load_certs(&dir.join("ca.pem")).unwrap();
    let cert = mqedge_shared::tls::load_certs(&dir.join("client.pem")).unwrap();
    let key = mqedge_shared::tls::load_key(&dir.join("client.key")).unwrap();
    let client = mqedge_shared::tls::client_config(ca, Some((cert, key))).unwrap();
    // a fresh client config each time would resume nothing either; one is enough (no tickets
    // are kept: every handshake below is full)
    let client = {
        let mut c = (*client).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    c.bench_function("tls13_handshake/full_client_cert/server_side", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| server_side(&client, &server)).sum())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, resume, client_cert_floor);
criterion_main!(benches);
