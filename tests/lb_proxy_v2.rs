//! The PROXY v2 header the LB writes in front of a client's CONNECT, as a broker behind it sees
//! it: real client addresses from several 127.0.0.x sources, the TLS facts of the client
//! certificate (flags, verify, CN, version, SHA-256), ALPN, SNI and the connection id; the raw
//! layout read with `ppp` directly; and the same client sent through a real HAProxy
//! (`send-proxy-v2-ssl-cn`) to compare the two headers byte structure by byte structure. The LB
//! runs in-process except where a test reads its log.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqedge_shared::proxy::{CertIdentity, ProxyInfo, San, SanKind, SslInfo};
use sha2::Digest;

/// A rustls client config trusting the dev CA, presenting `cn`'s certificate (or none), and
/// offering ALPN `mqtt` like a real MQTT-over-TLS client.
fn mqtt_tls(pki: &Pki, cn: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*pki.client_config(cn)).clone();
    cfg.alpn_protocols = vec![b"mqtt".to_vec()];
    Arc::new(cfg)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// SHA-256 of the first certificate in a PEM file, computed here independently of the LB.
fn cert_sha256(pem: &str) -> [u8; 32] {
    let certs = mqedge_shared::tls::load_certs(Path::new(pem)).unwrap();
    sha2::Sha256::digest(certs[0].as_ref()).into()
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The top-level TLVs of a raw v2 header, read with `ppp` (not with mqedge's own parser).
fn raw_tlvs(raw: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let h = ppp::v2::Header::try_from(raw)
        .unwrap_or_else(|e| panic!("ppp refuses the header ({e}): {}", hex(raw)));
    assert_eq!(h.command, ppp::v2::Command::Proxy, "{}", hex(raw));
    h.tlvs()
        .map(|t| {
            let t = t.unwrap_or_else(|e| panic!("bad TLV ({e}) in {}", hex(raw)));
            (t.kind, t.value.to_vec())
        })
        .collect()
}

fn kinds(tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    tlvs.iter().map(|(k, _)| *k).collect()
}

/// The value of the `PP2_TYPE_SSL` TLV.
fn ssl_value(tlvs: &[(u8, Vec<u8>)], raw: &[u8]) -> Vec<u8> {
    tlvs.iter()
        .find(|(k, _)| *k == 0x20)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no SSL TLV in {}", hex(raw)))
}

/// The sub-TLVs of an SSL TLV value (after client flags and verify), as (kind, value).
fn ssl_subs(v: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = &v[5..];
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        assert!(
            rest.len() >= 3 + len,
            "sub-TLV overruns the SSL TLV: {}",
            hex(v)
        );
        out.push((rest[0], rest[3..3 + len].to_vec()));
        rest = &rest[3 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes in SSL TLV: {}", hex(v));
    out
}

/// A TLS client from `src`: handshake, CONNECT, CONNACK 0. Returns the stream (kept open by the
/// caller) and the client's local address.
async fn tls_client(
    src: &str,
    dst: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    client_id: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    SocketAddr,
) {
    let mut s = tls_from(Some(ip(src)), dst, cfg)
        .await
        .unwrap_or_else(|e| panic!("TLS from {src} to {dst}: {e}"));
    let local = s.get_ref().0.local_addr().unwrap();
    assert_eq!(local.ip(), ip(src));
    let code = mqtt_connect(&mut s, client_id).await.unwrap();
    assert_eq!(code, 0, "CONNACK for {client_id}");
    (s, local)
}

/// On the binary: the connection id is looked up in the LB's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_with_certs_reach_the_broker_with_their_address_and_certificate() {
    let dir = TempDir::new("pp2-cert");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let broker = MockBroker::start("b1", true).await;
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "optional",
            "client_id",
            &[("b1", broker.addr, "v2")],
            "",
        ),
    );
    let lb = Lb::start(&cfg);
    let tls = lb.addr("mqtts");
    let fingerprint = cert_sha256(&pki.file("device-1.pem"));
    let client = mqtt_tls(&pki, Some("device-1"));

    let mut open = Vec::new();
    let mut ids = BTreeSet::new();
    for (n, src) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .into_iter()
        .enumerate()
    {
        let id = format!("pp2-cert-{n}");
        let (stream, local) = tls_client(src, tls, client.clone(), &id).await;
        open.push(stream);
        let seen = broker.seen_by(&id).await;
        let info = seen.proxy.clone().expect("the broker got a PROXY header");
        assert_eq!(
            info.src,
            Some(local),
            "src is the client's own address and port"
        );
        assert_eq!(info.dst, Some(tls), "dst is the LB's TLS listener");
        assert_eq!(info.alpn.as_deref(), Some(&b"mqtt"[..]));
        assert_eq!(
            info.authority.as_deref(),
            Some("localhost"),
            "SNI as authority"
        );
        let uid = info.unique_id.clone().expect("unique id TLV");
        let uid = String::from_utf8(uid).expect("the connection id is text");
        assert!(
            uid.starts_with("test-edge-"),
            "connection id {uid:?} names the LB"
        );
        assert!(ids.insert(uid.clone()), "connection id {uid:?} repeated");
        let ssl = info.ssl.clone().expect("SSL TLV for a TLS client");
        assert_eq!(
            ssl,
            SslInfo {
                version: "TLSv1.3".into(),
                cipher: ssl.cipher.clone(),
                client_cert: true,
                verified: true,
                cn: Some("device-1".into()),
                cert_sha256: Some(fingerprint),
                identity: CertIdentity {
                    dn: Some("CN=device-1".into()),
                    sans: vec![San::new(SanKind::Dns, "device-1")],
                    sans_truncated: false,
                },
            },
            "from {src}"
        );
        assert!(ssl.cipher.starts_with("TLS_"), "cipher {:?}", ssl.cipher);

        // the raw layout, read with ppp itself
        let tlvs = raw_tlvs(&seen.proxy_raw);
        assert_eq!(
            kinds(&tlvs),
            [0x01, 0x02, 0x05, 0x20, 0xE0, 0xE1, 0xE2],
            "TLV order: {}",
            hex(&seen.proxy_raw)
        );
        let v = ssl_value(&tlvs, &seen.proxy_raw);
        assert_eq!(v[0], 0x07, "SSL | CERT_CONN | CERT_SESS: {}", hex(&v));
        assert_eq!(&v[1..5], &[0, 0, 0, 0], "verify 0 = verified: {}", hex(&v));
        let subs = ssl_subs(&v);
        assert_eq!(
            kinds(&subs),
            [0x21, 0x22, 0x23],
            "SSL sub-TLVs: {}",
            hex(&v)
        );
        assert_eq!(subs[1].1, b"device-1");
        let fp = &tlvs.iter().find(|(k, _)| *k == 0xE0).unwrap().1;
        assert_eq!(
            fp[..],
            fingerprint[..],
            "0xE0 carries the certificate's SHA-256"
        );
        // the same id is in the LB's log, so a broker log line can be joined with it
        lb.proc
            .wait_log(&format!("conn={uid}"), Duration::from_secs(5));
    }
    assert_eq!(broker.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_cert_and_plain_clients_get_honest_headers() {
    let dir = TempDir::new("pp2-nocert");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let broker = MockBroker::start("b1", true).await;
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "optional",
            "client_id",
            &[("b1", broker.addr, "v2")],
            "",
        ),
    );
    let lb = InProcLb::start(&cfg);

    // TLS without a client certificate on an `optional` listener
    let (_anon, local) = tls_client(
        "127.0.0.6",
        lb.addr("mqtts"),
        mqtt_tls(&pki, None),
        "pp2-anon",
    )
    .await;
    let seen = broker.seen_by("pp2-anon").await;
    let info = seen.proxy.clone().expect("PROXY header");
    assert_eq!(info.src, Some(local));
    let ssl = info.ssl.clone().expect("still a TLS client");
    assert!(!ssl.client_cert && !ssl.verified, "{ssl:?}");
    assert_eq!(ssl.cn, None);
    assert_eq!(ssl.cert_sha256, None);
    assert_eq!(ssl.version, "TLSv1.3");
    let tlvs = raw_tlvs(&seen.proxy_raw);
    assert_eq!(
        kinds(&tlvs),
        [0x01, 0x02, 0x05, 0x20],
        "no 0xE0 without a certificate: {}",
        hex(&seen.proxy_raw)
    );
    let v = ssl_value(&tlvs, &seen.proxy_raw);
    assert_eq!(v[0], 0x01, "only PP2_CLIENT_SSL: {}", hex(&v));
    assert_ne!(
        &v[1..5],
        &[0, 0, 0, 0],
        "verify must not claim success without a certificate"
    );
    assert!(
        !kinds(&ssl_subs(&v)).contains(&0x22),
        "no CN sub-TLV: {}",
        hex(&v)
    );

    // plain TCP listener: addresses and the connection id, nothing about TLS
    let mut plain = tcp_from(Some(ip("127.0.0.7")), lb.addr("mqtt"))
        .await
        .unwrap();
    let local = plain.local_addr().unwrap();
    assert_eq!(mqtt_connect(&mut plain, "pp2-plain").await.unwrap(), 0);
    let seen = broker.seen_by("pp2-plain").await;
    let info = seen.proxy.clone().expect("PROXY header");
    assert_eq!(info.src, Some(local));
    assert_eq!(info.dst, Some(lb.addr("mqtt")));
    assert_eq!(info.ssl, None);
    assert_eq!(info.alpn, None);
    assert_eq!(info.authority, None);
    assert_eq!(
        kinds(&raw_tlvs(&seen.proxy_raw)),
        [0x05],
        "{}",
        hex(&seen.proxy_raw)
    );
}

/// A real HAProxy in TCP mode terminating TLS and sending `send-proxy-v2-ssl-cn` to `backend`.
fn start_haproxy(dir: &TempDir, pki: &Pki, backend: SocketAddr) -> (Proc, SocketAddr) {
    let cert = std::fs::read_to_string(pki.file("server.pem")).unwrap();
    let key = std::fs::read_to_string(pki.file("server.key")).unwrap();
    let combined = dir.write(
        "haproxy-server.pem",
        &format!("{}\n{}", cert.trim_end(), key),
    );
    let port = free_port();
    let conf = dir.write(
        "haproxy.cfg",
        &format!(
            "global\n    maxconn 100\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend f\n    bind 127.0.0.1:{port} ssl crt {crt} ca-file {ca} verify optional alpn mqtt\n    default_backend b\n\n\
             backend b\n    server s1 {backend} send-proxy-v2-ssl-cn\n",
            crt = combined.display(),
            ca = pki.file("ca.pem"),
        ),
    );
    let mut cmd = Command::new(which("haproxy"));
    cmd.arg("-f").arg(&conf).arg("-db");
    let proc = Proc::spawn("haproxy", cmd);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, Duration::from_secs(10));
    (proc, addr)
}

// Observed with HAProxy 2.6.12 (Debian 12), `send-proxy-v2-ssl-cn`, `alpn mqtt` on the bind:
//   HAProxy sends  [0x01 ALPN "mqtt", 0x20 SSL{07, verify 0, 0x21 "TLSv1.3", 0x22 "device-1"}]
//   mqedge sends   [0x01 ALPN, 0x02 AUTHORITY "localhost", 0x05 UNIQUE_ID,
//                   0x20 SSL{07, verify 0, 0x21 "TLSv1.3", 0x22 "device-1", 0x23 cipher}, 0xE0 SHA-256,
//                   0xE1 "CN=device-1", 0xE2 SANs]
// HAProxy only adds AUTHORITY, UNIQUE_ID, the cipher and CRC32C when `proxy-v2-options` asks.
// Without a client certificate: HAProxy SSL{01, verify 0, 0x21 "TLSv1.3"}, mqedge SSL{01, verify 1, ...}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_and_mqedge_send_the_same_ssl_tlv_layout() {
    let dir = TempDir::new("pp2-haproxy");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let behind_haproxy = MockBroker::start("behind-haproxy", true).await;
    let behind_lb = MockBroker::start("behind-lb", true).await;
    let (haproxy, hap_addr) = start_haproxy(&dir, &pki, behind_haproxy.addr);
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "optional",
            "client_id",
            &[("b1", behind_lb.addr, "v2")],
            "",
        ),
    );
    let lb = InProcLb::start(&cfg);
    let client = mqtt_tls(&pki, Some("device-1"));

    let (_h, hap_local) = tls_client("127.0.0.8", hap_addr, client.clone(), "via-haproxy").await;
    let (_l, lb_local) = tls_client("127.0.0.8", lb.addr("mqtts"), client, "via-mqedge").await;
    let hap = behind_haproxy.seen_by("via-haproxy").await;
    let ours = behind_lb.seen_by("via-mqedge").await;
    let dumps = format!(
        "\nhaproxy: {}\nmqedge:  {}\nhaproxy log:\n{}",
        hex(&hap.proxy_raw),
        hex(&ours.proxy_raw),
        haproxy.logs()
    );
    eprintln!("PROXY v2 headers:{dumps}");

    // one parser reads both
    let hap_info: ProxyInfo = hap.proxy.clone().expect("HAProxy's header parses");
    let our_info: ProxyInfo = ours.proxy.clone().expect("mqedge's header parses");
    assert_eq!(hap_info.src, Some(hap_local), "{dumps}");
    assert_eq!(our_info.src, Some(lb_local), "{dumps}");
    assert_eq!(hap_info.dst, Some(hap_addr), "{dumps}");
    let (hs, os) = (hap_info.ssl.clone().unwrap(), our_info.ssl.clone().unwrap());
    assert_eq!(hs.cn, os.cn, "{dumps}");
    assert_eq!(os.cn.as_deref(), Some("device-1"));
    assert_eq!(hs.version, os.version, "{dumps}");
    assert_eq!(
        (hs.client_cert, hs.verified),
        (os.client_cert, os.verified),
        "{dumps}"
    );
    if hap_info.alpn.is_some() {
        assert_eq!(hap_info.alpn, our_info.alpn, "{dumps}");
    }

    // the SSL TLV's structure, byte by byte where both define it
    let (hap_tlvs, our_tlvs) = (raw_tlvs(&hap.proxy_raw), raw_tlvs(&ours.proxy_raw));
    let (hv, ov) = (
        ssl_value(&hap_tlvs, &hap.proxy_raw),
        ssl_value(&our_tlvs, &ours.proxy_raw),
    );
    assert_eq!(hv[0], 0x07, "HAProxy client flags{dumps}");
    assert_eq!(hv[0], ov[0], "client flags{dumps}");
    assert_eq!(&hv[1..5], &[0, 0, 0, 0], "HAProxy verify{dumps}");
    assert_eq!(hv[1..5], ov[1..5], "verify{dumps}");
    let (hsub, osub) = (ssl_subs(&hv), ssl_subs(&ov));
    for kind in [0x21, 0x22] {
        let h = hsub.iter().find(|(k, _)| *k == kind).map(|(_, v)| v);
        let o = osub.iter().find(|(k, _)| *k == kind).map(|(_, v)| v);
        assert!(
            h.is_some() && h == o,
            "sub-TLV {kind:#04x}: haproxy {h:?} mqedge {o:?}{dumps}"
        );
    }
    let (hsk, osk): (BTreeSet<u8>, BTreeSet<u8>) = (
        kinds(&hsub).into_iter().collect(),
        kinds(&osub).into_iter().collect(),
    );
    assert!(
        hsk.is_subset(&osk),
        "HAProxy SSL sub-TLVs {hsk:x?} not all sent by mqedge {osk:x?}{dumps}"
    );
    // sub-TLVs come in the same relative order
    let common_order = |subs: &[(u8, Vec<u8>)], keep: &BTreeSet<u8>| -> Vec<u8> {
        subs.iter()
            .map(|(k, _)| *k)
            .filter(|k| keep.contains(k))
            .collect()
    };
    let shared: BTreeSet<u8> = hsk.intersection(&osk).copied().collect();
    assert_eq!(
        common_order(&hsub, &shared),
        common_order(&osub, &shared),
        "{dumps}"
    );

    // top level: everything HAProxy sends, mqedge sends too (CRC32C and NOOP aside)
    let hk: BTreeSet<u8> = kinds(&hap_tlvs).into_iter().collect();
    let mut allowed: BTreeSet<u8> = kinds(&our_tlvs).into_iter().collect();
    allowed.extend([0x03, 0x04]);
    assert!(
        hk.is_subset(&allowed),
        "HAProxy TLVs {hk:x?} vs mqedge {allowed:x?}{dumps}"
    );
    assert!(hk.contains(&0x20), "{dumps}");

    // without a client certificate both send only PP2_CLIENT_SSL and no CN. The verify field
    // differs: HAProxy 2.6 sends 0 (OpenSSL's X509_V_OK: nothing failed), mqedge sends 1, as the
    // PROXY spec words it ("zero if the client presented a certificate and it was successfully
    // verified") and as DESIGN.md asks. Brokers must read the client flags, not verify alone.
    let anon = mqtt_tls(&pki, None);
    let (_ha, _) = tls_client("127.0.0.9", hap_addr, anon.clone(), "anon-via-haproxy").await;
    let (_la, _) = tls_client("127.0.0.9", lb.addr("mqtts"), anon, "anon-via-mqedge").await;
    let (ha, la) = (
        behind_haproxy.seen_by("anon-via-haproxy").await,
        behind_lb.seen_by("anon-via-mqedge").await,
    );
    let dumps = format!(
        "\nhaproxy: {}\nmqedge:  {}",
        hex(&ha.proxy_raw),
        hex(&la.proxy_raw)
    );
    let (ht, lt) = (raw_tlvs(&ha.proxy_raw), raw_tlvs(&la.proxy_raw));
    let (hv, lv) = (ssl_value(&ht, &ha.proxy_raw), ssl_value(&lt, &la.proxy_raw));
    assert_eq!(
        (hv[0], lv[0]),
        (0x01, 0x01),
        "client flags without a cert{dumps}"
    );
    assert_ne!(
        &lv[1..5],
        &[0, 0, 0, 0],
        "mqedge verify without a cert{dumps}"
    );
    for subs in [ssl_subs(&hv), ssl_subs(&lv)] {
        assert!(!kinds(&subs).contains(&0x22), "no CN without a cert{dumps}");
        assert!(kinds(&subs).contains(&0x21), "version still sent{dumps}");
    }
    assert!(!kinds(&lt).contains(&0xE0), "{dumps}");
}
