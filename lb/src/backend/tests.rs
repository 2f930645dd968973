//! Drain cycles against their timers.

use super::*;
use crate::config::{BackendAddr, ProxyMode};
use crate::signal::Subscription;
use std::task::Poll;
use std::time::Duration;

fn backend() -> Arc<Backend> {
    let cfg = BackendConfig {
        name: "b".into(),
        addr: BackendAddr::Ip("127.0.0.1:1".parse().unwrap()),
        weight: 1,
        proxy_protocol: ProxyMode::None,
        proxy_tlvs: Default::default(),
        bufs: Default::default(),
    };
    Arc::new(Backend::new(&cfg, State::Up, &Metrics::new()))
}

async fn fires_within(mut s: Subscription, t: Duration) -> bool {
    tokio::time::timeout(t, std::future::poll_fn(|cx| s.poll_fired(cx)))
        .await
        .is_ok()
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn each_drain_cycle_has_its_own_close() {
    let b = backend();
    let before = b.close_signal();
    assert_eq!(b.start_drain(20 * MS), State::Up);
    // a second drain call keeps the first timer
    assert_eq!(b.start_drain(Duration::from_secs(60)), State::Draining);
    assert!(fires_within(before, 500 * MS).await);
    assert!(!b.close_pending());
    // joined in a race while draining: closed at once
    assert!(fires_within(b.close_signal(), 10 * MS).await);
    assert!(b.end_drain());
    assert!(!b.end_drain(), "not draining any more");
    assert_eq!(b.state(), State::Checking);
    let after_ready = b.close_signal();
    let mut probe = b.close_signal();
    assert!(std::future::poll_fn(|cx| Poll::Ready(probe.poll_fired(cx).is_pending())).await);
    // and the next drain closes them again
    b.start_drain(20 * MS);
    assert!(fires_within(after_ready, 500 * MS).await);
}

#[tokio::test]
async fn ready_before_the_timeout_cancels_the_close() {
    let b = backend();
    let early = b.close_signal();
    b.start_drain(50 * MS);
    assert!(b.close_pending());
    tokio::time::sleep(10 * MS).await;
    assert!(b.end_drain());
    let late = b.close_signal();
    assert!(
        !fires_within(early, 150 * MS).await,
        "the cancelled drain closed"
    );
    // a new drain closes the connections from before the cancelled one, and the later ones
    let early = b.close_signal();
    b.start_drain(20 * MS);
    assert!(fires_within(early, 500 * MS).await);
    assert!(fires_within(late, 500 * MS).await);
}

#[tokio::test]
async fn a_brokers_own_drain_has_no_timer_and_ends_with_its_checks() {
    let b = backend();
    let open = b.close_signal();
    assert!(b.backend_drain());
    assert!(!b.backend_drain(), "draining already");
    assert_eq!(b.state(), State::Draining);
    assert_eq!(b.drain_cause(), Some(DrainCause::Backend));
    assert!(
        !fires_within(open, 100 * MS).await,
        "the LB closed them itself"
    );
    // the broker has gone: down at once
    assert_eq!(b.end_backend_drain(false), Some(State::Down));
    assert_eq!(b.drain_cause(), None);
    assert_eq!(b.end_backend_drain(true), None, "not draining any more");
    // an operator's drain on top of the broker's starts the timer, and checks leave it alone
    assert!(b.backend_drain());
    let open = b.close_signal();
    assert_eq!(b.start_drain(20 * MS), State::Draining);
    assert_eq!(b.drain_cause(), Some(DrainCause::Operator));
    assert!(fires_within(open, 500 * MS).await);
    assert_eq!(b.end_backend_drain(true), None);
    assert!(!b.backend_drain(), "an operator's drain stays");
    assert!(b.end_drain());
    assert_eq!(b.state(), State::Checking);
}
