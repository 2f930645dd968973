use super::*;

fn sample() -> ProxyInfo {
    ProxyInfo {
        src: Some("127.0.0.7:50000".parse().unwrap()),
        dst: Some("127.0.0.1:8883".parse().unwrap()),
        alpn: Some(b"mqtt".to_vec()),
        authority: Some("broker.example".into()),
        unique_id: Some(b"edge-1-0000000000000001".to_vec()),
        ssl: Some(SslInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_cert: true,
            verified: true,
            cn: Some("device-7".into()),
            cert_sha256: Some([7; 32]),
            identity: CertIdentity {
                dn: Some("CN=device-7,O=Acme\\, Inc.,C=DE".into()),
                sans: vec![
                    San::new(SanKind::Uri, "spiffe://acme.example/device/7"),
                    San::new(SanKind::Dns, "device-7.acme.example"),
                ],
                sans_truncated: false,
            },
        }),
    }
}

#[test]
fn v2_round_trip_with_all_tlvs() {
    let info = sample();
    let bytes = encode_v2(&info);
    assert_eq!(&bytes[..12], &V2_SIGNATURE);
    assert_eq!(bytes[12], 0x21); // v2, PROXY
    assert_eq!(bytes[13], 0x11); // TCP4 stream
    let (back, len) = parse(&bytes).unwrap().unwrap();
    assert_eq!(len, bytes.len());
    assert_eq!(back, info);
    // every prefix is incomplete
    for i in 0..bytes.len() {
        assert_eq!(parse(&bytes[..i]), Ok(None), "{i}");
    }
}

/// Found by the `proxy_header` fuzz target (fuzz/regressions/proxy_header/): a UNIQUE_ID
/// over 128 bytes was taken whole, and `encode_v2` cut it, so the header the broker got
/// said something else than the one the LB read.
#[test]
fn unique_id_over_128_bytes_is_refused() {
    let with_id = |n: usize| ProxyInfo {
        unique_id: Some(vec![b'x'; n]),
        ..sample()
    };
    let ok = encode_v2(&with_id(MAX_UNIQUE_ID_LEN));
    assert_eq!(parse(&ok).unwrap().unwrap().0, with_id(MAX_UNIQUE_ID_LEN));
    // a 129-byte value, written by hand (our encoder cuts it)
    let mut long = ok.clone();
    let at = long
        .windows(3)
        .position(|w| w == [PP2_TYPE_UNIQUE_ID, 0, 128])
        .unwrap();
    long[at + 2] = 129;
    long.insert(at + 3, b'x');
    let len = u16::from_be_bytes([long[14], long[15]]) + 1;
    long[14..16].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(parse(&long), Err(ProxyError::Invalid(_))));
}

#[test]
fn ssl_tlv_layout_matches_haproxy() {
    let v = encode_ssl_value(&sample().ssl.unwrap());
    assert_eq!(
        v[0], 0x07,
        "HAProxy sends SSL|CERT_CONN|CERT_SESS with a cert"
    );
    assert_eq!(&v[1..5], &[0, 0, 0, 0], "verify 0 = verified");
    assert_eq!(v[5], PP2_SUBTYPE_SSL_VERSION);
    assert_eq!(&v[6..8], &[0, 7]);
    assert_eq!(&v[8..15], b"TLSv1.3");
    assert_eq!(v[15], PP2_SUBTYPE_SSL_CN);
    let no_cert = encode_ssl_value(&SslInfo {
        version: "TLSv1.2".into(),
        ..Default::default()
    });
    assert_eq!(no_cert[0], 0x01);
    assert_eq!(&no_cert[1..5], &[0, 0, 0, 1]);
}

#[test]
fn local_and_v1() {
    let (i, _) = parse(&encode_v2_local()).unwrap().unwrap();
    assert_eq!(i.src, None);
    let v1 = encode_v1(
        Some("127.0.0.9:1234".parse().unwrap()),
        Some("127.0.0.1:1883".parse().unwrap()),
    );
    assert_eq!(v1, b"PROXY TCP4 127.0.0.9 127.0.0.1 1234 1883\r\n");
    let mut stream = v1.clone();
    stream.extend_from_slice(&[0x10, 0x00]);
    let (i, len) = parse(&stream).unwrap().unwrap();
    assert_eq!(len, v1.len());
    assert_eq!(i.src, Some("127.0.0.9:1234".parse().unwrap()));
    assert_eq!(parse(b"PROXY TCP4 1.2"), Ok(None));
    let mixed = encode_v2(&ProxyInfo {
        src: Some("[::1]:5".parse().unwrap()),
        dst: Some("127.0.0.1:6".parse().unwrap()),
        ..Default::default()
    });
    let (i, _) = parse(&mixed).unwrap().unwrap();
    assert_eq!(i.src, Some("[::1]:5".parse().unwrap()));
}

#[test]
fn refusals() {
    assert_eq!(parse(&[0x10, 0x0c]), Err(ProxyError::Missing));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
    assert!(matches!(
        parse(b"PROXY TCP4 nope\r\n"),
        Err(ProxyError::Invalid(_))
    ));
    assert!(matches!(parse(&[b'P'; 1][..]), Ok(None)));
    let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
    assert!(matches!(parse(&long), Err(ProxyError::Invalid(_))));
    // v2 with a bad SSL TLV
    let mut bad = encode_v2(&sample());
    let at = bad
        .windows(3)
        .position(|w| w == [PP2_TYPE_MQEDGE_CERT_SHA256, 0, 32])
        .unwrap();
    bad[at + 1] = 0xff; // corrupt the 0xE0 TLV's length high byte
    assert!(matches!(parse(&bad), Err(ProxyError::Invalid(_))));
    assert!(parse_ssl_value(&[1, 0, 0]).is_err());
    assert!(parse_ssl_value(&[1, 0, 0, 0, 0, 0x22, 0, 9, b'x']).is_err());
}

/// A connected pair: what the client writes, `read_header` reads on the server side.
async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (client, server)
}

async fn read_after(
    bytes: Vec<u8>,
    close: bool,
) -> Result<(Option<ProxyInfo>, Vec<u8>), ReadError> {
    use tokio::io::AsyncWriteExt;
    let (mut client, server) = pair().await;
    let writer = tokio::spawn(async move {
        // The far side may refuse early (too long) and close: later writes may fail.
        let _ = client.write_all(&bytes).await;
        if close {
            let _ = client.shutdown().await;
        }
        client
    });
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), read_header(&server))
        .await
        .expect("read_header timed out");
    drop(writer.await.unwrap());
    read
}

#[tokio::test]
async fn read_header_returns_the_header_and_what_follows() {
    let mut bytes = encode_v2(&sample());
    bytes.extend_from_slice(b"\x10MQTT");
    let (info, rest) = read_after(bytes, false).await.unwrap();
    assert_eq!(info, Some(sample()));
    assert_eq!(rest, b"\x10MQTT");

    let (info, rest) = read_after(b"\x10\x0c\x00\x04MQTT".to_vec(), false)
        .await
        .unwrap();
    assert_eq!(info, None, "no header: the bytes are the client's");
    assert_eq!(rest, b"\x10\x0c\x00\x04MQTT");
}

#[tokio::test]
async fn read_header_caps_the_size_and_reports_a_closed_connection() {
    let mut huge = V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    // Declares 65535 bytes of TLVs but the cap is reached first.
    huge.resize(MAX_HEADER_LEN + 8, 0);
    match read_after(huge, false).await {
        Err(ReadError::Header(ProxyError::Invalid(m))) => assert_eq!(m, "header too long"),
        other => panic!("{other:?}"),
    }
    match read_after(b"PROXY TCP4 1.2.3.4".to_vec(), true).await {
        Err(ReadError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("{other:?}"),
    }
}

/// The identity TLVs: sent only with the SSL TLV, refused when bad, cut by the rule, and
/// dropped (as the fingerprint is) from a header without an SSL TLV.
#[test]
fn identity_tlvs() {
    let info = sample();
    let bytes = encode_v2(&info);
    let dn = b"CN=device-7,O=Acme\\, Inc.,C=DE";
    let at = bytes
        .windows(dn.len())
        .position(|w| w == dn)
        .expect("DN in the header");
    assert_eq!(bytes[at - 3], identity::PP2_TYPE_MQEDGE_SUBJECT_DN);
    assert_eq!(bytes[at + dn.len()], identity::PP2_TYPE_MQEDGE_SANS);
    // a DN that is not UTF-8: a bad header
    let mut bad = bytes.clone();
    bad[at] = 0xff;
    assert!(matches!(parse(&bad), Err(ProxyError::Invalid(_))));
    // five hundred SANs: the header stays bounded
    let mut many = sample();
    let sans: Vec<San> = (0..500)
        .map(|i| San::new(SanKind::Dns, format!("n{i}.fleet.example.com")))
        .collect();
    many.ssl.as_mut().unwrap().identity.sans = sans.clone();
    let big = encode_v2(&many);
    let mut none = sample();
    none.ssl.as_mut().unwrap().identity = CertIdentity::default();
    // the identity TLVs add at most their two headers, the DN and the SAN cap (167 + 33 + 2036 here)
    let bound = encode_v2(&none).len() + 3 + dn.len() + 3 + identity::MAX_SANS_LEN;
    assert!(big.len() <= bound, "{} > {bound}", big.len());
    let back = parse(&big).unwrap().unwrap().0.ssl.unwrap().identity;
    assert!(back.sans_truncated);
    assert_eq!(back.sans[..], sans[..back.sans.len()]);
    // no SSL TLV: nothing to attach the identity to
    let plain = ProxyInfo {
        ssl: None,
        ..sample()
    };
    assert_eq!(parse(&encode_v2(&plain)).unwrap().unwrap().0, plain);
}

/// The `proxy_header` fuzz target's invariants on the stable suite: random byte flips, cuts and
/// length patches of a header with every TLV (the identity ones included) never panic, and what
/// parses re-encodes to a header that parses the same.
#[test]
fn mutated_headers_keep_the_round_trip() {
    let base = encode_v2(&sample());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut parsed = 0;
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = 16 + (next() as usize) % (b.len() - 16);
            match next() % 3 {
                0 => b[at] = next() as u8,
                1 => b[at] ^= 1 << (next() % 8),
                _ => b.truncate(at.max(17)),
            }
        }
        let len = (b.len() - 16) as u16;
        b[14..16].copy_from_slice(&len.to_be_bytes());
        if let Ok(Some((info, used))) = parse(&b) {
            assert!(used <= b.len());
            parsed += 1;
            if info.src.is_some() {
                let again = encode_v2(&info);
                assert_eq!(parse(&again), Ok(Some((info, again.len()))), "{b:02x?}");
            }
        }
        if let Ok((sans, cut)) = identity::decode_sans(&b[16..]) {
            let again = identity::encode_sans(&sans, cut);
            assert_eq!(identity::decode_sans(&again), Ok((sans, cut)));
        }
    }
    assert!(parsed > 1000, "only {parsed} mutants parsed");
}
