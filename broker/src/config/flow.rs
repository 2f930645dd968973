//! The slow-consumer keys of `[limits]`: how large one subscriber's backlog may grow (in
//! bytes), how long publishers are held back for it, and what happens to it past its bound
//! (docs/operations.md, "Slow consumers").

use std::time::Duration;

use mqedge_shared::config::Problems;
use serde::Deserialize;

use super::limits::RawLimits;

/// Default `max_queued_bytes`: 8 MiB of messages waiting for one session.
const DEFAULT_MAX_QUEUED_BYTES: u64 = 8 << 20;
/// Smallest `max_queued_bytes`: below one full write backlog the bound would bite on a client
/// that reads fine.
const MIN_QUEUED_BYTES: u64 = 64 << 10;
/// Largest `max_queued_bytes` (1 TiB: a typo guard, not a recommendation).
const MAX_QUEUED_BYTES: u64 = 1 << 40;
/// Default `publisher_hold`.
const DEFAULT_PUBLISHER_HOLD: Duration = Duration::from_millis(100);
/// Longest `publisher_hold` accepted: beyond it one subscriber stalls its publishers for longer
/// than a LB health check waits.
const MAX_PUBLISHER_HOLD: Duration = Duration::from_secs(10);

/// `slow_consumer_policy`: what a connected subscriber whose backlog reached its bound gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Its oldest queued messages make room for the new ones (counted).
    #[default]
    DropOldest,
    /// It is disconnected (v5: DISCONNECT 0x97 Quota exceeded; 3.1.1: closed).
    Disconnect,
}

/// The slow-consumer settings, validated.
#[derive(Debug, Clone, Copy)]
pub struct FlowConfig {
    /// Bytes of messages (topic, payload, properties) one session may have queued.
    pub max_queued_bytes: usize,
    /// How long publishers are held back, at most, once a subscriber is congested; past it
    /// only that subscriber pays.
    pub publisher_hold: Duration,
    /// What a connected subscriber at its bound gets.
    pub slow_consumer_policy: SlowConsumerPolicy,
}

impl Default for FlowConfig {
    fn default() -> FlowConfig {
        FlowConfig {
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES as usize,
            publisher_hold: DEFAULT_PUBLISHER_HOLD,
            slow_consumer_policy: SlowConsumerPolicy::default(),
        }
    }
}

/// Validates the slow-consumer keys of `[limits]` (each bad value a `file:line` problem).
pub(super) fn flow(p: &mut Problems<'_>, raw: Option<&RawLimits>) -> FlowConfig {
    let d = FlowConfig::default();
    let Some(r) = raw else { return d };
    let max_queued_bytes = match &r.max_queued_bytes {
        Some(m) if !(MIN_QUEUED_BYTES..=MAX_QUEUED_BYTES).contains(&m.get_ref().0) => {
            p.at(m.span(), "max_queued_bytes must be between 64KiB and 1TiB");
            d.max_queued_bytes
        }
        Some(m) => usize::try_from(m.get_ref().0).unwrap_or(usize::MAX),
        None => d.max_queued_bytes,
    };
    let publisher_hold = match &r.publisher_hold {
        Some(h) if h.get_ref().0 > MAX_PUBLISHER_HOLD => {
            p.at(h.span(), "publisher_hold must be at most 10s");
            d.publisher_hold
        }
        Some(h) => h.get_ref().0,
        None => d.publisher_hold,
    };
    FlowConfig {
        max_queued_bytes,
        publisher_hold,
        slow_consumer_policy: r.slow_consumer_policy.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::limits::tests::parse;
    use super::*;

    #[test]
    fn defaults_values_and_errors() {
        let c = parse("").unwrap();
        assert_eq!(c.flow.max_queued_bytes, 8 << 20);
        assert_eq!(c.flow.publisher_hold, Duration::from_millis(100));
        assert_eq!(c.flow.slow_consumer_policy, SlowConsumerPolicy::DropOldest);
        let c = parse(
            "max_queued_bytes = \"1MiB\"\npublisher_hold = \"0s\"\nslow_consumer_policy = \"disconnect\"",
        )
        .unwrap();
        assert_eq!(c.flow.max_queued_bytes, 1 << 20);
        assert_eq!(c.flow.publisher_hold, Duration::ZERO);
        assert_eq!(c.flow.slow_consumer_policy, SlowConsumerPolicy::Disconnect);
        let e = parse("max_queued_bytes = \"1KiB\"\npublisher_hold = \"1m\"").unwrap_err();
        assert!(
            e.contains("b.toml:4: max_queued_bytes must be between 64KiB and 1TiB"),
            "{e}"
        );
        assert!(
            e.contains("b.toml:5: publisher_hold must be at most 10s"),
            "{e}"
        );
        let e = parse("slow_consumer_policy = \"pause\"").unwrap_err();
        assert!(e.contains("b.toml:4"), "{e}");
    }
}
