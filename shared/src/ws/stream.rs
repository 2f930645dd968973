//! The WebSocket server stream over any byte stream (TCP, TLS): after [`handshake`], a
//! [`WsStream`] reads MQTT bytes out of the client's frames and writes MQTT bytes as binary
//! frames, so whatever sits above it (the LB's CONNECT peek and byte pump, the broker's
//! bridge) sees plain MQTT. Reads are decoded in the caller's buffer; the only heap copies are
//! frame bytes the socket did not take yet and a control frame's payload, freed once they
//! drain, so an idle connection holds no buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::frame::{self, close_code, op, Decoder, FrameError};
use super::handshake::{self, HandshakeError, Request};
use super::WsConfig;

/// Largest payload of one frame the stream writes (a write of more is split).
const WRITE_CHUNK: usize = 16 * 1024;
/// Control frames (pongs, the close) waiting to be written beyond this are dropped: a client
/// that pings without reading cannot grow the connection.
const MAX_PENDING_CONTROL: usize = 4 * 1024;

/// Told about every frame error a connection hits (the LB and the broker count them).
pub trait FrameErrors: Send + Sync {
    /// One connection's frames were refused for `e`.
    fn frame_error(&self, e: FrameError);
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The request was refused (answered with its HTTP status).
    #[error("WebSocket handshake refused: {0}")]
    Refused(HandshakeError),
    /// The client closed or failed before the request was complete.
    #[error("client closed during the WebSocket handshake: {0}")]
    Io(io::Error),
}

/// Reads the client's Upgrade request (at most `cfg.max_request` bytes), answers it (101, or
/// the refusal's status), and returns what the request said and any bytes the client sent
/// after it (frames it did not wait to send). The caller bounds the time.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &WsConfig,
) -> Result<(Request, Vec<u8>), AcceptError> {
    let mut buf = Vec::with_capacity(512);
    let end = loop {
        if let Some(end) = handshake::head_end(&buf) {
            break end;
        }
        if buf.len() >= cfg.max_request() {
            return Err(refuse(s, HandshakeError::TooLarge(cfg.max_request())).await);
        }
        let room = cfg.max_request() - buf.len();
        let start = buf.len();
        buf.resize(start + room.min(2048), 0);
        let n = s.read(&mut buf[start..]).await.map_err(AcceptError::Io)?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(AcceptError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    };
    let req = match handshake::parse(&buf[..end], cfg.path()) {
        Ok(r) => r,
        Err(e) => return Err(refuse(s, e).await),
    };
    let answer = handshake::accept_response(&req);
    s.write_all(&answer).await.map_err(AcceptError::Io)?;
    s.flush().await.map_err(AcceptError::Io)?;
    Ok((req, buf.split_off(end)))
}

/// Answers a refused request with its status (best effort) and returns the error.
async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, e: HandshakeError) -> AcceptError {
    let _ = s.write_all(&handshake::error_response(&e)).await;
    let _ = s.flush().await;
    AcceptError::Refused(e)
}

/// A server-side WebSocket connection carrying MQTT; see the module docs.
pub struct WsStream<S> {
    inner: S,
    dec: Decoder,
    /// Bytes the client sent right behind its handshake, decoded first.
    pre: Vec<u8>,
    /// Frame bytes not yet written (always ends at a frame boundary).
    out: Vec<u8>,
    out_pos: usize,
    /// The client's close arrived (or its TCP ended): reads return EOF.
    read_eof: bool,
    /// Our close frame is queued.
    close_sent: bool,
    errors: Arc<dyn FrameErrors>,
}

impl<S> WsStream<S> {
    /// Wraps a stream whose handshake [`handshake`] completed; `pre` are the bytes it read
    /// past the request.
    pub fn new(inner: S, pre: Vec<u8>, max_frame: u64, errors: Arc<dyn FrameErrors>) -> Self {
        WsStream {
            inner,
            dec: Decoder::new(max_frame),
            pre,
            out: Vec::new(),
            out_pos: 0,
            read_eof: false,
            close_sent: false,
            errors,
        }
    }

    /// The stream under the frames.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Queues a control frame unless too much is waiting already.
    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        if self.out.len() - self.out_pos <= MAX_PENDING_CONTROL {
            frame::control_frame(opcode, payload, &mut self.out);
        }
    }

    fn queue_close(&mut self, code: u16) {
        if !self.close_sent {
            self.close_sent = true;
            frame::close_frame(code, &mut self.out);
        }
    }

    /// Acts on what control frames asked for: a pong, the close reply.
    fn after_decode(&mut self) {
        let c = self.dec.take_control();
        if let Some(p) = c.pong {
            if !self.close_sent {
                self.queue_control(op::PONG, &p);
            }
        }
        if let Some(code) = c.close {
            self.read_eof = true;
            let reply = if code == 1005 {
                close_code::NORMAL
            } else {
                code
            };
            self.queue_close(reply);
        }
    }

    /// A frame error: tell the client why (best effort) and count it.
    fn failed(&mut self, e: FrameError) -> io::Error {
        self.errors.frame_error(e);
        self.read_eof = true;
        self.queue_close(e.close_code());
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes what is queued; `Ready(Ok)` once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new(); // idle connections hold no buffer
            self.out_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            // pongs and the close reply go out whenever the socket takes them
            if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if me.read_eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let space = buf.initialize_unfilled();
            let n = if !me.pre.is_empty() {
                let n = me.pre.len().min(space.len());
                space[..n].copy_from_slice(&me.pre[..n]);
                me.pre.drain(..n);
                if me.pre.is_empty() {
                    me.pre = Vec::new();
                }
                n
            } else {
                let mut rb = ReadBuf::new(space);
                ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
                rb.filled().len()
            };
            if n == 0 {
                // TCP ended without a close frame: EOF all the same
                me.read_eof = true;
                return Poll::Ready(Ok(()));
            }
            let space = buf.initialize_unfilled();
            let got = match me.dec.decode(&mut space[..n]) {
                Ok(m) => m,
                Err(e) => {
                    let err = me.failed(e);
                    let _ = me.poll_drain(cx); // the close frame that says why, if it fits
                    return Poll::Ready(Err(err));
                }
            };
            me.after_decode();
            if got > 0 {
                buf.advance(got);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        if me.close_sent {
            // the close handshake has begun: the client takes no more data (RFC 6455 §5.5.1),
            // so the rest of the backend's bytes are dropped rather than failing the pump
            return Poll::Ready(Ok(data.len()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(WRITE_CHUNK);
        let mut h = [0u8; 10];
        let hl = frame::header(op::BINARY, n, &mut h);
        let mut stack = [0u8; 10 + WRITE_CHUNK];
        stack[..hl].copy_from_slice(&h[..hl]);
        stack[hl..hl + n].copy_from_slice(&data[..n]);
        let whole = &stack[..hl + n];
        match Pin::new(&mut me.inner).poll_write(cx, whole) {
            Poll::Ready(Ok(w)) if w == whole.len() => {}
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(w)) => me.out = whole[w..].to_vec(),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.queue_close(close_code::NORMAL);
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
