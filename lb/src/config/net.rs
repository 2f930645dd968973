//! The per-connection network settings of listeners and backends: bandwidth limits (a token
//! bucket per connection and direction) and the kernel's socket buffer sizes. All of them are
//! reloadable: see docs/operations.md "Bandwidth and socket buffers".

use mqedge_shared::config::{ByteSize, Problems};
use toml::Spanned;

/// Smallest rate a listener may be limited to: below it a CONNECT alone takes seconds.
pub const MIN_BANDWIDTH: u64 = 1024;
/// Socket buffer bounds: the kernel clamps outside them anyway (`net.core.[rw]mem_max`), so a
/// value outside is a typo, not a wish.
pub const MIN_SOCKET_BUFFER: u64 = 4 * 1024;
/// See [`MIN_SOCKET_BUFFER`].
pub const MAX_SOCKET_BUFFER: u64 = 64 * 1024 * 1024;

/// `sndbuf`/`rcvbuf` of a listener's client sockets or of a backend's sockets; `None` leaves
/// the kernel's default (and its autotuning) alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketBufs {
    /// SO_SNDBUF, bytes (the kernel doubles it for its own bookkeeping).
    pub sndbuf: Option<u32>,
    /// SO_RCVBUF, bytes (doubled likewise).
    pub rcvbuf: Option<u32>,
}

/// A listener's per-connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerNet {
    /// Client → backend, bytes per second of MQTT (after TLS) per connection.
    pub bandwidth_in: Option<u64>,
    /// Backend → client, likewise.
    pub bandwidth_out: Option<u64>,
    /// Bucket size in bytes; `None`: one second of the direction's rate.
    pub bandwidth_burst: Option<u64>,
    /// The client sockets' buffers.
    pub bufs: SocketBufs,
}

impl ListenerNet {
    /// Whether either direction is limited.
    pub fn shaped(&self) -> bool {
        self.bandwidth_in.is_some() || self.bandwidth_out.is_some()
    }

    /// The rate of one direction (`up`: client → backend) and its bucket size.
    pub fn limit(&self, up: bool) -> Option<(u64, u64)> {
        let rate = if up {
            self.bandwidth_in
        } else {
            self.bandwidth_out
        }?;
        Some((rate, self.bandwidth_burst.unwrap_or(rate).max(1)))
    }
}

/// The raw keys, as they appear on a `[[listener]]`.
pub(super) struct RawListenerNet {
    pub bandwidth_in: Option<Spanned<ByteSize>>,
    pub bandwidth_out: Option<Spanned<ByteSize>>,
    pub bandwidth_burst: Option<Spanned<ByteSize>>,
    pub sndbuf: Option<Spanned<ByteSize>>,
    pub rcvbuf: Option<Spanned<ByteSize>>,
}

/// Validates a listener's bandwidth and buffer keys; problems are collected in `p`.
pub(super) fn parse_listener_net(
    name: &str,
    raw: RawListenerNet,
    p: &mut Problems<'_>,
) -> ListenerNet {
    let rate = |v: Option<Spanned<ByteSize>>, key: &str, p: &mut Problems<'_>| {
        let v = v?;
        let n = v.get_ref().0;
        if n < MIN_BANDWIDTH {
            p.at(
                v.span(),
                format!("listener {name:?}: {key} must be at least 1KiB (bytes per second)"),
            );
            return None;
        }
        Some(n)
    };
    let bandwidth_in = rate(raw.bandwidth_in, "bandwidth_in", p);
    let bandwidth_out = rate(raw.bandwidth_out, "bandwidth_out", p);
    let mut bandwidth_burst = None;
    if let Some(b) = raw.bandwidth_burst {
        if b.get_ref().0 < MIN_BANDWIDTH {
            p.at(
                b.span(),
                format!("listener {name:?}: bandwidth_burst must be at least 1KiB"),
            );
        } else if bandwidth_in.is_none() && bandwidth_out.is_none() {
            p.at(
                b.span(),
                format!("listener {name:?}: bandwidth_burst needs bandwidth_in or bandwidth_out"),
            );
        } else {
            bandwidth_burst = Some(b.get_ref().0);
        }
    }
    ListenerNet {
        bandwidth_in,
        bandwidth_out,
        bandwidth_burst,
        bufs: parse_bufs(&format!("listener {name:?}"), raw.sndbuf, raw.rcvbuf, p),
    }
}

/// Validates `sndbuf`/`rcvbuf` of a listener or a backend (`what` names it in errors).
pub(super) fn parse_bufs(
    what: &str,
    sndbuf: Option<Spanned<ByteSize>>,
    rcvbuf: Option<Spanned<ByteSize>>,
    p: &mut Problems<'_>,
) -> SocketBufs {
    let one = |v: Option<Spanned<ByteSize>>, key: &str, p: &mut Problems<'_>| {
        let v = v?;
        let n = v.get_ref().0;
        if !(MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER).contains(&n) {
            p.at(
                v.span(),
                format!("{what}: {key} must be between 4KiB and 64MiB"),
            );
            return None;
        }
        u32::try_from(n).ok()
    };
    SocketBufs {
        sndbuf: one(sndbuf, "sndbuf", p),
        rcvbuf: one(rcvbuf, "rcvbuf", p),
    }
}
