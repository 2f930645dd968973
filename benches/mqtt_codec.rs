//! Micro-benchmarks of the broker codec on its hottest packet: a QoS 1 PUBLISH with a 64-byte
//! payload, decoded and encoded, for MQTT 3.1.1 and for 5.0 with one user property.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use mqedge_protocol::{decode, encode, Packet, Publish, PublishProperties, QoS, Version};

fn publish(user_property: bool) -> Packet {
    let mut properties = PublishProperties::default();
    if user_property {
        properties
            .user_properties
            .push(("trace-id".into(), "4bf92f3577b34da6".into()));
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "site/eu-w1/sensor-0042/temperature".into(),
        packet_id: Some(4242),
        properties,
        payload: Bytes::from(vec![0x5A; 64]),
    })
}

fn codec(c: &mut Criterion) {
    for (name, version, packet) in [
        ("3.1.1", Version::V311, publish(false)),
        ("5.0_user_property", Version::V5, publish(true)),
    ] {
        let mut wire = BytesMut::new();
        encode(&packet, version, &mut wire);
        c.bench_function(&format!("decode_publish_qos1/{name}"), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| decode(black_box(&mut buf), Some(version), 1 << 20),
                BatchSize::SmallInput,
            )
        });
        let mut out = BytesMut::with_capacity(256);
        c.bench_function(&format!("encode_publish_qos1/{name}"), |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&packet), version, &mut out);
            })
        });
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
