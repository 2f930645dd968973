//! Failover pacing (issue 16 item 4; docs/operations.md "Failover pacing"): with placement
//! feeds, the LB admits new clients to a backend at the rate its broker gives in its feed
//! (`admit.rate`: `[limits] connect_rate`, less while CONNECTs are in progress there), instead
//! of all at once. A herd of clients connecting at the same moment (what the clients of a node
//! that died do) reaches the broker at that rate, each CONNACK in turn; with `pacing = false`
//! it arrives at once; a client whose turn is further than `pacing_wait` is refused. An
//! in-process broker and LB, OS ports, raw MQTT clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every test here ends within this.
const BOUND: Duration = Duration::from_secs(90);

/// The broker's `[limits] connect_rate` in these tests: clients per second.
const RATE: u32 = 40;

fn lb_toml(node: SocketAddr, admin: SocketAddr, placement: &str) -> String {
    format!(
        "[lb]\nadmin = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\n\n\
         [placement]\ninterval = \"200ms\"\n{placement}\n\n\
         [[backend]]\nname = \"node1\"\naddr = \"{node}\"\nadmin = \"{admin}\"\n"
    )
}

/// A broker with `connect_rate = RATE` and an LB in front of it whose feed gave it a rate.
async fn start(dir: &TempDir, placement: &str) -> (InProcBroker, InProcLb) {
    let broker = InProcBroker::start(&dir.write(
        "node.toml",
        &broker_config(
            "127.0.0.1:0",
            "",
            &format!("[limits]\nconnect_rate = {RATE}\n"),
        ),
    ));
    let feed = get_json(broker.admin(), "/api/placement");
    assert_eq!(feed["admit"]["connect_rate"], RATE, "{feed}");
    assert_eq!(feed["admit"]["rate"], f64::from(RATE), "{feed}");
    let lb = InProcLb::start(&dir.write(
        "lb.toml",
        &lb_toml(broker.addr(), broker.admin(), placement),
    ));
    let admin = lb.admin();
    let ready = eventually(Duration::from_secs(10), || {
        let b = get_json(admin, "/api/backends");
        let p = get_json(admin, "/api/placement");
        b[0]["state"] == "up" && p["feeds"][0]["ok"] == true
    })
    .await;
    assert!(ready, "{}", get_json(admin, "/api/placement"));
    (broker, lb)
}

/// `n` clients connecting through the LB at the same moment: when each got its CONNACK
/// (seconds after the start), or `None` when the LB closed it.
async fn herd(lb: SocketAddr, n: usize, tag: &str) -> Vec<Option<f64>> {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let id = format!("{tag}-{i}");
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(lb).await.ok()?;
                let pkt = mqedge_protocol::peek::encode_connect(4, &id, None, 60);
                s.write_all(&pkt).await.ok()?;
                let mut ack = [0u8; 4];
                tokio::time::timeout(Duration::from_secs(40), s.read_exact(&mut ack))
                    .await
                    .ok()?
                    .ok()?;
                (ack[0] == 0x20 && ack[3] == 0).then(|| t0.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap_or(None));
    }
    out
}

/// The most CONNACKs within any one second.
fn busiest_second(times: &[f64]) -> usize {
    let mut t: Vec<f64> = times.to_vec();
    t.sort_by(f64::total_cmp);
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| **x < t[i] + 1.0).count())
        .max()
        .unwrap_or(0)
}

fn lb_metric(lb: &InProcLb, name: &str, needles: &[&str]) -> f64 {
    metric(
        &parse_prometheus(&http("GET", lb.admin(), "/metrics").1),
        name,
        needles,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_clients_reaches_the_broker_at_the_rate_it_gives() {
    tokio::time::timeout(BOUND, async {
        let dir = TempDir::new("pace-herd");
        let (_broker, lb) = start(&dir, "pacing_wait = \"30s\"").await;
        let st = get_json(lb.admin(), "/api/placement");
        assert_eq!(st["feeds"][0]["pacing_rate"], f64::from(RATE), "{st}");

        let n = 120;
        let got = herd(lb.addr("mqtt"), n, "paced").await;
        let times: Vec<f64> = got.iter().flatten().copied().collect();
        assert_eq!(times.len(), n, "every client was admitted: {got:?}");
        let last = times.iter().copied().fold(0.0, f64::max);
        let busiest = busiest_second(&times);
        println!("pacing at {RATE}/s: {n} clients, the last CONNACK after {last:.2} s, at most {busiest} in one second");
        // a burst of a tenth of a second of the rate, then RATE a second (the broker may ask
        // for less while CONNECTs are in progress: never for more)
        let most = RATE as usize + RATE as usize / 10 + 2;
        assert!(busiest <= most, "{busiest} CONNACKs in one second, more than {most}");
        let least = (n - most) as f64 / f64::from(RATE);
        assert!(last >= least, "the herd took {last:.2} s, less than {least:.2} s");
        assert!(lb_metric(&lb, "mqedge_lb_pacing_waits_total", &["\"node1\""]) >= 60.0);
        assert_eq!(lb_metric(&lb, "mqedge_lb_pacing_refused_total", &[]), 0.0);
    })
    .await
    .expect("within the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pacing_the_herd_arrives_at_once() {
    tokio::time::timeout(BOUND, async {
        let dir = TempDir::new("pace-off");
        let (_broker, lb) = start(&dir, "pacing = false").await;
        let st = get_json(lb.admin(), "/api/placement");
        assert_eq!(st["pacing"], false, "{st}");
        let n = 120;
        let got = herd(lb.addr("mqtt"), n, "unpaced").await;
        let times: Vec<f64> = got.iter().flatten().copied().collect();
        assert_eq!(times.len(), n, "{got:?}");
        let busiest = busiest_second(&times);
        println!("no pacing: {n} clients, at most {busiest} CONNACKs in one second");
        assert!(busiest > 2 * RATE as usize, "only {busiest} in one second");
        assert_eq!(lb_metric(&lb, "mqedge_lb_pacing_waits_total", &[]), 0.0);
    })
    .await
    .expect("within the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_turn_is_further_than_pacing_wait_is_refused() {
    tokio::time::timeout(BOUND, async {
        let dir = TempDir::new("pace-refuse");
        let (_broker, lb) = start(&dir, "pacing_wait = \"0s\"").await;
        let n = 40;
        let got = herd(lb.addr("mqtt"), n, "refused").await;
        let admitted = got.iter().flatten().count();
        // the burst only: the first and a tenth of a second of the rate after it
        let burst = 1 + RATE as usize / 10;
        assert!(
            (burst..=burst + 2).contains(&admitted),
            "{admitted} of {n} admitted: {got:?}"
        );
        let refused = lb_metric(&lb, "mqedge_lb_pacing_refused_total", &["\"node1\""]);
        assert_eq!(refused as usize, n - admitted);
        assert_eq!(
            lb_metric(
                &lb,
                "mqedge_lb_connections_rejected_total",
                &["reason=\"paced\""]
            ) as usize,
            n - admitted
        );
        assert!(lb.logs().contains("closed: backend paced"), "{}", lb.logs());
    })
    .await
    .expect("within the bound");
}

/// One client through the LB that connects again at once whenever its connection ends: the
/// times (since `t0`) of each CONNACK after the first.
fn reconnecting_client(
    lb: SocketAddr,
    id: String,
    t0: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut again = Vec::new();
        let mut first = true;
        while !*stop.borrow() {
            let Ok(mut s) = tokio::net::TcpStream::connect(lb).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let pkt = mqedge_protocol::peek::encode_connect(4, &id, None, 60);
            let mut ack = [0u8; 4];
            let ok = s.write_all(&pkt).await.is_ok()
                && tokio::time::timeout(Duration::from_secs(40), s.read_exact(&mut ack))
                    .await
                    .is_ok_and(|r| r.is_ok())
                && ack[0] == 0x20
                && ack[3] == 0;
            if !ok {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if !first {
                again.push(t0.elapsed().as_secs_f64());
            }
            first = false;
            // connected: until the connection ends (or the test stops)
            let mut buf = [0u8; 64];
            let mut stop2 = stop.clone();
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                    _ = stop2.changed() => return again,
                }
            }
        }
        again
    })
}

/// The failover scenario's clients and each node's `connect_rate`: 120 and 10, or
/// `MQEDGE_PACING_CLIENTS` and `MQEDGE_PACING_RATE` for a larger run (docs/reliability.md; the
/// test process holds three sockets per client, the LB being in-process).
fn failover_scale() -> (usize, u32) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let clients = env("MQEDGE_PACING_CLIENTS").map_or(120, |n| n.max(3) as usize);
    let rate = env("MQEDGE_PACING_RATE").map_or(10, |r| r.clamp(1, 100_000) as u32);
    (clients, rate)
}

/// The most admissions to the two survivors in any one second: each node's rate plus its burst
/// (a tenth of the rate, at least 1) plus one, plus what one 50 ms sample of the LB's counter
/// can shift into the second (a twentieth of the rate).
fn survivors_bound(rate: u32) -> usize {
    let rate = rate as usize;
    2 * (rate + (rate / 10).max(1) + 1 + rate / 20)
}

/// Three broker processes with `connect_rate = 10` behind an LB with their feeds; 120 clients
/// (see [`failover_scale`]); node3 killed (`kill -9`): when the LB admitted each of its clients to a survivor, in seconds
/// after the kill (sampled from the LB's `backend_connections_total` every 50 ms; a CONNACK can
/// come later: the survivor first asks every peer, the dead one included, for the session).
async fn kill_and_reconnect(tag: &str, pacing: bool) -> Vec<f64> {
    use common::cluster_nodes::*;
    let (n, rate) = failover_scale();
    let limits = format!("connect_rate = {rate}");
    let cl = Cluster::start_limits(tag, Run::Binary, &limits).await;
    let mut toml = format!(
        "[lb]\nadmin = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [balance]\nstrategy = \"client_id\"\nretries = 2\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 1\nrise = 1\n\n\
         [placement]\ninterval = \"200ms\"\npacing = {pacing}\npacing_wait = \"30s\"\n"
    );
    for (i, name) in NAMES.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{}\"\nadmin = \"{}\"\n",
            cl.addr(i),
            cl.admin(i)
        ));
    }
    let dir = TempDir::new(&format!("{tag}-lb"));
    let lb = InProcLb::start(&dir.write("lb.toml", &toml));
    let ready = eventually(Duration::from_secs(15), || {
        let p = get_json(lb.admin(), "/api/placement");
        let f = p["feeds"].as_array().cloned().unwrap_or_default();
        f.len() == 3 && f.iter().all(|f| f["ok"] == true)
    })
    .await;
    assert!(ready, "{}", get_json(lb.admin(), "/api/placement"));
    let mut cl = cl;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let on3: Vec<bool> = ids
        .iter()
        .map(|id| hashed_backend(id, &NAMES) == "node3")
        .collect();
    let clients: Vec<_> = ids
        .iter()
        .map(|id| reconnecting_client(lb.addr("mqtt"), id.clone(), t0, stop.clone()))
        .collect();
    // everyone connected (paced too: 40 a node at 10 a second)
    let all_in = eventually(Duration::from_secs(30 + n as u64 / 100), || {
        lb_metric(&lb, "mqedge_lb_backend_connections_active", &[]) as usize >= ids.len()
    })
    .await;
    assert!(all_in, "{}", http("GET", lb.admin(), "/metrics").1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let forwarded = |lb: &InProcLb| {
        let m = parse_prometheus(&http("GET", lb.admin(), "/metrics").1);
        ["\"node1\"", "\"node2\""]
            .iter()
            .map(|n| metric(&m, "mqedge_lb_backend_connections_total", &[n]))
            .sum::<f64>()
    };
    let before = forwarded(&lb);
    let killed = t0.elapsed().as_secs_f64();
    cl.kill9(2);
    let n3 = on3.iter().filter(|x| **x).count();
    // the LB's admissions to the survivors, sampled every 50 ms: (seconds after the kill, count)
    let mut admitted = Vec::new();
    let until = Instant::now() + Duration::from_secs(40);
    let mut back = false;
    while Instant::now() < until {
        let n = forwarded(&lb) - before;
        let t = t0.elapsed().as_secs_f64() - killed;
        if admitted.last().is_none_or(|(_, m)| *m < n) {
            admitted.push((t, n));
        }
        if n as usize >= n3 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let mut times = Vec::new();
    for (c, was3) in clients.into_iter().zip(&on3) {
        let again = c.await.unwrap_or_default();
        if *was3 {
            times.extend(again.into_iter().map(|t| t - killed));
        }
    }
    assert!(
        back,
        "not every client came back: {admitted:?} of node3's {n3}"
    );
    assert_eq!(times.len(), n3, "node3's clients: each reconnected once");
    // one time per admission, from the samples
    let mut at = Vec::new();
    let mut prev = 0.0;
    for (t, n) in admitted {
        at.extend(std::iter::repeat_n(t, (n - prev) as usize));
        prev = n;
    }
    at
}

/// Reconnects per quarter second after the kill, for the log and docs/reliability.md.
fn curve(times: &[f64]) -> String {
    let last = times.iter().copied().fold(0.0, f64::max);
    (0..=(last * 4.0) as usize)
        .map(|q| {
            let lo = q as f64 / 4.0;
            times
                .iter()
                .filter(|t| **t >= lo && **t < lo + 0.25)
                .count()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_of_a_killed_node_come_back_at_the_survivors_rate() {
    tokio::time::timeout(BOUND, async {
        let times = kill_and_reconnect("pace-kill", true).await;
        let first = times.iter().copied().fold(f64::MAX, f64::min);
        let last = times.iter().copied().fold(0.0, f64::max);
        println!(
            "paced: {} admissions from {first:.2} s to {last:.2} s after the kill; per 250 ms: {}",
            times.len(),
            curve(&times)
        );
        // two survivors at 10 a second each (a burst of 1), at most: never a herd
        let most = survivors_bound(failover_scale().1);
        assert!(busiest_second(&times) <= most, "{}", curve(&times));
        assert!(last - first >= 1.0, "{}", curve(&times));
    })
    .await
    .expect("within the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pacing_the_clients_of_a_killed_node_come_back_at_once() {
    tokio::time::timeout(BOUND, async {
        let times = kill_and_reconnect("pace-kill-off", false).await;
        let last = times.iter().copied().fold(0.0, f64::max);
        println!(
            "not paced: {} admissions within {last:.2} s of the kill; per 250 ms: {}",
            times.len(),
            curve(&times)
        );
        let most = survivors_bound(failover_scale().1);
        assert!(busiest_second(&times) > most, "{}", curve(&times));
    })
    .await
    .expect("within the bound");
}
