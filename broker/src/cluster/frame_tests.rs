//! Unit tests of the frame codec.
use super::*;

fn all() -> Vec<Frame> {
    vec![
        Frame::Hello {
            node: "node1".into(),
            epoch: 42,
            to_epoch: 43,
        },
        Frame::RoutesReset {
            filters: vec!["a/+".into(), "$share/g/b/#".into()],
        },
        Frame::RouteAdd { filter: "x".into() },
        Frame::RouteDel { filter: "x".into() },
        Frame::Forward {
            id: 7,
            direct: true,
            shared: vec![("g".into(), "t/#".into())],
            msg: Bytes::from(vec![1, 2, 3]),
        },
        Frame::ForwardAck { id: 7 },
        Frame::Retained {
            msgs: vec![vec![9; 10], vec![]],
        },
        Frame::TakeSession {
            id: 3,
            client_id: "c".into(),
            clean_start: false,
        },
        Frame::Session {
            id: 3,
            client_id: "c".into(),
            export: Some((vec![1], vec![vec![2], vec![3]])),
        },
        Frame::Session {
            id: 4,
            client_id: "d".into(),
            export: None,
        },
        Frame::Leave,
        Frame::SessionDone {
            id: 3,
            client_id: "c".into(),
            keep: false,
        },
        Frame::SessionAppend {
            client_id: "c".into(),
            queued: vec![vec![4], vec![]],
        },
        Frame::Ping { at: 5 },
        Frame::Pong { at: 5 },
        Frame::Holds {
            id: 9,
            client_ids: vec!["a".into(), "b".into()],
            offline_only: true,
        },
        Frame::Held {
            id: 9,
            client_ids: vec![],
        },
        Frame::ChunkStart {
            total: 10,
            data: Bytes::from_static(&[1, 2]),
        },
        Frame::ChunkMore {
            data: Bytes::from_static(&[3]),
        },
        Frame::Replicate {
            id: 11,
            ops: vec![0, 0, 0, 0],
        },
        Frame::Promoted { of: "node3".into() },
        Frame::ForwardAcks {
            ranges: vec![(1, 3), (7, 1), (u64::MAX, 1)],
        },
    ]
}

#[test]
fn round_trip_and_prefixes() {
    let mut buf = Vec::new();
    for f in all() {
        encode(&f, &mut buf);
    }
    let mut off = 0;
    for f in all() {
        let (got, used) = decode(&buf[off..]).unwrap().unwrap();
        assert_eq!(got, f);
        for i in 0..used {
            assert_eq!(decode(&buf[off..off + i]).unwrap(), None);
        }
        off += used;
    }
    assert_eq!(off, buf.len());
    // the queue bounds count about the encoded size, never less
    for f in all() {
        let mut b = Vec::new();
        encode(&f, &mut b);
        assert!(
            f.weight() + 8 >= b.len(),
            "{f:?}: {} vs {}",
            f.weight(),
            b.len()
        );
    }
}

#[test]
fn refusals() {
    assert!(matches!(
        decode(&[0xff, 0xff, 0xff, 0xff]),
        Err(FrameError::TooLarge(_))
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 2, 9, 1]),
        Err(FrameError::Version(9))
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 2, 1, 99]),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 3, 1, 3, 0]),
        Err(FrameError::Malformed(_))
    ));
    // range acks: no empty range, none past the last id, at most MAX_RANGE_ACKS ids a frame
    let acks = |ranges: Vec<(u64, u32)>| {
        let mut b = Vec::new();
        encode(&Frame::ForwardAcks { ranges }, &mut b);
        decode(&b)
    };
    assert!(matches!(acks(vec![(5, 0)]), Err(FrameError::Malformed(_))));
    assert!(matches!(
        acks(vec![(u64::MAX, 2)]),
        Err(FrameError::Malformed(_))
    ));
    let half = (MAX_RANGE_ACKS / 2) as u32;
    assert!(matches!(
        acks(vec![(1, half), (1 << 40, half)]),
        Ok(Some(_))
    ));
    assert!(matches!(
        acks(vec![(1, half), (1 << 40, half), (1 << 50, 1)]),
        Err(FrameError::Malformed(_))
    ));
    // never panics on noise
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (x % 48) as usize;
        let mut b: Vec<u8> = (0..n).map(|i| (x >> (i % 8 * 8)) as u8).collect();
        if b.len() >= 6 {
            b[0..4].copy_from_slice(&((n - 4) as u32).to_be_bytes());
            b[4] = 1;
            b[5] = (x % 22) as u8;
        }
        let _ = decode(&b);
    }
}

/// Writes the seed corpus of the cargo-fuzz target `cluster_frame` (`fuzz/`): every sample
/// frame, encoded, behind the target's control byte (0: the full size cap). `fuzz/seeds.sh`
/// runs it.
#[test]
#[ignore = "writes files; run by fuzz/seeds.sh"]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("MQEDGE_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("cluster_frame");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in all().iter().enumerate() {
        let mut b = vec![0];
        encode(f, &mut b);
        std::fs::write(dir.join(format!("{i:03}")), b).unwrap();
    }
}
