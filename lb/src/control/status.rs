//! The LB's status page (`GET /` on the admin port) and its JSON (`GET /api/status`):
//! backends with state, health-check history, connections and bytes; the reload generation and
//! its last error; listeners with their connections, bytes and rejects by reason. The page is
//! rendered here from the same JSON its script refreshes from (`status.js`).
//!
//! May use `state`, `backend`, `metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;

use mqedge_shared::status::{esc, page, samples};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::state::Lb;

/// A backend as `/api/backends` shows it.
pub fn backend_json(b: &Backend) -> Value {
    let last = b.last_check();
    json!({
        "name": b.name(),
        "addr": b.addr().to_string(),
        "state": b.state().as_str(),
        "drain_cause": b.drain_cause().map(|c| c.as_str()),
        "active_connections": b.active(),
        "total_connections": b.total(),
        // µs precision: a check on a LAN takes well under a millisecond
        "last_check_ms": last.as_ref().map(|c| c.took.as_micros() as f64 / 1000.0),
        "last_check_at": last.as_ref().map(|c| c.at_unix_ms),
        "last_check_error": last.and_then(|c| c.error),
    })
}

/// A backend on the status page: `/api/backends`' fields, its weight, bytes and check history.
fn backend_status(b: &Backend) -> Value {
    let checks: Vec<Value> = b
        .check_history()
        .into_iter()
        .map(|c| {
            json!({
                "at": c.at_unix_ms,
                "ms": c.took.as_micros() as f64 / 1000.0,
                "error": c.error,
            })
        })
        .collect();
    let mut v = backend_json(b);
    v["weight"] = json!(b.weight());
    v["bytes_in"] = json!(b.counters().bytes_in.get());
    v["bytes_out"] = json!(b.counters().bytes_out.get());
    v["checks"] = json!(checks);
    v
}

/// Listeners from the metrics text: accepted, open, bytes and rejects by reason.
fn listeners(text: &str) -> Vec<Value> {
    let mut by: BTreeMap<String, Value> = BTreeMap::new();
    for s in samples(text, "mqedge_lb_") {
        let Some(l) = s.label("listener").or_else(|| s.label("name")) else {
            continue;
        };
        let v = s.value as u64;
        let key = match s.name.as_str() {
            "mqedge_lb_connections_accepted_total" => "accepted",
            "mqedge_lb_connections_active" => "active",
            "mqedge_lb_listener_bytes_total" if s.label("direction") == Some("in") => "bytes_in",
            "mqedge_lb_listener_bytes_total" => "bytes_out",
            "mqedge_lb_connections_rejected_total" => "rejected",
            _ => continue,
        };
        let e = by.entry(l.to_string()).or_insert_with(|| {
            json!({"name": l, "accepted": 0, "active": 0, "bytes_in": 0, "bytes_out": 0, "rejected": {}})
        });
        if key == "rejected" {
            if let Some(reason) = s.label("reason") {
                e["rejected"][reason] = json!(v);
            }
        } else {
            e[key] = json!(v);
        }
    }
    by.into_values().collect()
}

/// `GET /api/status`.
pub fn status_json(lb: &Lb) -> Value {
    let live = lb.live();
    json!({
        "role": "lb",
        "name": live.lb.name,
        "accepting": lb.accepting(),
        "generation": live.generation,
        "last_error": lb.reload_status().last_error(),
        "backends": live.backends.iter().map(|b| backend_status(b)).collect::<Vec<_>>(),
        "listeners": listeners(&lb.metrics().encode()),
    })
}

/// Renders the body from the status JSON, as `status.js`'s `render` does.
fn body(s: &Value) -> String {
    let mut o = String::new();
    let text = |v: &Value| esc(v.as_str().unwrap_or(""));
    let _ = write!(
        o,
        "<p>LB <b>{}</b> · config generation <b>{}</b> · {}</p>",
        text(&s["name"]),
        s["generation"],
        if s["accepting"].as_bool() == Some(true) {
            "accepting"
        } else {
            "<span class=\"down\">shutting down</span>"
        }
    );
    if let Some(e) = s["last_error"].as_str() {
        let _ = write!(o, "<p class=\"err\">last reload refused: {}</p>", esc(e));
    }
    o.push_str("<h2>Backends</h2><table id=\"backends\"><tr><th>name</th><th>address</th><th>state</th><th>weight</th><th>open</th><th>total</th><th>bytes in / out</th><th>health checks (newest right)</th><th>last error</th></tr>");
    for b in s["backends"].as_array().into_iter().flatten() {
        let state = text(&b["state"]);
        let mut hist = String::new();
        let mut last_err = String::new();
        for c in b["checks"].as_array().into_iter().flatten() {
            let cls = if c["error"].is_null() { "ok" } else { "failed" };
            let _ = write!(
                hist,
                "<span class=\"{cls}\" title=\"{} ms\"></span>",
                c["ms"]
            );
            last_err = c["error"].as_str().map(esc).unwrap_or_default();
        }
        let _ = write!(
            o,
            "<tr data-backend=\"{n}\"><td>{n}</td><td>{}</td><td class=\"{state}\">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td class=\"hist\">{hist}</td><td class=\"err\">{last_err}</td></tr>",
            text(&b["addr"]),
            b["weight"],
            b["active_connections"],
            b["total_connections"],
            b["bytes_in"],
            b["bytes_out"],
            n = text(&b["name"]),
        );
    }
    o.push_str("</table><h2>Listeners</h2><table id=\"listeners\"><tr><th>name</th><th>accepted</th><th>open</th><th>bytes in / out</th><th>rejected by reason</th></tr>");
    for l in s["listeners"].as_array().into_iter().flatten() {
        let mut rej = String::new();
        if let Some(m) = l["rejected"].as_object() {
            for (k, v) in m {
                let _ = write!(rej, "{} {} · ", esc(k), v);
            }
        }
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            text(&l["name"]),
            l["accepted"],
            l["active"],
            l["bytes_in"],
            l["bytes_out"],
            rej.trim_end_matches(" · ")
        );
    }
    o.push_str("</table>");
    o
}

/// `GET /`.
pub fn page_html(lb: &Lb) -> String {
    let s = status_json(lb);
    let title = format!("mqedge lb {}", s["name"].as_str().unwrap_or(""));
    page(&title, &body(&s), "/api/status", include_str!("status.js"))
}
