//! The TLS stream against tokio-rustls clients over real sockets.

use super::handshake::prepare;
use super::*;
use crate::conn::tls::TlsFacts;
use mqedge_shared::certs::DevPki;
use mqedge_shared::tls::{
    certs_from_pem, client_config, key_from_pem, root_store, server_config, ClientAuth,
};
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Setup {
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    pki: DevPki,
    client_pem: (String, String),
}

fn setup(alpn: &[String]) -> Setup {
    let pki = DevPki::new(&[]).unwrap();
    let (cpem, ckey) = pki.client("device-7").unwrap();
    let ca = certs_from_pem(&pki.ca_pem).unwrap();
    let server = server_config(
        certs_from_pem(&pki.server_pem).unwrap(),
        key_from_pem(&pki.server_key_pem).unwrap(),
        Some(ca.clone()),
        ClientAuth::Required,
        alpn,
    )
    .unwrap();
    let client = client_config(
        ca,
        Some((certs_from_pem(&cpem).unwrap(), key_from_pem(&ckey).unwrap())),
    )
    .unwrap();
    Setup {
        server: prepare(server),
        client,
        pki,
        client_pem: (cpem, ckey),
    }
}

/// Accepts one connection and echoes until EOF, then sends close_notify; returns its facts.
async fn echo_server(l: TcpListener, sc: Arc<ServerConfig>) -> io::Result<TlsFacts> {
    let (tcp, _) = l.accept().await?;
    let mut t = TlsConn::accept(sc, tcp, Vec::new()).await?;
    let facts = t.facts();
    let mut buf = [0u8; 8192];
    loop {
        let n = t.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        t.write_all(&buf[..n]).await?;
    }
    t.shutdown().await?;
    Ok(facts)
}

/// An echo server on a fresh 127.0.0.1 port, for one connection.
async fn start_echo(
    s: &Setup,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<io::Result<TlsFacts>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, tokio::spawn(echo_server(l, s.server.clone())))
}

async fn client(
    cfg: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn payload(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Sends `data` in uneven pieces while reading the echo concurrently; checks it all came back.
async fn stream_round_trip(c: tokio_rustls::client::TlsStream<TcpStream>, data: Vec<u8>) {
    let (mut r, mut w) = tokio::io::split(c);
    let total = data.len();
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(total);
        r.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut off = 0;
    let mut step = 1;
    while off < data.len() {
        let end = (off + step).min(data.len());
        w.write_all(&data[off..end]).await.unwrap();
        off = end;
        step = (step * 7 + 13) % 40_000 + 1;
    }
    // our close_notify must reach the server as EOF, and its close_notify must end our read
    w.shutdown().await.unwrap();
    let got = reader.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo differs");
}

#[tokio::test]
async fn echoes_both_ways_with_facts_and_clean_close() {
    let s = setup(&["mqtt".to_string()]);
    let mut ccfg = (*s.client).clone();
    ccfg.alpn_protocols = vec![b"mqtt".to_vec()];
    let (addr, srv) = start_echo(&s).await;
    let c = client(Arc::new(ccfg), addr).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        stream_round_trip(c, payload(3 * 1024 * 1024 + 17)),
    )
    .await
    .unwrap();
    let facts = srv.await.unwrap().unwrap();
    assert_eq!(facts.sni.as_deref(), Some("localhost"));
    assert_eq!(facts.alpn.as_deref(), Some(&b"mqtt"[..]));
    assert_eq!(facts.version, "TLSv1.3");
    assert_eq!(facts.cert.and_then(|c| c.cn).as_deref(), Some("device-7"));
}

#[tokio::test]
async fn tls12_round_trip() {
    let s = setup(&[]);
    let ccfg = rustls::ClientConfig::builder_with_provider(mqedge_shared::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root_store(certs_from_pem(&s.pki.ca_pem).unwrap()).unwrap())
        .with_client_auth_cert(
            certs_from_pem(&s.client_pem.0).unwrap(),
            key_from_pem(&s.client_pem.1).unwrap(),
        )
        .unwrap();
    let (addr, srv) = start_echo(&s).await;
    let c = client(Arc::new(ccfg), addr).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        stream_round_trip(c, payload(300_001)),
    )
    .await
    .unwrap();
    let facts = srv.await.unwrap().unwrap();
    assert_eq!(facts.version, "TLSv1.2");
    assert_eq!(facts.sni.as_deref(), Some("localhost"));
}

#[tokio::test]
async fn client_key_updates_are_followed() {
    let s = setup(&[]);
    let (addr, srv) = start_echo(&s).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = tokio_rustls::TlsConnector::from(s.client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let run = async {
        for round in 0..20u32 {
            let msg = payload(100 + round as usize * 997);
            c.write_all(&msg).await.unwrap();
            c.flush().await.unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg, "round {round}");
            // rotate the client's keys; the server must follow (and answer with its own)
            c.get_mut().1.refresh_traffic_keys().unwrap();
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap();
    srv.await.unwrap().unwrap();
}

#[tokio::test]
async fn garbage_and_missing_client_cert_fail_the_handshake() {
    let s = setup(&[]);
    let (addr, srv) = start_echo(&s).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00 plain MQTT to a TLS port")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), srv)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

    // a client without a certificate is refused by the required client auth
    let (addr, srv) = start_echo(&s).await;
    let anon = client_config(certs_from_pem(&s.pki.ca_pem).unwrap(), None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let c = tokio_rustls::TlsConnector::from(anon)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    // TLS 1.3: the client learns of the refusal on its first read, from the alert
    let mut c = c.expect("TLS 1.3 completes the client's side before the server decides");
    let _ = c.write_all(b"x").await;
    let mut b = [0u8; 8];
    let r = c.read(&mut b).await;
    let msg = format!("{r:?}");
    assert!(
        msg.contains("CertificateRequired"),
        "the client must get the certificate_required alert, got {msg}"
    );
    let err = tokio::time::timeout(Duration::from_secs(5), srv)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[tokio::test]
async fn garbage_after_the_handshake_is_an_error_not_a_panic() {
    let s = setup(&[]);
    for garbage in [
        &b"\x17\x03\x03\x00\x20not a sealed record at all, 32 b"[..],
        &b"\x16\x03\x03\x40\x00"[..], // a handshake record header announcing 16 KiB
        &[0xffu8; 300][..],
    ] {
        let (addr, srv) = start_echo(&s).await;
        let c = client(s.client.clone(), addr).await;
        let (mut tcp, _) = c.into_inner();
        tcp.write_all(garbage).await.unwrap();
        let _ = tcp.shutdown().await;
        let r = tokio::time::timeout(Duration::from_secs(5), srv)
            .await
            .expect("the server ends")
            .expect("no panic");
        assert!(r.is_err(), "garbage {garbage:?} was accepted");
    }
}

#[tokio::test]
async fn idle_connection_keeps_no_buffers() {
    let s = setup(&[]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sc = s.server.clone();
    let srv = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut t = TlsConn::accept(sc, tcp, Vec::new()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = t.read(&mut buf).await.unwrap();
        t.write_all(&buf[..n]).await.unwrap();
        t.flush().await.unwrap();
        let lean = matches!(t.session, Session::Lean(_));
        (
            t.incoming.capacity(),
            t.plain.capacity(),
            t.outgoing.capacity(),
            lean,
        )
    });
    let mut c = client(s.client.clone(), addr).await;
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    let caps = tokio::time::timeout(Duration::from_secs(5), srv)
        .await
        .unwrap()
        .unwrap();
    // no buffers, and rustls' connection gave way to the bare record keys (`lean.rs`)
    assert_eq!(caps, (0, 0, 0, true));
}

/// A TLS 1.3 handshake's session tickets wait, through the first read, for the first
/// application data and go out in its write (one send and one wake-up of the client instead of
/// two); the client still gets them: its next connection resumes.
#[tokio::test]
async fn session_tickets_go_out_with_the_first_write() {
    let s = setup(&[]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sc = s.server.clone();
    let srv = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = l.accept().await.unwrap();
            let mut t = TlsConn::accept(sc.clone(), tcp, Vec::new()).await.unwrap();
            let mut buf = [0u8; 64];
            let n = t.read(&mut buf).await.unwrap();
            held.push(t.hold_out && !t.outgoing.is_empty());
            t.write_all(&buf[..n]).await.unwrap();
            held.push(t.hold_out || !t.outgoing.is_empty());
            t.shutdown().await.unwrap();
        }
        held
    });
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut c = client(s.client.clone(), addr).await;
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        kinds.push(c.get_ref().1.handshake_kind());
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
    }
    let held = tokio::time::timeout(Duration::from_secs(5), srv)
        .await
        .unwrap()
        .unwrap();
    // held after the read, all written with the echo, on both connections
    assert_eq!(held, [true, false, true, false]);
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed)]);
}

/// An idle TLS 1.3 connection holds [`TlsConn`] and, boxed, [`lean::Records`] (two AEAD keys,
/// IVs, sequence numbers and traffic secrets) instead of rustls' connection (1,088 bytes inline
/// and ~2.4 KiB behind it). Budgets a little above the sizes measured on x86_64 with rustc 1.95
/// (176 and 264 bytes), so that growing them is a decision.
#[test]
#[cfg(target_pointer_width = "64")]
fn tls_state_stays_small() {
    let conn = std::mem::size_of::<TlsConn>();
    let records = super::lean::size_of_records();
    assert!(conn <= 184, "TlsConn is {conn} bytes (budget 184)");
    assert!(
        records <= 272,
        "lean::Records is {records} bytes (budget 272)"
    );
}
