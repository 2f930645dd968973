//! The broker from the command line: `mqedge check` on broker configs (role detection without
//! `[node]`, broken password/ACL files), `mqedge passwd`, SIGHUP not killing a node, and a
//! username without any password file refused when anonymous clients are not allowed.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mqedge_protocol::Version;

fn check(p: &std::path::Path) -> (i32, String) {
    let o = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(p)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn check_knows_broker_configs_and_their_files() {
    let dir = TempDir::new("bcheck");
    let p = dir.write(
        "b.toml",
        "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\nallow_anonymous = true\n",
    );
    let (code, out) = check(&p);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("broker config"), "{out}");
    dir.write("passwd", "alice:not-a-hash\n");
    let p = dir.write(
        "b2.toml",
        "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\npassword_file = \"passwd\"\n",
    );
    let (code, out) = check(&p);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("passwd:1:"), "{out}");
    dir.write("acl", "topic read a/#\nbogus line\n");
    let p = dir.write(
        "b3.toml",
        "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\nacl_file = \"acl\"\n",
    );
    let (code, out) = check(&p);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("acl:2:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_users_sighup_and_username_without_password_file() {
    let dir = TempDir::new("bpasswd");
    // mqedge passwd reads the password from stdin when it is not a terminal
    let mut c = Command::new(bin())
        .args(["passwd", "-f"])
        .arg(dir.path().join("passwd"))
        .arg("alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    assert!(c.wait().unwrap().success());
    let cfg = dir.write(
        "b.toml",
        "[node]\nadmin = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = false\npassword_file = \"passwd\"\n",
    );
    let b = BrokerProc::start(&cfg);
    let addr = b.addr();
    let connect = |user: Option<(&'static str, &'static str)>| async move {
        let s = tcp_from(None, addr).await.unwrap();
        let mut r = Raw::new(s, Version::V311);
        r.connect_with("c", true, 30, None, user, Default::default())
            .await
            .code
    };
    assert_eq!(connect(Some(("alice", "s3cret"))).await, 0);
    assert_eq!(connect(Some(("alice", "wrong"))).await, 0x86);
    assert_eq!(connect(None).await, 0x87);
    // SIGHUP is not fatal
    b.proc.signal("HUP");
    b.proc.wait_log("not reloadable", Duration::from_secs(5));
    assert_eq!(connect(Some(("alice", "s3cret"))).await, 0);

    // no password file at all: a bare username is refused too
    let cfg2 = dir.write("b2.toml", "[node]\nadmin = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = false\n");
    let b2 = BrokerProc::start(&cfg2);
    let s = tcp_from(None, b2.addr()).await.unwrap();
    let mut r = Raw::new(s, Version::V311);
    assert_eq!(
        r.connect_with(
            "c",
            true,
            30,
            None,
            Some(("mallory", "x")),
            Default::default()
        )
        .await
        .code,
        0x86
    );
}
