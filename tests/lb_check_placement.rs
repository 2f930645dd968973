//! `mqedge check -c lb.toml --broker node.toml ...`: the LB's backend names must be the
//! clustered nodes' names (docs/cluster.md, "Placement"). Agreeing files pass with a
//! `placement: ok` line; each disagreement is one `file:line: what` naming both sides, exit 1.
//! The check reads files only (no node need run), so the binary is spawned for the CLI contract.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn check(lb: &Path, brokers: &[PathBuf]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check").arg("-c").arg(lb);
    for b in brokers {
        cmd.arg("--broker").arg(b);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An LB config with one `[[backend]]` per (name, addr); the k-th backend's `name` is on line
/// 7 + 4k.
fn lb_toml(backends: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n[balance]\nstrategy = \"client_id\"\n",
    );
    for (name, addr) in backends {
        s.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddr = \"{addr}\"\nproxy_protocol = \"v2\"\n"
        ));
    }
    s
}

/// A broker config; `[node] name` is on line 2; `[cluster]` when `clustered`.
fn node_toml(name: &str, mqtt: &str, clustered: bool) -> String {
    let mut s = format!("[node]\nname = \"{name}\"\n[[listener]]\nbind = \"{mqtt}\"\n");
    if clustered {
        s.push_str("[cluster]\nbind = \"127.0.0.1:14371\"\nseeds = [\"127.0.0.1:14372\"]\n");
    }
    s
}

/// Three clustered nodes on their own MQTT ports, as `mqedge up` lays them out.
fn three_nodes(dir: &TempDir, names: [&str; 3]) -> Vec<PathBuf> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            dir.write(
                &format!("node{}.toml", i + 1),
                &node_toml(n, &format!("127.0.0.1:{}", 11883 + i), true),
            )
        })
        .collect()
}

const LOCAL: [(&str, &str); 3] = [
    ("node1", "127.0.0.1:11883"),
    ("node2", "127.0.0.1:11884"),
    ("node3", "127.0.0.1:11885"),
];

#[test]
fn agreeing_names_pass() {
    let dir = TempDir::new("place-ok");
    let lb = dir.write("lb.toml", &lb_toml(&LOCAL));
    let nodes = three_nodes(&dir, ["node1", "node2", "node3"]);
    let (code, out, err) = check(&lb, &nodes);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(
        out.contains("placement: ok (the LB's backends node1, node2, node3 are the nodes' names)"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(": ok (")).count(),
        5,
        "{out}"
    );
}

#[test]
fn a_backend_named_unlike_the_node_at_its_addr_is_one_line_naming_both() {
    let dir = TempDir::new("place-addr");
    let mut backends = LOCAL;
    backends[1].0 = "broker-b";
    let lb = dir.write("lb.toml", &lb_toml(&backends));
    let nodes = three_nodes(&dir, ["node1", "node2", "node3"]);
    let (code, out, err) = check(&lb, &nodes);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    let want = format!(
        "{}:11: backend \"broker-b\" (addr 127.0.0.1:11884) is node \"node2\" ({}:2), but the names differ",
        lb.display(),
        nodes[1].display()
    );
    assert!(err.starts_with(&want), "want {want:?}\ngot {err:?}");
    assert!(err.contains("so name the backend \"node2\""), "{err}");
    assert_eq!(err.lines().count(), 1, "one mistake, one line: {err}");
    assert!(!out.contains("placement: ok"), "{out}");
}

#[test]
fn names_missing_on_either_side_are_reported_when_addresses_cannot_pair_them() {
    // every node binds 0.0.0.0:1883 on its own host: no backend address is a listener's
    let dir = TempDir::new("place-sets");
    let lb = dir.write(
        "lb.toml",
        &lb_toml(&[
            ("node1", "broker-0.broker:1883"),
            ("node2", "broker-1.broker:1883"),
            ("old-node", "10.0.0.9:1883"),
        ]),
    );
    let nodes: Vec<PathBuf> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| dir.write(&format!("{n}.toml"), &node_toml(n, "0.0.0.0:1883", true)))
        .collect();
    let (code, out, err) = check(&lb, &nodes);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{}:2: clustered node \"node3\" is not a backend of {} (backends: node1, node2, old-node)",
            nodes[2].display(),
            lb.display()
        )),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:15: backend \"old-node\" is not the name of any clustered node given (nodes: node1, node2, node3)",
            lb.display()
        )),
        "{err}"
    );
}

#[test]
fn two_nodes_with_one_name_are_reported() {
    let dir = TempDir::new("place-dup");
    let lb = dir.write("lb.toml", &lb_toml(&LOCAL[..2]));
    // node2.toml forgot `[node] name`: the default is node1
    let n1 = dir.write("node1.toml", &node_toml("node1", "127.0.0.1:11883", true));
    let n2 = dir.write(
        "node2.toml",
        "[[listener]]\nbind = \"127.0.0.1:11884\"\n[cluster]\nbind = \"127.0.0.1:14372\"\n",
    );
    let (code, out, err) = check(&lb, &[n1.clone(), n2.clone()]);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    assert!(
        err.contains(&format!(
            "{}: backend \"node2\" (addr 127.0.0.1:11884) is node \"node1\" ({})",
            format_args!("{}:11", lb.display()),
            n2.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}: clustered node \"node1\" has the name of {}:2 too",
            n2.display(),
            n1.display()
        )),
        "{err}"
    );
}

#[test]
fn unclustered_nodes_are_not_compared_and_bad_files_fail_as_alone() {
    let dir = TempDir::new("place-misc");
    let lb = dir.write("lb.toml", &lb_toml(&[("a", "127.0.0.1:11883")]));
    let solo = dir.write("solo.toml", &node_toml("solo", "127.0.0.1:11883", false));
    let (code, out, err) = check(&lb, std::slice::from_ref(&solo));
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    // a broken node file: its own `file:line: what`, exit 1
    let bad = dir.write(
        "bad.toml",
        "[node]\nname = \"a b\"\n[[listener]]\nbind = \"127.0.0.1:1\"\n",
    );
    let (code, _, err) = check(&lb, std::slice::from_ref(&bad));
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("{}:2: node name must be non-empty", bad.display())),
        "{err}"
    );
    // --broker needs the LB config as -c
    let (code, _, err) = check(&solo, std::slice::from_ref(&solo));
    assert_eq!(code, 1);
    assert!(
        err.contains("is a broker config; --broker compares"),
        "{err}"
    );
}

#[test]
fn unequal_weights_pass_with_a_warning() {
    let dir = TempDir::new("place-weight");
    let text = lb_toml(&LOCAL).replace("name = \"node2\"\n", "name = \"node2\"\nweight = 2\n");
    let lb = dir.write("lb.toml", &text);
    let nodes = three_nodes(&dir, ["node1", "node2", "node3"]);
    let (code, out, err) = check(&lb, &nodes);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains("placement: ok"), "{out}");
    assert!(
        err.starts_with(&format!(
            "{}: warning: backend weights differ (node1 = 1, node2 = 2, node3 = 1)",
            lb.display()
        )),
        "{err}"
    );
}
