//! A TLS server stream over rustls' unbuffered API, so that an idle connection holds no buffers.
//!
//! `tokio_rustls` keeps a 4 KiB read buffer inside every connection for its whole life (rustls'
//! deframer buffer), which was a third of the LB's memory per idle TLS connection. Here the
//! caller's buffers are used instead: a read lands in a stack buffer and is decrypted there;
//! only bytes that cannot be handed on yet (a partial record, plaintext beyond what the reader
//! asked for, ciphertext the socket did not take) are kept on the heap, and those copies are
//! freed as soon as they drain — the same rule as the plain byte pump in `forward.rs`.
//!
//! rustls does all of TLS (handshake, record protection, key updates, alerts); this module only
//! moves bytes between the socket and rustls.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsFacts;

/// Largest TLS record on the wire (16 KiB of payload plus header, content type, padding and tag
/// allowance); a read of this size can always complete a record that has begun.
const READ_CHUNK: usize = 16 * 1024 + 5 + 256;
/// How long a failing handshake may spend sending its alert.
const ALERT_WRITE_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// Most plaintext encrypted per `poll_write` (one full record).
const WRITE_CHUNK: usize = 16 * 1024;
/// Room for one record's overhead when encrypting `WRITE_CHUNK` bytes.
const WRITE_OVERHEAD: usize = 256;
/// The most unprocessed TLS bytes held for one connection: a handshake message may span records
/// (rustls caps those at 64 KiB), application records are at most `READ_CHUNK`.
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;

thread_local! {
    /// Where records are sealed before they go to the socket: one buffer per worker thread, so
    /// a write neither zeroes a 16 KiB stack array nor keeps a buffer in the connection.
    static SEAL_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The SNI of the ClientHello rustls has just processed on this thread (see [`SniCapture`]).
    static LAST_SNI: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Wraps a certificate resolver to learn the client's SNI, which rustls' unbuffered server
/// connection does not expose. rustls calls the resolver synchronously from inside
/// `process_tls_records` on the caller's thread, so the value is picked up right after that call
/// returns, before the task can yield.
#[derive(Debug)]
struct SniCapture(Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for SniCapture {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_string);
        LAST_SNI.with(|s| *s.borrow_mut() = Some(sni));
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

/// Prepares a listener's server config for [`TlsConn::accept`] (adds the SNI capture).
pub fn prepare(sc: Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut c = (*sc).clone();
    c.cert_resolver = Arc::new(SniCapture(c.cert_resolver.clone()));
    Arc::new(c)
}

/// How far rustls got with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The handshake needs more bytes from the peer.
    Handshaking,
    /// Established; needs more bytes for further records.
    Traffic,
    /// The peer sent close_notify: no more data will come.
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

/// What the write path does once rustls is ready for application data.
type AtWrite<'a> = &'a mut dyn FnMut(
    &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
    &mut Vec<u8>,
) -> io::Result<()>;

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs rustls over `buf` until it needs more bytes from the peer (or, for the write path, until
/// `at_write` has run in rustls' `WriteTraffic` state). Decrypted application data goes to
/// `sink`; handshake and alert records rustls wants sent are appended to `outgoing`. Returns how
/// many bytes at the front of `buf` rustls is done with (the rest must be presented again, with
/// more appended) and how far it got.
fn drive(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    outgoing: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]),
    mut at_write: Option<AtWrite<'_>>,
) -> io::Result<(usize, Progress)> {
    let mut off = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut buf[off..]);
        let mut done = None;
        match state.map_err(tls_err)? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_err)?;
                    discard += rec.discard;
                    sink(rec.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => encode(&mut e, outgoing)?,
            // the bytes are in `outgoing`, which is always written before anything else
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::BlockedHandshake => done = Some(Progress::Handshaking),
            ConnectionState::WriteTraffic(mut w) => {
                if let Some(f) = at_write.as_mut() {
                    f(&mut w, outgoing)?;
                }
                done = Some(Progress::Traffic)
            }
            ConnectionState::PeerClosed => done = Some(Progress::PeerClosed),
            ConnectionState::Closed => done = Some(Progress::Closed),
            ConnectionState::ReadEarlyData(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS early data",
                ))
            }
            other => {
                return Err(io::Error::other(format!(
                    "unexpected TLS connection state {other:?}"
                )))
            }
        }
        off += discard;
        if let Some(p) = done {
            return Ok((off, p));
        }
    }
}

/// After a TLS error rustls has queued the fatal alert that explains it; this takes it out into
/// `outgoing` so it can be sent before the connection closes.
///
/// Exactly one call: rustls hands out queued records before it looks at the buffer, and a
/// second call would deframe again, which needs the buffer of the failed call (an empty one
/// makes rustls 0.23 panic when a handshake message was half joined).
fn queue_alert(conn: &mut UnbufferedServerConnection, outgoing: &mut Vec<u8>) {
    if !conn.wants_write() {
        return; // nothing queued: the call would go on to deframe
    }
    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
    if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
        let _ = encode(&mut e, outgoing);
    }
}

fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    let start = outgoing.len();
    let mut need = 1024;
    loop {
        outgoing.resize(start + need, 0);
        match e.encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => need = s.required_size,
            Err(e) => {
                outgoing.truncate(start);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

/// A server-side TLS connection over a TCP stream; see the module docs.
pub struct TlsConn {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received that rustls has not finished with (a partial record).
    incoming: Vec<u8>,
    /// Decrypted bytes not yet handed to the reader.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext not yet written to the socket.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// Peer sent close_notify or closed TCP.
    read_eof: bool,
    /// We sent close_notify.
    close_sent: bool,
    sni: Option<String>,
}

impl TlsConn {
    /// Runs the server handshake. `head` holds bytes already read from `io` (after a PROXY
    /// header). Application data that arrives with the client's last flight is kept for reading.
    pub async fn accept(
        config: Arc<ServerConfig>,
        io: TcpStream,
        head: Vec<u8>,
    ) -> io::Result<TlsConn> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
        let mut t = TlsConn {
            io,
            conn,
            incoming: head,
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            read_eof: false,
            close_sent: false,
            sni: None,
        };
        loop {
            LAST_SNI.with(|s| s.borrow_mut().take());
            let TlsConn {
                conn,
                incoming,
                plain,
                outgoing,
                ..
            } = &mut t;
            let res = drive(
                conn,
                incoming,
                outgoing,
                &mut |p| plain.extend_from_slice(p),
                None,
            );
            if let Some(sni) = LAST_SNI.with(|s| s.borrow_mut().take()) {
                t.sni = sni;
            }
            let (used, progress) = match res {
                Ok(v) => v,
                Err(e) => {
                    // tell the client why (e.g. certificate_required) before closing
                    queue_alert(&mut t.conn, &mut t.outgoing);
                    let _ = tokio::time::timeout(ALERT_WRITE_TIME, t.write_out()).await;
                    return Err(e);
                }
            };
            t.incoming.drain(..used);
            t.write_out().await?;
            match progress {
                Progress::Traffic => break,
                Progress::PeerClosed | Progress::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed during the TLS handshake",
                    ))
                }
                Progress::Handshaking => {}
            }
            if t.incoming.len() >= MAX_INCOMING {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS handshake message too large",
                ));
            }
            t.io.readable().await?;
            let mut chunk = [0u8; 4096];
            match t.io.try_read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed during the TLS handshake",
                    ))
                }
                Ok(n) => t.incoming.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // the handshake buffers are done with: keep only what is still needed, exactly sized
        t.incoming.shrink_to_fit();
        t.outgoing = Vec::new();
        t.out_pos = 0;
        Ok(t)
    }

    /// SNI, ALPN, version, cipher and client certificate of the finished handshake.
    pub fn facts(&self) -> TlsFacts {
        crate::tls::facts_of(&self.conn, self.sni.clone())
    }

    /// Queues the alert for `e` and writes what the socket takes now (no waiting: the
    /// connection is about to close); returns `e`.
    fn fail(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        queue_alert(&mut self.conn, &mut self.outgoing);
        let _ = self.poll_write_out(cx);
        e
    }

    /// Writes all of `outgoing` (handshake phase).
    async fn write_out(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Writes pending ciphertext; Ready(Ok) once none is left (its buffer then freed).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
            let TlsConn {
                conn,
                incoming,
                plain,
                outgoing,
                ..
            } = &mut *self;
            let (used, progress) = drive(
                conn,
                incoming,
                outgoing,
                &mut |p| plain.extend_from_slice(p),
                Some(&mut |w, o| {
                    if let Some(f) = f.take() {
                        out = Some(f(w, o)?);
                    }
                    Ok(())
                }),
            )?;
            incoming.drain(..used);
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
        // write straight from the scratch buffer; keep only what the socket does not take now
        let mut off = 0;
        if self.outgoing.is_empty() {
            while off < sealed {
                match Pin::new(&mut self.io).poll_write(cx, &scratch[off..sealed]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(k)) => off += k,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        if off < sealed {
            self.outgoing.extend_from_slice(&scratch[off..sealed]);
        }
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Err(e);
        }
        Ok(())
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
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
            if let Poll::Ready(Err(e)) = me.poll_write_out(cx) {
                return Poll::Ready(Err(e));
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
            let TlsConn {
                conn,
                incoming,
                plain,
                outgoing,
                ..
            } = &mut *me;
            let mut sink = |p: &[u8]| {
                let k = p.len().min(buf.remaining());
                buf.put_slice(&p[..k]);
                plain.extend_from_slice(&p[k..]);
            };
            let progress = if incoming.is_empty() {
                // the common case: whole records, decrypted in the stack buffer
                let got = rb.filled_mut();
                let (used, progress) = match drive(conn, got, outgoing, &mut sink, None) {
                    Ok(v) => v,
                    Err(e) => return Poll::Ready(Err(me.fail(cx, e))),
                };
                if used < n {
                    incoming.extend_from_slice(&got[used..n]);
                }
                progress
            } else {
                incoming.extend_from_slice(rb.filled());
                let (used, progress) = match drive(conn, incoming, outgoing, &mut sink, None) {
                    Ok(v) => v,
                    Err(e) => return Poll::Ready(Err(me.fail(cx, e))),
                };
                incoming.drain(..used);
                if incoming.is_empty() {
                    *incoming = Vec::new();
                } else if incoming.len() > MAX_INCOMING {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS record too large",
                    )));
                }
                progress
            };
            if matches!(progress, Progress::PeerClosed | Progress::Closed) {
                me.read_eof = true;
            }
            if buf.filled().len() > before {
                if let Poll::Ready(Err(e)) = me.poll_write_out(cx) {
                    return Poll::Ready(Err(e));
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
        // ciphertext from earlier writes goes first: that is the backpressure
        ready!(me.poll_write_out(cx))?;
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
        ready!(me.poll_write_out(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_write_out(cx))?;
        if !me.close_sent {
            me.close_sent = true;
            let mut alert = [0u8; 64];
            let n = me.with_write_traffic(|w, _| {
                w.queue_close_notify(&mut alert)
                    .map_err(|e| io::Error::other(e.to_string()))
            })?;
            me.outgoing.extend_from_slice(&alert[..n]);
            ready!(me.poll_write_out(cx))?;
        }
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqedge_shared::certs::DevPki;
    use mqedge_shared::tls::{
        certs_from_pem, client_config, key_from_pem, root_store, server_config, ClientAuth,
    };
    use rustls_pki_types::ServerName;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Setup {
        server: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        pki: DevPki,
        client_pem: (String, String),
    }

    fn setup(alpn: &[String]) -> Setup {
        let pki = DevPki::new(&[]).unwrap();
        let (cpem, ckey) = pki.client("device-7").unwrap();
        let ca = certs_from_pem(&pki.ca_pem).unwrap();
        let server = server_config(
            certs_from_pem(&pki.server_pem).unwrap(),
            key_from_pem(&pki.server_key_pem).unwrap(),
            Some(ca.clone()),
            ClientAuth::Required,
            alpn,
        )
        .unwrap();
        let client = client_config(
            ca,
            Some((certs_from_pem(&cpem).unwrap(), key_from_pem(&ckey).unwrap())),
        )
        .unwrap();
        Setup {
            server: prepare(server),
            client,
            pki,
            client_pem: (cpem, ckey),
        }
    }

    /// Accepts one connection and echoes until EOF, then sends close_notify; returns its facts.
    async fn echo_server(l: TcpListener, sc: Arc<ServerConfig>) -> io::Result<TlsFacts> {
        let (tcp, _) = l.accept().await?;
        let mut t = TlsConn::accept(sc, tcp, Vec::new()).await?;
        let facts = t.facts();
        let mut buf = [0u8; 8192];
        loop {
            let n = t.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            t.write_all(&buf[..n]).await?;
        }
        t.shutdown().await?;
        Ok(facts)
    }

    /// An echo server on a fresh 127.0.0.1 port, for one connection.
    async fn start_echo(
        s: &Setup,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<TlsFacts>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (addr, tokio::spawn(echo_server(l, s.server.clone())))
    }

    async fn client(
        cfg: Arc<rustls::ClientConfig>,
        addr: std::net::SocketAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    /// Sends `data` in uneven pieces while reading the echo concurrently; checks it all came back.
    async fn stream_round_trip(c: tokio_rustls::client::TlsStream<TcpStream>, data: Vec<u8>) {
        let (mut r, mut w) = tokio::io::split(c);
        let total = data.len();
        let reader = tokio::spawn(async move {
            let mut got = Vec::with_capacity(total);
            r.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut off = 0;
        let mut step = 1;
        while off < data.len() {
            let end = (off + step).min(data.len());
            w.write_all(&data[off..end]).await.unwrap();
            off = end;
            step = (step * 7 + 13) % 40_000 + 1;
        }
        // our close_notify must reach the server as EOF, and its close_notify must end our read
        w.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "echo differs");
    }

    #[tokio::test]
    async fn echoes_both_ways_with_facts_and_clean_close() {
        let s = setup(&["mqtt".to_string()]);
        let mut ccfg = (*s.client).clone();
        ccfg.alpn_protocols = vec![b"mqtt".to_vec()];
        let (addr, srv) = start_echo(&s).await;
        let c = client(Arc::new(ccfg), addr).await;
        tokio::time::timeout(
            Duration::from_secs(30),
            stream_round_trip(c, payload(3 * 1024 * 1024 + 17)),
        )
        .await
        .unwrap();
        let facts = srv.await.unwrap().unwrap();
        assert_eq!(facts.sni.as_deref(), Some("localhost"));
        assert_eq!(facts.alpn.as_deref(), Some(&b"mqtt"[..]));
        assert_eq!(facts.version, "TLSv1.3");
        assert_eq!(facts.cert.and_then(|c| c.cn).as_deref(), Some("device-7"));
    }

    #[tokio::test]
    async fn tls12_round_trip() {
        let s = setup(&[]);
        let ccfg = rustls::ClientConfig::builder_with_provider(mqedge_shared::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(root_store(certs_from_pem(&s.pki.ca_pem).unwrap()).unwrap())
            .with_client_auth_cert(
                certs_from_pem(&s.client_pem.0).unwrap(),
                key_from_pem(&s.client_pem.1).unwrap(),
            )
            .unwrap();
        let (addr, srv) = start_echo(&s).await;
        let c = client(Arc::new(ccfg), addr).await;
        tokio::time::timeout(
            Duration::from_secs(30),
            stream_round_trip(c, payload(300_001)),
        )
        .await
        .unwrap();
        let facts = srv.await.unwrap().unwrap();
        assert_eq!(facts.version, "TLSv1.2");
        assert_eq!(facts.sni.as_deref(), Some("localhost"));
    }

    #[tokio::test]
    async fn client_key_updates_are_followed() {
        let s = setup(&[]);
        let (addr, srv) = start_echo(&s).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = tokio_rustls::TlsConnector::from(s.client.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let run = async {
            for round in 0..20u32 {
                let msg = payload(100 + round as usize * 997);
                c.write_all(&msg).await.unwrap();
                c.flush().await.unwrap();
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg, "round {round}");
                // rotate the client's keys; the server must follow (and answer with its own)
                c.get_mut().1.refresh_traffic_keys().unwrap();
            }
            c.shutdown().await.unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap();
        srv.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn garbage_and_missing_client_cert_fail_the_handshake() {
        let s = setup(&[]);
        let (addr, srv) = start_echo(&s).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00 plain MQTT to a TLS port")
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), srv)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

        // a client without a certificate is refused by the required client auth
        let (addr, srv) = start_echo(&s).await;
        let anon = client_config(certs_from_pem(&s.pki.ca_pem).unwrap(), None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let c = tokio_rustls::TlsConnector::from(anon)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        // TLS 1.3: the client learns of the refusal on its first read, from the alert
        let mut c = c.expect("TLS 1.3 completes the client's side before the server decides");
        let _ = c.write_all(b"x").await;
        let mut b = [0u8; 8];
        let r = c.read(&mut b).await;
        let msg = format!("{r:?}");
        assert!(
            msg.contains("CertificateRequired"),
            "the client must get the certificate_required alert, got {msg}"
        );
        let err = tokio::time::timeout(Duration::from_secs(5), srv)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_is_an_error_not_a_panic() {
        let s = setup(&[]);
        for garbage in [
            &b"\x17\x03\x03\x00\x20not a sealed record at all, 32 b"[..],
            &b"\x16\x03\x03\x40\x00"[..], // a handshake record header announcing 16 KiB
            &[0xffu8; 300][..],
        ] {
            let (addr, srv) = start_echo(&s).await;
            let c = client(s.client.clone(), addr).await;
            let (mut tcp, _) = c.into_inner();
            tcp.write_all(garbage).await.unwrap();
            let _ = tcp.shutdown().await;
            let r = tokio::time::timeout(Duration::from_secs(5), srv)
                .await
                .expect("the server ends")
                .expect("no panic");
            assert!(r.is_err(), "garbage {garbage:?} was accepted");
        }
    }

    #[tokio::test]
    async fn idle_connection_keeps_no_buffers() {
        let s = setup(&[]);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sc = s.server.clone();
        let srv = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut t = TlsConn::accept(sc, tcp, Vec::new()).await.unwrap();
            let mut buf = [0u8; 64];
            let n = t.read(&mut buf).await.unwrap();
            t.write_all(&buf[..n]).await.unwrap();
            t.flush().await.unwrap();
            (
                t.incoming.capacity(),
                t.plain.capacity(),
                t.outgoing.capacity(),
            )
        });
        let mut c = client(s.client.clone(), addr).await;
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        let caps = tokio::time::timeout(Duration::from_secs(5), srv)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(caps, (0, 0, 0));
    }
}
