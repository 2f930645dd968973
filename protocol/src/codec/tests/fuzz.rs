//! A deterministic fuzz loop: nothing panics, and what decodes re-encodes. It runs with every
//! `cargo test`; the coverage-guided cargo-fuzz targets with the same invariants are
//! `fuzz/fuzz_targets/codec_decode.rs` and `peek_connect.rs` (seeded by [`write_fuzz_seeds`]),
//! and the inputs they found are kept in `tests/fuzz_regressions.rs`.

use super::*;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes everything in `bytes` under `state`, checking the invariants that must hold for any
/// input: no panic, `Ok(None)` consumes nothing, and whatever decodes re-encodes to bytes that
/// decode to the same packet.
fn decode_all(bytes: &[u8], mut state: Option<Version>, max: usize) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    loop {
        let before = buf.clone();
        match decode(&mut buf, state, max) {
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed bytes");
                return decoded;
            }
            Err(_) => return decoded,
            Ok(Some(p)) => {
                decoded += 1;
                let v = match (&p, state) {
                    (Packet::Connect(c), _) => c.version,
                    (_, Some(v)) => v,
                    (_, None) => panic!("decoded {p:?} before CONNECT"),
                };
                let again = dec(&enc(&p, v), if state.is_none() { None } else { Some(v) });
                assert_eq!(
                    again,
                    Ok(Some(p)),
                    "re-encoding of a decoded packet differs"
                );
                state = Some(v);
            }
        }
    }
}

#[test]
fn fuzz_never_panics_and_re_encodes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let states = [
        None,
        Some(Version::V31),
        Some(Version::V311),
        Some(Version::V5),
    ];
    let seeds: Vec<(Version, Vec<u8>)> = all_samples()
        .iter()
        .map(|(v, p)| (*v, enc(p, *v)))
        .collect();
    let mut decoded = 0;
    for i in 0..200_000 {
        let state = states[rng.below(states.len())];
        let max = if rng.below(8) == 0 {
            rng.below(64)
        } else {
            MAX
        };
        let bytes: Vec<u8> = match i % 3 {
            // Pure noise.
            0 => (0..rng.below(48)).map(|_| rng.next() as u8).collect(),
            // A plausible header over a noise body of the declared length.
            1 => {
                let body: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
                let first = [
                    0x10, 0x20, 0x30, 0x32, 0x34, 0x40, 0x62, 0x82, 0x90, 0xA2, 0xB0, 0xE0, 0xF0,
                ];
                frame(first[rng.below(first.len())], &body)
            }
            // A valid packet with a few bytes changed, cut or duplicated.
            _ => {
                let (v, seed) = &seeds[rng.below(seeds.len())];
                let mut b = seed.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(b.len());
                    match rng.below(4) {
                        0 => b[at] = rng.next() as u8,
                        1 => b[at] ^= 1 << rng.below(8),
                        2 => b.truncate(at.max(1)),
                        _ => b.insert(at, rng.next() as u8),
                    }
                }
                let dup = b.clone();
                b.extend_from_slice(&dup);
                let state = if b.first() == Some(&0x10) {
                    None
                } else {
                    Some(*v)
                };
                decoded += decode_all(&b, state, max);
                continue;
            }
        };
        decoded += decode_all(&bytes, state, max);
    }
    // The mutated packets must exercise the success paths too, not only the rejections.
    assert!(decoded > 10_000, "only {decoded} packets decoded");
}

/// Writes the seed corpora of the cargo-fuzz targets `codec_decode` and `peek_connect`
/// (`fuzz/`): every sample packet, encoded, behind the control byte that target reads.
/// `fuzz/seeds.sh` runs it: `MQEDGE_FUZZ_SEEDS=fuzz/corpus cargo test -p mqedge-protocol --lib
/// write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes files; run by fuzz/seeds.sh"]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("MQEDGE_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let (codec, peek) = (dir.join("codec_decode"), dir.join("peek_connect"));
    std::fs::create_dir_all(&codec).unwrap();
    std::fs::create_dir_all(&peek).unwrap();
    for (i, (v, p)) in all_samples().iter().enumerate() {
        let bytes = enc(p, *v);
        let connect = matches!(p, Packet::Connect(_));
        let state: u8 = match (connect, v) {
            (true, _) => 0,
            (false, Version::V31) => 1,
            (false, Version::V311) => 2,
            (false, Version::V5) => 3,
        };
        std::fs::write(
            codec.join(format!("{i:03}")),
            [&[state][..], &bytes].concat(),
        )
        .unwrap();
        if connect {
            std::fs::write(peek.join(format!("{i:03}")), [&[0xFF][..], &bytes].concat()).unwrap();
        }
    }
}
