//! The load of the fault-injection suite (tests/cluster_faults.rs), with a client that is not
//! ours (rumqttc, in-process): one QoS 1 publisher and persistent (clean_session = false) QoS 1
//! subscribers, all through `mqedge lb`, all reconnecting on error. The publisher records every
//! message it got a PUBACK for and when it sent it; every subscriber records every message it got,
//! and when its subscription was (re)made. [`Tally`] compares the two: acknowledged deliveries
//! never delivered (lost) and deliveries beyond the first (duplicates).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Every message of the suite goes to this topic; every subscriber takes `FILTER`.
pub const TOPIC: &str = "faults/load";
pub const FILTER: &str = "faults/#";
/// How long a client waits after a failed connection before it tries again.
const RETRY: Duration = Duration::from_millis(200);

fn options(id: &str, lb: SocketAddr, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, lb.ip().to_string(), lb.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

// ---------------------------------------------------------------------------------------------
// the publisher
// ---------------------------------------------------------------------------------------------

/// What the publisher did.
#[derive(Default)]
pub struct Published {
    /// When each message (its number is its payload) was handed to the client.
    pub sent: HashMap<u64, Instant>,
    /// The messages a PUBACK came back for.
    pub acked: BTreeSet<u64>,
    /// Connections that ended (broker closed it, refused, timed out).
    pub errors: usize,
    pub last_error: String,
}

/// A QoS 1 publisher through the LB at about `rate` messages per second, at most `window`
/// unacknowledged at a time. Each connection is a fresh rumqttc event loop with a clean session,
/// so a PUBACK is matched to its message exactly: packet ids are given in the order the
/// messages were handed over, and nothing from an earlier connection is sent again (a message
/// whose connection ended before its PUBACK is simply not acknowledged).
pub struct Publisher {
    pub log: Arc<Mutex<Published>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(lb: SocketAddr, id: &str, rate: u32, window: usize) -> Publisher {
        Publisher::start_from(lb, id, rate, window, 0)
    }

    /// Like [`Publisher::start`], numbering its messages from `first` (so that two publishers
    /// one after the other never send the same number).
    pub fn start_from(lb: SocketAddr, id: &str, rate: u32, window: usize, first: u64) -> Publisher {
        let log = Arc::new(Mutex::new(Published::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(publish_loop(
            options(id, lb, true),
            (Duration::from_secs(1) / rate.max(1), window.max(1), first),
            log.clone(),
            stop_rx,
        ));
        Publisher { log, stop, task }
    }

    pub fn acked(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// Stops sending, waits up to 3 s for the PUBACKs still due, and returns the record.
    pub async fn stop(self) -> Published {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        log
    }
}

async fn publish_loop(
    opts: MqttOptions,
    (every, window, first): (Duration, usize, u64),
    log: Arc<Mutex<Published>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = first;
    let mut stopping: Option<Instant> = None;
    loop {
        let (client, el) = AsyncClient::new(opts.clone(), 64);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn(forward_events(el, tx));
        // handed to the client, waiting for their packet id (in order)
        let mut requested: VecDeque<u64> = VecDeque::new();
        // packet id → message, waiting for the PUBACK
        let mut inflight: HashMap<u16, u64> = HashMap::new();
        let mut connected = false;
        let mut due = tokio::time::Instant::now();
        let ended = loop {
            if stopping.is_some_and(|t| {
                t.elapsed() > Duration::from_secs(3) || requested.len() + inflight.len() == 0
            }) {
                break false;
            }
            let may_send =
                connected && stopping.is_none() && requested.len() + inflight.len() < window;
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => connected = true,
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(n) = requested.pop_front() {
                            inflight.insert(pkid, n);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                        if let Some(n) = inflight.remove(&a.pkid) {
                            log.lock().unwrap().acked.insert(n);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let mut l = log.lock().unwrap();
                        l.errors += 1;
                        l.last_error = e;
                        break true;
                    }
                    None => break true,
                },
                _ = tokio::time::sleep_until(due), if may_send => {
                    let payload = next.to_string();
                    if client.try_publish(TOPIC, QoS::AtLeastOnce, false, payload).is_ok() {
                        log.lock().unwrap().sent.insert(next, Instant::now());
                        requested.push_back(next);
                        next += 1;
                    }
                    due += every;
                    // after a stall, go on at the rate instead of catching up in a burst
                    let now = tokio::time::Instant::now();
                    if due < now {
                        due = now;
                    }
                }
                _ = stop.changed(), if stopping.is_none() => stopping = Some(Instant::now()),
            }
        };
        poller.abort();
        if !ended {
            return;
        }
        if stopping.is_some() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Polls `el` until its connection ends, handing every event (and then the error) to `tx`.
async fn forward_events(
    mut el: EventLoop,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Event, String>>,
) {
    loop {
        match el.poll().await {
            Ok(ev) => {
                if tx.send(Ok(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// subscribers
// ---------------------------------------------------------------------------------------------

/// What one subscriber saw.
#[derive(Default, Clone)]
pub struct Received {
    /// Every message number received, in order, duplicates included.
    pub got: Vec<u64>,
    /// When each SUBACK came (the first, and one after each CONNACK without a session).
    pub subscribed: Vec<Instant>,
    /// CONNACKs after the first that said Session Present = 0: the session was gone.
    pub sessions_lost: usize,
    pub connects: usize,
    pub errors: usize,
    pub last_error: String,
}

/// A persistent QoS 1 subscriber to [`FILTER`] through the LB: on any error it connects again
/// (same client id, clean_session = false); it subscribes again only when the broker says it
/// has no session. [`Subscriber::kick`] drops its connection at once (as a client that
/// noticed a dead server would) and it connects again through the LB; [`Subscriber::offline_for`]
/// does the same after a pause, so its session queues messages meanwhile.
pub struct Subscriber {
    pub id: String,
    pub log: Arc<Mutex<Received>>,
    kick: Arc<Notify>,
    /// How long to stay away after the next kick (zero: connect again at once).
    hold: Arc<Mutex<Duration>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub fn start(lb: SocketAddr, id: &str) -> Subscriber {
        let log = Arc::new(Mutex::new(Received::default()));
        let kick = Arc::new(Notify::new());
        let hold = Arc::new(Mutex::new(Duration::ZERO));
        let (stop, stop_rx) = watch::channel(false);
        // acknowledged only once counted: a message the client took in but the test never saw
        // (its event loop dropped by a kick with events still buffered) is not acknowledged
        let mut opts = options(id, lb, false);
        opts.set_manual_acks(true);
        let task = tokio::spawn(subscribe_loop(
            opts,
            log.clone(),
            (kick.clone(), hold.clone()),
            stop_rx,
        ));
        Subscriber {
            id: id.to_string(),
            log,
            kick,
            hold,
            stop,
            task,
        }
    }

    /// Closes the current connection (without DISCONNECT); the subscriber connects again.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Closes the current connection (without DISCONNECT) and connects again after `pause`.
    pub fn offline_for(&self, pause: Duration) {
        *self.hold.lock().unwrap() = pause;
        self.kick.notify_one();
    }

    pub fn subscribed(&self) -> bool {
        !self.log.lock().unwrap().subscribed.is_empty()
    }

    pub fn snapshot(&self) -> Received {
        self.log.lock().unwrap().clone()
    }

    /// Whether every message of `want` has come.
    pub fn has_all(&self, want: &BTreeSet<u64>) -> bool {
        let l = self.log.lock().unwrap();
        let got: BTreeSet<u64> = l.got.iter().copied().collect();
        want.is_subset(&got)
    }

    pub async fn stop(self) -> Received {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
        let r = self.log.lock().unwrap().clone();
        r
    }
}

async fn subscribe_loop(
    opts: MqttOptions,
    log: Arc<Mutex<Received>>,
    (kick, hold): (Arc<Notify>, Arc<Mutex<Duration>>),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // room for an ack of every message a resumed session brings at once
        let (client, mut el) = AsyncClient::new(opts.clone(), 1 << 16);
        let failed = loop {
            // dropping the event loop on a kick or a stop closes its socket: a cancelled poll
            // is never polled again
            tokio::select! {
                _ = stop.changed() => return,
                _ = kick.notified() => break false,
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        let mut l = log.lock().unwrap();
                        l.connects += 1;
                        if !a.session_present {
                            if !l.subscribed.is_empty() {
                                l.sessions_lost += 1;
                            }
                            if client.try_subscribe(FILTER, QoS::AtLeastOnce).is_err() {
                                l.errors += 1;
                                break true;
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        log.lock().unwrap().subscribed.push(Instant::now());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(n) = std::str::from_utf8(&p.payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                        {
                            log.lock().unwrap().got.push(n);
                        }
                        if client.try_ack(&p).is_err() {
                            break true;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let mut l = log.lock().unwrap();
                        l.errors += 1;
                        l.last_error = e.to_string();
                        break true;
                    }
                },
            }
        };
        drop(el);
        let pause = if failed {
            RETRY
        } else {
            std::mem::take(&mut *hold.lock().unwrap())
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the count
// ---------------------------------------------------------------------------------------------

/// One subscriber's count.
pub struct SubTally {
    pub id: String,
    /// Acknowledged messages this subscriber should have received.
    pub expected: usize,
    /// Of those, never received.
    pub lost: Vec<u64>,
    /// Receptions beyond the first of a message.
    pub duplicates: usize,
    pub sessions_lost: usize,
    pub connects: usize,
}

/// The count of one scenario.
pub struct Tally {
    pub acked: usize,
    pub sent: usize,
    pub subs: Vec<SubTally>,
}

impl Tally {
    /// What each subscriber is owed: `from(i, r)` is None when subscriber `i` is owed every
    /// acknowledged message, Some(t) when only those sent after `t` (a session that was out of
    /// scope until then).
    pub fn count(
        p: &Published,
        subs: &[(String, Received)],
        from: impl Fn(usize, &Received) -> Option<Instant>,
    ) -> Tally {
        let mut out = Vec::new();
        for (i, (id, r)) in subs.iter().enumerate() {
            let since = from(i, r);
            let owed: Vec<u64> = p
                .acked
                .iter()
                .copied()
                .filter(|n| match (since, p.sent.get(n)) {
                    (Some(t), Some(s)) => *s > t,
                    _ => true,
                })
                .collect();
            let mut seen: HashMap<u64, usize> = HashMap::new();
            for n in &r.got {
                *seen.entry(*n).or_default() += 1;
            }
            out.push(SubTally {
                id: id.clone(),
                expected: owed.len(),
                lost: owed
                    .iter()
                    .copied()
                    .filter(|n| !seen.contains_key(n))
                    .collect(),
                duplicates: seen.values().map(|c| c - 1).sum(),
                sessions_lost: r.sessions_lost,
                connects: r.connects,
            });
        }
        Tally {
            acked: p.acked.len(),
            sent: p.sent.len(),
            subs: out,
        }
    }

    pub fn deliveries(&self) -> usize {
        self.subs.iter().map(|s| s.expected).sum()
    }

    pub fn lost(&self) -> usize {
        self.subs.iter().map(|s| s.lost.len()).sum()
    }

    pub fn duplicates(&self) -> usize {
        self.subs.iter().map(|s| s.duplicates).sum()
    }

    /// One line per subscriber that lost, had duplicates, or lost its session.
    pub fn details(&self) -> String {
        let mut s = String::new();
        for t in &self.subs {
            if t.lost.is_empty() && t.duplicates == 0 && t.sessions_lost == 0 {
                continue;
            }
            let first: Vec<u64> = t.lost.iter().copied().take(12).collect();
            s.push_str(&format!(
                "  {}: owed {}, lost {} {:?}{}, duplicates {}, sessions lost {}, connections {}\n",
                t.id,
                t.expected,
                t.lost.len(),
                first,
                if t.lost.len() > first.len() {
                    "…"
                } else {
                    ""
                },
                t.duplicates,
                t.sessions_lost,
                t.connects
            ));
        }
        s
    }
}
