//! docs/ is the reference users read: every flag the binary takes is in docs/cli.md, and every
//! key each config table accepts is in that table's section of docs/operations.md. The lists
//! come from the binary itself (`--help`, and the "expected one of" of an unknown key), so a
//! new flag or key without its documentation fails here.

mod common;

use std::process::Command;

use common::*;

fn doc(name: &str) -> String {
    std::fs::read_to_string(format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn help(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `--long` flags a help text lists in its Options section.
fn long_flags(help: &str) -> Vec<String> {
    let opts = help.split("Options:").nth(1).unwrap_or("");
    let mut v = Vec::new();
    for line in opts.lines() {
        let t = line.trim_start();
        if !t.starts_with('-') {
            continue;
        }
        for word in t.split([' ', ',']) {
            if let Some(f) = word.strip_prefix("--") {
                let f: String = f
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !f.is_empty() && f != "help" && f != "version" {
                    v.push(format!("--{f}"));
                }
            }
        }
    }
    v
}

/// The subcommands a help text lists.
fn subcommands(help: &str) -> Vec<String> {
    let cmds = help
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .unwrap_or("");
    cmds.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_command_and_flag_is_in_cli_md() {
    let cli = doc("cli.md");
    let mut missing = Vec::new();
    let mut checked = 0;
    let top = help(&[]);
    let cmds = subcommands(&top);
    assert!(cmds.len() >= 7, "subcommands: {cmds:?}");
    for c in &cmds {
        if !cli.contains(&format!("mqedge {c}")) {
            missing.push(format!("command `mqedge {c}`"));
        }
        let h = help(&[c]);
        let mut helps = vec![(c.clone(), h.clone())];
        for s in subcommands(&h) {
            if !cli.contains(&format!("bench {s}")) {
                missing.push(format!("command `mqedge {c} {s}`"));
            }
            helps.push((format!("{c} {s}"), help(&[c, &s])));
        }
        for (name, h) in helps {
            for f in long_flags(&h) {
                checked += 1;
                if !cli.contains(&format!("`{f}")) && !cli.contains(&format!(" {f} ")) {
                    missing.push(format!("`mqedge {name}` flag {f}"));
                }
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} flags found: the help parser is broken"
    );
    assert!(missing.is_empty(), "not in docs/cli.md: {missing:#?}");
}

/// The keys a table accepts, from the error an unknown key gets.
fn keys_of(dir: &TempDir, prefix: &str, table: &str) -> Vec<String> {
    let body = format!("{prefix}\n{table}\nno_such_key_for_docs = 1\n");
    let p = dir.write(&format!("t{}.toml", body.len()), &body);
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, `c`"
    let list = err
        .split("no_such_key_for_docs`, expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("{table}: no key list in: {err}"));
    let list = list.lines().next().unwrap_or("");
    let list = list.strip_prefix("one of ").unwrap_or(list);
    list.split(',')
        .flat_map(|k| k.split(" or "))
        .filter_map(|k| k.trim().strip_prefix('`')?.strip_suffix('`'))
        .map(str::to_string)
        .collect()
}

/// The text of operations.md from a heading that starts with `heading` to the next heading.
fn section<'a>(ops: &'a str, heading: &str) -> &'a str {
    let start = ops
        .find(heading)
        .unwrap_or_else(|| panic!("no heading {heading:?} in docs/operations.md"));
    let rest = &ops[start + heading.len()..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn every_config_key_is_in_its_operations_md_section() {
    let ops = doc("operations.md");
    let dir = TempDir::new("docs-keys");
    let lb = "[[listener]]\nname = \"x\"\nbind = \"127.0.0.1:0\"";
    let node = "[node]\nname = \"n\"\n[[listener]]\nbind = \"127.0.0.1:0\"";
    // (config prefix, table header to add the unknown key under, operations.md heading)
    let tables = [
        ("", "[lb]", "#### `[lb]`"),
        ("", "[[listener]]", "#### `[[listener]]`: client-facing"),
        (lb, "[listener.tls]", "#### `[listener.tls]`"),
        (lb, "[listener.websocket]", "#### `[listener.websocket]`"),
        (lb, "[balance]", "#### `[balance]`"),
        (lb, "[health]", "#### `[health]`"),
        (lb, "[[backend]]", "#### `[[backend]]`"),
        (lb, "[placement]", "#### `[placement]`"),
        ("", "[node]", "#### `[node]`"),
        (
            "[node]\nname = \"n\"",
            "[[listener]]",
            "#### `[[listener]]` (at least one)",
        ),
        (node, "[cluster]", "#### `[cluster]`"),
        (
            node,
            "[listener.websocket]",
            "#### Broker `[listener.websocket]`",
        ),
        (node, "[auth]", "#### `[auth]`"),
        (node, "[limits]", "#### `[limits]`"),
        (
            node,
            "[shared_subscriptions]",
            "#### `[shared_subscriptions]`",
        ),
    ];
    let mut missing = Vec::new();
    for (prefix, table, heading) in tables {
        let keys = keys_of(&dir, prefix, table);
        assert!(!keys.is_empty(), "{table}: no keys found");
        let sec = section(&ops, heading);
        for k in keys {
            if !sec.contains(&format!("| `{k}` |")) {
                missing.push(format!("{table} {k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config keys missing from their table in docs/operations.md: {missing:#?}"
    );
}

/// Metric family names in a Prometheus text exposition (`# TYPE name kind` lines).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_is_in_operations_md() {
    let ops = doc("operations.md");
    let dir = TempDir::new("docs-metrics");
    let pki = Pki::new(dir.path(), &[]);
    let broker = InProcBroker::start(&dir.write(
        "node.toml",
        &broker_config("127.0.0.1:0", "", "[cluster]\nbind = \"127.0.0.1:0\"\n"),
    ));
    let lb_cfg = lb_config(
        &pki,
        "optional",
        "client_id",
        &[("node1", broker.addr(), "none")],
        "admin = \"127.0.0.1:0\"",
    );
    let lb = InProcLb::start(&dir.write("lb.toml", &lb_cfg));
    let mut missing = Vec::new();
    for (role, admin) in [("lb", lb.admin()), ("broker", broker.admin())] {
        let (code, text) = http("GET", admin, "/metrics");
        assert_eq!(code, 200, "{role} /metrics");
        let names = families(&text);
        assert!(names.len() >= 5, "{role}: few metrics in {text}");
        for n in names {
            // counters are documented by their sample name (`_total`) or their family name
            if !ops.contains(&format!("`{n}")) && !ops.contains(&format!("{n}_total")) {
                missing.push(format!("{role}: {n}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics missing from docs/operations.md: {missing:#?}"
    );
}
