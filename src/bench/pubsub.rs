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
use super::subscriber::Subscriber;
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
    let mut sub_conns = Vec::new();
    let mut sub_filters = Vec::new();
    if let Some(s) = &subs {
        let ids: Vec<String> = (0..s.clients)
            .map(|i| format!("{}-sub-{i}", opts.prefix))
            .collect();
        sub_filters = ids
            .iter()
            .enumerate()
            .map(|(i, id)| expand(&s.filter, i, id))
            .collect::<Vec<_>>();
        let wire: Vec<String> = sub_filters
            .iter()
            .map(|f| match &s.shared {
                Some(g) => format!("$share/{g}/{f}"),
                None => f.clone(),
            })
            .collect();
        sub_conns = open_all(&ep, &ids, &opts, &mut stop, Some((wire, s.qos))).await?;
    }
    // 2. publishers
    let mut pub_conns = Vec::new();
    let mut pub_topics = Vec::new();
    if let Some(p) = &pubs {
        let ids: Vec<String> = (0..p.clients)
            .map(|i| format!("{}-pub-{i}", opts.prefix))
            .collect();
        pub_topics = ids
            .iter()
            .enumerate()
            .map(|(i, id)| expand(&p.topic, i, id))
            .collect();
        pub_conns = open_all(&ep, &ids, &opts, &mut stop, None).await?;
    }
    // Deliveries each publisher's message makes: one per matching subscriber, or one per
    // shared group when any member matches.
    let fanout: Vec<u64> = pub_topics
        .iter()
        .map(|t| {
            let n = sub_filters.iter().filter(|f| topic::matches(f, t)).count() as u64;
            match subs.as_ref().and_then(|s| s.shared.as_ref()) {
                Some(_) => n.min(1),
                None => n,
            }
        })
        .collect();

    // 3. run
    let start = Instant::now();
    let (sub_stop_tx, sub_stop) = watch::channel(false);
    let mut sub_tasks = JoinSet::new();
    let sub_count = subs.as_ref().and_then(|s| s.count);
    for (i, c) in sub_conns.into_iter().enumerate() {
        let task = Subscriber {
            conn: c,
            clock,
            counters: counters.clone(),
            stop: sub_stop.clone(),
            count: sub_count,
            keep_alive: ep.keep_alive,
        };
        sub_tasks.spawn(async move { (i, task.run().await) });
    }
    let mut pub_tasks = JoinSet::new();
    let n_pubs = pub_conns.len();
    if let Some(p) = &pubs {
        let end = match (p.duration, p.count) {
            (Some(d), _) => Some(start + d),
            (None, Some(_)) => None,
            (None, None) => Some(start + Duration::from_secs(10)),
        };
        let payload = Bytes::from(vec![b'x'; p.size]);
        for (i, (c, topic)) in pub_conns.into_iter().zip(pub_topics).enumerate() {
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
                clock,
                counters: counters.clone(),
                stop: stop.clone(),
                keep_alive: ep.keep_alive,
            };
            pub_tasks.spawn(async move { (i, task.run().await) });
        }
    }
    let total_sends = pubs
        .as_ref()
        .and_then(|p| p.count)
        .map(|c| c * n_pubs as u64);
    let bar_len = match (&pubs, &subs) {
        (Some(p), _) => total_sends
            .or_else(|| Some(p.duration.unwrap_or(Duration::from_secs(10)).as_millis() as u64)),
        (None, Some(s)) => s.duration.map(|d| d.as_millis() as u64),
        _ => None,
    };
    let c = counters.clone();
    let bar = Progress::start(opts.progress, bar_len, move || {
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
            format!("sent {sent}  acked {acked}  received {recv}  errors {err}  {rate:.0} msg/s"),
        )
    });

    let mut outs: Vec<PubOutcome> = (0..n_pubs).map(|_| PubOutcome::default()).collect();
    while let Some(r) = pub_tasks.join_next().await {
        if let Ok((i, o)) = r {
            outs[i] = o;
        }
    }
    let sent: u64 = outs.iter().map(|o| o.sent).sum();
    let expected = (subs.is_some() && pubs.is_some()).then(|| {
        outs.iter()
            .zip(&fanout)
            .map(|(o, f)| o.sent * f)
            .sum::<u64>()
    });
    // 4. let the subscribers finish
    let mut sub_outs = Vec::new();
    match (expected, &subs) {
        (Some(exp), _) => {
            let mut seen = counters.received.load(Relaxed);
            let mut quiet_since = Instant::now();
            while counters.received.load(Relaxed) < exp && quiet_since.elapsed() < QUIET {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = counters.received.load(Relaxed);
                if now != seen {
                    seen = now;
                    quiet_since = Instant::now();
                }
            }
        }
        (None, Some(s)) => {
            // sub alone: until --duration, Ctrl-C, or every subscriber got --count
            let until = s.duration.map(|d| start + d);
            let deadline = sleep_until(until.unwrap_or(start));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = sub_tasks.join_next() => match r {
                        None => break,
                        Some(Ok((_, o))) => sub_outs.push(o),
                        Some(Err(_)) => {}
                    },
                    _ = &mut deadline, if until.is_some() => break,
                    _ = stop.changed() => break,
                }
            }
        }
        (None, None) => {}
    }
    let _ = sub_stop_tx.send(true);
    while let Some(r) = sub_tasks.join_next().await {
        if let Ok((_, o)) = r {
            sub_outs.push(o);
        }
    }
    let mut received = 0u64;
    let mut errors: u64 = outs.iter().map(|o| o.errors).sum();
    let mut hist = new_histogram();
    let mut first_rx: Option<Instant> = None;
    let mut last = outs.iter().filter_map(|o| o.last).max();
    for o in sub_outs {
        received += o.received;
        errors += o.errors;
        let _ = hist.add(&o.hist);
        first_rx = match (first_rx, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(o.last);
    }
    bar.finish();
    let duration = match (scenario, first_rx, last) {
        ("sub", Some(f), Some(l)) => l - f,
        (_, _, Some(l)) => l - start,
        _ => start.elapsed(),
    };
    Ok(MessageReport {
        scenario,
        publishers: n_pubs,
        subscribers: subs.as_ref().map_or(0, |s| s.clients),
        qos: pubs
            .as_ref()
            .map(|p| p.qos)
            .or(subs.as_ref().map(|s| s.qos))
            .unwrap_or_default() as u8,
        payload: pubs.as_ref().map(|p| p.size),
        sent,
        acked: outs.iter().map(|o| o.acked).sum(),
        received,
        expected,
        errors,
        duration,
        latency: Latency::of(&hist),
    })
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
}
