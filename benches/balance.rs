//! Cost of one hashed pick: `hash_order` for a single client id over a small (3) and a large
//! (100) backend set, to keep backend selection far below the cost of the TLS handshake.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mqedge_lb::balance::{hash_order, Candidate};

fn bench_hash_order(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash_order");
    for n in [3usize, 100] {
        let names: Vec<String> = (0..n).map(|i| format!("node{i}")).collect();
        let candidates: Vec<Candidate<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| Candidate {
                name,
                weight: 1 + (i % 3) as u32,
                active: 0,
            })
            .collect();
        group.bench_function(format!("{n}_backends"), |b| {
            b.iter(|| hash_order(black_box(b"sensor-7f3a-0042"), black_box(&candidates)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_hash_order);
criterion_main!(benches);
