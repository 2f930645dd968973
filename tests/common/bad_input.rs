//! What hostile clients send, for the bad-input tests (`lb_bad_input`, `broker_connect_guards`,
//! `bad_input_matrix`): hand-built CONNECTs, a close timer, a costly password hash and an
//! expired client certificate.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tcp_from;

/// Sends `bytes`, then returns how long until the LB closed the connection.
pub async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Duration {
    closed_after_from(None, addr, bytes).await
}

/// [`closed_after`] from source address `src`.
pub async fn closed_after_from(src: Option<IpAddr>, addr: SocketAddr, bytes: &[u8]) -> Duration {
    answer_and_close(src, addr, bytes).await.1
}

/// Sends `bytes` from `src`, then reads until the server closes: what it answered, and how
/// long after the send it closed (panics when it is still open after 10 s).
pub async fn answer_and_close(
    src: Option<IpAddr>,
    addr: SocketAddr,
    bytes: &[u8],
) -> (Vec<u8>, Duration) {
    let mut s = tcp_from(src, addr).await.unwrap();
    let t0 = Instant::now();
    let _ = s.write_all(bytes).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (answer, t0.elapsed()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection with {:?}… still open after 10s",
                &bytes[..bytes.len().min(8)]
            ),
        }
    }
}

/// A CONNECT with protocol `level`, connect `flags`, v5 `props` (the block's bytes), client id
/// "c", then `rest` (the payload's other fields as bytes).
pub fn raw_connect(level: u8, flags: u8, props: Option<&[u8]>, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 10];
    if let Some(p) = props {
        body.push(p.len() as u8);
        body.extend_from_slice(p);
    }
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(rest);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// An argon2id hash far costlier than `mqedge passwd` writes (8 MiB, 40 passes: a few hundred
/// ms), so a burst against it outlasts the password gate's wait even on a fast machine.
pub fn slow_hash(password: &[u8]) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8 * 1024, 40, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"connect-guards-1").unwrap();
    a.hash_password(password, &salt).unwrap().to_string()
}

/// Writes `{cn}.pem` / `{cn}.key` into `certs`: a client certificate signed by the CA there
/// (`ca.pem`, `ca.key`) that expired at the start of 2021.
pub fn write_expired_client(certs: &Path, cn: &str) {
    let ca_pem = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(certs.join(format!("{cn}.pem")), cert.pem()).unwrap();
    std::fs::write(certs.join(format!("{cn}.key")), key.serialize_pem()).unwrap();
}

/// A TCP connection from `src` to `dst` whose receive buffer is 4 KiB: a client that stops
/// reading is felt by the sender after a few KiB, not after the kernel's megabytes.
pub async fn tcp_small_window(
    src: Option<IpAddr>,
    dst: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(dst).await
}

/// Resident memory of this process, in bytes (0 when /proc cannot tell).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The files of `fuzz/regressions/<target>/` (inputs a fuzz target once crashed on), by
/// target, sorted; empty when there are none.
pub fn fuzz_regressions() -> Vec<(String, std::path::PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut found = Vec::new();
    let Ok(targets) = std::fs::read_dir(&root) else {
        return found;
    };
    for t in targets.flatten() {
        let target = t.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(t.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.path().is_file() {
                found.push((target.clone(), f.path()));
            }
        }
    }
    found.sort();
    found
}
