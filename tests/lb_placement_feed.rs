//! The placement feed (issue 16 item 1; docs/cluster.md "Placement", docs/operations.md
//! `[placement]`): each broker lists at `GET /api/placement` the persistent sessions it holds
//! off their hash home; an LB whose backends name their brokers' `admin` reads those feeds and
//! sends such a client to the node holding its session, not to its hash home (which would take
//! the session over with one more hop). A feed that fails, or an entry whose backend is not
//! usable, leaves the pick to the hash. Three clustered nodes in-process, an LB in front, all on
//! OS ports.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster_nodes::*;
use common::*;
use mqedge_protocol::Version;

/// Every test here ends within this.
const BOUND: Duration = Duration::from_secs(90);

/// An LB in front of the cluster with `client_id` hashing; backend `i` reads its feed at
/// `feeds[i]` when set; the feeds are polled every 200 ms.
fn lb_toml(cl: &Cluster, feeds: &[Option<SocketAddr>; 3]) -> String {
    let mut s = String::from(
        "[lb]\nname = \"pf-edge\"\nadmin = \"127.0.0.1:0\"\ndrain_timeout = \"1s\"\n\n\
         [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [balance]\nstrategy = \"client_id\"\nretries = 2\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\n\
         [placement]\ninterval = \"200ms\"\ntimeout = \"1s\"\n",
    );
    for (i, feed) in feeds.iter().enumerate() {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            NAMES[i],
            cl.addr(i)
        ));
        if let Some(a) = feed {
            s.push_str(&format!("admin = \"{a}\"\n"));
        }
    }
    s
}

/// A persistent 3.1.1 session (subscribed to `pf/q`) for a client id whose hash home is
/// node1, made on node2 by connecting there directly: an exception.
async fn session_off_home(cl: &Cluster, prefix: &str) -> String {
    let id = id_for("node1", &NAMES, prefix);
    let (mut c, ack) = connect(cl.addr(1), Version::V311, &id, false, None).await;
    assert!(!ack.session_present);
    assert_eq!(c.subscribe(1, &[("pf/q", 1)]).await, vec![1]);
    disconnect(c).await;
    let (code, body) = cl.client(1, &id);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["connected"], false, "{body}");
    id
}

async fn start_lb(dir: &TempDir, cl: &Cluster, feeds: &[Option<SocketAddr>; 3]) -> InProcLb {
    let lb = InProcLb::start(&dir.write("lb.toml", &lb_toml(cl, feeds)));
    let admin = lb.admin();
    let up = eventually(Duration::from_secs(10), || {
        let v = get_json(admin, "/api/backends");
        let b = v.as_array().cloned().unwrap_or_default();
        b.len() == 3 && b.iter().all(|b| b["state"] == "up")
    })
    .await;
    assert!(up, "{}", get_json(admin, "/api/backends"));
    lb
}

fn lb_metric(lb: &InProcLb, name: &str, needles: &[&str]) -> f64 {
    metric(
        &parse_prometheus(&http("GET", lb.admin(), "/metrics").1),
        name,
        needles,
    )
}

/// Where the LB would send `id` now (`/api/placement/{id}`).
fn pick_of(lb: &InProcLb, id: &str) -> serde_json::Value {
    get_json(lb.admin(), &format!("/api/placement/{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_off_its_hash_home_is_picked_where_it_is_held() {
    tokio::time::timeout(BOUND, async {
        let cl = Cluster::start("pf-held", false, "prefer_local", Run::InProcess).await;
        let id = session_off_home(&cl, "pf-held").await;

        // the broker's feed: node2 lists it, the others do not
        let feed = get_json(cl.admin(1), "/api/placement");
        assert_eq!(feed["node"], "node2");
        assert_eq!(feed["members"], serde_json::json!(NAMES), "{feed}");
        assert_eq!(feed["truncated"], false);
        let listed = feed["exceptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["client_id"] == id.as_str() && e["node"] == "node2");
        assert!(listed, "{feed}");
        for i in [0, 2] {
            let other = get_json(cl.admin(i), "/api/placement");
            assert!(!other.to_string().contains(&id), "{other}");
        }
        assert_eq!(
            get_json(cl.admin(1), "/api/placement?limit=0")["truncated"],
            true,
            "the bound says what it left out"
        );

        let dir = TempDir::new("pf-held-lb");
        let feeds = [0, 1, 2].map(|i| Some(cl.admin(i)));
        let lb = start_lb(&dir, &cl, &feeds).await;
        let learned = eventually(Duration::from_secs(10), || {
            pick_of(&lb, &id)["pick"] == "node2"
        })
        .await;
        assert!(
            learned,
            "{}\n{}",
            get_json(lb.admin(), "/api/placement"),
            lb.logs()
        );
        let st = get_json(lb.admin(), "/api/placement");
        let feeds_ok = st["feeds"].as_array().unwrap();
        assert_eq!(feeds_ok.len(), 3, "{st}");
        assert!(feeds_ok.iter().all(|f| f["ok"] == true), "{st}");
        assert_eq!(pick_of(&lb, &id)["hash"], "node1");
        assert_eq!(pick_of(&lb, &id)["source"], "exception");
        assert!(lb_metric(&lb, "mqedge_lb_placement_entries", &[]) >= 1.0);

        // through the LB the client lands on node2, with its session and no takeover
        let (c, ack) = connect(lb.addr("mqtt"), Version::V311, &id, false, None).await;
        assert!(ack.session_present);
        let (code, body) = cl.client(1, &id);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["connected"], true, "not served by node2: {body}");
        assert_eq!(cl.client(0, &id).0, 404, "node1 took it over");
        assert_eq!(
            cl.metric(1, "mqedge_broker_cluster_session_handovers_total"),
            0.0
        );
        let picks = |source| {
            lb_metric(
                &lb,
                "mqedge_lb_placement_picks_total",
                &[&format!("\"{source}\"")],
            )
        };
        assert_eq!((picks("exception"), picks("hash")), (1.0, 0.0));
        disconnect(c).await;

        // the entry's backend drained: the pick goes by the hash again, and the session follows
        let (code, body) = http("POST", lb.admin(), "/api/backends/node2/drain");
        assert_eq!(code, 200, "{body}");
        assert_eq!(pick_of(&lb, &id)["source"], "hash");
        let (c, ack) = connect(lb.addr("mqtt"), Version::V311, &id, false, None).await;
        assert!(ack.session_present, "taken over with its session");
        assert_eq!(cl.client(0, &id).1["connected"], true, "{}", cl.logs());
        assert_eq!((picks("exception"), picks("hash")), (1.0, 1.0));
        disconnect(c).await;
        drop(lb);
    })
    .await
    .expect("within the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_feed_drops_its_entries_and_the_hash_decides() {
    tokio::time::timeout(BOUND, async {
        let cl = Cluster::start("pf-dead", false, "prefer_local", Run::InProcess).await;
        let id = session_off_home(&cl, "pf-dead").await;
        // node2's feed at a port nobody listens on; node3's at node1's admin (another node)
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = TempDir::new("pf-dead-lb");
        let feeds = [Some(cl.admin(0)), Some(dead), Some(cl.admin(0))];
        let lb = start_lb(&dir, &cl, &feeds).await;
        let failing = eventually(Duration::from_secs(10), || {
            let st = get_json(lb.admin(), "/api/placement");
            let f = st["feeds"].as_array().cloned().unwrap_or_default();
            let error = |i: usize| f[i]["error"].as_str().unwrap_or("").to_string();
            f.len() == 3
                && f[0]["ok"] == true
                && f[1]["ok"] == false
                && error(1).contains("connect")
                && f[2]["ok"] == false
                && error(2).contains("is node \"node1\", not backend \"node3\"")
        })
        .await;
        assert!(failing, "{}", get_json(lb.admin(), "/api/placement"));
        assert!(lb_metric(&lb, "mqedge_lb_placement_feed_errors_total", &["\"node2\""]) >= 1.0);
        assert_eq!(pick_of(&lb, &id)["source"], "hash");
        assert_eq!(pick_of(&lb, &id)["pick"], "node1");

        // the hash home takes the session over from node2: nothing lost, one more hop
        let (c, ack) = connect(lb.addr("mqtt"), Version::V311, &id, false, None).await;
        assert!(ack.session_present);
        assert_eq!(cl.client(0, &id).1["connected"], true, "{}", cl.logs());
        assert!(eventually(Duration::from_secs(10), || cl.client(1, &id).0 == 404).await);
        assert_eq!(
            lb_metric(&lb, "mqedge_lb_placement_picks_total", &["\"hash\""]),
            1.0
        );
        disconnect(c).await;
        drop(lb);
    })
    .await
    .expect("within the bound");
}

/// An LB with one backend `node1` whose feed is at `admin`, with `[placement] extra`.
fn one_backend_lb(node: SocketAddr, admin: Option<SocketAddr>, extra: &str) -> String {
    let admin = admin
        .map(|a| format!("admin = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "[lb]\nadmin = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\n\n\
         [placement]\ninterval = \"200ms\"\n{extra}\n\n\
         [[backend]]\nname = \"node1\"\naddr = \"{node}\"\n{admin}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_carries_the_brokers_admin_token_and_reloads_without_a_restart() {
    tokio::time::timeout(BOUND, async {
        let dir = TempDir::new("pf-token");
        dir.write("token", "s3cret-feed\n");
        dir.write("wrong", "not-the-token\n");
        let broker = InProcBroker::start(&dir.write(
            "node.toml",
            &broker_config("127.0.0.1:0", "admin_token_file = \"token\"", ""),
        ));
        let (code, _) = http("GET", broker.admin(), "/api/placement");
        assert_eq!(code, 401, "the feed is behind the admin token");

        let (node, admin) = (broker.addr(), Some(broker.admin()));
        let lb_cfg = dir.write(
            "lb.toml",
            &one_backend_lb(node, admin, "admin_token_file = \"token\""),
        );
        let lb = InProcLb::start(&lb_cfg);
        let feed = |lb: &InProcLb| get_json(lb.admin(), "/api/placement")["feeds"][0].clone();
        let ok = eventually(Duration::from_secs(10), || feed(&lb)["ok"] == true).await;
        assert!(ok, "{}\n{}", feed(&lb), lb.logs());
        assert_eq!(feed(&lb)["members"], serde_json::json!(["node1"]));

        // a wrong token: the reload applies at the next round, the feed fails with 401
        std::fs::write(
            &lb_cfg,
            one_backend_lb(node, admin, "admin_token_file = \"wrong\""),
        )
        .unwrap();
        let refused = eventually(Duration::from_secs(10), || {
            feed(&lb)["error"] == "HTTP status 401"
        })
        .await;
        assert!(refused, "{}\n{}", feed(&lb), lb.logs());
        assert!(lb_metric(&lb, "mqedge_lb_placement_feed_errors_total", &["\"node1\""]) >= 1.0);

        // no backend with admin: the feed and its table are gone
        std::fs::write(&lb_cfg, one_backend_lb(node, None, "")).unwrap();
        let off = eventually(Duration::from_secs(10), || {
            let st = get_json(lb.admin(), "/api/placement");
            st["feeds"].as_array().is_some_and(|f| f.is_empty()) && st["entries"] == 0
        })
        .await;
        assert!(off, "{}", get_json(lb.admin(), "/api/placement"));
        drop(lb);
    })
    .await
    .expect("within the bound");
}
