//! Identity beyond the CN (issue 16, item 6), over real sockets: an mTLS device whose
//! certificate has a full subject DN and URI and DNS SANs connects through `mqedge lb` (PROXY v2
//! with the `0xE0` fingerprint, `0xE1` DN and `0xE2` SAN TLVs) to broker listeners with
//! `username_from = "san_uri"`, `"fingerprint"` and `"dn"`: `/api/clients` shows that username
//! and the ACL's `user` block for it (and a `%u` pattern, for the fingerprint) grants its topics
//! and nothing else. A device without a URI SAN is refused (v3.1.1 code 5, v5 `0x87`) and counted as
//! `certificate identity missing`; so is every device on a backend whose `proxy_tlvs` leaves
//! the DN out. The LB and broker run in-process.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use mqedge_protocol::Version;
use mqedge_shared::proxy::{SanKind, SslInfo};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const URI: &str = "spiffe://acme.example/sensor/7";
const DN: &str = "CN=sensor-7,OU=Floor 2,O=Acme\\, Inc.,C=DE";

/// `sensor-7.pem`/`.key` beside the dev PKI's files, signed by its CA: a subject of four RDNs
/// and the SANs URI, DNS; returns the certificate's SHA-256 as lowercase hex.
fn issue_sensor(pki: &Pki) -> String {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.file("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(pki.file("ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CountryName, "DE");
    p.distinguished_name
        .push(DnType::OrganizationName, "Acme, Inc.");
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "Floor 2");
    p.distinguished_name.push(DnType::CommonName, "sensor-7");
    p.subject_alt_names = vec![
        SanType::URI(URI.try_into().unwrap()),
        SanType::DnsName("sensor-7.acme.example".try_into().unwrap()),
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(pki.file("sensor-7.pem"), cert.pem()).unwrap();
    std::fs::write(pki.file("sensor-7.key"), key.serialize_pem()).unwrap();
    let der = mqedge_shared::tls::load_certs(Path::new(&pki.file("sensor-7.pem"))).unwrap();
    sha2::Sha256::digest(der[0].as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The broker: one PROXY listener per `username_from` value, and an ACL keyed on each.
fn broker_cfg(dir: &TempDir, fp: &str) -> std::path::PathBuf {
    dir.write(
        "acl",
        &format!(
            "topic read public/#\n\
             pattern readwrite byfp/%u/#\n\
             user {URI}\ntopic readwrite sensors/7/#\n\
             user {DN}\ntopic readwrite dn/#\n\
             user {fp}\ntopic readwrite fp/#\n"
        ),
    );
    let listener = |name: &str, from: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = \"required\"\n\
             trusted_proxies = [\"127.0.0.1/32\"]\nusername_from = \"{from}\"\n\n"
        )
    };
    dir.write(
        "b.toml",
        &format!(
            "[node]\nname = \"node1\"\nadmin = \"127.0.0.1:0\"\n\n{}{}{}\
             [auth]\nallow_anonymous = false\nacl_file = \"acl\"\n",
            listener("uri", "san_uri"),
            listener("fp", "fingerprint"),
            listener("dn", "dn"),
        ),
    )
}

/// An LB in front of one broker listener, with `tlvs` as the backend's `proxy_tlvs` line.
fn lb_in_front(dir: &TempDir, pki: &Pki, name: &str, to: SocketAddr, tlvs: &str) -> InProcLb {
    let cfg = lb_config(pki, "required", "client_id", &[("node1", to, "v2")], "")
        .replace("kind = \"tcp\"", "kind = \"mqtt\"");
    InProcLb::start(&dir.write(&format!("{name}.toml"), &format!("{cfg}{tlvs}")))
}

/// A client with `cert`'s certificate through `lb`: the CONNACK code.
async fn connack(lb: SocketAddr, pki: &Pki, cert: &str, id: &str, v: Version) -> u8 {
    let tls = tls_from(None, lb, pki.client_config(Some(cert)))
        .await
        .unwrap();
    Raw::new(tls, v).connect(id, true, 30).await.code
}

/// sensor-7 through `lb` as `id`: named `user`, granted `own` and refused `other`.
async fn served_as(lb: SocketAddr, pki: &Pki, id: &str, admin: SocketAddr, user: &str, own: &str) {
    let tls = tls_from(None, lb, pki.client_config(Some("sensor-7")))
        .await
        .unwrap();
    let mut c = Raw::new(tls, Version::V311);
    assert_eq!(c.connect(id, true, 30).await.code, 0, "CONNACK for {id}");
    let v = get_json(admin, &format!("/api/clients/{id}"));
    assert_eq!(v["username"], user, "{v}");
    let codes = c
        .subscribe(1, &[(own, 1), ("sensors/8/#", 1), ("public/x", 0)])
        .await;
    assert_eq!(codes, vec![1, 0x80, 0], "{id}: SUBACK for {own}");
    let topic = own.trim_end_matches('#').to_string() + "state";
    c.publish(&topic, b"up", 1, Some(5), false).await;
    c.publish("sensors/8/state", b"no", 1, Some(6), false).await;
    let got: Vec<String> = c
        .collect(Duration::from_millis(400))
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(got, vec![topic], "{id}");
}

fn rejected(admin: SocketAddr) -> f64 {
    let m = parse_prometheus(&http("GET", admin, "/metrics").1);
    metric(
        &m,
        "mqedge_broker_connections_rejected_total",
        &["certificate identity missing"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dn_a_san_uri_or_the_fingerprint_becomes_the_username() {
    let dir = TempDir::new("cert-identity");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let fp = issue_sensor(&pki);
    let b = InProcBroker::start(&broker_cfg(&dir, &fp));
    let admin = b.admin();
    let to_uri = lb_in_front(&dir, &pki, "lb-uri", b.addr_of("uri"), "");
    let to_fp = lb_in_front(&dir, &pki, "lb-fp", b.addr_of("fp"), "");
    let to_dn = lb_in_front(&dir, &pki, "lb-dn", b.addr_of("dn"), "");

    served_as(
        to_uri.addr("mqtts"),
        &pki,
        "s7-uri",
        admin,
        URI,
        "sensors/7/#",
    )
    .await;
    served_as(to_dn.addr("mqtts"), &pki, "s7-dn", admin, DN, "dn/#").await;
    served_as(to_fp.addr("mqtts"), &pki, "s7-fp", admin, &fp, "fp/#").await;
    // the fingerprint has no '/', '+' or '#': `%u` patterns apply to it
    served_as(
        to_fp.addr("mqtts"),
        &pki,
        "s7-fp2",
        admin,
        &fp,
        &format!("byfp/{fp}/#"),
    )
    .await;

    // device-1 has a DNS SAN only: refused on the san_uri listener, in both layouts
    let before = rejected(admin);
    let lb = to_uri.addr("mqtts");
    // 3.1.1, read off the wire: CONNACK return code 5 (not authorized)
    let mut tls = tls_from(None, lb, pki.client_config(Some("device-1")))
        .await
        .unwrap();
    tls.write_all(&mqedge_protocol::peek::encode_connect(4, "d1", None, 30))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut ack))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 5]);
    assert_eq!(connack(lb, &pki, "device-1", "d1", Version::V5).await, 0x87);
    assert!(
        eventually(Duration::from_secs(3), || rejected(admin) >= before + 2.0).await,
        "two refusals counted as certificate identity missing"
    );
    assert_eq!(http("GET", admin, "/api/clients/d1").0, 404);
    // while the same device is served where its field exists
    assert_eq!(
        connack(to_fp.addr("mqtts"), &pki, "device-1", "d1", Version::V311).await,
        0
    );
}

/// `proxy_tlvs` picks what the backend learns: without "dn" the DN listener refuses every
/// device, and the header the backend gets has no 0xE1 (read with the shared parser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_tlvs_leave_out_what_the_backend_is_not_sent() {
    let dir = TempDir::new("cert-identity-tlvs");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let fp = issue_sensor(&pki);
    let b = InProcBroker::start(&broker_cfg(&dir, &fp));
    let lb = lb_in_front(
        &dir,
        &pki,
        "lb-cn",
        b.addr_of("dn"),
        "proxy_tlvs = [\"cn\", \"san\"]\n",
    );
    assert_eq!(
        connack(lb.addr("mqtts"), &pki, "sensor-7", "s7", Version::V5).await,
        0x87
    );
    assert!(eventually(Duration::from_secs(3), || rejected(b.admin()) >= 1.0).await);

    // what such a backend sees
    let mock = MockBroker::start("m", true).await;
    let lb2 = lb_in_front(&dir, &pki, "lb-mock", mock.addr, "proxy_tlvs = [\"san\"]\n");
    let tls = tls_from(None, lb2.addr("mqtts"), pki.client_config(Some("sensor-7")))
        .await
        .unwrap();
    let mut c = Raw::new(tls, Version::V311);
    assert_eq!(c.connect("s7-mock", true, 30).await.code, 0);
    let ssl: SslInfo = mock.seen_by("s7-mock").await.proxy.unwrap().ssl.unwrap();
    assert_eq!(
        (
            ssl.cn.as_deref(),
            ssl.cert_sha256,
            ssl.identity.dn.as_deref()
        ),
        (None, None, None)
    );
    assert_eq!(ssl.identity.first_san(SanKind::Uri), Some(URI));
    assert_eq!(
        ssl.identity.first_san(SanKind::Dns),
        Some("sensor-7.acme.example")
    );
}
