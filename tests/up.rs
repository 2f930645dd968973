//! `mqedge up` as a new user runs it: dev certs generated, the LB and three clustered nodes
//! started, a TLS `mosquitto_sub` with the generated client certificate on 8883 receives what
//! `mosquitto_pub` sends on 1883 — with client ids that hash to different nodes, so the message
//! crosses the cluster — and Ctrl-C (SIGINT) stops everything, leaving no process behind.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn up_runs_the_local_topology_and_ctrl_c_stops_it() {
    let dir = TempDir::new("up");
    let work = dir.path().join("work");
    let mut cmd = Command::new(bin());
    cmd.arg("up").arg("--dir").arg(&work);
    let mut up = Proc::spawn("up", cmd);
    up.wait_log("mqedge up: running", Duration::from_secs(30));
    let certs = work.join("certs");
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(certs.join(f).exists(), "missing {f}");
    }
    // the printed line, as a user would paste it
    let sub_line = up.wait_log("mosquitto_sub -h localhost -p 8883", Duration::from_secs(1));
    assert!(
        sub_line.contains(&certs.join("client.pem").display().to_string()),
        "{sub_line}"
    );

    let names = ["node1", "node2", "node3"];
    let sub_id = id_for("node1", &names, "up-sub");
    let pub_id = id_for("node2", &names, "up-pub");
    let c = |f: &str| certs.join(f).display().to_string();
    let mut sub = Command::new(which("mosquitto_sub"));
    sub.args([
        "-h",
        "localhost",
        "-p",
        "8883",
        "--cafile",
        &c("ca.pem"),
        "--cert",
        &c("client.pem"),
    ])
    .args([
        "--key",
        &c("client.key"),
        "-t",
        "demo/#",
        "-v",
        "-C",
        "1",
        "-W",
        "15",
        "-i",
        &sub_id,
    ]);
    let mut sub = Proc::spawn("sub", sub);
    // node1 sees the TLS client through the LB: PROXY v2, the certificate CN as username
    let admin1 = "127.0.0.1:19101".parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http("GET", admin1, &format!("/api/clients/{sub_id}")).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscriber never reached node1: {}",
            up.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = get_json(admin1, &format!("/api/clients/{sub_id}"));
    assert_eq!(v["username"], "dev-client", "{v}");
    assert_eq!(v["node"], "node1");
    let cluster = get_json(admin1, "/api/cluster");
    let up_nodes = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "up")
        .count();
    assert_eq!(up_nodes, 3, "{cluster}");

    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while sub.count_log("demo/hello") == 0 && std::time::Instant::now() < deadline {
        let _ = Command::new(which("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-i",
                &pub_id,
                "-t",
                "demo/hello",
                "-m",
                "hello across nodes",
            ])
            .output();
        std::thread::sleep(Duration::from_millis(300));
    }
    sub.wait_exit(Duration::from_secs(2));
    assert!(
        sub.logs().contains("demo/hello hello across nodes"),
        "sub: {}\nup: {}",
        sub.logs(),
        up.logs()
    );
    // the publisher really was on node2
    assert!(
        up.logs()
            .lines()
            .any(|l| l.contains("[node2]") && l.contains(&format!("client_id={pub_id} "))),
        "{}",
        up.logs()
    );

    up.signal("INT");
    let st = up
        .wait_exit(Duration::from_secs(20))
        .expect("mqedge up did not stop on Ctrl-C");
    assert!(st.success(), "{st:?}");
    assert!(up.logs().contains("mqedge up: stopped"));
    // no child left behind: every port is free again
    for port in [
        8883, 1883, 9100, 11883, 11884, 11885, 19101, 19102, 19103, 14371, 14372, 14373,
    ] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken after Ctrl-C"
        );
    }
    let ps = Command::new("pgrep")
        .arg("-f")
        .arg(work.join("configs").display().to_string())
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "children left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
