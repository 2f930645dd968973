//! The fuzz targets' inputs in the normal suite: every committed seed (`fuzz/corpus/<target>/`)
//! and every input a target once crashed on (`fuzz/regressions/<target>/`, named after what it
//! broke) goes through the same check the target runs (`fuzz/src/checks.rs`, included here),
//! so a fixed parser bug stays fixed without nightly or cargo-fuzz. See docs/reliability.md,
//! "Fuzzing".

#[path = "../fuzz/src/checks.rs"]
mod checks;
mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mqedge_shared::proxy::{
    encode_v1, encode_v2, encode_v2_local, identity, CertIdentity, ProxyInfo, San, SanKind,
    SslInfo, MAX_UNIQUE_ID_LEN, PP2_TYPE_UNIQUE_ID,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files under `fuzz/<kind>/<target>/`, sorted (none when the folder does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for (target, check) in checks::TARGETS {
        for file in inputs(kind, target) {
            let data = fs::read(&file).unwrap();
            let caught = std::panic::catch_unwind(|| check(&data));
            assert!(
                caught.is_ok(),
                "{target}: {} fails its check",
                file.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn every_input_a_target_crashed_on_passes_now() {
    replay("regressions");
}

#[test]
fn the_seed_corpus_passes() {
    // the binary targets' seeds are committed; the config targets start from configs/
    assert!(
        replay("corpus") >= 60,
        "seed corpus missing: run fuzz/seeds.sh"
    );
}

#[test]
fn the_example_configs_pass_the_config_checks() {
    for dir in ["configs", "configs/local", "configs/quickstart"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let data = fs::read(&p).unwrap();
                checks::broker_config(&data);
                checks::lb_config(&data);
            }
        }
    }
}

/// A PROXY v2 header from 192.0.2.7 whose UNIQUE_ID TLV is `id_len` bytes (our encoder never
/// writes more than 128, so a longer one is patched in by hand), then a CONNECT.
fn header_with_unique_id(id_len: usize, client_id: &str) -> Vec<u8> {
    let mut h = encode_v2(&ProxyInfo {
        src: Some("192.0.2.7:51000".parse().unwrap()),
        dst: Some("198.51.100.1:1883".parse().unwrap()),
        unique_id: Some(vec![b'u'; MAX_UNIQUE_ID_LEN]),
        ..ProxyInfo::default()
    });
    let at = h
        .windows(3)
        .position(|w| w == [PP2_TYPE_UNIQUE_ID, 0, MAX_UNIQUE_ID_LEN as u8])
        .unwrap();
    h.splice(at + 3..at + 3 + MAX_UNIQUE_ID_LEN, vec![b'u'; id_len]);
    h[at + 1..at + 3].copy_from_slice(&(id_len as u16).to_be_bytes());
    let len = (h.len() - 16) as u16;
    h[14..16].copy_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&mqedge_protocol::peek::encode_connect(
        4, client_id, None, 30,
    ));
    h
}

/// The `proxy_header` finding over a real socket: an LB listener taking PROXY headers from a
/// trusted balancer refuses one whose UNIQUE_ID is over 128 bytes as `proxy_header`, before
/// any backend sees it, and still serves a 128-byte one. Before the fix it forwarded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_with_a_unique_id_over_128_bytes_is_refused() {
    let dir = TempDir::new("fuzz-unique-id");
    let broker = MockBroker::start("b1", true).await;
    let cfg = format!(
        "[lb]\nadmin = \"127.0.0.1:0\"\nconnect_timeout = \"2s\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"500ms\"\n\n\
         [[backend]]\nname = \"b1\"\naddr = \"{}\"\nproxy_protocol = \"v2\"\n",
        broker.addr
    );
    let cfg = dir.write("lb.toml", &cfg);
    let lb = tokio::task::block_in_place(|| InProcLb::start(&cfg));
    let (plain, admin) = (lb.addr("plain"), lb.admin());
    let connack = |bytes: Vec<u8>| async move {
        let mut s = tcp_from(None, plain).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut ack = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack));
        match read.await.expect("neither answered nor closed within 5s") {
            Ok(_) => Some(ack[3]),
            Err(_) => None,
        }
    };
    let refused = || {
        let samples = parse_prometheus(&http("GET", admin, "/metrics").1);
        metric(
            &samples,
            "mqedge_lb_connections_rejected_total",
            &["listener=\"plain\"", "reason=\"proxy_header\""],
        )
    };

    // the backend is up once a 128-byte id (the most the spec allows) goes through
    let mut served = None;
    for _ in 0..50 {
        served = connack(header_with_unique_id(128, "id-128")).await;
        if served == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, Some(0), "a 128-byte UNIQUE_ID is served");
    assert_eq!(connack(header_with_unique_id(129, "id-129")).await, None);
    assert!(
        eventually(Duration::from_secs(3), || refused() == 1.0).await,
        "one proxy_header refusal; /metrics:\n{}",
        http("GET", admin, "/metrics").1
    );
    assert!(
        !broker.clients().iter().any(|c| c == "id-129"),
        "the 129-byte header reached the backend: {:?}",
        broker.clients()
    );
}

/// Writes the seed corpus of `proxy_header` (v1 and v2 headers as the LB and HAProxy send
/// them); `fuzz/seeds.sh` runs it with the other targets' seed writers.
#[test]
#[ignore = "writes files; run by fuzz/seeds.sh"]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("MQEDGE_FUZZ_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir).join("proxy_header");
    fs::create_dir_all(&dir).unwrap();
    let v4: SocketAddr = "192.0.2.7:51000".parse().unwrap();
    let v4d: SocketAddr = "198.51.100.1:8883".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
    let v6d: SocketAddr = "[2001:db8::1]:8883".parse().unwrap();
    let tls = ProxyInfo {
        src: Some(v4),
        dst: Some(v4d),
        alpn: Some(b"mqtt".to_vec()),
        authority: Some("mqtt.example.com".into()),
        unique_id: Some(b"conn-42".to_vec()),
        ssl: Some(SslInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_cert: true,
            verified: true,
            cn: Some("device-1".into()),
            cert_sha256: Some([7; 32]),
            identity: CertIdentity {
                dn: Some("CN=device-1,OU=Floor 2,O=Acme\\, Inc.,C=DE".into()),
                sans: vec![
                    San::new(SanKind::Uri, "spiffe://acme.example/device/1"),
                    San::new(SanKind::Dns, "device-1.acme.example"),
                    San::new(SanKind::Ip, "192.0.2.7"),
                    San::new(SanKind::Email, "ops@acme.example"),
                ],
                sans_truncated: false,
            },
        }),
    };
    let many: Vec<San> = (0..200)
        .map(|i| San::new(SanKind::Dns, format!("n{i}.fleet.example.com")))
        .collect();
    let seeds = [
        encode_v1(Some(v4), Some(v4d)),
        encode_v1(Some(v6), Some(v6d)),
        encode_v1(Some(v4), None),
        encode_v1(None, None),
        encode_v2(&ProxyInfo {
            src: Some(v4),
            dst: Some(v4d),
            ..ProxyInfo::default()
        }),
        encode_v2(&ProxyInfo {
            src: Some(v6),
            dst: Some(v6d),
            ..ProxyInfo::default()
        }),
        encode_v2(&tls),
        encode_v2(&ProxyInfo {
            src: Some(v6),
            dst: Some(v4d),
            ssl: Some(SslInfo {
                version: "TLSv1.2".into(),
                cipher: "ECDHE-RSA-AES128-GCM-SHA256".into(),
                ..SslInfo::default()
            }),
            ..ProxyInfo::default()
        }),
        encode_v2_local(),
        // the values of the identity TLVs alone (the check decodes its input as one too)
        identity::encode_sans(&tls.ssl.as_ref().unwrap().identity.sans, false),
        identity::encode_sans(&many, false),
    ];
    for (i, s) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("{i:03}")), s).unwrap();
    }
}
