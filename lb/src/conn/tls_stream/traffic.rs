//! Reading and writing application data once the handshake is done. Reads decrypt in a stack
//! buffer; writes seal into a per-thread scratch buffer; only bytes that cannot be handed on
//! yet are kept on the heap, and freed once they drain.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::unbuffered::EncryptError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{open, Progress, Session, TlsConn, MAX_INCOMING, READ_CHUNK};

/// Most plaintext encrypted per `poll_write` (one full record).
const WRITE_CHUNK: usize = 16 * 1024;
/// Room for one record's overhead when encrypting `WRITE_CHUNK` bytes.
const WRITE_OVERHEAD: usize = 256;

thread_local! {
    /// Where records are sealed before they go to the socket: one buffer per worker thread, so
    /// a write neither zeroes a 16 KiB stack array nor keeps a buffer in the connection.
    static SEAL_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl TlsConn {
    /// Queues the alert for `e` and writes what the socket takes now (no waiting: the
    /// connection is about to close); returns `e`.
    fn fail(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        self.queue_alert();
        let _ = self.poll_write_out(cx);
        e
    }

    /// Writes pending ciphertext; Ready(Ok) once none is left (its buffer then freed).
    pub(super) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if self.out_pos > 0 || self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.out_pos = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Brings rustls to its `WriteTraffic` state and runs `f` there; records rustls queues on
    /// the way (key update replies) go to `outgoing` first.
    fn with_write_traffic<T>(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut f = Some(f);
        let mut out = None;
        // at most: a PeerClosed (edge-triggered, reported once), then WriteTraffic
        for _ in 0..2 {
            let progress = self.drive_incoming(Some(&mut |w, o| {
                if let Some(f) = f.take() {
                    out = Some(f(w, o)?);
                }
                Ok(())
            }))?;
            match progress {
                Progress::Traffic => break,
                Progress::PeerClosed => self.read_eof = true,
                Progress::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "TLS connection closed",
                    ))
                }
                Progress::Handshaking => {
                    return Err(io::Error::other("TLS handshake not finished"))
                }
            }
        }
        out.ok_or_else(|| io::Error::other("TLS connection not ready for application data"))
    }

    /// Encrypts `chunk` (at most one record) into `scratch` and writes it to the socket; what
    /// the socket does not take now is kept in `outgoing`.
    fn seal_and_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &[u8],
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        if let Session::Lean(r) = &mut self.session {
            // rustls' encrypter hands out a fresh buffer: written from, then freed
            let mut sealed = Vec::new();
            r.seal(chunk, &mut sealed)?;
            return self.send_sealed(cx, &sealed);
        }
        if scratch.len() < WRITE_CHUNK + WRITE_OVERHEAD {
            scratch.resize(WRITE_CHUNK + WRITE_OVERHEAD, 0);
        }
        let sealed = self.with_write_traffic(|w, outgoing| match w.encrypt(chunk, scratch) {
            Ok(n) => Ok(n),
            Err(EncryptError::InsufficientSize(s)) => {
                // never expected for one record's worth; fall back to the heap
                let start = outgoing.len();
                outgoing.resize(start + s.required_size, 0);
                let n = w
                    .encrypt(chunk, &mut outgoing[start..])
                    .map_err(|e| io::Error::other(e.to_string()))?;
                outgoing.truncate(start + n);
                Ok(0)
            }
            Err(e) => Err(io::Error::other(e.to_string())),
        })?;
        self.send_sealed(cx, &scratch[..sealed])
    }

    /// Writes `sealed` straight to the socket (after any older ciphertext); keeps only what the
    /// socket does not take now.
    fn send_sealed(&mut self, cx: &mut Context<'_>, sealed: &[u8]) -> io::Result<()> {
        let mut off = 0;
        if self.outgoing.is_empty() {
            while off < sealed.len() {
                match Pin::new(&mut self.io).poll_write(cx, &sealed[off..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(k)) => off += k,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        if off < sealed.len() {
            self.outgoing.extend_from_slice(&sealed[off..]);
        }
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Err(e);
        }
        Ok(())
    }

    /// Hands `got`, just read from the socket, to rustls: decrypted bytes go to `buf` as far as
    /// it has room and the rest to `plain`; a partial record waits in `incoming`.
    fn decrypt(
        &mut self,
        cx: &mut Context<'_>,
        got: &mut [u8],
        buf: &mut ReadBuf<'_>,
    ) -> io::Result<Progress> {
        let n = got.len();
        let TlsConn {
            session,
            incoming,
            plain,
            outgoing,
            ..
        } = &mut *self;
        let mut sink = |p: &[u8]| {
            let k = p.len().min(buf.remaining());
            buf.put_slice(&p[..k]);
            plain.extend_from_slice(&p[k..]);
        };
        let progress = if incoming.is_empty() {
            // the common case: whole records, decrypted in the stack buffer
            let (used, progress) = match open(session, got, outgoing, &mut sink, None) {
                Ok(v) => v,
                Err(e) => return Err(self.fail(cx, e)),
            };
            if used < n {
                incoming.extend_from_slice(&got[used..n]);
            }
            progress
        } else {
            incoming.extend_from_slice(got);
            let (used, progress) = match open(session, incoming, outgoing, &mut sink, None) {
                Ok(v) => v,
                Err(e) => return Err(self.fail(cx, e)),
            };
            incoming.drain(..used);
            if incoming.is_empty() {
                *incoming = Vec::new();
            } else if incoming.len() > MAX_INCOMING {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS record too large",
                ));
            }
            progress
        };
        Ok(progress)
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.lean_up()?;
        loop {
            if me.plain_pos < me.plain.len() {
                let n = (me.plain.len() - me.plain_pos).min(buf.remaining());
                buf.put_slice(&me.plain[me.plain_pos..me.plain_pos + n]);
                me.plain_pos += n;
                if me.plain_pos == me.plain.len() {
                    me.plain = Vec::new();
                    me.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.read_eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // replies rustls queued while reading (key updates) go out when the socket takes them
            // (held tickets, and what queued behind them, wait for the first write)
            if !me.hold_out {
                if let Poll::Ready(Err(e)) = me.poll_write_out(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            // not zeroed: only the part the socket filled is read
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut me.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                me.read_eof = true;
                if !me.incoming.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed in the middle of a TLS record",
                    )));
                }
                continue;
            }
            let before = buf.filled().len();
            let progress = match me.decrypt(cx, rb.filled_mut(), buf) {
                Ok(p) => p,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if matches!(progress, Progress::PeerClosed | Progress::Closed) {
                me.read_eof = true;
            }
            if buf.filled().len() > before {
                if !me.hold_out {
                    if let Poll::Ready(Err(e)) = me.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.lean_up()?;
        // ciphertext from earlier writes goes first: that is the backpressure; held session
        // tickets go in the same write as this data instead (`send_sealed` appends to them)
        if !std::mem::take(&mut me.hold_out) {
            ready!(me.poll_write_out(cx))?;
        }
        if me.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = &data[..data.len().min(WRITE_CHUNK)];
        SEAL_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            me.seal_and_send(cx, chunk, &mut scratch)
        })?;
        // the plaintext is now protected and owned here: report it written
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.hold_out = false;
        ready!(me.poll_write_out(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.lean_up()?;
        // held session tickets go in the same write as the close_notify
        if !std::mem::take(&mut me.hold_out) {
            ready!(me.poll_write_out(cx))?;
        }
        if !me.close_sent {
            me.close_sent = true;
            if let Session::Lean(r) = &mut me.session {
                r.close_notify(&mut me.outgoing)?;
            } else {
                let mut alert = [0u8; 64];
                let n = me.with_write_traffic(|w, _| {
                    w.queue_close_notify(&mut alert)
                        .map_err(|e| io::Error::other(e.to_string()))
                })?;
                me.outgoing.extend_from_slice(&alert[..n]);
            }
            ready!(me.poll_write_out(cx))?;
        }
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}
