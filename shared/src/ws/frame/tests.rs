use super::*;

const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Decodes `wire` fed in pieces of `step` bytes; the MQTT bytes out.
fn decode_in_steps(d: &mut Decoder, wire: &[u8], step: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    for piece in wire.chunks(step) {
        let mut b = piece.to_vec();
        let n = d.decode(&mut b)?;
        out.extend_from_slice(&b[..n]);
    }
    Ok(out)
}

#[test]
fn binary_frames_unmask_in_any_split() {
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    let mut wire = client_frame(op::BINARY, true, M, &payload[..10]);
    wire.extend(client_frame(op::BINARY, true, M, &payload[10..300]));
    wire.extend(client_frame(op::BINARY, true, M, &payload[300..]));
    for step in [1, 2, 3, 7, 100, 4096, wire.len()] {
        let mut d = Decoder::new(1 << 20);
        assert_eq!(
            decode_in_steps(&mut d, &wire, step).unwrap(),
            payload,
            "step {step}"
        );
        assert!(!d.mid_frame());
    }
}

#[test]
fn fragments_with_a_ping_between_them() {
    let mut wire = client_frame(op::BINARY, false, M, b"ab");
    wire.extend(client_frame(op::PING, true, M, b"hi"));
    wire.extend(client_frame(op::CONT, false, M, b"cd"));
    wire.extend(client_frame(op::CONT, true, M, b"e"));
    let mut d = Decoder::new(1024);
    assert_eq!(decode_in_steps(&mut d, &wire, 3).unwrap(), b"abcde");
    assert_eq!(d.take_control().pong.as_deref(), Some(&b"hi"[..]));
    assert_eq!(d.take_control(), Control::default());
}

#[test]
fn close_ends_the_data() {
    let mut wire = client_frame(op::BINARY, true, M, b"x");
    wire.extend(client_frame(op::CLOSE, true, M, &1001u16.to_be_bytes()));
    wire.extend(client_frame(op::BINARY, true, M, b"after"));
    let mut d = Decoder::new(1024);
    assert_eq!(decode_in_steps(&mut d, &wire, 5).unwrap(), b"x");
    assert!(d.closed());
    assert_eq!(d.take_control().close, Some(1001));
}

#[test]
fn refusals() {
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (vec![0x82, 0x01, b'x'], FrameError::Unmasked),
        (client_frame(op::TEXT, true, M, b"x"), FrameError::Text),
        (
            client_frame(op::CONT, true, M, b"x"),
            FrameError::Fragmentation,
        ),
        (client_frame(0x3, true, M, b"x"), FrameError::BadOpcode(3)),
        (
            client_frame(op::PING, false, M, b"x"),
            FrameError::BadControl,
        ),
        (
            client_frame(op::PING, true, M, &[0; 126]),
            FrameError::BadControl,
        ),
        (
            client_frame(op::BINARY, true, M, &[0; 2000]),
            FrameError::TooLarge(2000),
        ),
        (
            {
                let mut f = client_frame(op::BINARY, true, M, b"x");
                f[0] |= 0x40;
                f
            },
            FrameError::Reserved,
        ),
        (
            {
                let mut f = client_frame(op::BINARY, false, M, b"x");
                f.extend(client_frame(op::BINARY, true, M, b"y"));
                f
            },
            FrameError::Fragmentation,
        ),
    ];
    for (wire, want) in cases {
        let mut d = Decoder::new(1024);
        assert_eq!(decode_in_steps(&mut d, &wire, 1), Err(want), "{wire:x?}");
    }
    // a 64-bit length is refused from its header alone, before any payload
    let mut d = Decoder::new(1024);
    let mut h = vec![0x82, 0xFF];
    h.extend_from_slice(&u64::MAX.to_be_bytes());
    h.extend_from_slice(&M);
    assert_eq!(d.decode(&mut h), Err(FrameError::TooLarge(u64::MAX)));
}

#[test]
fn server_headers() {
    let mut h = [0u8; 10];
    assert_eq!(header(op::BINARY, 5, &mut h), 2);
    assert_eq!(&h[..2], &[0x82, 5]);
    assert_eq!(header(op::BINARY, 300, &mut h), 4);
    assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
    assert_eq!(header(op::BINARY, 70_000, &mut h), 10);
    assert_eq!(h[1], 127);
    let mut c = Vec::new();
    close_frame(1000, &mut c);
    assert_eq!(c, [0x88, 2, 0x03, 0xE8]);
}

/// Arbitrary bytes never panic and never produce more than they were given.
#[test]
fn arbitrary_input_is_safe() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2000 {
        let mut d = Decoder::new(4096);
        let mut buf: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if let Ok(n) = d.decode(&mut buf) {
            assert!(n <= buf.len());
        }
    }
}
