//! The maintenance cycle of docs/operations.md ("To take a broker node out for maintenance"),
//! over real sockets and under load: clients connected through the LB to mock brokers, drain,
//! `drain_timeout`, `ready`, traffic again, drain again. Also a `ready` before `drain_timeout`
//! (it cancels the pending close) and a backend removed by a reload and re-added while its close
//! is pending (the same thing as `ready`, with the LB in-process).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DRAIN: Duration = Duration::from_millis(1200);

fn config(pki: &Pki, backends: &[(&str, SocketAddr)]) -> String {
    admin_lb_config(
        pki,
        &format!(
            "name = \"maint\"\ndrain_timeout = \"{}ms\"\nconnect_timeout = \"2s\"",
            DRAIN.as_millis()
        ),
        "kind = \"mqtt\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1",
        backends,
    )
}

async fn wait_state(admin: SocketAddr, name: &str, state: &str, within: Duration) {
    tokio::task::block_in_place(|| wait_backend_state(admin, name, state, within));
}

/// A client connected through the LB (CONNACK received).
struct Client {
    id: String,
    s: TcpStream,
}

impl Client {
    async fn connect(lb: SocketAddr, id: &str) -> Client {
        let mut s = TcpStream::connect(lb).await.unwrap();
        let code = mqtt_connect(&mut s, id)
            .await
            .unwrap_or_else(|e| panic!("{id}: no CONNACK through the LB: {e}"));
        assert_eq!(code, 0, "{id}: CONNACK return code");
        Client { id: id.into(), s }
    }

    /// PINGREQ → PINGRESP through the LB and the broker; false once the connection is gone.
    async fn ping(&mut self) -> bool {
        if self.s.write_all(&[0xc0, 0x00]).await.is_err() {
            return false;
        }
        let mut pong = [0u8; 2];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.s.read_exact(&mut pong)).await,
            Ok(Ok(_)) if pong == [0xd0, 0x00]
        )
    }
}

async fn connect_all(lb: SocketAddr, ids: &[String]) -> Vec<Client> {
    let mut v = Vec::new();
    for id in ids {
        v.push(Client::connect(lb, id).await);
    }
    v
}

/// Pings every client every 100 ms for `dur`; returns, per client, when it first failed
/// (measured from `since`), or `None` if it kept answering.
async fn ping_for(cs: &mut [Client], dur: Duration, since: Instant) -> Vec<Option<Duration>> {
    let mut failed = vec![None; cs.len()];
    let end = Instant::now() + dur;
    while Instant::now() < end {
        for (c, f) in cs.iter_mut().zip(failed.iter_mut()) {
            if f.is_none() && !c.ping().await {
                *f = Some(since.elapsed());
            }
        }
        if failed.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    failed
}

/// Every client keeps exchanging data for `dur`.
async fn assert_alive(cs: &mut [Client], dur: Duration, what: &str) {
    let failed = ping_for(cs, dur, Instant::now()).await;
    for (c, f) in cs.iter().zip(&failed) {
        assert!(f.is_none(), "{what}: {} closed after {f:?}", c.id);
    }
}

/// Every client is closed, none before `DRAIN - 150ms` after `since`, all by `DRAIN + 1.5s`.
async fn assert_closed_by_drain(cs: &mut [Client], since: Instant, what: &str) {
    let failed = ping_for(cs, DRAIN + Duration::from_millis(1500), since).await;
    for (c, f) in cs.iter().zip(&failed) {
        let f = f.unwrap_or_else(|| panic!("{what}: {} still open after the drain", c.id));
        assert!(
            f >= DRAIN - Duration::from_millis(150),
            "{what}: {} closed after {f:?}, before drain_timeout {DRAIN:?}",
            c.id
        );
    }
}

fn ids(n: usize, on: &str, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|i| id_for(on, &["m1", "m2"], &format!("{prefix}{i}")))
        .collect()
}

fn landed(m: &MockBroker, ids: &[String]) -> bool {
    let seen = m.clients();
    ids.iter().all(|id| seen.contains(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ready_drain_under_load() {
    let dir = TempDir::new("maint");
    let pki = Pki::new(dir.path(), &[]);
    let m1 = MockBroker::start("m1", false).await;
    let m2 = MockBroker::start("m2", false).await;
    let cfg = dir.write(
        "lb.toml",
        &config(&pki, &[("m1", m1.addr), ("m2", m2.addr)]),
    );
    let lb = InProcLb::start(&cfg);
    // forwarded connections to m1 closed by a drain (`connections_closed_total`)
    let drained = || {
        metric(
            &lb_metrics(&lb),
            "mqedge_lb_connections_closed_total",
            &["backend=\"m1\"", "reason=\"drained\""],
        ) as usize
    };
    let (admin, plain) = (lb.admin(), lb.addr("mqtt"));
    wait_state(admin, "m1", "up", Duration::from_secs(3)).await;

    // load: clients whose id hashes to m1, and some on m2 that must never notice anything
    let before = ids(8, "m1", "a");
    let mut on_m1 = connect_all(plain, &before).await;
    let bystander_ids = ids(3, "m2", "by");
    let mut bystanders = connect_all(plain, &bystander_ids).await;
    assert!(landed(&m1, &before) && landed(&m2, &bystander_ids));
    assert_alive(&mut on_m1, Duration::from_millis(300), "before the drain").await;

    // 1. drain: no new clients on m1, the open ones closed after drain_timeout
    let t0 = Instant::now();
    let (code, body) = http("POST", admin, "/api/backends/m1/drain");
    assert_eq!(code, 200, "{body}");
    let during = ids(4, "m1", "during");
    let mut moved = connect_all(plain, &during).await;
    assert!(landed(&m2, &during), "new clients go to m2 while m1 drains");
    assert!(!m1.clients().iter().any(|c| during.contains(c)));
    assert_closed_by_drain(&mut on_m1, t0, "first drain").await;
    assert!(drained() >= before.len(), "{}", lb.logs());

    // 3./4. maintenance done: ready, m1 up again after a check
    let (code, body) = http("POST", admin, "/api/backends/m1/ready");
    assert_eq!(code, 200, "{body}");
    wait_state(admin, "m1", "up", Duration::from_secs(3)).await;

    // new clients forwarded to m1 stay connected and exchange data for several seconds
    let after = ids(8, "m1", "b");
    let closes_before = drained();
    let mut back = connect_all(plain, &after).await;
    assert!(
        landed(&m1, &after),
        "after ready, m1 takes its clients again"
    );
    assert_alive(&mut back, Duration::from_secs(3), "after ready").await;
    assert_eq!(drained(), closes_before, "{}", lb.logs());

    // a ready before drain_timeout cancels the pending close of the connections still open
    assert_eq!(http("POST", admin, "/api/backends/m1/drain").0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http("POST", admin, "/api/backends/m1/ready").0, 200);
    wait_state(admin, "m1", "up", Duration::from_secs(3)).await;
    assert_alive(
        &mut back,
        DRAIN + Duration::from_millis(800),
        "ready cancels",
    )
    .await;
    let late = ids(3, "m1", "c");
    let mut late_cs = connect_all(plain, &late).await;
    assert!(landed(&m1, &late));

    // drain again: works, for the connections from before the cancelled drain and after it
    let t1 = Instant::now();
    assert_eq!(http("POST", admin, "/api/backends/m1/drain").0, 200);
    assert_closed_by_drain(&mut back, t1, "second drain").await;
    assert_closed_by_drain(&mut late_cs, t1, "second drain, late clients").await;

    // m2's clients, including those moved there during the first drain, never noticed
    assert_alive(&mut bystanders, Duration::from_millis(300), "bystanders").await;
    assert_alive(&mut moved, Duration::from_millis(300), "moved to m2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_remove_and_readd_is_like_drain_and_ready() {
    let dir = TempDir::new("readd");
    let pki = Pki::new(dir.path(), &[]);
    let m1 = MockBroker::start("m1", false).await;
    let m2 = MockBroker::start("m2", false).await;
    let both = config(&pki, &[("m1", m1.addr), ("m2", m2.addr)]);
    let only_m2 = config(&pki, &[("m2", m2.addr)]);
    let cfg = dir.write("lb.toml", &both);
    let lb = InProcLb::start(&cfg);
    let (admin, plain) = (lb.admin(), lb.addr("mqtt"));
    let generation = || {
        get_json(admin, "/api/reload")["generation"]
            .as_u64()
            .unwrap()
    };
    let reload = |text: &str| {
        let g = generation();
        std::fs::write(&cfg, text).unwrap();
        async move {
            assert!(
                eventually(Duration::from_secs(3), || generation() > g).await,
                "reload not applied"
            );
        }
    };

    // removed, then re-added (same name and address) before drain_timeout: the close is
    // cancelled, the old clients stay, new ones land on m1 again
    let first = ids(5, "m1", "r");
    let mut old = connect_all(plain, &first).await;
    assert!(landed(&m1, &first));
    reload(&only_m2).await;
    assert_eq!(backend_state(admin, "m1"), "absent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    reload(&both).await;
    wait_state(admin, "m1", "up", Duration::from_secs(3)).await;
    assert_alive(
        &mut old,
        DRAIN + Duration::from_millis(800),
        "re-added in time",
    )
    .await;
    let v = get_json(admin, "/api/backends");
    assert_eq!(v[0]["active_connections"], first.len(), "{v}");
    let second = ids(3, "m1", "s");
    let mut new = connect_all(plain, &second).await;
    assert!(landed(&m1, &second));

    // removed and left out past drain_timeout: closed; re-added afterwards: no black hole
    let t0 = Instant::now();
    reload(&only_m2).await;
    assert_closed_by_drain(&mut old, t0, "removed").await;
    assert_closed_by_drain(&mut new, t0, "removed, new clients").await;
    reload(&both).await;
    wait_state(admin, "m1", "up", Duration::from_secs(3)).await;
    let third = ids(3, "m1", "t");
    let mut again = connect_all(plain, &third).await;
    assert!(landed(&m1, &third));
    assert_alive(
        &mut again,
        Duration::from_secs(2),
        "re-added after the close",
    )
    .await;
}
