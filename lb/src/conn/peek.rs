//! Reads the client's first packet, which must be an MQTT CONNECT, into a buffer that will be
//! replayed to the backend unchanged. The parsing is [`mqedge_protocol::peek`] (pure); this is the
//! I/O around it: grow the buffer as bytes arrive, never past `max_connect_packet`. The one
//! answer the LB itself gives a client is here: an unsupported protocol level gets the CONNACK
//! MQTT-3.1.2-2 asks for (return code 0x01) before the close.

use std::time::Duration;

use mqedge_protocol::peek::{peek_connect, Peek, PeekError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::Reject;

/// A complete CONNECT and anything the client pipelined after it.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// Every byte read from the client so far (the CONNECT first).
    pub bytes: Vec<u8>,
    /// MQTT protocol level (3, 4, 5).
    pub level: u8,
    /// Client id.
    pub client_id: String,
    /// Username, for logs.
    pub username: Option<String>,
}

/// Reads until a full CONNECT is buffered. Starts with a small buffer (most CONNECTs are under
/// 256 bytes) and grows only as the declared length requires.
pub async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    limit: usize,
) -> Result<Peeked, Reject> {
    let mut buf: Vec<u8> = Vec::with_capacity(256.min(limit.max(16)));
    loop {
        match peek_connect(&buf, limit) {
            Ok(Peek::Complete(c)) => {
                return Ok(Peeked {
                    level: c.level,
                    client_id: c.client_id.to_string(),
                    username: c.username.map(str::to_string),
                    bytes: buf,
                })
            }
            Ok(Peek::Incomplete) => {}
            Err(e @ PeekError::UnsupportedLevel(_)) => {
                refuse_level(s).await;
                return Err(Reject::Peek(e));
            }
            Err(e) => return Err(Reject::Peek(e)),
        }
        if buf.len() == buf.capacity() {
            let want = (buf.capacity() * 2).clamp(256, limit.max(256));
            buf.reserve_exact(want - buf.len());
        }
        let n = s.read_buf(&mut buf).await.map_err(Reject::from_read)?;
        if n == 0 {
            return Err(Reject::ClientIo(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof",
            )));
        }
    }
}

/// CONNACK in the 3.1.1 layout (the one every level can read), return code 0x01: unacceptable
/// protocol level.
const CONNACK_BAD_LEVEL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// Best effort, bounded: a client that does not read its refusal is closed all the same.
async fn refuse_level<S: AsyncWrite + Unpin>(s: &mut S) {
    let send = async {
        s.write_all(&CONNACK_BAD_LEVEL).await?;
        s.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqedge_protocol::peek::encode_connect;

    #[tokio::test]
    async fn reads_across_chunks_and_keeps_pipelined_bytes() {
        let mut c = encode_connect(4, "abc", None, 10);
        let n = c.len();
        c.extend_from_slice(&[0xc0, 0x00]); // PINGREQ sent right behind
        let (mut a, mut b) = tokio::io::duplex(4);
        let w = tokio::spawn(async move {
            for ch in c.chunks(3) {
                a.write_all(ch).await.unwrap();
            }
            a
        });
        let p = read_connect(&mut b, 1024).await.unwrap();
        assert_eq!(p.client_id, "abc");
        assert!(p.bytes.len() >= n);
        let _ = w.await;
    }

    #[tokio::test]
    async fn unsupported_level_is_answered_with_connack_0x01() {
        let mut c = encode_connect(4, "abc", None, 10);
        c[8] = 7; // protocol level 7
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&c).await.unwrap();
        let e = read_connect(&mut b, 1024).await.unwrap_err();
        assert_eq!(e.label(), "bad_protocol");
        let mut answer = [0u8; 4];
        a.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, CONNACK_BAD_LEVEL);
    }

    #[tokio::test]
    async fn oversized_is_refused_without_reading_it_all() {
        let c = encode_connect(4, &"x".repeat(5000), None, 10);
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&c).await.unwrap();
        let e = read_connect(&mut b, 1024).await.unwrap_err();
        assert_eq!(e.label(), "too_large");
    }
}
