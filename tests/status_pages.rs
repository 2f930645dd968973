//! The status pages (`GET /` on both admin ports; docs/operations.md "Status pages"), loaded in
//! headless Chromium (Debian's `chromium`, installed by `.ci/run`): the page loads with no
//! console message, shows the backend names (and the cluster's nodes), escapes what it shows,
//! and changes when a backend goes down, through its own refresh script. With
//! `MQEDGE_SCREENSHOTS=DIR` it also writes the screenshots docs/ shows.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::{backend_state, eventually, get_json, InProcLb, ScriptRun, TempDir};

/// The Chromium binary, or `None` (outside CI) when it is not installed.
fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "chromium is not installed: .ci/run installs it"
        );
        eprintln!("status_pages: SKIPPED, chromium is not installed (.ci/run installs it)");
    }
    found
}

/// Chromium's flags for a closed network, as root, headless.
fn browser(bin: &str, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        // run the page's timers (its refresh) for this much virtual time before the dump
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The DOM after the page's script ran, and the console messages Chromium logged.
fn load(bin: &str, url: &str) -> (String, Vec<String>) {
    let profile = TempDir::new("chromium");
    let mut c = browser(bin, profile.path());
    c.arg("--dump-dom").arg(url);
    let run = ScriptRun::run(c, Duration::from_secs(60));
    assert_eq!(run.status, Some(0), "chromium failed:\n{}", run.output);
    let console = run
        .output
        .lines()
        .filter(|l| l.contains(":CONSOLE(") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    (run.output, console)
}

fn screenshot(bin: &str, url: &str, name: &str) {
    let Some(dir) = std::env::var_os("MQEDGE_SCREENSHOTS") else {
        return;
    };
    let profile = TempDir::new("chromium-shot");
    let mut c = browser(bin, profile.path());
    c.arg("--window-size=1100,700")
        .arg(format!(
            "--screenshot={}",
            Path::new(&dir).join(name).display()
        ))
        .arg(url);
    let run = ScriptRun::run(c, Duration::from_secs(60));
    assert_eq!(run.status, Some(0), "screenshot failed:\n{}", run.output);
}

/// The `<tr data-backend="NAME">` row of a dumped page.
fn row<'a>(dom: &'a str, attr: &str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-{attr}=\"{name}\">"))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn wait_state(admin: SocketAddr, name: &str, want: &str) {
    let t0 = Instant::now();
    while backend_state(admin, name) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{name} never {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_page_shows_backends_and_follows_a_backend_going_down() {
    let Some(bin) = chromium() else { return };
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    // keep accepting on "edge-a" (a TCP health check only connects)
    tokio::spawn(async move { while a.accept().await.is_ok() {} });
    let dir = TempDir::new("status-lb");
    let cfg = dir.write(
        "lb.toml",
        &format!(
            "[lb]\nname = \"edge<1>\"\nadmin = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
             [health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nfall = 1\nrise = 1\n\n\
             [[backend]]\nname = \"edge-a\"\naddr = \"{a_addr}\"\n\n\
             [[backend]]\nname = \"edge-b\"\naddr = \"{b_addr}\"\n"
        ),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    wait_state(admin, "edge-a", "up");
    wait_state(admin, "edge-b", "up");
    let url = format!("http://{admin}/");

    let (dom, console) = load(bin, &url);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("refreshed "),
        "the script did not refresh:\n{dom}"
    );
    assert!(row(&dom, "backend", "edge-a").contains("class=\"up\""));
    assert!(row(&dom, "backend", "edge-b").contains("class=\"up\""));
    // the LB's name is escaped, not markup
    assert!(dom.contains("edge&lt;1&gt;") && !dom.contains("edge<1>"));
    screenshot(bin, &url, "status-lb.png");

    // edge-b goes away: the page (through its refresh) shows it down with the check's error
    drop(b);
    wait_state(admin, "edge-b", "down");
    let (dom, console) = load(bin, &url);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let rb = row(&dom, "backend", "edge-b");
    assert!(rb.contains("class=\"down\""), "edge-b not shown down: {rb}");
    assert!(
        rb.contains("class=\"failed\""),
        "no failed check in the history: {rb}"
    );
    assert!(row(&dom, "backend", "edge-a").contains("class=\"up\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_page_shows_the_cluster() {
    let Some(bin) = chromium() else { return };
    let cluster = Cluster::start("status-broker", true, "prefer_local", Run::InProcess).await;
    let node = cluster.nodes[0].as_ref().unwrap();
    // the peers' admin addresses come by gossip, a little after the nodes are up
    let admins_known = eventually(Duration::from_secs(15), || {
        let v = get_json(node.admin(), "/api/cluster");
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() >= 3
            && nodes
                .iter()
                .filter(|n| n["name"] != "node1")
                .all(|n| n["admin"].is_string())
    })
    .await;
    assert!(admins_known, "{}", get_json(node.admin(), "/api/cluster"));
    let url = format!("http://{}/", node.admin());
    let (dom, console) = load(bin, &url);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("refreshed "),
        "the script did not refresh:\n{dom}"
    );
    for name in ["node1", "node2", "node3"] {
        assert!(
            row(&dom, "node", name).contains("class=\"up\""),
            "{name} not up"
        );
    }
    assert!(dom.contains("store <span class=\"ok\">ok</span>"), "{dom}");
    // one click from a node to its peers: each peer's row links to its own status page
    for (i, name) in ["node2", "node3"].iter().enumerate() {
        let href = format!(
            "href=\"http://{}/\"",
            cluster.nodes[i + 1].as_ref().unwrap().admin()
        );
        assert!(
            row(&dom, "node", name).contains(&href),
            "{name}: no {href}\n{dom}"
        );
    }
    assert!(
        dom.contains("id=\"replication\""),
        "no replication line\n{dom}"
    );
    screenshot(bin, &url, "status-broker.png");
}
