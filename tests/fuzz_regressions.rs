//! The fuzz targets' inputs in the normal suite: every committed seed (`fuzz/corpus/<target>/`)
//! and every input a target once crashed on (`fuzz/regressions/<target>/`, named after what it
//! broke) goes through the same check the target runs (`fuzz/src/checks.rs`, included here),
//! so a fixed parser bug stays fixed without nightly or cargo-fuzz. See docs/reliability.md,
//! "Fuzzing".

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mqedge_shared::proxy::{encode_v1, encode_v2, encode_v2_local, ProxyInfo, SslInfo};

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
        }),
    };
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
    ];
    for (i, s) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("{i:03}")), s).unwrap();
    }
}
