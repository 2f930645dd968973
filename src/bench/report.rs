//! What a bench run found: counts, rates and latency percentiles (from an hdrhistogram of
//! microseconds), printed as a short table for people or as one JSON object (`--json`) for
//! scripts and CI.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies are recorded in microseconds, from 1 µs up to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5)
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Samples recorded.
    pub samples: u64,
    /// Smallest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// The percentiles of `h`; `None` when it holds no sample.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            samples: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }

    fn json(l: Option<Latency>) -> Value {
        match l {
            None => Value::Null,
            Some(l) => json!({
                "samples": l.samples,
                "min": l.min,
                "mean": (l.mean * 10.0).round() / 10.0,
                "p50": l.p50,
                "p90": l.p90,
                "p99": l.p99,
                "p999": l.p999,
                "max": l.max,
            }),
        }
    }

    fn human(l: Option<Latency>) -> String {
        match l {
            None => "-".into(),
            Some(l) => format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.p999),
                us(l.max),
                l.samples
            ),
        }
    }
}

/// Microseconds as a person reads them.
fn us(v: u64) -> String {
    if v < 1_000 {
        format!("{v} µs")
    } else if v < 1_000_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{:.2} s", v as f64 / 1e6)
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The outcome of `pub`, `sub` or `pubsub`.
#[derive(Debug, Clone)]
pub struct MessageReport {
    /// "pub", "sub" or "pubsub".
    pub scenario: &'static str,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// QoS used.
    pub qos: u8,
    /// Payload bytes (`None` for `sub`: whatever publishers send).
    pub payload: Option<usize>,
    /// PUBLISH packets written.
    pub sent: u64,
    /// QoS 1 PUBACKs / QoS 2 PUBCOMPs received with a success code.
    pub acked: u64,
    /// PUBLISH packets received by subscribers (QoS 2 duplicates not counted).
    pub received: u64,
    /// Deliveries expected from what was sent and the filters (pubsub), when computable.
    pub expected: Option<u64>,
    /// Connection losses, failure reason codes, QoS 1/2 messages never acked.
    pub errors: u64,
    /// From the first send to the last ack or delivery (sub: first to last delivery).
    pub duration: Duration,
    /// Publish-to-delivery latency.
    pub latency: Option<Latency>,
}

impl MessageReport {
    /// Messages per second: deliveries for `sub`/`pubsub`, sends for `pub`.
    pub fn msgs_per_s(&self) -> f64 {
        if self.scenario == "pub" {
            per_s(self.sent, self.duration)
        } else {
            per_s(self.received, self.duration)
        }
    }

    /// Expected deliveries that never arrived (the broker dropped them, or a connection was
    /// lost); `None` when nothing was expected.
    pub fn missing(&self) -> Option<u64> {
        self.expected.map(|e| e.saturating_sub(self.received))
    }

    /// The `--json` object.
    pub fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "clients": self.publishers + self.subscribers,
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "qos": self.qos,
            "payload_bytes": self.payload,
            "sent": self.sent,
            "acked": self.acked,
            "received": self.received,
            "expected": self.expected,
            "missing": self.missing(),
            "errors": self.errors,
            "duration_s": (self.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            "msgs_per_s": round1(self.msgs_per_s()),
            "sent_per_s": round1(per_s(self.sent, self.duration)),
            "latency_us": Latency::json(self.latency),
        })
    }

    /// The table.
    pub fn human(&self) -> String {
        let mut s = format!("mqedge bench {}:", self.scenario);
        if self.publishers > 0 {
            s += &format!(" {} publisher(s),", self.publishers);
        }
        if self.subscribers > 0 {
            s += &format!(" {} subscriber(s),", self.subscribers);
        }
        s += &format!(" QoS {}", self.qos);
        if let Some(p) = self.payload {
            s += &format!(", {p} B payload");
        }
        s += "\n";
        if self.publishers > 0 {
            s += &format!("  sent       {}", self.sent);
            if self.qos > 0 {
                s += &format!("  (acked {})", self.acked);
            }
            s += "\n";
        }
        if self.subscribers > 0 {
            s += &format!("  received   {}", self.received);
            match (self.expected, self.missing()) {
                (Some(e), Some(m)) if m > 0 => s += &format!("  (expected {e}, {m} missing)"),
                (Some(e), _) => s += &format!("  (expected {e})"),
                _ => {}
            }
            s += "\n";
        }
        s += &format!("  errors     {}\n", self.errors);
        s += &format!("  duration   {:.2} s\n", self.duration.as_secs_f64());
        let rate = if self.scenario == "pub" {
            format!("{:.0} msg/s sent", self.msgs_per_s())
        } else if self.publishers > 0 {
            format!(
                "{:.0} msg/s delivered, {:.0} msg/s sent",
                self.msgs_per_s(),
                per_s(self.sent, self.duration)
            )
        } else {
            format!("{:.0} msg/s delivered", self.msgs_per_s())
        };
        s += &format!("  rate       {rate}\n");
        if self.subscribers > 0 {
            s += &format!("  latency    {}\n", Latency::human(self.latency));
        }
        s
    }
}

/// The outcome of `conn` or `hold`.
#[derive(Debug, Clone)]
pub struct ConnReport {
    /// "conn" or "hold".
    pub scenario: &'static str,
    /// Connections attempted.
    pub clients: usize,
    /// Connections that got a successful CONNACK.
    pub connections: u64,
    /// Attempts that failed, plus (hold) connections lost while held.
    pub errors: u64,
    /// From the first attempt to the last CONNACK.
    pub duration: Duration,
    /// hold: connections still open when the hold ended.
    pub held: Option<u64>,
    /// hold: how long they were held.
    pub hold_time: Option<Duration>,
    /// Per connection: TCP connect + TLS handshake + CONNECT/CONNACK.
    pub latency: Option<Latency>,
    /// conn with `--resume`: handshakes that resumed a session (the probe's not counted).
    pub resumed: Option<u64>,
}

impl ConnReport {
    /// Successful connections per second.
    pub fn connects_per_s(&self) -> f64 {
        per_s(self.connections, self.duration)
    }

    /// The `--json` object.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "scenario": self.scenario,
            "clients": self.clients,
            "connections": self.connections,
            "errors": self.errors,
            "duration_s": (self.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            "connects_per_s": round1(self.connects_per_s()),
            "latency_us": Latency::json(self.latency),
        });
        if let (Some(r), Value::Object(m)) = (self.resumed, &mut v) {
            m.insert("resumed".into(), r.into());
        }
        if let (Some(held), Value::Object(m)) = (self.held, &mut v) {
            m.insert("held".into(), held.into());
            let t = self.hold_time.unwrap_or_default().as_secs_f64();
            m.insert("held_s".into(), json!((t * 1000.0).round() / 1000.0));
        }
        v
    }

    /// The table.
    pub fn human(&self) -> String {
        let mut s = format!(
            "mqedge bench {}: {} connection(s)\n",
            self.scenario, self.clients
        );
        s += &format!("  connected  {}\n", self.connections);
        if let Some(h) = self.held {
            s += &format!(
                "  held       {h}  for {:.2} s\n",
                self.hold_time.unwrap_or_default().as_secs_f64()
            );
        }
        if let Some(r) = self.resumed {
            s += &format!("  resumed    {r}\n");
        }
        s += &format!("  errors     {}\n", self.errors);
        s += &format!(
            "  duration   {:.2} s  ({:.0} connects/s)\n",
            self.duration.as_secs_f64(),
            self.connects_per_s()
        );
        s += &format!("  connect    {}\n", Latency::human(self.latency));
        s
    }
}

/// Either kind of report.
#[derive(Debug, Clone)]
pub enum Report {
    /// pub / sub / pubsub.
    Messages(MessageReport),
    /// conn / hold.
    Conns(ConnReport),
}

impl Report {
    /// Prints the report on stdout: JSON (one line) or the table.
    pub fn print(&self, json: bool) {
        let (j, h) = match self {
            Report::Messages(r) => (r.json(), r.human()),
            Report::Conns(r) => (r.json(), r.human()),
        };
        if json {
            println!("{j}");
        } else {
            print!("{h}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_in_json() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.saturating_record(v);
        }
        let l = Latency::of(&h).unwrap();
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        assert_eq!(l.samples, 1000);
        let r = MessageReport {
            scenario: "pubsub",
            publishers: 1,
            subscribers: 1,
            qos: 1,
            payload: Some(16),
            sent: 10,
            acked: 10,
            received: 10,
            expected: Some(10),
            errors: 0,
            duration: Duration::from_secs(2),
            latency: Some(l),
        };
        let j = r.json();
        assert_eq!(j["msgs_per_s"], 5.0);
        assert_eq!(j["latency_us"]["p50"], l.p50);
        assert!(r.human().contains("p99.9"));
        assert!(Latency::of(&new_histogram()).is_none());
    }

    #[test]
    fn human_units() {
        assert_eq!(us(999), "999 µs");
        assert_eq!(us(1500), "1.50 ms");
        assert_eq!(us(2_500_000), "2.50 s");
    }
}
