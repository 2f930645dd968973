//! The server handshake: rustls over the socket until it is ready for application data, with
//! the client's SNI captured on the way (rustls' unbuffered server connection does not keep it).
//! On a failure rustls' alert (e.g. `certificate_required`) is sent before the error returns.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::conn::tls::{facts_of, TlsFacts};

use super::lean::{take_captured, SecretCapture};
use super::{tls_err, Progress, Session, TlsConn, MAX_INCOMING};

/// How long a failing handshake may spend sending its alert.
const ALERT_WRITE_TIME: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
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
    // the keys move out of rustls after a TLS 1.3 handshake (`lean.rs`)
    c.enable_secret_extraction = true;
    c.key_log = Arc::new(SecretCapture(c.key_log.clone()));
    Arc::new(c)
}

impl TlsConn {
    /// Runs the server handshake. `head` holds bytes already read from `io` (after a PROXY
    /// header). Application data that arrives with the client's last flight is kept for reading.
    pub async fn accept(
        config: Arc<ServerConfig>,
        io: TcpStream,
        head: Vec<u8>,
    ) -> io::Result<TlsConn> {
        let lean = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
        let mut t = TlsConn {
            io,
            session: Session::Full(Box::new(conn), None),
            incoming: head,
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            read_eof: false,
            close_sent: false,
            hold_out: false,
            sni: None,
        };
        loop {
            LAST_SNI.with(|s| s.borrow_mut().take());
            take_captured();
            let res = t.drive_incoming(None);
            if let Some(sni) = LAST_SNI.with(|s| s.borrow_mut().take()) {
                t.sni = sni;
            }
            if let (Some(secrets), Session::Full(_, slot), true) =
                (take_captured(), &mut t.session, lean)
            {
                *slot = Some(secrets);
            }
            let progress = match res {
                Ok(p) => p,
                Err(e) => {
                    // tell the client why (e.g. certificate_required) before closing
                    t.queue_alert();
                    let _ = tokio::time::timeout(ALERT_WRITE_TIME, t.write_out()).await;
                    return Err(e);
                }
            };
            if progress == Progress::Traffic && t.is_tls13() && !t.outgoing.is_empty() {
                // TLS 1.3: all rustls queued with the client's Finished is session tickets; they
                // wait for the first application data and go out in its write (one send, one
                // wake-up of the client, instead of two)
                t.hold_out = true;
                break;
            }
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
            t.read_handshake_bytes().await?;
        }
        // the handshake buffers are done with: keep only what is still needed, exactly sized
        t.incoming.shrink_to_fit();
        if t.hold_out {
            t.outgoing.shrink_to_fit();
        } else {
            t.outgoing = Vec::new();
            t.out_pos = 0;
        }
        Ok(t)
    }

    /// Reads what the socket has of the client's next handshake flight into `incoming`.
    async fn read_handshake_bytes(&mut self) -> io::Result<()> {
        if self.incoming.len() >= MAX_INCOMING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS handshake message too large",
            ));
        }
        // `AsyncRead` rather than `readable()` + `try_read`: a short read clears the socket's
        // readiness, so the next read (the client's next flight, or the byte pump's first)
        // waits for epoll instead of costing a `recv` that finds nothing
        let mut chunk = [0u8; 4096];
        match self.io.read(&mut chunk).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the TLS handshake",
            )),
            n => {
                self.incoming.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// A TLS 1.3 connection (rustls' state, before the first read or write).
    fn is_tls13(&self) -> bool {
        matches!(&self.session, Session::Full(c, _)
            if c.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
    }

    /// Writes all of `outgoing` (handshake phase).
    async fn write_out(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// SNI, ALPN, version, cipher and client certificate of the finished handshake.
    pub fn facts(&self) -> TlsFacts {
        match &self.session {
            Session::Full(c, _) => facts_of(c, self.sni.clone()),
            // only before the first read or write: `accept.rs` takes them right away
            _ => TlsFacts::default(),
        }
    }
}
