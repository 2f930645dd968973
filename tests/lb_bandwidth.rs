//! Bandwidth limits and socket buffers at the LB (docs/operations.md "Bandwidth and socket
//! buffers"), over real sockets: a shaped listener moves each connection's bytes at its
//! `bandwidth_in`/`bandwidth_out` in each direction while an unshaped one beside it goes at full
//! speed; a reload changes the rate of a connection already open; `sndbuf`/`rcvbuf` reach the
//! LB's sockets on both sides (read back with `ss`), and a reload's values reach new connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get_json, http, metric, parse_prometheus, InProcLb, TempDir};
use mqedge_protocol::peek::encode_connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that, on every connection, counts what it reads after the CONNECT (in `got`) and
/// writes `send` bytes back.
struct Sink {
    addr: SocketAddr,
    got: Arc<AtomicU64>,
}

async fn sink(send: usize) -> Sink {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let connect_len = encode_connect(4, "bw-client", None, 30).len();
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = 0usize;
                // the replayed CONNECT first: a health check's bare TCP connect sends nothing
                while seen < connect_len {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen += n,
                    }
                }
                g.fetch_add((seen - connect_len) as u64, Ordering::Relaxed);
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move {
                    let chunk = vec![7u8; 16 * 1024];
                    let mut left = send;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if w.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = w.flush().await;
                    // keep the write half open until the test ends
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            g.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
                writer.abort();
            });
        }
    });
    Sink { addr, got }
}

fn config(backend: SocketAddr, shaped: &str, backend_extra: &str) -> String {
    format!(
        "[lb]\nname = \"bw-edge\"\nadmin = \"127.0.0.1:0\"\nconnect_timeout = \"2s\"\n\n\
         [[listener]]\nname = \"shaped\"\nbind = \"127.0.0.1:0\"\n{shaped}\n\n\
         [[listener]]\nname = \"free\"\nbind = \"127.0.0.1:0\"\n\n\
         [health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\n\n\
         [[backend]]\nname = \"b1\"\naddr = \"{backend}\"\n{backend_extra}\n"
    )
}

async fn wait_up(admin: SocketAddr) {
    let t0 = Instant::now();
    while common::backend_state(admin, "b1") != "up" {
        assert!(t0.elapsed() < Duration::from_secs(5), "backend never up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client connection through `lb`: CONNECT, then `up` bytes sent while `down` bytes are read.
/// Returns (seconds until the backend had all `up` bytes, seconds until all `down` arrived).
async fn transfer(lb: SocketAddr, sink: &Sink, up: usize, down: usize) -> (f64, f64) {
    let before = sink.got.load(Ordering::Relaxed);
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(&encode_connect(4, "bw-client", None, 30))
        .await
        .unwrap();
    let t0 = Instant::now();
    let (mut r, mut w) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0usize;
        while n < down {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        (n, t0.elapsed().as_secs_f64())
    });
    let data = vec![1u8; up];
    w.write_all(&data).await.unwrap();
    let got = sink.got.clone();
    let up_secs = loop {
        if got.load(Ordering::Relaxed) - before >= up as u64 {
            break t0.elapsed().as_secs_f64();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "upload stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (n, down_secs) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("download stalled")
        .unwrap();
    assert_eq!(n, down, "short download");
    drop(w);
    (up_secs, down_secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shaped_listener_moves_each_direction_at_its_rate() {
    const UP: usize = 512 * 1024;
    const DOWN: usize = 1024 * 1024;
    let sink = sink(DOWN).await;
    let dir = TempDir::new("bw-rate");
    let cfg = dir.write(
        "lb.toml",
        &config(
            sink.addr,
            "bandwidth_in = \"128KiB\"\nbandwidth_out = \"256KiB\"\nbandwidth_burst = \"32KiB\"",
            "",
        ),
    );
    let lb = InProcLb::start(&cfg);
    wait_up(lb.admin()).await;

    let (free_up, free_down) = transfer(lb.addr("free"), &sink, UP, DOWN).await;
    eprintln!("unshaped: up {free_up:.2} s, down {free_down:.2} s");
    assert!(
        free_up < 1.5 && free_down < 1.5,
        "the unshaped listener is slow"
    );

    let (up, down) = transfer(lb.addr("shaped"), &sink, UP, DOWN).await;
    // 32 KiB at once, then (512 - 32) KiB at 128 KiB/s = 3.75 s; (1024 - 32) / 256 = 3.9 s
    let up_rate = UP as f64 / up / 1024.0;
    let down_rate = DOWN as f64 / down / 1024.0;
    eprintln!("shaped: up {up:.2} s ({up_rate:.0} KiB/s), down {down:.2} s ({down_rate:.0} KiB/s)");
    assert!(
        (3.3..5.5).contains(&up),
        "upload took {up:.2} s, expected ~3.75"
    );
    assert!(
        (3.4..5.5).contains(&down),
        "download took {down:.2} s, expected ~3.9"
    );

    let m = parse_prometheus(&http("GET", lb.admin(), "/metrics").1);
    for d in ["in", "out"] {
        let waits = metric(&m, "mqedge_lb_bandwidth_waits_total", &["shaped", d]);
        assert!(waits > 0.0, "no waits counted for {d}");
        assert_eq!(
            metric(&m, "mqedge_lb_bandwidth_waits_total", &["free", d]),
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rate_of_an_open_connection() {
    const UP: usize = 1024 * 1024;
    let sink = sink(0).await;
    let dir = TempDir::new("bw-reload");
    let cfg = dir.write(
        "lb.toml",
        &config(sink.addr, "bandwidth_in = \"32KiB\"", ""),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    wait_up(admin).await;
    let addr = lb.addr("shaped");
    let sink = Arc::new(sink);
    let s2 = sink.clone();
    let t0 = Instant::now();
    // at 32 KiB/s this would take 31 s
    let run = tokio::spawn(async move { transfer(addr, &s2, UP, 0).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early = sink.got.load(Ordering::Relaxed);
    assert!(
        early < 200 * 1024,
        "not limited before the reload: {early} bytes"
    );
    std::fs::write(&cfg, config(sink.addr, "bandwidth_in = \"8MiB\"", "")).unwrap();
    reloaded(admin).await;
    let (up, _) = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the open connection kept the old rate")
        .unwrap();
    eprintln!(
        "1 MiB: {up:.2} s with a reload to 8 MiB/s after 1.5 s ({early} bytes by then); total {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        up < 8.0,
        "the new rate did not apply to the open connection: {up:.2} s"
    );
}

/// Waits until the LB took its first reload (generation 2).
async fn reloaded(admin: SocketAddr) {
    let t = Instant::now();
    while get_json(admin, "/api/reload")["generation"] != 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "no reload");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A client connection through the LB, forwarded (CONNECT sent), and its local port.
async fn forwarded(addr: SocketAddr) -> (TcpStream, u16) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&encode_connect(4, "bw-client", None, 30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = c.local_addr().unwrap().port();
    (c, port)
}

/// `skmem` (rb, tb) of every established socket `ss` lists with this filter.
fn skmem(filter: &str) -> Vec<(u64, u64)> {
    let out = std::process::Command::new(common::which("ss"))
        .args(["-tmnH", "state", "established"])
        .args(filter.split_whitespace())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("skmem:(")
        .skip(1)
        .map(|m| {
            let m = m.split(')').next().unwrap_or("");
            let field = |k: &str| {
                m.split(',')
                    .find_map(|f| f.strip_prefix(k).and_then(|v| v.parse::<u64>().ok()))
                    .unwrap_or_else(|| panic!("no {k} in {m:?}"))
            };
            (field("rb"), field("tb"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_buffers_reach_both_sides_and_follow_a_reload() {
    let sink = sink(0).await;
    let dir = TempDir::new("bw-bufs");
    let listener_bufs = "rcvbuf = \"32KiB\"\nsndbuf = \"48KiB\"";
    let cfg = dir.write(
        "lb.toml",
        &config(
            sink.addr,
            listener_bufs,
            "rcvbuf = \"40KiB\"\nsndbuf = \"56KiB\"",
        ),
    );
    let lb = InProcLb::start(&cfg);
    let admin = lb.admin();
    wait_up(admin).await;
    let addr = lb.addr("shaped");
    let lb_port = addr.port();
    let b_port = sink.addr.port();

    let (c1, local) = forwarded(addr).await;
    // the kernel doubles what it is given (its bookkeeping share)
    let client_side = skmem(&format!("sport = :{lb_port} dport = :{local}"));
    assert_eq!(
        client_side,
        vec![(2 * 32 * 1024, 2 * 48 * 1024)],
        "listener buffers"
    );
    // the LB's sockets to the backend: the forwarded one, and maybe a health check's
    let backend_side = skmem(&format!("dport = :{b_port}"));
    assert!(
        backend_side.contains(&(2 * 40 * 1024, 2 * 56 * 1024)),
        "backend buffers: {backend_side:?}"
    );

    std::fs::write(
        &cfg,
        config(sink.addr, "rcvbuf = \"64KiB\"\nsndbuf = \"64KiB\"", ""),
    )
    .unwrap();
    reloaded(admin).await;
    let (c2, local2) = forwarded(addr).await;
    let after = skmem(&format!("sport = :{lb_port} dport = :{local2}"));
    assert_eq!(
        after,
        vec![(2 * 64 * 1024, 2 * 64 * 1024)],
        "reloaded listener buffers"
    );
    // the first connection keeps what it was given
    let kept = skmem(&format!("sport = :{lb_port} dport = :{local}"));
    assert_eq!(kept, vec![(2 * 32 * 1024, 2 * 48 * 1024)]);
    drop((c1, c2));
}
