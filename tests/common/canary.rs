//! The canary: a well-behaved publisher and subscriber pair that runs through the LB while
//! hostile cases run beside it, to show that they did not hurt anyone else. The publisher sends
//! QoS 1 on a fixed schedule (one message every `period`, each acknowledged before the next);
//! the subscriber takes QoS 1 and records each message's latency from its *scheduled* send
//! time, so a publisher held back shows up as latency instead of as fewer samples. Both run on
//! a runtime thread of their own, so a test that blocks its own threads (or a busy case) is
//! not mistaken for a slow broker. [`Canary::window`] gives what happened between two instants:
//! messages due, messages missing, the latency p99 and max, and whether a connection was lost.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqedge_protocol::{Packet, Version};
use tokio::net::TcpStream;

use super::Raw;

/// What the two tasks share.
struct Shared {
    /// When message 0 was due; message `n` is due `n × period` later.
    base: Instant,
    /// Time between two scheduled messages.
    period: Duration,
    /// Latency (receipt − scheduled send) by sequence number; `None`: not received (yet).
    got: Mutex<Vec<Option<Duration>>>,
    /// Messages received more than once (QoS 1 may; without a reconnect it should not).
    dups: Mutex<u64>,
    /// The first connection the pair lost, and how.
    lost: Mutex<Option<String>>,
}

impl Shared {
    fn lose(&self, what: String) {
        let mut l = self.lost.lock().unwrap();
        if l.is_none() {
            *l = Some(what);
        }
    }
}

/// The pair, running until dropped (or [`Canary::stop`]).
pub struct Canary {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the canary saw between two instants.
#[derive(Debug, Clone)]
pub struct Window {
    /// Messages due in the window.
    pub due: usize,
    /// Sequence numbers due in the window that never arrived.
    pub missing: Vec<usize>,
    /// Latency p99 of the messages due in the window (ZERO when none).
    pub p99: Duration,
    /// Largest latency in the window.
    pub max: Duration,
    /// A lost connection (the first one, however long ago).
    pub lost: Option<String>,
}

impl Window {
    /// Why the pair was affected, if it was: a lost connection, a missing message, or a p99
    /// over `bound`.
    pub fn fault(&self, bound: Duration) -> Option<String> {
        if let Some(l) = &self.lost {
            return Some(format!("canary lost a connection: {l}"));
        }
        if !self.missing.is_empty() {
            let head: Vec<_> = self.missing.iter().take(5).collect();
            return Some(format!(
                "canary lost {} of {} messages (first {head:?})",
                self.missing.len(),
                self.due
            ));
        }
        if self.p99 > bound {
            return Some(format!(
                "canary p99 {:?} over {bound:?} (max {:?})",
                self.p99, self.max
            ));
        }
        None
    }
}

impl Canary {
    /// Connects the pair to `addr` (subscriber v5, publisher 3.1.1, clean sessions, ids
    /// `{tag}-sub` / `{tag}-pub`, topic `{tag}/beat`) and starts publishing every `period`.
    /// Returns once the subscription is in place.
    pub fn start(addr: SocketAddr, tag: &str, period: Duration) -> Canary {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tag = tag.to_string();
        let thread = std::thread::Builder::new()
            .name("canary".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(addr, tag, period, stop_rx, ready_tx));
            })
            .unwrap();
        let shared = ready_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the canary pair did not connect within 15 s");
        Canary {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// What happened to messages due in `[from, to)`, once every one of them arrived or
    /// `grace` passed after `to` (whichever is first).
    pub async fn window(&self, from: Instant, to: Instant, grace: Duration) -> Window {
        let s = &self.shared;
        let seq_at = |t: Instant| -> usize {
            let d = t.saturating_duration_since(s.base).as_nanos();
            let p = s.period.as_nanos();
            d.div_ceil(p) as usize
        };
        let (first, end) = (seq_at(from), seq_at(to));
        let deadline = to.max(Instant::now()) + grace;
        loop {
            let done = {
                let got = s.got.lock().unwrap();
                (first..end).all(|i| got.get(i).copied().flatten().is_some())
            };
            if done || Instant::now() > deadline || s.lost.lock().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = s.got.lock().unwrap();
        let mut lat: Vec<Duration> = Vec::new();
        let mut missing = Vec::new();
        for i in first..end {
            match got.get(i).copied().flatten() {
                Some(d) => lat.push(d),
                None => missing.push(i),
            }
        }
        lat.sort();
        let p99 = if lat.is_empty() {
            Duration::ZERO
        } else {
            lat[(lat.len() * 99).div_ceil(100) - 1]
        };
        Window {
            due: end.saturating_sub(first),
            missing,
            p99,
            max: lat.last().copied().unwrap_or_default(),
            lost: s.lost.lock().unwrap().clone(),
        }
    }

    /// Messages received twice so far.
    pub fn duplicates(&self) -> u64 {
        *self.shared.dups.lock().unwrap()
    }

    /// Stops both clients (with a DISCONNECT) and joins the thread.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The canary thread's body: connect both, hand the shared state over, run until `stop`.
async fn run(
    addr: SocketAddr,
    tag: String,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Arc<Shared>>,
) {
    let mut sub = Raw::client(addr, Version::V5, &format!("{tag}-sub")).await;
    let topic = format!("{tag}/beat");
    assert_eq!(sub.subscribe(1, &[(topic.as_str(), 1)]).await, vec![1]);
    let publ = Raw::client(addr, Version::V311, &format!("{tag}-pub")).await;
    let shared = Arc::new(Shared {
        base: Instant::now() + Duration::from_millis(50),
        period,
        got: Mutex::new(Vec::new()),
        dups: Mutex::new(0),
        lost: Mutex::new(None),
    });
    let _ = ready.send(shared.clone());
    let subscriber = tokio::spawn(subscribe_loop(sub, shared.clone(), stop.clone()));
    publish_loop(publ, &topic, &shared, stop).await;
    let _ = subscriber.await;
}

/// Takes the beats, acknowledging each, recording its latency.
async fn subscribe_loop(
    mut c: Raw<TcpStream>,
    s: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let p = tokio::select! {
            _ = stop.changed() => break,
            p = c.recv(Duration::from_secs(3600)) => p,
        };
        match p {
            Some(Packet::Publish(p)) => {
                c.ack_publish(&p).await;
                let Ok(seq) = <[u8; 8]>::try_from(&p.payload[..]) else {
                    continue;
                };
                let seq = u64::from_be_bytes(seq) as usize;
                let due = s.base + s.period * seq as u32;
                let lat = Instant::now().saturating_duration_since(due);
                let mut got = s.got.lock().unwrap();
                if got.len() <= seq {
                    got.resize(seq + 1, None);
                }
                if got[seq].is_some() {
                    *s.dups.lock().unwrap() += 1;
                } else {
                    got[seq] = Some(lat);
                }
            }
            Some(Packet::Disconnect(d)) => {
                return s.lose(format!("subscriber got DISCONNECT 0x{:02x}", d.code))
            }
            Some(_) => {}
            None => return s.lose("subscriber's connection closed".into()),
        }
    }
    super::mqtt_steps::disconnect(c).await;
}

/// Sends beat `n` at `base + n × period` (or as soon as the previous one was acknowledged, if
/// later), each QoS 1 and acknowledged within 5 s.
async fn publish_loop(
    mut c: Raw<TcpStream>,
    topic: &str,
    s: &Shared,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seq: u64 = 0;
    loop {
        let due = s.base + s.period * seq as u32;
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let pid = (seq % 65_535) as u16 + 1;
        c.publish(topic, &seq.to_be_bytes(), 1, Some(pid), false)
            .await;
        loop {
            match c.recv(Duration::from_secs(5)).await {
                Some(Packet::PubAck(a)) if a.packet_id == pid => break,
                Some(Packet::Disconnect(d)) => {
                    return s.lose(format!("publisher got DISCONNECT 0x{:02x}", d.code))
                }
                Some(_) => continue,
                None => return s.lose(format!("publisher: no PUBACK for beat {seq} within 5 s")),
            }
        }
        seq += 1;
    }
    super::mqtt_steps::disconnect(c).await;
}
