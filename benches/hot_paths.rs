//! Micro-benchmarks of the LB's per-connection hot paths: the CONNECT peek (MQTT 3.1.1 and 5.0)
//! the PROXY v2 header encode with the SSL TLVs (and the certificate DN and SANs), the
//! certificate facts read once per handshake, and the client-certificate check of an mTLS
//! handshake: rustls' WebPKI verifier against mqedge's (basic constraints of every issuer, and
//! CRLs). (Hash picks: `benches/balance.rs`.)

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mqedge_protocol::peek::{encode_connect, encode_varint, peek_connect};
use mqedge_shared::proxy::{encode_v2, CertIdentity, ProxyInfo, San, SanKind, SslInfo};

fn v5_connect_with_props() -> Vec<u8> {
    // v5 CONNECT: session expiry + receive maximum properties, will with properties, user+password
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b1100_1110, 0, 60];
    body.extend_from_slice(&[8, 0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 20]);
    body.extend_from_slice(&[0, 17]);
    body.extend_from_slice(b"sensor-0042-eu-w1");
    body.extend_from_slice(&[0]);
    body.extend_from_slice(&[0, 11]);
    body.extend_from_slice(b"status/0042");
    body.extend_from_slice(&[0, 7]);
    body.extend_from_slice(b"offline");
    body.extend_from_slice(&[0, 6]);
    body.extend_from_slice(b"device");
    body.extend_from_slice(&[0, 8]);
    body.extend_from_slice(b"s3cr3t!!");
    let mut p = vec![0x10];
    encode_varint(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

fn peek(c: &mut Criterion) {
    let v311 = encode_connect(4, "sensor-0042-eu-w1", Some("device"), 60);
    let v5 = v5_connect_with_props();
    c.bench_function("peek_connect/3.1.1", |b| {
        b.iter(|| peek_connect(black_box(&v311), 65536))
    });
    c.bench_function("peek_connect/5.0_will_props", |b| {
        b.iter(|| peek_connect(black_box(&v5), 65536))
    });
}

fn proxy_v2(c: &mut Criterion) {
    let info = ProxyInfo {
        src: Some("203.0.113.7:50123".parse().unwrap()),
        dst: Some("198.51.100.1:8883".parse().unwrap()),
        alpn: Some(b"mqtt".to_vec()),
        authority: Some("mqtt.example.com".into()),
        unique_id: Some(b"edge-1-19a2b3c4d5e-123456".to_vec()),
        ssl: Some(SslInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            client_cert: true,
            verified: true,
            cn: Some("sensor-0042-eu-w1".into()),
            cert_sha256: Some([0xab; 32]),
            identity: Default::default(),
        }),
    };
    c.bench_function("proxy_v2_encode/ssl_cn_tlvs", |b| {
        b.iter(|| encode_v2(black_box(&info)))
    });
    // the same with the certificate's DN and two SANs (0xE1, 0xE2), as `proxy_tlvs` sends by default
    let mut with_id = info.clone();
    if let Some(ssl) = with_id.ssl.as_mut() {
        ssl.identity = CertIdentity {
            dn: Some("CN=sensor-0042-eu-w1,OU=Fleet EU-W,O=Acme\\, Inc.,C=DE".into()),
            sans: vec![
                San::new(SanKind::Uri, "spiffe://acme.example/sensor/0042"),
                San::new(SanKind::Dns, "sensor-0042.eu-w1.acme.example"),
            ],
            sans_truncated: false,
        };
    }
    c.bench_function("proxy_v2_encode/ssl_cn_dn_san_tlvs", |b| {
        b.iter(|| encode_v2(black_box(&with_id)))
    });
}

/// What the handshake adds per client certificate: one x509 parse for CN, RFC 4514 DN, SANs
/// and SHA-256 (`CertFacts::from_der`), for a dev client leaf (CN only).
fn cert_facts(c: &mut Criterion) {
    use mqedge_shared::certs::issue;
    let root = issue::root_ca("bench root", None).unwrap();
    let leaf = issue::client(&root, "bench-client").unwrap();
    let der = mqedge_shared::tls::certs_from_pem(&leaf.cert_pem)
        .unwrap()
        .remove(0);
    c.bench_function("cert_facts/from_der", |b| {
        b.iter(|| mqedge_shared::tls::CertFacts::from_der(black_box(der.as_ref())))
    });
}

/// A client certificate under a sub-CA of an unconstrained root: rustls' verifier, then ours
/// without and with a CRL (of the sub-CA, revoking another certificate).
fn client_chain(c: &mut Criterion) {
    use mqedge_shared::certs::issue;
    use mqedge_shared::tls::{self, chain::ClientChainVerifier};
    use rustls::server::danger::ClientCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    let root = issue::root_ca("bench root", None).unwrap();
    let sub = issue::sub_ca(&root, "bench sub", Some(0)).unwrap();
    let leaf = issue::client(&sub, "bench-client").unwrap();
    let other = issue::client(&sub, "revoked").unwrap();
    let ca = tls::certs_from_pem(&root.cert_pem).unwrap();
    let chain = tls::certs_from_pem(&sub.cert_pem).unwrap();
    let leaf = tls::certs_from_pem(&leaf.cert_pem).unwrap().remove(0);
    let crl_pem = issue::crl(&sub, &[&other.cert_pem], 1).unwrap();
    let crls: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(crl_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let algs = || tls::provider().signature_verification_algorithms;
    let webpki = WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(tls::root_store(ca.clone()).unwrap()),
        tls::provider(),
    )
    .build()
    .unwrap();
    let ours = ClientChainVerifier::new(ca.clone(), &[], true, algs()).unwrap();
    let ours_crl = ClientChainVerifier::new(ca, &crls, true, algs()).unwrap();
    let now = rustls::pki_types::UnixTime::now();
    for (name, v) in [
        (
            "client_chain_verify/rustls_webpki",
            &*webpki as &dyn ClientCertVerifier,
        ),
        ("client_chain_verify/mqedge", &ours),
        ("client_chain_verify/mqedge_with_crl", &ours_crl),
    ] {
        assert!(v.verify_client_cert(&leaf, &chain, now).is_ok(), "{name}");
        c.bench_function(name, |b| {
            b.iter(|| v.verify_client_cert(black_box(&leaf), black_box(&chain), now))
        });
    }
}

criterion_group!(benches, peek, proxy_v2, cert_facts, client_chain);
criterion_main!(benches);
