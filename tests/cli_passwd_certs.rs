//! `mqedge passwd` and `mqedge certs` as a user runs them: on a terminal (a pseudo-terminal
//! driven by `tests/interop/pty_run.py`) the password is asked twice, never shown, compared,
//! and the terminal is left as it was, Ctrl-C included; from a pipe the first line is the
//! password. `mqedge certs` does not replace an existing CA unless told to (`--force`);
//! `mqedge certs --revoke NAME` writes a CRL that refuses exactly the revoked certificates.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use mqedge_broker::auth::PasswordFile;

/// What the pty driver reports.
struct Terminal {
    code: Option<i32>,
    output: String,
    /// ECHO, ICANON and ISIG all set again after the command exited.
    restored: bool,
}

/// Runs `mqedge passwd -f FILE USER` on a pseudo-terminal, answering each prompt in turn.
fn passwd_on_terminal(file: &Path, user: &str, script: &[(&str, &str)]) -> Terminal {
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pty_run.py");
    let mut cmd = Command::new("python3");
    // The driver kills the command after 30 s and reports a null exit code.
    cmd.arg(driver).arg("30").arg(bin()).args(["passwd", "-f"]);
    cmd.arg(file).arg(user).arg("--");
    for (prompt, answer) in script {
        cmd.arg(prompt).arg(answer);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run python3");
    assert!(
        out.status.success(),
        "pty driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("driver JSON");
    Terminal {
        code: v["code"].as_i64().map(|c| c as i32),
        output: v["output"].as_str().unwrap_or_default().to_string(),
        restored: v["echo"] == true && v["icanon"] == true && v["isig"] == true,
    }
}

const PROMPT: &str = "Password: ";
const REPEAT: &str = "Repeat password: ";

#[test]
fn passwd_on_a_terminal_asks_twice_without_echo() {
    let dir = TempDir::new("passwd-tty");
    let file = dir.path().join("passwd");
    let t = passwd_on_terminal(
        &file,
        "alice",
        &[(PROMPT, "correct horse\\r"), (REPEAT, "correct horse\\r")],
    );
    assert_eq!(t.code, Some(0), "{}", t.output);
    assert!(
        !t.output.contains("horse"),
        "password echoed: {:?}",
        t.output
    );
    assert!(t.output.contains("set password of alice"), "{:?}", t.output);
    assert!(t.restored, "terminal settings not restored");
    let pw = PasswordFile::load(&file).unwrap();
    assert!(pw.verify("alice", b"correct horse"));

    // Backspace edits the line as it would with echo on.
    let t = passwd_on_terminal(
        &file,
        "bob",
        &[(PROMPT, "s3crex\\x7ft\\r"), (REPEAT, "s3cret\\r")],
    );
    assert_eq!(t.code, Some(0), "{}", t.output);
    assert!(PasswordFile::load(&file).unwrap().verify("bob", b"s3cret"));
}

#[test]
fn passwd_on_a_terminal_refuses_a_mismatch_an_interrupt_and_an_empty_password() {
    let dir = TempDir::new("passwd-tty-bad");
    let file = dir.path().join("passwd");
    let t = passwd_on_terminal(&file, "alice", &[(PROMPT, "one\\r"), (REPEAT, "two\\r")]);
    assert_eq!(t.code, Some(1), "{}", t.output);
    assert!(
        t.output
            .contains("the two passwords differ; nothing written"),
        "{:?}",
        t.output
    );
    assert!(
        t.restored,
        "terminal settings not restored after a mismatch"
    );

    let t = passwd_on_terminal(&file, "alice", &[(PROMPT, "half\\x03")]);
    assert_eq!(t.code, Some(1), "{}", t.output);
    assert!(t.output.contains("interrupted"), "{:?}", t.output);
    assert!(t.restored, "terminal settings not restored after Ctrl-C");

    let t = passwd_on_terminal(&file, "alice", &[(PROMPT, "\\r"), (REPEAT, "\\r")]);
    assert_eq!(t.code, Some(1), "{}", t.output);
    assert!(
        t.output.contains("empty password refused"),
        "{:?}",
        t.output
    );
    assert!(!file.exists(), "nothing may be written");
}

fn passwd_piped(file: &Path, user: &str, stdin: &[u8]) -> Output {
    let mut c = Command::new(bin())
        .args(["passwd", "-f"])
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn passwd_from_a_pipe_reads_the_first_line() {
    let dir = TempDir::new("passwd-pipe");
    let file = dir.path().join("passwd");
    let out = passwd_piped(&file, "alice", b"s3cret\r\nsecond line\n");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{out:?}");
    let pw = PasswordFile::load(&file).unwrap();
    assert!(pw.verify("alice", b"s3cret"));
    assert!(!pw.verify("alice", b"second line"));

    for (input, why) in [
        (&b""[..], "no password on stdin"),
        (b"\n", "empty password refused"),
    ] {
        let out = passwd_piped(&file, "bob", input);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(PasswordFile::load(&file).unwrap().len(), 1);
}

fn certs(out: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg("certs")
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn certs_refuses_to_replace_a_ca_unless_forced() {
    let dir = TempDir::new("certs-force");
    let out_dir = dir.path().join("certs");
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap();
    let first = certs(&out_dir, &[]);
    assert!(first.status.success(), "{first:?}");
    let (ca, key, server) = (read("ca.pem"), read("ca.key"), read("server.pem"));

    let again = certs(&out_dir, &[]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let err = String::from_utf8_lossy(&again.stderr);
    let ca_path = out_dir.join("ca.pem").display().to_string();
    assert!(err.contains(&format!("{ca_path} already exists")), "{err}");
    assert!(
        err.contains("--force") && err.contains("--reuse-ca"),
        "{err}"
    );
    assert_eq!(
        (read("ca.pem"), read("ca.key"), read("server.pem")),
        (ca.clone(), key.clone(), server.clone()),
        "a refused run must not touch any file"
    );

    let reuse = certs(&out_dir, &["--reuse-ca"]);
    assert!(reuse.status.success(), "{reuse:?}");
    assert_eq!(read("ca.pem"), ca, "--reuse-ca keeps the CA");
    assert_ne!(read("server.pem"), server, "--reuse-ca reissues the leaves");

    let both = certs(&out_dir, &["--reuse-ca", "--force"]);
    assert_eq!(both.status.code(), Some(1), "contradictory flags: {both:?}");

    let forced = certs(&out_dir, &["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(read("ca.pem"), ca, "--force makes a new CA");
    assert_ne!(read("ca.key"), key);
}

/// `mqedge certs --node NAME` writes a node certificate (DNS SAN NAME) that a broker's
/// `[cluster]` accepts and that works on both ends of a mutual TLS handshake between two
/// nodes; `--reuse-ca` adds nodes to the same CA without touching anything else.
#[tokio::test]
async fn certs_for_nodes_work_both_ways_in_mutual_tls() {
    use mqedge_shared::tls;
    let dir = TempDir::new("certs-node");
    let out_dir = dir.path().join("certs");
    let made = certs(&out_dir, &["--node", "node1"]);
    assert!(made.status.success(), "{made:?}");
    let wrote = String::from_utf8_lossy(&made.stdout);
    for f in ["ca.pem", "ca.key", "node-node1.pem", "node-node1.key"] {
        assert!(wrote.contains(f), "{wrote}");
    }
    assert!(
        !out_dir.join("server.pem").exists(),
        "--node writes node certificates only"
    );
    let ca = std::fs::read_to_string(out_dir.join("ca.pem")).unwrap();
    let more = certs(&out_dir, &["--node", "node2", "--reuse-ca"]);
    assert!(more.status.success(), "{more:?}");
    assert_eq!(std::fs::read_to_string(out_dir.join("ca.pem")).unwrap(), ca);
    let bad = certs(&out_dir, &["--node", "node_1", "--reuse-ca"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a DNS name"),
        "{bad:?}"
    );

    let leaf = tls::load_certs(&out_dir.join("node-node1.pem")).unwrap();
    let facts = tls::CertFacts::from_der(&leaf[0]).unwrap();
    assert_eq!(facts.san_values(), vec!["node1".to_string()]);
    // a broker config naming them loads (the node name is the certificate's SAN)
    let cfg = dir.write(
        "node1.toml",
        "[node]\nname = \"node1\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[cluster]\n\
         bind = \"127.0.0.1:7946\"\ntls_cert = \"certs/node-node1.pem\"\n\
         tls_key = \"certs/node-node1.key\"\ntls_ca = \"certs/ca.pem\"\n",
    );
    let c = mqedge_broker::config::Config::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let server = c.cluster.unwrap().tls.unwrap().server.clone();

    // node2 dials node1: each checks the other's certificate
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let s = tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .unwrap();
        let peer = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        tls::CertFacts::from_der(&peer).unwrap().san_values()
    });
    let load = |f: &str| tls::load_certs(&out_dir.join(f)).unwrap();
    let client = tls::client_config(
        load("ca.pem"),
        Some((
            load("node-node2.pem"),
            tls::load_key(&out_dir.join("node-node2.key")).unwrap(),
        )),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("node1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut s).await.unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), accept)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec!["node2".to_string()]);
}

/// `mqedge certs --revoke NAME` makes `crl.pem`, adds to it on the next run, and refuses a
/// certificate another CA signed; the verifier the LB uses refuses exactly what it lists.
#[test]
fn certs_revoke_writes_a_crl_the_verifier_applies() {
    use mqedge_shared::tls::{self, chain::ClientChainVerifier};
    use rustls::server::danger::ClientCertVerifier;
    let dir = TempDir::new("certs-revoke");
    let out_dir = dir.path().join("certs");
    let made = certs(&out_dir, &["--client-cn", "alice", "--client-cn", "bob"]);
    assert!(made.status.success(), "{made:?}");
    let accepted = |cn: &str| {
        let crls = tls::load_crls(&out_dir.join("crl.pem")).unwrap();
        let ca = tls::load_certs(&out_dir.join("ca.pem")).unwrap();
        let algs = tls::provider().signature_verification_algorithms;
        let v = ClientChainVerifier::new(ca, &crls, true, algs).unwrap();
        let leaf = tls::load_certs(&out_dir.join(format!("{cn}.pem"))).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        v.verify_client_cert(&leaf[0], &[], now).is_ok()
    };
    let revoke = |name: &str| certs(&out_dir, &["--revoke", name]);
    let r = revoke("bob");
    assert!(r.status.success(), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("crl.pem"));
    assert!(accepted("alice") && !accepted("bob"));
    // a second run keeps bob revoked
    assert!(revoke("alice").status.success());
    assert!(!accepted("alice") && !accepted("bob"));
    // a certificate of another CA, and one that does not exist: exit 1, the CRL unchanged
    let other = dir.path().join("other");
    assert!(certs(&other, &["--client-cn", "mallory"]).status.success());
    std::fs::copy(other.join("mallory.pem"), out_dir.join("mallory.pem")).unwrap();
    let before = std::fs::read(out_dir.join("crl.pem")).unwrap();
    for name in ["mallory", "nobody"] {
        let r = revoke(name);
        assert_eq!(r.status.code(), Some(1), "{name}: {r:?}");
        assert!(String::from_utf8_lossy(&r.stderr).contains(name), "{r:?}");
    }
    assert_eq!(std::fs::read(out_dir.join("crl.pem")).unwrap(), before);
}
