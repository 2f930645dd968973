//! Client-certificate chains at an mTLS listener, over real sockets with the LB in-process: the
//! basic constraints webpki leaves to us (a sub-CA under the leaf-only dev CA, a CA under an
//! intermediate with path length 0 that the operator put in `client_ca`) are refused and
//! counted as `tls_bad_chain`; `[listener.tls] crl` refuses a revoked certificate
//! (`tls_revoked`) and keeps the others; a new CRL is applied by hot reload without a restart,
//! and a bad one is refused (the old CRL stays in force) at reload and is a `file:line` error
//! at load.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqedge_shared::certs::issue::{self, Issued};
use mqedge_shared::tls::{certs_from_pem, client_config, key_from_pem, load_certs};

/// An LB with an admin API and one mTLS listener "mqtts" trusting `client_ca`, with
/// `crl_line` in its `[listener.tls]`, in front of `backend`.
fn config(pki: &Pki, client_ca: &Path, crl_line: &str, backend: SocketAddr) -> String {
    format!(
        r#"[lb]
name = "chain"
admin = "127.0.0.1:0"
connect_timeout = "2s"
drain_timeout = "1s"

[[listener]]
name = "mqtts"
bind = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "required"
{crl_line}

[health]
kind = "tcp"
interval = "500ms"
timeout = "500ms"

[[backend]]
name = "b1"
addr = "{backend}"
proxy_protocol = "none"
"#,
        cert = pki.file("server.pem"),
        key = pki.file("server.key"),
        ca = client_ca.display(),
    )
}

/// The dev CA of `pki` (leaf-only: path length 0) as an issuer.
fn dev_ca(pki: &Pki) -> Issued {
    Issued {
        cert_pem: std::fs::read_to_string(pki.file("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(pki.file("ca.key")).unwrap(),
    }
}

/// A client presenting `leaf` and the `chain` above it, trusting the dev CA for the server.
fn presenting(pki: &Pki, leaf: &Issued, chain: &[&Issued]) -> Arc<rustls::ClientConfig> {
    let mut certs = certs_from_pem(&leaf.cert_pem).unwrap();
    for c in chain {
        certs.extend(certs_from_pem(&c.cert_pem).unwrap());
    }
    let key = key_from_pem(&leaf.key_pem).unwrap();
    let server_ca = load_certs(Path::new(&pki.file("ca.pem"))).unwrap();
    client_config(server_ca, Some((certs, key))).unwrap()
}

/// TLS to the listener and an MQTT CONNECT: the CONNACK code, or why there was none (the
/// handshake failed, or, in TLS 1.3, the server's alert arrived after the client's Finished).
async fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, id: &str) -> Result<u8, String> {
    let run = async {
        let mut s = tls_from(None, addr, cfg).await.map_err(|e| e.to_string())?;
        mqtt_connect(&mut s, id).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `mqedge_lb_connections_rejected_total` for the listener and `reason`.
fn rejected(lb: &InProcLb, reason: &str) -> f64 {
    metric(
        &lb_metrics(lb),
        "mqedge_lb_connections_rejected_total",
        &["listener=\"mqtts\"", &format!("reason=\"{reason}\"")],
    )
}

/// The LB's reload generation.
fn generation(lb: &InProcLb) -> u64 {
    get_json(lb.admin(), "/api/reload")["generation"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_past_a_path_length_limit_is_refused() {
    let dir = TempDir::new("chain-pathlen");
    let pki = Pki::new(dir.path(), &["alice"]);
    let broker = MockBroker::start("b1", false).await;
    // the dev CA may sign leaves only; a root with an intermediate limited to leaves
    let ca = dev_ca(&pki);
    let root = issue::root_ca("chain root", None).unwrap();
    let leaf_only = issue::sub_ca(&root, "leaf-only intermediate", Some(0)).unwrap();
    let trusted = dir.write(
        "client_ca.pem",
        &format!("{}{}{}", ca.cert_pem, root.cert_pem, leaf_only.cert_pem),
    );
    let cfg = dir.write("lb.toml", &config(&pki, &trusted, "", broker.addr));
    let lb = tokio::task::block_in_place(|| InProcLb::start(&cfg));
    let addr = lb.addr("mqtts");

    // allowed: leaves straight under a leaf-only CA, and a CA under the unconstrained root
    assert_eq!(
        connect(addr, pki.client_config(Some("alice")), "alice").await,
        Ok(0)
    );
    let direct = issue::client(&leaf_only, "direct").unwrap();
    let ok = presenting(&pki, &direct, &[]);
    assert_eq!(connect(addr, ok, "direct").await, Ok(0));
    let mid = issue::sub_ca(&root, "mid", None).unwrap();
    let under_mid = issue::client(&mid, "under-mid").unwrap();
    let ok = presenting(&pki, &under_mid, &[&mid]);
    assert_eq!(connect(addr, ok, "under-mid").await, Ok(0));

    // a sub-CA under the dev CA (pathlen 0, a trust anchor: webpki ignores its constraints)
    let rogue = issue::sub_ca(&ca, "rogue CA", None).unwrap();
    let deep = issue::client(&rogue, "deep").unwrap();
    let bad = presenting(&pki, &deep, &[&rogue]);
    assert!(
        connect(addr, bad, "deep").await.is_err(),
        "sub-CA of a leaf-only CA accepted"
    );
    // another CA under the pathlen-0 intermediate, with and without that intermediate sent
    let second = issue::sub_ca(&leaf_only, "second CA", None).unwrap();
    let deeper = issue::client(&second, "deeper").unwrap();
    let bad = presenting(&pki, &deeper, &[&second]);
    assert!(
        connect(addr, bad, "deeper").await.is_err(),
        "CA under a pathlen-0 CA accepted"
    );
    let bad = presenting(&pki, &deeper, &[&second, &leaf_only]);
    assert!(
        connect(addr, bad, "deeper").await.is_err(),
        "full chain past pathlen accepted"
    );

    assert!(
        eventually(Duration::from_secs(3), || rejected(&lb, "tls_bad_chain")
            == 3.0)
        .await,
        "bad chains not counted: {:?}",
        lb_metrics(&lb)
    );
    assert!(
        lb.logs().contains("path length limit (pathLenConstraint)"),
        "the log does not say why: {}",
        lb.logs()
    );
    assert_eq!(broker.clients(), vec!["alice", "direct", "under-mid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_a_new_crl_applies_on_reload() {
    let dir = TempDir::new("chain-crl");
    let pki = Pki::new(dir.path(), &["alice", "bob", "carol"]);
    let broker = MockBroker::start("b1", false).await;
    let ca = dev_ca(&pki);
    let pem = |cn: &str| std::fs::read_to_string(pki.file(&format!("{cn}.pem"))).unwrap();
    let crl = dir.write("crl.pem", &issue::crl(&ca, &[&pem("bob")], 1).unwrap());
    let line = format!("crl = \"{}\"", crl.display());
    let cfg = dir.write(
        "lb.toml",
        &config(&pki, Path::new(&pki.file("ca.pem")), &line, broker.addr),
    );
    let lb = tokio::task::block_in_place(|| InProcLb::start(&cfg));
    let addr = lb.addr("mqtts");
    let as_cn = |cn: &str| pki.client_config(Some(cn));

    assert_eq!(connect(addr, as_cn("alice"), "alice-1").await, Ok(0));
    assert!(
        connect(addr, as_cn("bob"), "bob-1").await.is_err(),
        "revoked bob accepted"
    );
    assert!(
        eventually(Duration::from_secs(3), || rejected(&lb, "tls_revoked")
            == 1.0)
        .await,
        "revocation not counted"
    );

    // a new CRL revoking alice too: in force without a restart
    let g = generation(&lb);
    std::fs::write(
        &crl,
        issue::crl(&ca, &[&pem("bob"), &pem("alice")], 2).unwrap(),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || generation(&lb) > g).await,
        "the new CRL was not reloaded"
    );
    assert!(
        connect(addr, as_cn("alice"), "alice-2").await.is_err(),
        "alice accepted after reload"
    );
    assert_eq!(connect(addr, as_cn("carol"), "carol-1").await, Ok(0));

    // a bad CRL file: the reload is refused, the CRL in force stays
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let refused = |lb: &InProcLb| get_json(lb.admin(), "/api/reload")["last_error"].clone();
    assert!(
        eventually(Duration::from_secs(5), || refused(&lb).is_string()).await,
        "a bad CRL was not refused at reload"
    );
    let err = refused(&lb).as_str().unwrap().to_string();
    assert!(err.contains("lb.toml:") && err.contains("crl"), "{err}");
    assert!(
        connect(addr, as_cn("alice"), "alice-3").await.is_err(),
        "old CRL dropped"
    );
    assert!(
        connect(addr, as_cn("bob"), "bob-2").await.is_err(),
        "old CRL dropped"
    );
    assert_eq!(connect(addr, as_cn("carol"), "carol-2").await, Ok(0));
    assert_eq!(broker.clients(), vec!["alice-1", "carol-1", "carol-2"]);
}

#[test]
fn a_bad_crl_is_a_config_error_with_its_line() {
    let dir = TempDir::new("chain-badcrl");
    let pki = Pki::new(dir.path(), &[]);
    let backend: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let check = |name: &str, text: &[u8], auth: &str| {
        let crl = dir.path().join(name);
        std::fs::write(&crl, text).unwrap();
        let body = config(
            &pki,
            Path::new(&pki.file("ca.pem")),
            &format!("crl = [\"{}\"]", crl.display()),
            backend,
        )
        .replace(
            "client_auth = \"required\"",
            &format!("client_auth = \"{auth}\""),
        );
        let cfg = dir.write("lb.toml", &body);
        let line = body.lines().position(|l| l.starts_with("crl")).unwrap() + 1;
        let e = mqedge_lb::config::Config::load(&cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("lb.toml:{line}:")), "{name}: {e}");
        e
    };
    let e = check("garbage.der", b"\x30\x03\x02\x01\x01", "required");
    assert!(e.contains("not a certificate revocation list"), "{e}");
    let cert = std::fs::read(pki.file("ca.pem")).unwrap();
    let e = check("a-cert.pem", &cert, "required");
    assert!(e.contains("no X509 CRL block found"), "{e}");
    // reported together with the listener's other problems, in one pass
    let crl = dir.write("garbage2.der", "junk");
    let body = config(
        &pki,
        Path::new(&pki.file("ca.pem")),
        &format!("crl = \"{}\"", crl.display()),
        backend,
    )
    .replace(&pki.file("server.pem"), "/nonexistent/server.pem");
    let e = mqedge_lb::config::Config::load(&dir.write("lb.toml", &body))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("garbage2.der") && e.contains("/nonexistent/server.pem"),
        "{e}"
    );
    let good = issue::crl(&dev_ca(&pki), &[], 1).unwrap();
    let e = check("good.pem", good.as_bytes(), "none");
    assert!(e.contains("crl needs client_auth"), "{e}");
}
