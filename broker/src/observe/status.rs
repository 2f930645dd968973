//! The broker's status page (`GET /` on the admin port) and its JSON (`GET /api/status`): the
//! cluster (nodes, state, routes), clients, sessions, subscriptions, queues, retained messages
//! and store health. Rendered here from the same JSON that its script (`status.js`) refreshes
//! from; the figures come from the metrics registry, so the page and `/metrics` agree.

use std::fmt::Write;

use mqedge_shared::status::{esc, page, samples};
use serde_json::{json, Map, Value};

use crate::broker::Broker;

/// Brings the store and cluster gauges up to date (they are read, not pushed).
pub fn refresh_gauges(b: &Broker) {
    if let Some(stats) = b.store().map(|s| s.stats()) {
        let m = b.metrics();
        m.store_commits.set(stats.commits as i64);
        m.store_bytes_written.set(stats.bytes as i64);
        let seen = m.store_commit_failures.get();
        m.store_commit_failures
            .inc_by(stats.commit_failures.saturating_sub(seen));
    }
    if let Some(c) = b.cluster() {
        let peers = c.peers();
        let live = peers.iter().filter(|p| p.1.up).count();
        let unreachable = peers.iter().filter(|p| p.1.unreachable).count();
        b.metrics()
            .cluster_peers_up
            .set((live - unreachable) as i64);
        b.metrics()
            .cluster_peers_unreachable
            .set(unreachable as i64);
        b.metrics()
            .cluster_peers_down
            .set((peers.len() - live) as i64);
        b.metrics().cluster_routes.set(c.remote_routes() as i64);
    }
}

/// `GET /api/cluster`: this node and its peers with their state and routes.
pub fn cluster_json(b: &Broker) -> serde_json::Value {
    let mut nodes = vec![json!({
        "name": b.cfg().name,
        "state": "up",
        "routes": b.cluster().map(|c| c.local_routes()).unwrap_or_else(|| b.router().filter_count()),
    })];
    if let Some(c) = b.cluster() {
        for (n, st, routes) in c.peers() {
            nodes.push(json!({
                "name": n.to_string(),
                "state": match (st.up, st.unreachable) {
                    (false, _) => "down",
                    (true, true) => "unreachable",
                    (true, false) => "up",
                },
                "routes": routes,
                "routes_held": st.held,
                // where its status page is: its admin address, on its cluster IP when it
                // listens on every address
                "admin": st.admin.map(|a| {
                    let ip = if a.ip().is_unspecified() { st.addr.ip() } else { a.ip() };
                    std::net::SocketAddr::new(ip, a.port()).to_string()
                }),
            }));
        }
    }
    let replication = b.replica().map(|r| r.status());
    json!({ "node": b.cfg().name, "nodes": nodes, "replication": replication })
}

/// `GET /api/status`.
pub fn status_json(b: &Broker) -> Value {
    refresh_gauges(b);
    let text = b.metrics().encode();
    let mut figures = Map::new();
    let mut dropped = Map::new();
    for s in samples(&text, "mqedge_broker_") {
        let key = s.name.trim_start_matches("mqedge_broker_");
        match key {
            "messages_dropped_total" => {
                if let Some(r) = s.label("reason") {
                    dropped.insert(r.to_string(), json!(s.value as u64));
                }
            }
            "clients_connected"
            | "sessions"
            | "subscriptions"
            | "retained_messages"
            | "retained_tombstones"
            | "session_timers"
            | "connections_pending"
            | "messages_received_total"
            | "messages_sent_total"
            | "store_commits"
            | "store_bytes_written"
            | "store_commit_failures_total" => {
                figures.insert(key.to_string(), json!(s.value as u64));
            }
            _ => {}
        }
    }
    let failing = b.store().and_then(|s| s.failing()).map(|w| w.to_string());
    json!({
        "role": "broker",
        "name": b.cfg().name,
        "persistent": b.store().is_some(),
        "store_failing": failing,
        "figures": figures,
        "dropped": dropped,
        "cluster": cluster_json(b),
        "drain": b.drain().json(),
    })
}

fn body(s: &Value) -> String {
    let mut o = String::new();
    let f = &s["figures"];
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    let store = match (s["persistent"].as_bool(), s["store_failing"].as_str()) {
        (Some(false), _) => "memory only (no data_dir)".to_string(),
        (_, Some(why)) => format!("<span class=\"failed\">{}</span>", esc(why)),
        _ => "<span class=\"ok\">ok</span>".to_string(),
    };
    let _ = write!(
        o,
        "<p>node <b>{}</b> · store {store}</p><h2>Clients and sessions</h2><table id=\"figures\">\
         <tr><th>connected clients</th><td>{}</td></tr><tr><th>connecting</th><td>{}</td></tr>\
         <tr><th>sessions</th><td>{}</td></tr><tr><th>subscriptions</th><td>{}</td></tr>\
         <tr><th>session timers</th><td>{}</td></tr><tr><th>messages in / out</th><td>{} / {}</td></tr>\
         <tr><th>retained messages (tombstones)</th><td>{} ({})</td></tr>\
         <tr><th>store commits / bytes written / failed commits</th><td>{} / {} / {}</td></tr></table>",
        esc(s["name"].as_str().unwrap_or("")),
        n("clients_connected"),
        n("connections_pending"),
        n("sessions"),
        n("subscriptions"),
        n("session_timers"),
        n("messages_received_total"),
        n("messages_sent_total"),
        n("retained_messages"),
        n("retained_tombstones"),
        n("store_commits"),
        n("store_bytes_written"),
        n("store_commit_failures_total"),
    );
    o.push_str("<h2>Dropped messages by reason</h2><table id=\"dropped\"><tr><th>reason</th><th>messages</th></tr>");
    for (k, v) in s["dropped"].as_object().into_iter().flatten() {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(k), v);
    }
    o.push_str("</table><h2>Cluster</h2><table id=\"nodes\"><tr><th>node</th><th>state</th><th>routes</th><th>routes held</th></tr>");
    for node in s["cluster"]["nodes"].as_array().into_iter().flatten() {
        let st = esc(node["state"].as_str().unwrap_or(""));
        let held = node["routes_held"]
            .as_bool()
            .map_or("", |h| if h { "yes" } else { "no" });
        let name = esc(node["name"].as_str().unwrap_or(""));
        let link = match node["admin"].as_str() {
            Some(a) => format!("<a href=\"http://{}/\">{name}</a>", esc(a)),
            None => name.clone(),
        };
        let _ = write!(
            o,
            "<tr data-node=\"{name}\"><td>{link}</td><td class=\"{st}\">{st}</td><td>{}</td><td>{held}</td></tr>",
            node["routes"],
        );
    }
    o.push_str("</table>");
    if let Some(r) = s["cluster"]["replication"].as_object() {
        let _ = write!(
            o,
            "<p id=\"replication\">session replicas {} · synced {} · waiting to be copied {} · standby copies of peers' sessions {}</p>",
            r["session_replicas"], r["synced"], r["sync_pending"], r["standby_sessions"]
        );
    }
    o
}

/// `GET /`.
pub fn page_html(b: &Broker) -> String {
    let s = status_json(b);
    let title = format!("mqedge broker {}", s["name"].as_str().unwrap_or(""));
    page(&title, &body(&s), "/api/status", include_str!("status.js"))
}
