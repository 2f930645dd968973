//! Reads the client's first packet, which must be an MQTT CONNECT, into a buffer that will be
//! replayed to the backend unchanged. The parsing is [`mqedge_protocol::peek`] (pure); this is the
//! I/O around it: grow the buffer as bytes arrive, never past `max_connect_packet`.

use mqedge_protocol::peek::{peek_connect, Peek};
use tokio::io::{AsyncRead, AsyncReadExt};

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
pub async fn read_connect<S: AsyncRead + Unpin>(s: &mut S, limit: usize) -> Result<Peeked, Reject> {
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
            Err(e) => return Err(Reject::Peek(e)),
        }
        if buf.len() == buf.capacity() {
            let want = (buf.capacity() * 2).clamp(256, limit.max(256));
            buf.reserve_exact(want - buf.len());
        }
        let n = s.read_buf(&mut buf).await.map_err(Reject::ClientIo)?;
        if n == 0 {
            return Err(Reject::ClientIo(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof",
            )));
        }
    }
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
            use tokio::io::AsyncWriteExt;
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
    async fn oversized_is_refused_without_reading_it_all() {
        let c = encode_connect(4, &"x".repeat(5000), None, 10);
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        use tokio::io::AsyncWriteExt;
        a.write_all(&c).await.unwrap();
        let e = read_connect(&mut b, 1024).await.unwrap_err();
        assert_eq!(e.label(), "too_large");
    }
}
