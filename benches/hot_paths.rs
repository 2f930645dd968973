//! Micro-benchmarks of the LB's per-connection hot paths: the CONNECT peek (MQTT 3.1.1 and 5.0)
//! and the PROXY v2 header encode with the SSL TLVs. (Hash picks: `benches/balance.rs`.)

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mqedge_protocol::peek::{encode_connect, encode_varint, peek_connect};
use mqedge_shared::proxy::{encode_v2, ProxyInfo, SslInfo};

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
        }),
    };
    c.bench_function("proxy_v2_encode/ssl_cn_tlvs", |b| {
        b.iter(|| encode_v2(black_box(&info)))
    });
}

criterion_group!(benches, peek, proxy_v2);
criterion_main!(benches);
