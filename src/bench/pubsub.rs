//! `pub`, `sub` and `pubsub`: subscribers connect and subscribe first, then publishers connect;
//! all publishers start together and send at `--rate` (or as fast as the QoS 1/2 window of
//! `--inflight` allows) for `--duration` or `--count` messages, then wait for their acks.
//! Subscribers count deliveries and record publish-to-delivery latency from the send time in the
//! first 8 payload bytes. The run ends when every expected delivery arrived (pubsub knows how
//! many from the filters) or nothing arrived for a quiet period.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use mqedge_protocol::topic;
use mqedge_protocol::{Packet, Publish, QoS};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::client::{ClientError, Conn, Endpoint};
use super::flow::Counters;
use super::progress::Progress;
use super::publisher::{PubOutcome, Publisher};
use super::report::{new_histogram, Latency, MessageReport};
use super::setup::{open_many, Clock};
use super::subscriber::{SubOutcome, Subscriber};
use super::BenchError;

/// pubsub: subscribers stop after this long without a new delivery once publishers are done.
const QUIET: Duration = Duration::from_secs(2);

/// What publishers do.
#[derive(Debug, Clone)]
pub struct PubPlan {
    /// Publisher connections.
    pub clients: usize,
    /// Topic template (%i = index, %c = client id).
    pub topic: String,
    /// QoS.
    pub qos: QoS,
    /// Payload bytes (at least 8).
    pub size: usize,
    /// Messages per second per publisher; 0 = as fast as possible.
    pub rate: f64,
    /// Messages per publisher.
    pub count: Option<u64>,
    /// Sending time.
    pub duration: Option<Duration>,
    /// QoS 1/2 window per publisher.
    pub inflight: u16,
    /// RETAIN flag.
    pub retain: bool,
}

/// What subscribers do.
#[derive(Debug, Clone)]
pub struct SubPlan {
    /// Subscriber connections.
    pub clients: usize,
    /// Filter template (%i = index, %c = client id), before any `$share/GROUP/`.
    pub filter: String,
    /// Maximum QoS.
    pub qos: QoS,
    /// Shared subscription group.
    pub shared: Option<String>,
    /// sub: stop each subscriber after this many messages.
    pub count: Option<u64>,
    /// sub: stop after this long (default: Ctrl-C).
    pub duration: Option<Duration>,
}

/// How the run is set up, beyond the plans.
pub struct RunOpts {
    /// Client id prefix.
    pub prefix: String,
    /// Connections opened at once during setup.
    pub concurrency: usize,
    /// Connection starts per second during setup (0 = no limit).
    pub conn_rate: f64,
    /// Draw a progress bar.
    pub progress: bool,
}

fn expand(template: &str, index: usize, client_id: &str) -> String {
    template
        .replace("%i", &index.to_string())
        .replace("%c", client_id)
}

/// Runs `pub` (subs = None), `sub` (pubs = None) or `pubsub`.
pub async fn run(
    ep: Arc<Endpoint>,
    pubs: Option<PubPlan>,
    subs: Option<SubPlan>,
    opts: RunOpts,
    mut stop: watch::Receiver<bool>,
) -> Result<MessageReport, BenchError> {
    let scenario = match (&pubs, &subs) {
        (Some(_), Some(_)) => "pubsub",
        (Some(_), None) => "pub",
        _ => "sub",
    };
    let clock = Clock::new();
    let counters = Arc::new(Counters::default());

    // 1. subscribers: connect and subscribe, all of them, before anything is published
    let (sub_conns, sub_filters) = match &subs {
        Some(s) => connect_subscribers(&ep, s, &opts, &mut stop).await?,
        None => (Vec::new(), Vec::new()),
    };
    // 2. publishers
    let (pub_conns, pub_topics) = match &pubs {
        Some(p) => connect_publishers(&ep, p, &opts, &mut stop).await?,
        None => (Vec::new(), Vec::new()),
    };
    let grouped = subs.as_ref().is_some_and(|s| s.shared.is_some());
    let fanout = fanout(&pub_topics, &sub_filters, grouped);

    // 3. run
    let run = Run {
        start: Instant::now(),
        clock,
        counters,
        keep_alive: ep.keep_alive,
    };
    let (sub_stop_tx, sub_stop) = watch::channel(false);
    let sub_count = subs.as_ref().and_then(|s| s.count);
    let sub_tasks = run.spawn_subscribers(sub_conns, &sub_stop, sub_count);
    let n_pubs = pub_conns.len();
    let pub_tasks = match &pubs {
        Some(p) => run.spawn_publishers(p, pub_conns, pub_topics, &stop),
        None => JoinSet::new(),
    };
    let bar = run.progress(opts.progress, pubs.as_ref(), subs.as_ref(), n_pubs);
    let outs = join_publishers(pub_tasks, n_pubs).await;
    let expected = (subs.is_some() && pubs.is_some()).then(|| {
        outs.iter()
            .zip(&fanout)
            .map(|(o, f)| o.sent * f)
            .sum::<u64>()
    });

    // 4. let the subscribers finish
    let sub_outs = run
        .finish_subscribers(sub_tasks, sub_stop_tx, expected, subs.as_ref(), &mut stop)
        .await;

    // 5. collect and report
    let got = Deliveries::of(sub_outs);
    bar.finish();
    let plans = (pubs.as_ref(), subs.as_ref());
    Ok(report(scenario, plans, &outs, got, expected, run.start))
}

/// The report of a finished run from what every publisher and subscriber did.
fn report(
    scenario: &'static str,
    (pubs, subs): (Option<&PubPlan>, Option<&SubPlan>),
    outs: &[PubOutcome],
    got: Deliveries,
    expected: Option<u64>,
    start: Instant,
) -> MessageReport {
    MessageReport {
        scenario,
        publishers: outs.len(),
        subscribers: subs.map_or(0, |s| s.clients),
        qos: pubs
            .map(|p| p.qos)
            .or(subs.map(|s| s.qos))
            .unwrap_or_default() as u8,
        payload: pubs.map(|p| p.size),
        sent: outs.iter().map(|o| o.sent).sum(),
        acked: outs.iter().map(|o| o.acked).sum(),
        received: got.received,
        expected,
        errors: outs.iter().map(|o| o.errors).sum::<u64>() + got.errors,
        duration: got.duration(scenario, outs, start),
        latency: Latency::of(&got.hist),
    }
}

/// Connects and subscribes every subscriber; returns them with their filters (before any
/// `$share/GROUP/`).
async fn connect_subscribers(
    ep: &Arc<Endpoint>,
    s: &SubPlan,
    opts: &RunOpts,
    stop: &mut watch::Receiver<bool>,
) -> Result<(Vec<Conn>, Vec<String>), BenchError> {
    let (ids, filters) = clients(&opts.prefix, "sub", s.clients, &s.filter);
    let wire: Vec<String> = filters
        .iter()
        .map(|f| match &s.shared {
            Some(g) => format!("$share/{g}/{f}"),
            None => f.clone(),
        })
        .collect();
    let conns = open_all(ep, &ids, opts, stop, Some((wire, s.qos))).await?;
    Ok((conns, filters))
}

/// Connects every publisher; returns them with their topics.
async fn connect_publishers(
    ep: &Arc<Endpoint>,
    p: &PubPlan,
    opts: &RunOpts,
    stop: &mut watch::Receiver<bool>,
) -> Result<(Vec<Conn>, Vec<String>), BenchError> {
    let (ids, topics) = clients(&opts.prefix, "pub", p.clients, &p.topic);
    let conns = open_all(ep, &ids, opts, stop, None).await?;
    Ok((conns, topics))
}

/// The client ids `PREFIX-ROLE-i` of `n` clients and `template` expanded for each.
fn clients(prefix: &str, role: &str, n: usize, template: &str) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{role}-{i}")).collect();
    let expanded = ids
        .iter()
        .enumerate()
        .map(|(i, id)| expand(template, i, id))
        .collect();
    (ids, expanded)
}

/// Deliveries each publisher's message makes: one per matching subscriber, or one per shared
/// group when any member matches.
fn fanout(topics: &[String], filters: &[String], grouped: bool) -> Vec<u64> {
    topics
        .iter()
        .map(|t| {
            let n = filters.iter().filter(|f| topic::matches(f, t)).count() as u64;
            if grouped {
                n.min(1)
            } else {
                n
            }
        })
        .collect()
}

/// What every client task of one measured run shares.
struct Run {
    /// When the measured run began.
    start: Instant,
    /// Timestamp source.
    clock: Clock,
    /// Live counters.
    counters: Arc<Counters>,
    /// PINGREQ interval, seconds.
    keep_alive: u16,
}

impl Run {
    /// Starts one task per subscriber, each tagged with its index.
    fn spawn_subscribers(
        &self,
        conns: Vec<Conn>,
        stop: &watch::Receiver<bool>,
        count: Option<u64>,
    ) -> JoinSet<(usize, SubOutcome)> {
        let mut tasks = JoinSet::new();
        for (i, c) in conns.into_iter().enumerate() {
            let task = Subscriber {
                conn: c,
                clock: self.clock,
                counters: self.counters.clone(),
                stop: stop.clone(),
                count,
                keep_alive: self.keep_alive,
            };
            tasks.spawn(async move { (i, task.run().await) });
        }
        tasks
    }

    /// Starts one task per publisher, each tagged with its index; with `--rate`, their first
    /// sends are spread over one interval.
    fn spawn_publishers(
        &self,
        p: &PubPlan,
        conns: Vec<Conn>,
        topics: Vec<String>,
        stop: &watch::Receiver<bool>,
    ) -> JoinSet<(usize, PubOutcome)> {
        let start = self.start;
        let mut tasks = JoinSet::new();
        let n_pubs = conns.len();
        let end = match (p.duration, p.count) {
            (Some(d), _) => Some(start + d),
            (None, Some(_)) => None,
            (None, None) => Some(start + Duration::from_secs(10)),
        };
        let payload = Bytes::from(vec![b'x'; p.size]);
        for (i, (c, topic)) in conns.into_iter().zip(topics).enumerate() {
            let interval = (p.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / p.rate));
            // spread the publishers' first sends over one interval
            let first =
                start + interval.map_or(Duration::ZERO, |g| g.mul_f64(i as f64 / n_pubs as f64));
            let window = usize::from(p.inflight.min(c.server_receive_max).max(1));
            let task = Publisher {
                template: Packet::Publish(Publish {
                    dup: false,
                    qos: p.qos,
                    retain: p.retain,
                    topic,
                    packet_id: None,
                    properties: Default::default(),
                    payload: payload.clone(),
                }),
                conn: c,
                size: p.size,
                qos: p.qos,
                window,
                interval,
                first,
                count: p.count,
                end,
                clock: self.clock,
                counters: self.counters.clone(),
                stop: stop.clone(),
                keep_alive: self.keep_alive,
            };
            tasks.spawn(async move { (i, task.run().await) });
        }
        tasks
    }

    /// The progress bar: sends out of `--count` in all, else milliseconds out of the duration.
    fn progress(
        &self,
        enabled: bool,
        pubs: Option<&PubPlan>,
        subs: Option<&SubPlan>,
        n_pubs: usize,
    ) -> Progress {
        let start = self.start;
        let total_sends = pubs.and_then(|p| p.count).map(|c| c * n_pubs as u64);
        let bar_len = match (pubs, subs) {
            (Some(p), _) => total_sends
                .or_else(|| Some(p.duration.unwrap_or(Duration::from_secs(10)).as_millis() as u64)),
            (None, Some(s)) => s.duration.map(|d| d.as_millis() as u64),
            _ => None,
        };
        let c = self.counters.clone();
        Progress::start(enabled, bar_len, move || {
            let el = start.elapsed();
            let (sent, acked, recv, err) = (
                c.sent.load(Relaxed),
                c.acked.load(Relaxed),
                c.received.load(Relaxed),
                c.errors.load(Relaxed),
            );
            let rate = sent.max(recv) as f64 / el.as_secs_f64().max(1e-3);
            let pos = match total_sends {
                Some(_) => sent,
                None => el.as_millis() as u64,
            };
            (
                pos,
                format!(
                    "sent {sent}  acked {acked}  received {recv}  errors {err}  {rate:.0} msg/s"
                ),
            )
        })
    }

    /// Waits as the scenario says (pubsub: for the expected deliveries; sub: for `--duration`,
    /// Ctrl-C or `--count`), then stops the subscribers still running; returns every outcome.
    async fn finish_subscribers(
        &self,
        mut tasks: JoinSet<(usize, SubOutcome)>,
        stop_tx: watch::Sender<bool>,
        expected: Option<u64>,
        subs: Option<&SubPlan>,
        stop: &mut watch::Receiver<bool>,
    ) -> Vec<SubOutcome> {
        let mut outs = Vec::new();
        match (expected, subs) {
            (Some(exp), _) => self.wait_for_deliveries(exp).await,
            (None, Some(s)) => {
                let until = s.duration.map(|d| self.start + d);
                outs = wait_for_subscribers(&mut tasks, until, stop).await;
            }
            (None, None) => {}
        }
        let _ = stop_tx.send(true);
        while let Some(r) = tasks.join_next().await {
            if let Ok((_, o)) = r {
                outs.push(o);
            }
        }
        outs
    }

    /// pubsub: until every expected delivery arrived or none did for [`QUIET`].
    async fn wait_for_deliveries(&self, expected: u64) {
        let received = &self.counters.received;
        let mut seen = received.load(Relaxed);
        let mut quiet_since = Instant::now();
        while received.load(Relaxed) < expected && quiet_since.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = received.load(Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
    }
}

/// The outcome of every publisher, in index order (a default one for a task that panicked).
async fn join_publishers(mut tasks: JoinSet<(usize, PubOutcome)>, n: usize) -> Vec<PubOutcome> {
    let mut outs: Vec<PubOutcome> = (0..n).map(|_| PubOutcome::default()).collect();
    while let Some(r) = tasks.join_next().await {
        if let Ok((i, o)) = r {
            outs[i] = o;
        }
    }
    outs
}

/// sub alone: until `until` (`--duration`), Ctrl-C, or every subscriber stopped at its
/// `--count`; returns the outcomes of those that stopped.
async fn wait_for_subscribers(
    tasks: &mut JoinSet<(usize, SubOutcome)>,
    until: Option<Instant>,
    stop: &mut watch::Receiver<bool>,
) -> Vec<SubOutcome> {
    let mut outs = Vec::new();
    let deadline = sleep_until(until.unwrap_or(Instant::now()));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok((_, o))) => outs.push(o),
                Some(Err(_)) => {}
            },
            _ = &mut deadline, if until.is_some() => break,
            _ = stop.changed() => break,
        }
    }
    outs
}

/// What the subscribers got, summed.
struct Deliveries {
    received: u64,
    errors: u64,
    hist: Histogram<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Deliveries {
    fn of(outs: Vec<SubOutcome>) -> Deliveries {
        let mut d = Deliveries {
            received: 0,
            errors: 0,
            hist: new_histogram(),
            first: None,
            last: None,
        };
        for o in outs {
            d.received += o.received;
            d.errors += o.errors;
            let _ = d.hist.add(&o.hist);
            d.first = match (d.first, o.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            d.last = d.last.max(o.last);
        }
        d
    }

    /// sub: first to last delivery; otherwise from the start to the last ack or delivery.
    fn duration(&self, scenario: &str, outs: &[PubOutcome], start: Instant) -> Duration {
        let last = outs.iter().filter_map(|o| o.last).max().max(self.last);
        match (scenario, self.first, last) {
            ("sub", Some(f), Some(l)) => l - f,
            (_, _, Some(l)) => l - start,
            _ => start.elapsed(),
        }
    }
}

/// Connects every client (and subscribes it to its filter), failing on the first error: a
/// benchmark whose clients cannot all connect measures nothing.
async fn open_all(
    ep: &Arc<Endpoint>,
    ids: &[String],
    opts: &RunOpts,
    stop: &mut watch::Receiver<bool>,
    subscribe: Option<(Vec<String>, QoS)>,
) -> Result<Vec<Conn>, BenchError> {
    let mut slots: Vec<Option<Conn>> = (0..ids.len()).map(|_| None).collect();
    let mut failed: Option<ClientError> = None;
    let subscribe = subscribe.map(Arc::new);
    let completed = open_many(
        ids.len(),
        opts.concurrency,
        opts.conn_rate,
        stop,
        |i| {
            let ep = ep.clone();
            let id = ids[i].clone();
            let sub = subscribe.clone();
            async move {
                let mut c = ep.connect(i, &id).await?;
                if let Some(s) = sub {
                    let (filters, qos) = &*s;
                    c.subscribe(&filters[i], *qos).await?;
                }
                Ok::<Conn, ClientError>(c)
            }
        },
        |i, r| match r {
            Ok(c) => {
                slots[i] = Some(c);
                ControlFlow::Continue(())
            }
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        },
    )
    .await;
    if let Some(e) = failed {
        return Err(BenchError::Client(e));
    }
    if !completed {
        return Err(BenchError::Interrupted);
    }
    Ok(slots.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(expand("bench/%i/%c", 3, "id"), "bench/3/id");
    }

    #[test]
    fn client_ids_and_their_topics() {
        let (ids, topics) = clients("b", "pub", 2, "t/%i/%c");
        assert_eq!(ids, ["b-pub-0", "b-pub-1"]);
        assert_eq!(topics, ["t/0/b-pub-0", "t/1/b-pub-1"]);
    }
}
