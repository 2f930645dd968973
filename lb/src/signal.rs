//! A one-shot flag that many connections wait on ("the LB is shutting down", "this backend was
//! removed"), polled from inside the byte pump.
//!
//! A `watch::Receiver::changed()` future costs a few hundred bytes inside every connection's task
//! for its whole life; here a waiting connection holds a handle (an `Arc`, a slot number and a
//! copy of its waker), and the flag keeps one waker slot per waiting connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The firing side; clones share the flag.
#[derive(Clone, Default)]
pub struct Signal(Arc<Inner>);

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("fired", &self.is_fired())
            .finish()
    }
}

impl Signal {
    /// A flag that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter; later calls do nothing.
    pub fn fire(&self) {
        if self.0.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let wakers: Vec<Waker> = {
            let mut w = self.0.lock();
            w.free.clear();
            std::mem::take(&mut w.slots).into_iter().flatten().collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`Signal::fire`] was called.
    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// A handle to wait on from a poll function.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            inner: self.0.clone(),
            slot: None,
        }
    }
}

/// One waiter's handle; its waker slot is released on drop.
pub struct Subscription {
    inner: Arc<Inner>,
    /// Slot index and the waker stored there (compared without taking the lock).
    slot: Option<(usize, Waker)>,
}

impl Subscription {
    /// Ready once the flag has fired; otherwise makes sure `cx`'s task is woken when it does.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if let Some((_, w)) = &self.slot {
            if w.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let mut ws = self.inner.lock();
        // checked again under the lock: `fire` sets the flag before it takes the wakers
        if self.inner.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        let i = match self.slot.as_ref() {
            Some((i, _)) if *i < ws.slots.len() => *i,
            _ => match ws.free.pop() {
                Some(i) => i,
                None => {
                    ws.slots.push(None);
                    ws.slots.len() - 1
                }
            },
        };
        ws.slots[i] = Some(waker.clone());
        drop(ws);
        self.slot = Some((i, waker));
        Poll::Pending
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some((i, _)) = self.slot.take() {
            let mut ws = self.inner.lock();
            if i < ws.slots.len() {
                ws.slots[i] = None;
                ws.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn wait(mut s: Subscription) {
        std::future::poll_fn(|cx| s.poll_fired(cx)).await
    }

    #[tokio::test]
    async fn wakes_every_waiter_and_later_subscribers_see_it() {
        let sig = Signal::new();
        let waiters: Vec<_> = (0..50)
            .map(|_| tokio::spawn(wait(sig.subscribe())))
            .collect();
        // some subscribe and go away before the fire: their slots are reused, not leaked
        for _ in 0..10 {
            let s = sig.subscribe();
            let t = tokio::spawn(wait(s));
            tokio::time::sleep(Duration::from_millis(1)).await;
            t.abort();
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(sig.0.lock().slots.len() <= 51);
        assert!(!sig.is_fired());
        sig.fire();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("woken")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(1), wait(sig.subscribe()))
            .await
            .expect("already fired");
        sig.fire();
    }
}
