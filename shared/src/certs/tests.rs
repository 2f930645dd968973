use super::*;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A unique directory under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mqedge-certs-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.0.join(name)).unwrap()
    }

    fn listing(&self) -> BTreeSet<String> {
        fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Parse `der` and hand the certificate to `check` (x509-parser borrows the DER).
fn with_cert<T>(der: &CertificateDer<'_>, check: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    check(&cert)
}

fn cn(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    let Some(ext) = cert.subject_alternative_name().unwrap() else {
        return (dns, ips);
    };
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                16 => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                n => panic!("IP SAN of {n} bytes"),
            }),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    (dns, ips)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca_pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca_pem)).unwrap();
    Arc::new(roots)
}

fn client_verifier(ca_pem: &str) -> Arc<dyn ClientCertVerifier> {
    WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider())
        .build()
        .unwrap()
}

fn client_accepted(ca_pem: &str, cert_pem: &str) -> bool {
    client_verifier(ca_pem)
        .verify_client_cert(&der(cert_pem), &[], UnixTime::now())
        .is_ok()
}

fn server_accepted(ca_pem: &str, cert_pem: &str, name: &str) -> bool {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now())
        .is_ok()
}

#[test]
fn generate_writes_exactly_the_default_files() {
    let dir = TempDir::new("default");
    let written = generate(dir.path(), &CertOptions::default()).unwrap();
    let expected = names(&[
        "ca.key",
        "ca.pem",
        "client.key",
        "client.pem",
        "server.key",
        "server.pem",
    ]);
    assert_eq!(dir.listing(), expected);
    let returned: BTreeSet<String> = written
        .iter()
        .map(|p| {
            assert_eq!(p.parent(), Some(dir.path()));
            p.file_name().unwrap().to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(returned, expected);
    assert_eq!(written.len(), expected.len());
    with_cert(&der(&dir.file("client.pem")), |c| {
        assert_eq!(cn(c), "dev-client")
    });
    for pem in ["ca.pem", "server.pem", "client.pem"] {
        assert!(dir.file(pem).starts_with("-----BEGIN CERTIFICATE-----"));
    }
    for key in ["ca.key", "server.key", "client.key"] {
        assert!(dir.file(key).starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}

#[cfg(unix)]
#[test]
fn keys_are_private_and_certs_are_not() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    fs::create_dir_all(dir.path()).unwrap();
    // A key left world-readable by someone else must be tightened when replaced.
    let stale = dir.path().join("server.key");
    fs::write(&stale, "old").unwrap();
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
    generate(dir.path(), &CertOptions::default()).unwrap();
    let mode = |name: &str| {
        fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for key in ["ca.key", "server.key", "client.key"] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    assert_ne!(mode("ca.pem") & 0o044, 0, "certificates stay readable");
}

#[test]
fn generate_writes_one_pair_per_client_cn() {
    let dir = TempDir::new("clients");
    let opts = CertOptions {
        client_cns: vec!["alice".into(), "bob@example.com".into(), "alice".into()],
        ..CertOptions::default()
    };
    let written = generate(dir.path(), &opts).unwrap();
    assert_eq!(written.len(), 8, "duplicate CN written once: {written:?}");
    assert_eq!(
        dir.listing(),
        names(&[
            "alice.key",
            "alice.pem",
            "bob@example.com.key",
            "bob@example.com.pem",
            "ca.key",
            "ca.pem",
            "server.key",
            "server.pem",
        ])
    );
    for name in ["alice", "bob@example.com"] {
        let cert = dir.file(&format!("{name}.pem"));
        with_cert(&der(&cert), |c| assert_eq!(cn(c), name));
        assert!(client_accepted(&dir.file("ca.pem"), &cert), "{name}");
    }
}

#[test]
fn ca_is_a_leaf_only_signing_ca() {
    let pki = DevPki::new(&[]).unwrap();
    with_cert(&der(&pki.ca_pem), |ca| {
        assert_eq!(cn(ca), "mqedge dev CA");
        assert_eq!(ca.subject().as_raw(), ca.issuer().as_raw(), "self-signed");
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let validity = ca.validity();
        let now = OffsetDateTime::now_utc();
        assert!(validity.not_before.to_datetime() < now - Duration::hours(23));
        assert!(validity.not_after.to_datetime() > now + Duration::days(9 * 365));
    });
}

#[test]
fn server_cert_has_local_and_extra_sans() {
    let extra = vec![
        "mqtt.example.com".to_string(),
        "10.1.2.3".to_string(),
        "fd00::7".to_string(),
        "localhost".to_string(),
    ];
    let pki = DevPki::new(&extra).unwrap();
    with_cert(&der(&pki.server_pem), |c| {
        assert_eq!(cn(c), "localhost");
        let (dns, ips) = sans(c);
        assert_eq!(dns, ["localhost", "mqtt.example.com"]);
        assert_eq!(
            ips,
            [
                IpAddr::from(Ipv4Addr::LOCALHOST),
                IpAddr::from(Ipv6Addr::LOCALHOST),
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::7".parse::<IpAddr>().unwrap(),
            ]
        );
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!c.basic_constraints().unwrap().is_some_and(|bc| bc.value.ca));
    });
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "mqtt.example.com",
        "10.1.2.3",
    ] {
        assert!(
            server_accepted(&pki.ca_pem, &pki.server_pem, name),
            "{name}"
        );
    }
    assert!(!server_accepted(
        &pki.ca_pem,
        &pki.server_pem,
        "other.example.com"
    ));
}

#[test]
fn bad_server_san_is_an_error() {
    assert!(matches!(
        DevPki::new(&["bücher.example".to_string()]),
        Err(CertError::Rcgen(_))
    ));
}

#[test]
fn client_cert_names_cn_and_ca_issuer() {
    let pki = DevPki::new(&[]).unwrap();
    let ca_subject = with_cert(&der(&pki.ca_pem), |ca| ca.subject().as_raw().to_vec());
    let (cert, key) = pki.client("device-42.fleet").unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    with_cert(&der(&cert), |c| {
        assert_eq!(cn(c), "device-42.fleet");
        assert_eq!(c.issuer().as_raw(), ca_subject.as_slice());
        assert_eq!(sans(c), (vec!["device-42.fleet".to_string()], vec![]));
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    });
    // A CN that is not DNS-like gets no SAN but is still a usable identity.
    let (cert, _) = pki.client("Dev Client #1").unwrap();
    with_cert(&der(&cert), |c| {
        assert_eq!(cn(c), "Dev Client #1");
        assert_eq!(sans(c), (vec![], vec![]));
    });
    assert!(client_accepted(&pki.ca_pem, &cert));
}

#[test]
fn rustls_client_verifier_accepts_only_our_client_certs() {
    let pki = DevPki::new(&[]).unwrap();
    let (cert, _) = pki.client("dev-client").unwrap();
    assert!(client_accepted(&pki.ca_pem, &cert));
    // Another CA's client and our own server certificate (serverAuth only) are refused.
    let other = DevPki::new(&[]).unwrap();
    let (foreign, _) = other.client("dev-client").unwrap();
    assert!(!client_accepted(&pki.ca_pem, &foreign));
    assert!(!client_accepted(&pki.ca_pem, &pki.server_pem));
}

#[test]
fn files_on_disk_work_for_mtls() {
    let dir = TempDir::new("mtls");
    generate(dir.path(), &CertOptions::default()).unwrap();
    let ca = dir.file("ca.pem");
    assert!(client_accepted(&ca, &dir.file("client.pem")));
    assert!(server_accepted(&ca, &dir.file("server.pem"), "localhost"));
    // The key files parse and belong to their certificates.
    for stem in ["server", "client"] {
        let key = KeyPair::from_pem(&dir.file(&format!("{stem}.key"))).unwrap();
        with_cert(&der(&dir.file(&format!("{stem}.pem"))), |c| {
            assert_eq!(c.public_key().raw, key.subject_public_key_info().as_slice())
        });
    }
}

#[test]
fn reuse_ca_keeps_ca_files_and_still_chains() {
    let dir = TempDir::new("reuse");
    generate(dir.path(), &CertOptions::default()).unwrap();
    let (ca_pem, ca_key) = (dir.file("ca.pem"), dir.file("ca.key"));
    let old_server = dir.file("server.pem");

    let opts = CertOptions {
        reuse_ca: true,
        client_cns: vec!["carol".into()],
        ..CertOptions::default()
    };
    let written = generate(dir.path(), &opts).unwrap();
    assert!(!written
        .iter()
        .any(|p| p.ends_with("ca.pem") || p.ends_with("ca.key")));
    assert_eq!(dir.file("ca.pem"), ca_pem);
    assert_eq!(dir.file("ca.key"), ca_key);
    assert_ne!(dir.file("server.pem"), old_server, "leaves are reissued");
    assert!(server_accepted(
        &ca_pem,
        &dir.file("server.pem"),
        "localhost"
    ));
    assert!(client_accepted(&ca_pem, &dir.file("carol.pem")));

    // Without reuse_ca a new CA replaces the old one only with replace_ca.
    let replace = CertOptions {
        replace_ca: true,
        ..CertOptions::default()
    };
    generate(dir.path(), &replace).unwrap();
    assert_ne!(dir.file("ca.pem"), ca_pem);
}

#[test]
fn an_existing_ca_is_not_replaced_without_replace_ca() {
    let dir = TempDir::new("keep-ca");
    generate(dir.path(), &CertOptions::default()).unwrap();
    let before: Vec<String> = ["ca.pem", "ca.key", "server.pem", "client.pem"]
        .iter()
        .map(|f| dir.file(f))
        .collect();
    let unchanged = |dir: &TempDir| {
        let now: Vec<String> = ["ca.pem", "ca.key", "server.pem", "client.pem"]
            .iter()
            .map(|f| dir.file(f))
            .collect();
        assert_eq!(now, before, "nothing may be rewritten");
    };
    match generate(dir.path(), &CertOptions::default()) {
        Err(CertError::CaExists(p)) => assert_eq!(p, dir.path().join("ca.pem")),
        other => panic!("expected CaExists, got {other:?}"),
    }
    unchanged(&dir);
    // Half a CA is still one: reuse_ca cannot use it, and a new CA would replace it.
    fs::remove_file(dir.path().join("ca.pem")).unwrap();
    let reuse = CertOptions {
        reuse_ca: true,
        ..CertOptions::default()
    };
    match generate(dir.path(), &reuse) {
        Err(CertError::CaExists(p)) => assert_eq!(p, dir.path().join("ca.key")),
        other => panic!("expected CaExists, got {other:?}"),
    }
    let err = generate(dir.path(), &CertOptions::default()).unwrap_err();
    assert!(err.to_string().contains("ca.key already exists"), "{err}");
    let replace = CertOptions {
        replace_ca: true,
        ..CertOptions::default()
    };
    generate(dir.path(), &replace).unwrap();
    assert!(client_accepted(
        &dir.file("ca.pem"),
        &dir.file("client.pem")
    ));
}

#[test]
fn reuse_ca_without_ca_files_makes_one() {
    let dir = TempDir::new("reuse-empty");
    let opts = CertOptions {
        reuse_ca: true,
        ..CertOptions::default()
    };
    let written = generate(dir.path(), &opts).unwrap();
    assert!(written.iter().any(|p| p.ends_with("ca.pem")));
    assert!(client_accepted(
        &dir.file("ca.pem"),
        &dir.file("client.pem")
    ));
}

#[test]
fn reuse_ca_refuses_a_key_from_another_ca() {
    let dir = TempDir::new("mismatch");
    generate(dir.path(), &CertOptions::default()).unwrap();
    let other = DevPki::new(&[]).unwrap();
    fs::write(dir.path().join("ca.key"), &other.ca_key_pem).unwrap();
    let opts = CertOptions {
        reuse_ca: true,
        ..CertOptions::default()
    };
    assert!(matches!(
        generate(dir.path(), &opts),
        Err(CertError::Rcgen(rcgen::Error::X509(_)))
    ));
}

#[test]
fn bad_client_cns_are_refused_before_writing() {
    for bad in ["../x", "", "a/b", "a\\b", "x\ny", "..", "ca", "Server"] {
        let dir = TempDir::new("bad");
        let opts = CertOptions {
            client_cns: vec!["fine".into(), bad.into()],
            ..CertOptions::default()
        };
        match generate(dir.path(), &opts) {
            Err(CertError::BadName(name)) => assert_eq!(name, bad),
            other => panic!("{bad:?}: expected BadName, got {other:?}"),
        }
        assert!(!dir.path().exists(), "{bad:?}: nothing written");
    }
}

#[test]
fn io_error_names_the_path() {
    let dir = TempDir::new("io");
    fs::create_dir_all(dir.path()).unwrap();
    let blocker = dir.path().join("not-a-dir");
    fs::write(&blocker, "").unwrap();
    match generate(&blocker, &CertOptions::default()) {
        Err(CertError::Io { path, .. }) => assert_eq!(path, blocker),
        other => panic!("expected Io, got {other:?}"),
    }
}
