//! Active health checks, one task per backend. `kind = "mqtt"` sends a real MQTT 5 CONNECT
//! (behind a PROXY LOCAL header when the backend wants PROXY) and expects a CONNACK. Any return
//! code but "server unavailable" passes: a broker that refuses our anonymous check client is
//! still a working broker. `0x9C` Use another server says the broker drains: the backend goes
//! `draining` at once, and the checks of a draining backend acknowledge it (the drain
//! handshake, `mqedge_shared::drain`). `kind = "tcp"` only connects. Outcomes go through [`Backend::record_check`]
//! (rise/fall, HAProxy semantics). A task ends when its backend leaves the live set.
//!
//! A failed check says what was expected, what came instead and, where the bytes suggest one, a
//! hint (a PROXY header or TLS the backend wants), because "early eof" alone sends an operator
//! guessing. The text is shown as `last_check_error` at `/api/backends` and in the
//! `backend state changed` log line.
//!
//! Dials with [`Backend::dial`], as the data path does. May use `state`, `backend`, `config`,
//! `metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqedge_protocol::peek::encode_connect_props;
use mqedge_protocol::reason;
use mqedge_shared::drain::{ACK, LB_CONNECTIONS};
use mqedge_shared::proxy::{encode_v1, encode_v2_local};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::backend::{Backend, LastCheck, State as BState};
use crate::config::{HealthKind, ProxyMode};
use crate::metrics::BackendLabel;
use crate::state::Lb;

/// Why a check failed. Every text names what the check expected; `hint` is empty or starts
/// with "; ".
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The TCP connect failed.
    #[error("TCP connect failed: {0}")]
    Connect(std::io::Error),
    /// The TCP connect did not finish within `timeout`.
    #[error("TCP connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Writing the PROXY header and CONNECT failed.
    #[error("sending the CONNECT failed: {err}{hint}")]
    Send {
        /// The write error.
        err: std::io::Error,
        /// Hint.
        hint: String,
    },
    /// Connected and sent the CONNECT, but no complete CONNACK within `timeout`.
    #[error("expected a CONNACK, got {got} bytes and then nothing within {timeout:?}{hint}")]
    NoReply {
        /// The check's timeout.
        timeout: Duration,
        /// Bytes received.
        got: usize,
        /// Hint.
        hint: String,
    },
    /// The backend closed the connection before a complete CONNACK.
    #[error("expected a CONNACK, but the backend closed the connection after {got} bytes{hint}")]
    Closed {
        /// Bytes received.
        got: usize,
        /// Hint.
        hint: String,
    },
    /// Reading failed (typically a reset) before a complete CONNACK.
    #[error("expected a CONNACK, but reading failed after {got} bytes: {err}{hint}")]
    Read {
        /// Bytes received.
        got: usize,
        /// The read error.
        err: std::io::Error,
        /// Hint.
        hint: String,
    },
    /// Something that is not a CONNACK came back.
    #[error("expected a CONNACK (0x20), got {what}{hint}")]
    NotConnack {
        /// What the bytes look like.
        what: String,
        /// Hint.
        hint: String,
    },
    /// A CONNACK that says the broker cannot serve clients.
    #[error("CONNACK return code {code} ({}): the broker says it cannot serve clients now", connack_meaning(*code))]
    Unavailable {
        /// The return (v3.1.1) or reason (v5 layout) code.
        code: u8,
    },
}

/// How a check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// `kind = "tcp"`: connected.
    Connected,
    /// CONNACK with return code 0.
    Accepted,
    /// CONNACK refusing the check client (bad credentials, not authorized, ...): still a
    /// working broker.
    Refused(u8),
    /// CONNACK `0x9C` Use another server: the broker drains (it moves its clients away and
    /// stops once empty). Not a failure: the backend goes `draining` at once.
    Draining,
}

/// What a CONNACK return code (MQTT 3.1.1) or reason code (MQTT 5 layout) means.
pub fn connack_meaning(code: u8) -> &'static str {
    reason::v3_return_code_name(code)
        .or_else(|| reason::connack_name(code))
        .unwrap_or("unknown code")
}

/// Codes that mean the broker itself is not serving, so the check fails.
fn unavailable(code: u8) -> bool {
    matches!(code, 3 | 0x88 | 0x89)
}

/// The hint for a backend that said nothing useful (closed, reset, silent): the usual causes
/// are a PROXY header mismatch and a TLS-only port.
fn silent_hint(proxy: ProxyMode) -> String {
    match proxy {
        ProxyMode::None => {
            "; does the backend require a PROXY header (set proxy_protocol = \"v1\" \
             or \"v2\" on this [[backend]]), or TLS (the LB connects to backends in plain TCP)?"
                .into()
        }
        ProxyMode::V1 | ProxyMode::V2 => format!(
            "; this [[backend]] sends a PROXY {} header: does the backend accept one from this \
             LB (for mqedge broker: proxy_protocol and trusted_proxies on its listener)? Or does \
             it expect TLS (the LB connects to backends in plain TCP)?",
            if proxy == ProxyMode::V1 { "v1" } else { "v2" }
        ),
    }
}

/// The name of an MQTT control packet's first byte, when its flags are valid for its type.
fn mqtt_packet(b: u8) -> Option<&'static str> {
    let (kind, flags) = (b >> 4, b & 0x0f);
    let name = match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => return (flags & 0x06 != 0x06).then_some("PUBLISH"),
        4 => "PUBACK",
        5 => "PUBREC",
        6 => return (flags == 2).then_some("PUBREL"),
        7 => "PUBCOMP",
        8 => return (flags == 2).then_some("SUBSCRIBE"),
        9 => "SUBACK",
        10 => return (flags == 2).then_some("UNSUBSCRIBE"),
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => return None,
    };
    (flags == 0).then_some(name)
}

fn tls_alert_name(d: u8) -> &'static str {
    match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        70 => "protocol_version",
        80 => "internal_error",
        112 => "unrecognized_name",
        116 => "certificate_required",
        _ => "unknown alert",
    }
}

/// Hex, and the printable text when it is all printable.
fn show_bytes(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let text: String = b.iter().map(|&c| c as char).collect();
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        format!("bytes {} ({text:?})", hex.join(" "))
    } else {
        format!("bytes {}", hex.join(" "))
    }
}

/// Says what a reply that does not start with a CONNACK is, and what to do about it. Pure, on
/// the first bytes received (at least one).
pub fn describe_reply(b: &[u8], proxy: ProxyMode) -> (String, String) {
    let tls_hint = "; the backend speaks TLS, but the LB connects to backends in plain TCP: \
                    point this [[backend]] at the broker's plain MQTT listener"
        .to_string();
    if b.len() >= 2 && b[1] == 0x03 && (b[0] == 0x15 || b[0] == 0x16) {
        let what = if b[0] == 0x15 && b.len() >= 7 {
            let level = if b[5] == 2 { "fatal" } else { "warning" };
            format!("a TLS alert ({level}, {} ({}))", tls_alert_name(b[6]), b[6])
        } else if b[0] == 0x15 {
            "a TLS alert".to_string()
        } else {
            "a TLS handshake record".to_string()
        };
        return (what, tls_hint);
    }
    if b.starts_with(b"HTTP") {
        return (
            format!("an HTTP response ({})", show_bytes(b)),
            "; is this address an HTTP port rather than the broker's MQTT listener?".into(),
        );
    }
    match mqtt_packet(b[0]) {
        Some(name) => (
            format!("an MQTT {name} packet (first byte {:#04x})", b[0]),
            String::new(),
        ),
        None => (
            format!("{}, which is not MQTT", show_bytes(b)),
            format!(
                "; is this address the broker's MQTT listener{}",
                match proxy {
                    ProxyMode::None => "?",
                    _ => ", and does it accept the PROXY header this [[backend]] sends?",
                }
            ),
        ),
    }
}

/// Reads the first bytes of the reply: 4 (a CONNACK), or 7 when it starts like a TLS alert
/// record, so the alert can be named. Returns them, how many came, and why reading stopped
/// short if it did.
async fn read_reply(
    s: &mut tokio::net::TcpStream,
    deadline: tokio::time::Instant,
    timeout: Duration,
    proxy: ProxyMode,
) -> ([u8; 7], usize, Option<CheckError>) {
    // a CONNACK is 4 bytes; a TLS alert record 7, read whole to name the alert
    let mut buf = [0u8; 7];
    let mut got = 0;
    let hint = |got: usize| {
        if got == 0 {
            silent_hint(proxy)
        } else {
            String::new()
        }
    };
    // why reading stopped short, if it did
    let short = loop {
        let want = if got >= 1 && buf[0] == 0x15 { 7 } else { 4 };
        if got >= want {
            break None;
        }
        match timeout_at(deadline, s.read(&mut buf[got..want])).await {
            Ok(Ok(0)) => {
                break Some(CheckError::Closed {
                    got,
                    hint: hint(got),
                })
            }
            Ok(Ok(n)) => got += n,
            Ok(Err(err)) => {
                break Some(CheckError::Read {
                    got,
                    err,
                    hint: hint(got),
                })
            }
            Err(_) => {
                break Some(CheckError::NoReply {
                    timeout,
                    got,
                    hint: hint(got),
                })
            }
        }
    };
    (buf, got, short)
}

/// Runs one check against a backend. `ack` (this LB's name and its connections to the
/// backend), for a backend in `draining`: the CONNECT tells a draining broker that this LB saw
/// its drain.
pub async fn check_once(
    b: &Backend,
    kind: HealthKind,
    timeout: Duration,
    client_id: &str,
    ack: Option<(&str, u64)>,
) -> Result<Passed, CheckError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut s = match timeout_at(deadline, b.dial()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(CheckError::Connect(e)),
        Err(_) => return Err(CheckError::ConnectTimeout(timeout)),
    };
    if kind == HealthKind::Tcp {
        return Ok(Passed::Connected);
    }
    let proxy = b.proxy_mode();
    let mut out = match proxy {
        ProxyMode::None => Vec::new(),
        ProxyMode::V1 => encode_v1(None, None),
        ProxyMode::V2 => encode_v2_local(),
    };
    // MQTT 5, so that a draining broker can say so (CONNACK 0x9C) and read the acknowledgement
    let active = ack.map(|(_, n)| n.to_string()).unwrap_or_default();
    let props: Vec<(&str, &str)> = match ack {
        Some((lb, _)) => vec![(ACK, lb), (LB_CONNECTIONS, active.as_str())],
        None => Vec::new(),
    };
    out.extend_from_slice(&encode_connect_props(5, client_id, None, 10, &props));
    match timeout_at(deadline, s.write_all(&out)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            let hint = silent_hint(proxy);
            return Err(CheckError::Send { err, hint });
        }
        Err(_) => {
            let hint = silent_hint(proxy);
            return Err(CheckError::NoReply {
                timeout,
                got: 0,
                hint,
            });
        }
    }
    let (buf, got, short) = read_reply(&mut s, deadline, timeout, proxy).await;
    if got >= 1 && buf[0] != 0x20 {
        let (what, hint) = describe_reply(&buf[..got], proxy);
        return Err(CheckError::NotConnack { what, hint });
    }
    if let Some(e) = short {
        return Err(e);
    }
    // the rest of a v5 CONNACK (its properties), so the close is a FIN and not a reset
    let rest = usize::from(buf[1]).saturating_sub(2);
    if buf[1] < 0x80 && rest > 0 {
        let mut skip = [0u8; 128];
        let _ = timeout_at(deadline, s.read_exact(&mut skip[..rest])).await;
    }
    // polite goodbye (DISCONNECT) so the broker does not log an abrupt close
    let _ = timeout_at(deadline, s.write_all(&[0xe0, 0x00])).await;
    match buf[3] {
        0 => Ok(Passed::Accepted),
        reason::USE_ANOTHER_SERVER => Ok(Passed::Draining),
        code if unavailable(code) => Err(CheckError::Unavailable { code }),
        code => Ok(Passed::Refused(code)),
    }
}

/// Runs a check and applies its outcome; logs state changes.
pub async fn check_and_record(lb: &Arc<Lb>, b: &Arc<Backend>) {
    let before = b.state();
    let live = lb.live_arc();
    let hc = live.health;
    let client_id = format!(
        "mqedge-hc-{}-{}-{}",
        live.lb.name,
        b.name(),
        std::process::id()
    );
    let t0 = Instant::now();
    let ack = (b.state() == BState::Draining).then(|| (live.lb.name.as_str(), b.active()));
    let res = check_once(b, hc.kind, hc.timeout, &client_id, ack).await;
    let took = t0.elapsed();
    let at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    b.set_last_check(LastCheck {
        took,
        at_unix_ms,
        error: res.as_ref().err().map(ToString::to_string),
    });
    lb.metrics()
        .check_seconds
        .get_or_create(&BackendLabel {
            backend: b.name().to_string(),
        })
        .observe(took.as_secs_f64());
    // per-check lines are debug (one per backend per interval); state changes are info/warn
    match &res {
        Err(e) => {
            tracing::debug!(backend = %b.name(), addr = %b.addr(), error = %e, "health check failed")
        }
        Ok(Passed::Refused(code)) => {
            tracing::debug!(backend = %b.name(), addr = %b.addr(), code, "health check passed: CONNACK return code {code} ({}) refuses the check client, but the broker answers", connack_meaning(*code))
        }
        Ok(_) => {}
    }
    if drain_applied(b, &res, &hc) {
        came_up(lb, b, before);
        return;
    }
    if let Some(st) = b.record_check(res.is_ok(), &hc) {
        came_up(lb, b, before);
        match &res {
            Ok(_) => {
                tracing::info!(backend = %b.name(), addr = %b.addr(), state = st.as_str(), "backend state changed")
            }
            Err(e) => {
                tracing::warn!(backend = %b.name(), addr = %b.addr(), state = st.as_str(), error = %e, "backend state changed")
            }
        }
    }
}

/// `[balance] rebalance = "auto"`: a backend that became `up` takes its share of clients back.
fn came_up(lb: &Arc<Lb>, b: &Backend, before: BState) {
    if before != BState::Up && b.state() == BState::Up {
        super::rebalance::on_up(lb, b.name());
    }
}

/// The drain handshake's side of a check: a "draining" answer puts the backend in `draining`
/// at once (no `fall` to wait for: the broker said so) and no other outcome counts; any other
/// answer from a backend that drains by its own word ends that drain (`down` at once when the
/// check failed: the broker left; else `up` by this passing check). True when the outcome was
/// taken here.
fn drain_applied(
    b: &Backend,
    res: &Result<Passed, CheckError>,
    hc: &crate::config::HealthConfig,
) -> bool {
    if let Ok(Passed::Draining) = res {
        if b.backend_drain() {
            tracing::info!(backend = %b.name(), addr = %b.addr(), state = "draining", "backend state changed: the broker drains; no new connections to it, and it moves its clients itself");
        }
        return true;
    }
    let Some(next) = b.end_backend_drain(res.is_ok()) else {
        return false;
    };
    let st = match next {
        BState::Checking => b.record_check(true, hc).unwrap_or(next),
        other => other,
    };
    match res {
        Err(e) => {
            tracing::info!(backend = %b.name(), addr = %b.addr(), state = st.as_str(), error = %e, "backend state changed: the broker that drained is gone")
        }
        Ok(_) => {
            tracing::info!(backend = %b.name(), addr = %b.addr(), state = st.as_str(), "backend state changed: the broker serves again")
        }
    }
    true
}

/// Checks `b` every `interval` (read live, so reloads apply) until it leaves the live set or
/// another checker takes it over (a backend re-added by a reload).
pub async fn run_checker(lb: Arc<Lb>, b: Arc<Backend>, first_done: bool) {
    let ticket = b.claim_checker();
    if !first_done {
        check_and_record(&lb, &b).await;
    }
    loop {
        let interval = lb.live().health.interval;
        tokio::time::sleep(interval).await;
        if !lb.live().contains(&b) || !b.is_checker(ticket) {
            break;
        }
        check_and_record(&lb, &b).await;
    }
    tracing::debug!(backend = %b.name(), "health checker stopped");
}

/// First check of every backend, concurrently, so the LB starts with a known-good set.
pub async fn first_round(lb: &Arc<Lb>) {
    let backends = lb.live().backends.clone();
    let mut tasks = Vec::new();
    for b in backends {
        let lb = lb.clone();
        tasks.push(tokio::spawn(async move { check_and_record(&lb, &b).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_named() {
        let none = ProxyMode::None;
        let (what, hint) = describe_reply(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], none);
        assert_eq!(what, "a TLS alert (fatal, decode_error (50))");
        assert!(hint.contains("speaks TLS"), "{hint}");
        let (what, _) = describe_reply(&[0x16, 0x03, 0x01], none);
        assert_eq!(what, "a TLS handshake record");
        let (what, hint) = describe_reply(b"HTTP", none);
        assert!(what.starts_with("an HTTP response"), "{what}");
        assert!(hint.contains("HTTP port"));
        let (what, hint) = describe_reply(&[0xe0, 0x00, 0x00, 0x00], none);
        assert_eq!(what, "an MQTT DISCONNECT packet (first byte 0xe0)");
        assert!(hint.is_empty());
        let (what, _) = describe_reply(&[0x62, 0x02], none);
        assert_eq!(what, "an MQTT PUBREL packet (first byte 0x62)");
        let (what, hint) = describe_reply(&[0x67, 0x00, 0x01], ProxyMode::V2);
        assert_eq!(what, "bytes 67 00 01, which is not MQTT");
        assert!(hint.contains("PROXY header"), "{hint}");
        assert_eq!(connack_meaning(5), "not authorized");
        assert_eq!(connack_meaning(0x89), "server busy");
        assert!(unavailable(3) && unavailable(0x88) && !unavailable(5) && !unavailable(0x87));
    }

    #[test]
    fn hints_follow_the_proxy_mode() {
        assert!(silent_hint(ProxyMode::None).contains("set proxy_protocol"));
        assert!(silent_hint(ProxyMode::V1).contains("PROXY v1 header"));
        assert!(silent_hint(ProxyMode::V2).contains("PROXY v2 header"));
    }
}
