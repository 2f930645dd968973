//! The per-message wire work of a cross-node QoS 1 publish (issue 18): the origin encodes the
//! message once (`Message::encode`) and queues it in a `Forward` frame, the write loop encodes
//! the frame into its batch buffer, the receiver decodes the frame and the message. A 64-byte
//! payload, as in the cluster rows of docs/benchmarks.md.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mqedge_broker::cluster::frame::{decode, encode, Frame};
use mqedge_broker::message::Message;
use mqedge_protocol::QoS;

fn message() -> Message {
    Message::plain(
        "x1/3",
        Bytes::from(vec![7u8; 64]),
        QoS::AtLeastOnce,
        false,
        "bench-pub-3".into(),
    )
}

fn bench_forward(c: &mut Criterion) {
    let m = message();
    let mut g = c.benchmark_group("cluster_forward_64B");
    g.bench_function("message_encode", |b| b.iter(|| black_box(&m).encode()));
    let mut buf = Vec::with_capacity(64 * 1024);
    g.bench_function("frame_encode_decode", |b| {
        b.iter(|| {
            buf.clear();
            let f = Frame::Forward {
                id: 42,
                direct: true,
                shared: Vec::new(),
                msg: black_box(&m).encode().into(),
            };
            encode(&f, &mut buf);
            let Ok(Some((Frame::Forward { msg, .. }, _))) = decode(&buf) else {
                unreachable!("a Forward frame")
            };
            black_box(Message::decode(&msg))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
