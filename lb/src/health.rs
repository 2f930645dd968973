//! Active health checks, one task per backend. `kind = "mqtt"` sends a real CONNECT (behind a
//! PROXY LOCAL header when the backend wants PROXY) and expects a CONNACK — any return code:
//! a broker that refuses our anonymous check client is still a working broker; `kind = "tcp"`
//! only connects. Outcomes go through [`Backend::record_check`] (rise/fall, HAProxy semantics).
//! A task ends when its backend leaves the live set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqedge_shared::peek::encode_connect;
use mqedge_shared::proxy::{encode_v1, encode_v2_local};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backends::Backend;
use crate::config::{HealthKind, ProxyMode};
use crate::metrics::BackendLabel;
use crate::Lb;

/// Why a check failed, for the log.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No answer within `timeout`.
    #[error("timed out")]
    Timeout,
    /// Connect or I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something that is not a CONNACK came back.
    #[error("answered {0:#04x} instead of CONNACK")]
    NotConnack(u8),
}

/// Runs one check against a backend.
pub async fn check_once(
    b: &Backend,
    kind: HealthKind,
    timeout: Duration,
    client_id: &str,
) -> Result<(), CheckError> {
    let fut = async {
        let mut s = crate::forward::connect(&b.addr).await?;
        if kind == HealthKind::Tcp {
            return Ok(());
        }
        let mut out = match b.proxy_mode() {
            ProxyMode::None => Vec::new(),
            ProxyMode::V1 => encode_v1(None, None),
            ProxyMode::V2 => encode_v2_local(),
        };
        out.extend_from_slice(&encode_connect(4, client_id, None, 10));
        s.write_all(&out).await?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await?;
        if ack[0] != 0x20 {
            return Err(CheckError::NotConnack(ack[0]));
        }
        // polite goodbye (DISCONNECT) so the broker does not log an abrupt close
        let _ = s.write_all(&[0xe0, 0x00]).await;
        Ok(())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout),
    }
}

/// Is `b` still part of the live set (same `Arc`)?
fn still_live(lb: &Lb, b: &Arc<Backend>) -> bool {
    lb.live.load().backends.iter().any(|x| Arc::ptr_eq(x, b))
}

/// Runs a check and applies its outcome; logs state changes.
pub async fn check_and_record(lb: &Lb, b: &Arc<Backend>) {
    let live = lb.live.load_full();
    let hc = live.health;
    let client_id = format!(
        "mqedge-hc-{}-{}-{}",
        live.lb.name,
        b.name,
        std::process::id()
    );
    let t0 = Instant::now();
    let res = check_once(b, hc.kind, hc.timeout, &client_id).await;
    let took = t0.elapsed();
    b.set_last_check_ms(took.as_millis() as u64);
    lb.metrics
        .check_seconds
        .get_or_create(&BackendLabel {
            backend: b.name.clone(),
        })
        .observe(took.as_secs_f64());
    if let Err(e) = &res {
        tracing::debug!(backend = %b.name, addr = %b.addr, error = %e, "health check failed");
    }
    if let Some(st) = b.record_check(res.is_ok(), &hc) {
        match &res {
            Ok(()) => {
                tracing::info!(backend = %b.name, addr = %b.addr, state = st.as_str(), "backend state changed")
            }
            Err(e) => {
                tracing::warn!(backend = %b.name, addr = %b.addr, state = st.as_str(), error = %e, "backend state changed")
            }
        }
    }
}

/// Checks `b` every `interval` (read live, so reloads apply) until it leaves the live set.
pub async fn run_checker(lb: Arc<Lb>, b: Arc<Backend>, first_done: bool) {
    if !first_done {
        check_and_record(&lb, &b).await;
    }
    loop {
        let interval = lb.live.load().health.interval;
        tokio::time::sleep(interval).await;
        if !still_live(&lb, &b) {
            break;
        }
        check_and_record(&lb, &b).await;
    }
    tracing::debug!(backend = %b.name, "health checker stopped");
}

/// First check of every backend, concurrently, so the LB starts with a known-good set.
pub async fn first_round(lb: &Arc<Lb>) {
    let backends = lb.live.load().backends.clone();
    let mut tasks = Vec::new();
    for b in backends {
        let lb = lb.clone();
        tasks.push(tokio::spawn(async move { check_and_record(&lb, &b).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
