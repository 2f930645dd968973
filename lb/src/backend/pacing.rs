//! Failover pacing (`[placement] pacing`): new clients are admitted to a backend at the rate its
//! broker says it can take (`admit.rate` in its placement feed), so that the clients of a node
//! that died do not all land on the survivors in the same second, each with a TLS handshake
//! behind it and a takeover or promotion in front. A GCRA token bucket per backend: each
//! admission moves the backend's theoretical arrival time on by `1/rate`; a client whose turn is
//! at most a burst (a tenth of a second of the rate, at least one client) ahead goes at once,
//! one whose turn comes within `pacing_wait` waits for it, and a later one is refused (its
//! client connects again later). Without a rate (no feed, pacing off, or a broker that sends
//! none) nothing is paced.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a client gets from a backend's pacer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    /// Go now.
    Now,
    /// Its turn comes after this long.
    After(Duration),
    /// Its turn is further than the wait allowed.
    Refused,
}

/// One backend's admission rate and the bucket that applies it.
#[derive(Debug, Default)]
pub struct Pacer {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Clients per second; 0: not paced.
    rate: f64,
    /// The theoretical arrival time of the next client (GCRA).
    tat: Option<Instant>,
}

impl Pacer {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the rate (clients per second; `None` or 0: not paced). A change keeps the place of
    /// the clients already admitted.
    pub fn set_rate(&self, rate: Option<f64>) {
        let r = rate.filter(|r| r.is_finite() && *r > 0.0).unwrap_or(0.0);
        let mut s = self.state();
        s.rate = r;
        if r == 0.0 {
            s.tat = None;
        }
    }

    /// The rate in force (0: not paced).
    pub fn rate(&self) -> f64 {
        self.state().rate
    }

    /// Takes a turn for a client arriving at `now`, waiting at most `max_wait`.
    pub fn admit(&self, now: Instant, max_wait: Duration) -> Admit {
        let mut s = self.state();
        if s.rate <= 0.0 {
            return Admit::Now;
        }
        let step = Duration::from_secs_f64(1.0 / s.rate);
        let burst = step.mul_f64((s.rate / 10.0).max(1.0));
        let tat = s.tat.map_or(now, |t| t.max(now));
        // the client may go once its turn is less than a burst ahead
        let start = tat.checked_sub(burst).unwrap_or(now);
        let wait = start.saturating_duration_since(now);
        if wait > max_wait {
            return Admit::Refused;
        }
        s.tat = Some(tat + step);
        if wait.is_zero() {
            Admit::Now
        } else {
            Admit::After(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaced_admits_everyone_at_once() {
        let p = Pacer::default();
        let now = Instant::now();
        assert!((0..10_000).all(|_| p.admit(now, Duration::ZERO) == Admit::Now));
    }

    #[test]
    fn a_herd_is_spread_at_the_rate_after_a_burst() {
        let p = Pacer::default();
        p.set_rate(Some(100.0));
        let now = Instant::now();
        let got: Vec<Admit> = (0..300)
            .map(|_| p.admit(now, Duration::from_secs(2)))
            .collect();
        // the first, and a tenth of a second of the rate after it, go at once
        assert!(
            got[..11].iter().all(|a| *a == Admit::Now),
            "{:?}",
            &got[..12]
        );
        // then one every 10 ms
        match (got[11], got[110]) {
            (Admit::After(a), Admit::After(b)) => {
                assert!(a <= Duration::from_millis(11), "{a:?}");
                let d = b - a;
                assert!(
                    d > Duration::from_millis(985) && d < Duration::from_millis(995),
                    "{d:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // the turns further than 2 s are refused and take no place
        let refused = got.iter().filter(|a| **a == Admit::Refused).count();
        assert!((80..=95).contains(&refused), "{refused}");
        assert_eq!(p.admit(now, Duration::from_secs(2)), Admit::Refused);
        // later on, the bucket has refilled
        let later = now + Duration::from_secs(10);
        assert_eq!(p.admit(later, Duration::ZERO), Admit::Now);
        p.set_rate(None);
        assert_eq!(p.admit(now, Duration::ZERO), Admit::Now);
    }
}
