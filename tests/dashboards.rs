//! The Grafana dashboards (configs/grafana/*.json) and Prometheus alert rules
//! (configs/prometheus/alerts.yml) use only metrics that exist: every `mqedge_*` name in their
//! expressions is exposed by a running LB's or clustered broker's `/metrics` (families are
//! listed there even before they have a sample). Their shape is checked too: a dashboard has a
//! uid, a title and panels whose targets have expressions; every alert rule has an expression,
//! a severity and a summary.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::cluster_nodes::*;
use common::{http, InProcLb, TempDir};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Every `mqedge_...` token in an expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("mqedge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
}

/// The sample names an exposition can have: from each `# TYPE name kind` line, the name and
/// the suffixes of its kind.
fn exposed(text: &str, out: &mut BTreeSet<String>) {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("#") || it.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (it.next(), it.next()) else {
            continue;
        };
        out.insert(name.to_string());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        for s in suffixes {
            out.insert(format!("{name}{s}"));
        }
    }
}

/// The expressions of a dashboard, after checking its shape.
fn dashboard_exprs(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo(file)).unwrap();
    let d: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"));
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{file}: no uid"
    );
    assert!(d["title"].as_str().is_some(), "{file}: no title");
    let panels = d["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{file}: duplicate panel id"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "{file}: panel {} has no target",
            p["title"]
        );
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(
                e.contains("mqedge_"),
                "{file}: {e:?} reads no mqedge metric"
            );
            exprs.push(e.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{file}: only {} panels", exprs.len());
    exprs
}

/// The expressions of the alert rules, after checking that each rule has what it needs.
/// (Line-based: the file keeps to one `key: value` per line, no block scalars.)
fn alert_exprs(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo(file)).unwrap();
    assert!(
        !text.contains('\t'),
        "{file}: tabs are not YAML indentation"
    );
    let count = |k: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with(k))
            .count()
    };
    let alerts = count("- alert:");
    assert!(alerts >= 10, "{file}: only {alerts} rules");
    for key in ["expr:", "severity:", "summary:"] {
        assert_eq!(count(key), alerts, "{file}: not every rule has {key}");
    }
    assert!(text.contains("groups:"), "{file}: no groups");
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_use_exists() {
    let mut used = BTreeSet::new();
    let mut files = Vec::new();
    for f in [
        "configs/grafana/mqedge-lb.json",
        "configs/grafana/mqedge-broker.json",
    ] {
        for e in dashboard_exprs(f) {
            metric_names(&e, &mut used);
        }
        files.push(f);
    }
    for e in alert_exprs("configs/prometheus/alerts.yml") {
        metric_names(&e, &mut used);
    }

    // the real expositions: a 3-node cluster (cluster metrics) and an LB in front of it
    let cluster = Cluster::start("dashboards", true, "prefer_local", Run::InProcess).await;
    let mut have = BTreeSet::new();
    let node = cluster.nodes[0].as_ref().unwrap();
    exposed(&http("GET", node.admin(), "/metrics").1, &mut have);
    let dir = TempDir::new("dashboards-lb");
    let pki = common::Pki::new(dir.path(), &[]);
    let cfg = dir.write(
        "lb.toml",
        &format!(
            "[lb]\nadmin = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\
             bandwidth_in = \"1MiB\"\n\n[[listener]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
             [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[health]\nkind = \"tcp\"\n\n\
             [[backend]]\nname = \"node1\"\naddr = \"{}\"\n",
            pki.file("server.pem"),
            pki.file("server.key"),
            node.addr()
        ),
    );
    let lb = InProcLb::start(&cfg);
    // connections_closed_total has a backend in its labels: it appears with the first
    // forwarded connection's end
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(lb.addr("mqtt"))
            .await
            .unwrap();
        let connect = mqedge_protocol::peek::encode_connect(4, "dash-1", None, 30);
        s.write_all(&connect).await.unwrap();
        let mut b = [0u8; 4];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut b)).await;
    }
    let t0 = std::time::Instant::now();
    loop {
        let text = http("GET", lb.admin(), "/metrics").1;
        if text.contains("mqedge_lb_connections_closed_total{") {
            exposed(&text, &mut have);
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 10,
            "no forwarded connection closed:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let missing: Vec<&String> = used.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "metrics used by {files:?} or the alerts but not exposed: {missing:?}"
    );
    eprintln!("{} metrics used, all exposed", used.len());
}
