//! Cost of the broker's route table at scale: matching one publish topic against 100,000
//! per-device filters plus 100 fleet-wide wildcards (the publish path), and one
//! subscribe+unsubscribe with those present (session churn). Both must stay independent of
//! the number of filters stored.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mqedge_broker::routing::retained::Retained;
use mqedge_broker::routing::trie::{Matches, Router, SubOptions};

const DEVICES: u64 = 100_000;
const FLEETS: u64 = 100;

fn populated() -> Router<u64> {
    let router = Router::new();
    let opts = SubOptions {
        qos: 1,
        ..SubOptions::default()
    };
    for i in 0..DEVICES {
        router.subscribe(&i, &format!("dev/{i}/+/cmd"), opts);
    }
    for j in 0..FLEETS {
        router.subscribe(&(DEVICES + j), &format!("fleet/{j}/#"), opts);
    }
    router
}

fn bench_router(c: &mut Criterion) {
    let router = populated();
    let mut group = c.benchmark_group("router_100k_filters");
    let mut out = Matches::default();
    group.bench_function("matches_device_topic", |b| {
        b.iter(|| {
            router.matches(black_box("dev/77777/lamp/cmd"), &mut out);
            black_box(out.direct.len())
        })
    });
    group.bench_function("matches_fleet_topic", |b| {
        b.iter(|| {
            router.matches(black_box("fleet/42/zone/7/alarm"), &mut out);
            black_box(out.direct.len())
        })
    });
    group.bench_function("matches_no_subscriber", |b| {
        b.iter(|| {
            router.matches(black_box("dev/77777/lamp/status"), &mut out);
            black_box(out.direct.len())
        })
    });
    group.bench_function("has_match", |b| {
        b.iter(|| router.has_match(black_box("dev/77777/lamp/cmd")))
    });
    group.bench_function("subscribe_unsubscribe", |b| {
        let opts = SubOptions::default();
        b.iter(|| {
            router.subscribe(&7, black_box("dev/123456/+/cmd"), opts);
            router.unsubscribe(&7, black_box("dev/123456/+/cmd"))
        })
    });
    group.finish();
}

fn bench_retained(c: &mut Criterion) {
    let retained = Retained::new();
    for i in 0..DEVICES {
        retained.set(&format!("dev/{i}/state"), Some(i));
    }
    let mut group = c.benchmark_group("retained_100k_topics");
    group.bench_function("matching_literal_prefix", |b| {
        b.iter(|| retained.matching(black_box("dev/77777/#")))
    });
    group.finish();
}

criterion_group!(benches, bench_router, bench_retained);
criterion_main!(benches);
