//! Lingering close, for every close that carries a reason (a v5 DISCONNECT, a CONNACK with an
//! error code): the reason is worthless if the client never reads it.
//!
//! Closing a socket whose receive queue still holds bytes makes the kernel answer with a reset.
//! A client that pipelines (it sent more packets than the broker read before deciding to close)
//! then gets `EPIPE`/`ECONNRESET` on its next write and typically gives up before it reads
//! the DISCONNECT or CONNACK that was already on its way. So the broker half-closes (FIN after
//! the reason), reads and discards what the client still sends until it closes too, and only
//! then closes: what HTTP servers call a lingering close. Bounded in time and in bytes, so a
//! client that never stops sending cannot hold the connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest the broker keeps reading after it said why it closes.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes read (and discarded) from the client after it was told.
pub const LINGER_BYTES: usize = 4 << 20;

/// Half-closes `tcp` (everything written before goes out, then FIN), then reads and discards
/// the client's input until it closes, [`LINGER_TIME`] passes or [`LINGER_BYTES`] were read;
/// then it is dropped (closed). Box the future where it would enlarge a long-lived task:
/// it holds a read buffer.
pub async fn close(mut tcp: TcpStream) {
    // a TCP half-close: immediate, it only queues the FIN behind what was written
    if tcp.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 8192];
    let mut drained = 0usize;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            // EOF (the client closed after reading the reason), an error, or time is up
            _ => break,
        }
    }
}
