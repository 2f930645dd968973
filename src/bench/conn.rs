//! `conn` and `hold`. `conn` is a connect storm: N connections, `--concurrency` at a time, each a
//! full TCP connect + TLS handshake (no resumption; with `--resume`, a first pass connects every
//! client once, then the measured one resumes) + CONNECT/CONNACK, timed into a histogram;
//! they stay open until the storm ends (or close at once with `--close-each`). `hold` opens N
//! connections, keeps them alive with PINGREQ, says on stderr when all are up, holds them for
//! `--duration` (so the caller can read the server's memory) and reports how many survived.
//! Both first open one probe connection: a server that cannot be reached fails the run with one
//! line instead of N counted errors.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use mqedge_protocol::{encode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{ClientError, Conn, Endpoint};
use super::progress::Progress;
use super::report::{new_histogram, ConnReport, Latency};
use super::setup::open_many;
use super::BenchError;

/// How connections are opened.
pub struct ConnOpts {
    /// Client id prefix.
    pub prefix: String,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Attempts started per second (0 = no limit).
    pub conn_rate: f64,
    /// Draw a progress bar.
    pub progress: bool,
    /// TLS sessions are resumed (`--resume`): the report counts the resumed handshakes.
    pub resume: bool,
}

/// One connection that must succeed before the measured ones.
async fn probe(ep: &Endpoint, prefix: &str) -> Result<(), BenchError> {
    let c = ep
        .connect(0, &format!("{prefix}-probe"))
        .await
        .map_err(BenchError::Client)?;
    c.close().await;
    Ok(())
}

/// Opens `clients` connections; successes go to `keep`. Returns (connected, errors, first
/// error, storm duration, latency histogram).
async fn storm<K>(
    ep: &Arc<Endpoint>,
    clients: usize,
    opts: &ConnOpts,
    stop: &mut watch::Receiver<bool>,
    tag: &str,
    mut keep: K,
) -> (u64, u64, Option<ClientError>, Duration, Option<Latency>)
where
    K: FnMut(Conn),
{
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (c2, f2) = (connected.clone(), failed.clone());
    let bar = Progress::start(opts.progress, Some(clients as u64), move || {
        let (c, f) = (c2.load(Relaxed), f2.load(Relaxed));
        (c + f, format!("connected {c}  errors {f}"))
    });
    let mut hist = new_histogram();
    let mut first_err = None;
    let start = Instant::now();
    open_many(
        clients,
        opts.concurrency,
        opts.conn_rate,
        stop,
        |i| {
            let ep = ep.clone();
            let id = format!("{}-{tag}-{i}", opts.prefix);
            async move {
                let t0 = Instant::now();
                ep.connect(i, &id).await.map(|c| (c, t0.elapsed()))
            }
        },
        |_, r| {
            match r {
                Ok((c, took)) => {
                    hist.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                    connected.fetch_add(1, Relaxed);
                    keep(c);
                }
                Err(e) => {
                    failed.fetch_add(1, Relaxed);
                    first_err.get_or_insert(e);
                }
            }
            ControlFlow::Continue(())
        },
    )
    .await;
    let took = start.elapsed();
    bar.finish();
    (
        connected.load(Relaxed),
        failed.load(Relaxed),
        first_err,
        took,
        Latency::of(&hist),
    )
}

fn say_first_error(errors: u64, first: Option<ClientError>) {
    if let Some(e) = first {
        eprintln!("mqedge bench: {errors} connection(s) failed; the first: {e}");
    }
}

/// The connect storm.
pub async fn conn(
    ep: Arc<Endpoint>,
    clients: usize,
    close_each: bool,
    opts: ConnOpts,
    mut stop: watch::Receiver<bool>,
) -> Result<ConnReport, BenchError> {
    probe(&ep, &opts.prefix).await?;
    if opts.resume {
        // the fleet connects once (full handshakes, each client keeps its ticket), then the
        // measured storm is every client coming back
        let (_, _, first, _, _) = storm(&ep, clients, &opts, &mut stop, "conn", |c| {
            tokio::spawn(c.close());
        })
        .await;
        if let Some(e) = first {
            eprintln!("mqedge bench: the first pass of --resume had errors; the first: {e}");
        }
    }
    let resumed_before = ep.resumed.load(Relaxed);
    let mut open = Vec::new();
    let mut closing = JoinSet::new();
    let (connections, errors, first, duration, latency) =
        storm(&ep, clients, &opts, &mut stop, "conn", |c| {
            if close_each {
                closing.spawn(c.close());
            } else {
                open.push(c);
            }
        })
        .await;
    for c in open {
        closing.spawn(c.close());
    }
    while closing.join_next().await.is_some() {}
    say_first_error(errors, first);
    let resumed = opts
        .resume
        .then(|| ep.resumed.load(Relaxed) - resumed_before);
    Ok(ConnReport {
        scenario: "conn",
        clients,
        connections,
        errors,
        duration,
        held: None,
        hold_time: None,
        latency,
        resumed,
    })
}

/// Open, hold, report.
pub async fn hold(
    ep: Arc<Endpoint>,
    clients: usize,
    duration: Option<Duration>,
    opts: ConnOpts,
    mut stop: watch::Receiver<bool>,
) -> Result<ConnReport, BenchError> {
    probe(&ep, &opts.prefix).await?;
    let (release_tx, release) = watch::channel(false);
    let alive = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    let keep_alive = ep.keep_alive;
    let (connections, mut errors, first, setup, latency) =
        storm(&ep, clients, &opts, &mut stop, "hold", |c| {
            alive.fetch_add(1, Relaxed);
            let h = Holder {
                conn: c,
                release: release.clone(),
                alive: alive.clone(),
                keep_alive,
            };
            holders.spawn(h.run());
        })
        .await;
    say_first_error(errors, first);
    let interrupted = *stop.borrow();
    let held_from = Instant::now();
    if !interrupted {
        let until = match duration {
            Some(d) => format!("for {:.1} s", d.as_secs_f64()),
            None => "until Ctrl-C".into(),
        };
        eprintln!(
            "mqedge bench: {} connection(s) up, holding {until}",
            alive.load(Relaxed)
        );
        let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(86_400)));
        tokio::select! {
            _ = deadline, if duration.is_some() => {}
            _ = stop.changed() => {}
        }
    }
    let held = alive.load(Relaxed);
    let hold_time = held_from.elapsed();
    let _ = release_tx.send(true);
    while let Some(r) = holders.join_next().await {
        if matches!(r, Ok(false)) {
            errors += 1; // lost while held
        }
    }
    Ok(ConnReport {
        scenario: "hold",
        clients,
        connections,
        errors,
        duration: setup,
        held: Some(held),
        hold_time: Some(hold_time),
        latency,
        resumed: None,
    })
}

/// A held connection: answers nothing, pings by keep-alive, closes on release.
struct Holder {
    conn: Conn,
    release: watch::Receiver<bool>,
    alive: Arc<AtomicU64>,
    keep_alive: u16,
}

impl Holder {
    /// True when it was still open at release; false when the server dropped it.
    async fn run(mut self) -> bool {
        let every = Duration::from_secs(u64::from(self.keep_alive.max(1)));
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        let ok = loop {
            if *self.release.borrow() {
                break true;
            }
            let c = &mut self.conn;
            tokio::select! {
                r = c.rd.read_buf(&mut c.rbuf) => {
                    // PINGRESP (or anything else) is read and dropped; a close ends the hold
                    if c.check_read(r).is_err() || drain(c).is_err() {
                        break false;
                    }
                }
                _ = ping.tick(), if self.keep_alive > 0 => {
                    encode(&Packet::PingReq, c.version, &mut c.wbuf);
                    if c.wr.write_all_buf(&mut c.wbuf).await.is_err() {
                        break false;
                    }
                }
                _ = self.release.changed() => {}
            }
        };
        self.alive.fetch_sub(1, Relaxed);
        if ok {
            self.conn.close().await;
        }
        ok
    }
}

/// Decodes and drops every complete packet read so far.
fn drain(c: &mut Conn) -> Result<(), ClientError> {
    while c.decode()?.is_some() {}
    Ok(())
}
