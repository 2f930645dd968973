//! The admin APIs of both roles against a web page and a stranger (issue 15 item 9): a drain
//! POST as a cross-site form sends it (no `X-Mqedge-Admin`, `Content-Type: text/plain`, a
//! foreign `Origin`) is refused; a `Host` that is not an IP, `localhost` or one of `admin_hosts`
//! (DNS rebinding) is refused; with `admin_token_file` every path but `/healthz` needs the
//! bearer token, `/api/clients` included; a missing or empty token file is a config error.
//! Each refusal is counted in `admin_refused_total` of its role.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// One HTTP/1.1 request with exactly the given headers (plus `Connection: close`); status and
/// body.
fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, String) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_request(method, addr, path, &h)
}

fn h(k: &str, v: impl Into<String>) -> (&str, String) {
    (k, v.into())
}

fn refused(metrics_text: &str, role: &str, reason: &str) -> f64 {
    metric(
        &parse_prometheus(metrics_text),
        &format!("mqedge_{role}_admin_refused_total"),
        &[&format!("reason=\"{reason}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_refuses_cross_site_drains_and_rebound_hosts() {
    let dir = TempDir::new("adm-csrf");
    let pki = Pki::new(dir.path(), &[]);
    let m1 = MockBroker::start("m1", false).await;
    let cfg = dir.write(
        "lb.toml",
        &admin_lb_config(
            &pki,
            "admin_hosts = [\"lb.internal\"]",
            "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1",
            &[("m1", m1.addr)],
        ),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    let host = h("Host", admin.to_string());
    tokio::task::block_in_place(|| {
        wait_backend_state(admin, "m1", "up", Duration::from_secs(3));
        let drain = "/api/backends/m1/drain";
        // what a form on evil.example posts: no custom header, a simple content type
        let form = [
            host.clone(),
            h("Origin", "http://evil.example"),
            h("Content-Type", "text/plain"),
        ];
        assert_eq!(request("POST", admin, drain, &form).0, 403);
        // a page that could add the header still has a foreign Origin
        let mut with_header = form.to_vec();
        with_header.push(h("X-Mqedge-Admin", "1"));
        assert_eq!(request("POST", admin, drain, &with_header).0, 403);
        // a browser that leaves Origin out still cannot add the header
        let no_origin = [host.clone(), h("Content-Type", "text/plain")];
        assert_eq!(request("POST", admin, drain, &no_origin).0, 403);
        assert_eq!(backend_state(admin, "m1"), "up", "a refused drain drained");
        // DNS rebinding: evil.example resolved to the admin address
        let rebound = h("Host", format!("evil.example:{}", admin.port()));
        assert_eq!(request("GET", admin, "/api/backends", &[rebound]).0, 403);
        for ok in [format!("localhost:{}", admin.port()), "LB.internal".into()] {
            let (code, body) = request("GET", admin, "/api/backends", &[h("Host", ok.clone())]);
            assert_eq!(code, 200, "Host {ok}: {body}");
        }
        // the operator's curl, and a page served by the admin itself
        let own = [
            host.clone(),
            h("Origin", format!("http://{admin}")),
            h("X-Mqedge-Admin", "1"),
        ];
        let (code, body) = request("POST", admin, drain, &own);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"draining\""), "{body}");
        let ready = [host.clone(), h("X-Mqedge-Admin", "1")];
        assert_eq!(
            request("POST", admin, "/api/backends/m1/ready", &ready).0,
            200
        );
        let text = request("GET", admin, "/metrics", std::slice::from_ref(&host)).1;
        assert_eq!(refused(&text, "lb", "admin_header"), 1.0, "{text}");
        assert_eq!(refused(&text, "lb", "origin"), 2.0);
        assert_eq!(refused(&text, "lb", "host"), 1.0);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_token_guards_everything_but_healthz() {
    let dir = TempDir::new("adm-lbtok");
    let pki = Pki::new(dir.path(), &[]);
    let m1 = MockBroker::start("m1", false).await;
    dir.write("admin.token", "lb-secret-1\n");
    let cfg = dir.write(
        "lb.toml",
        &admin_lb_config(
            &pki,
            "admin_token_file = \"admin.token\"",
            "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1",
            &[("m1", m1.addr)],
        ),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    let host = h("Host", admin.to_string());
    let bearer = |t: &str| h("Authorization", format!("Bearer {t}"));
    tokio::task::block_in_place(|| {
        assert_eq!(
            request("GET", admin, "/healthz", std::slice::from_ref(&host)).0,
            200
        );
        for path in ["/api/backends", "/metrics", "/api/reload"] {
            assert_eq!(
                request("GET", admin, path, std::slice::from_ref(&host)).0,
                401,
                "{path}"
            );
            let wrong = [host.clone(), bearer("lb-secret-2")];
            assert_eq!(request("GET", admin, path, &wrong).0, 401, "{path}");
            let right = [host.clone(), bearer("lb-secret-1")];
            assert_eq!(request("GET", admin, path, &right).0, 200, "{path}");
        }
        let drain = [host.clone(), h("X-Mqedge-Admin", "1")];
        assert_eq!(
            request("POST", admin, "/api/backends/m1/drain", &drain).0,
            401
        );
        let text = request(
            "GET",
            admin,
            "/metrics",
            &[host.clone(), bearer("lb-secret-1")],
        )
        .1;
        assert_eq!(refused(&text, "lb", "token"), 7.0, "{text}");
        // a reload takes the new token file: the old token stops working
        dir.write("admin2.token", "lb-secret-2");
        let edited = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("admin.token", "admin2.token");
        std::fs::write(&cfg, edited).unwrap();
        let new_token = [host.clone(), bearer("lb-secret-2")];
        assert!(
            wait_until(Duration::from_secs(5), || {
                request("GET", admin, "/api/reload", &new_token).0 == 200
            }),
            "the reload did not take the new token"
        );
        let old_token = [host.clone(), bearer("lb-secret-1")];
        assert_eq!(request("GET", admin, "/api/backends", &old_token).0, 401);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_clients_api_is_behind_the_token_and_the_host_check() {
    let dir = TempDir::new("adm-brtok");
    dir.write("node.token", "node-secret\n");
    let cfg = dir.write(
        "b.toml",
        &broker_config("127.0.0.1:0", "admin_token_file = \"node.token\"", ""),
    );
    let b = InProcBroker::start(&cfg);
    let mut c = tcp(b.addr()).await;
    assert_eq!(mqtt_connect(&mut c, "dev-7").await.unwrap(), 0);
    let admin = b.admin();
    let host = h("Host", admin.to_string());
    let token = h("Authorization", "Bearer node-secret");
    tokio::task::block_in_place(|| {
        assert_eq!(
            request("GET", admin, "/healthz", std::slice::from_ref(&host)).0,
            200
        );
        let (code, body) = request(
            "GET",
            admin,
            "/api/clients/dev-7",
            std::slice::from_ref(&host),
        );
        assert_eq!(code, 401, "{body}");
        assert!(!body.contains("127.0.0.1"), "{body}");
        let (code, body) = request(
            "GET",
            admin,
            "/api/clients/dev-7",
            &[host.clone(), token.clone()],
        );
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"peer_addr\":\"127.0.0.1:"), "{body}");
        let rebound = [h("Host", "evil.example"), token.clone()];
        assert_eq!(request("GET", admin, "/api/cluster", &rebound).0, 403);
        let text = request("GET", admin, "/metrics", &[host.clone(), token.clone()]).1;
        assert_eq!(refused(&text, "broker", "token"), 1.0, "{text}");
        assert_eq!(refused(&text, "broker", "host"), 1.0, "{text}");
    });
}

#[test]
fn a_missing_or_empty_token_file_is_a_config_error() {
    let dir = TempDir::new("adm-cfg");
    let pki = Pki::new(dir.path(), &[]);
    let m1: SocketAddr = "127.0.0.1:1".parse().unwrap();
    dir.write("empty.token", " \n");
    for (file, what) in [("nope.token", "cannot read"), ("empty.token", "is empty")] {
        let line = format!("admin_token_file = \"{file}\"");
        let lb = dir.write("lb.toml", &admin_lb_config(&pki, &line, "", &[("m1", m1)]));
        let e = mqedge_lb::config::Config::load(&lb)
            .unwrap_err()
            .to_string();
        let at = format!("{}:3: admin_token_file: ", lb.display());
        assert!(e.contains(&at) && e.contains(what), "{e}");
        let node = dir.write("b.toml", &broker_config("127.0.0.1:0", &line, ""));
        let e = mqedge_broker::config::Config::load(&node)
            .unwrap_err()
            .to_string();
        let at = format!("{}:4: admin_token_file: ", node.display());
        assert!(e.contains(&at) && e.contains(what), "{e}");
    }
    let bad = dir.write(
        "lb.toml",
        &admin_lb_config(&pki, "admin_hosts = [\"a b\"]", "", &[("m1", m1)]),
    );
    let e = mqedge_lb::config::Config::load(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin_hosts: \"a b\" is not a host name"), "{e}");
}
