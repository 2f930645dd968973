//! A TLS server stream over rustls' unbuffered API, so that an idle connection holds no buffers.
//!
//! `tokio_rustls` keeps a 4 KiB read buffer inside every connection for its whole life (rustls'
//! deframer buffer), which was a third of the LB's memory per idle TLS connection. Here the
//! caller's buffers are used instead: a read lands in a stack buffer and is decrypted there;
//! only bytes that cannot be handed on yet (a partial record, plaintext beyond what the reader
//! asked for, ciphertext the socket did not take) are kept on the heap, and those copies are
//! freed as soon as they drain — the same rule as the plain byte pump in `conn/pump.rs`.
//!
//! rustls does the handshake (and all of TLS 1.2); this module moves bytes between the socket
//! and rustls: [`drive`] here runs rustls over a buffer, `handshake.rs` runs the server
//! handshake, `traffic.rs` reads and writes application data. After a TLS 1.3 handshake the
//! first read or write replaces rustls' connection by `lean.rs`' bare record keys (3.7 KiB per
//! idle connection instead of 6.1).

use std::io;

use rustls::crypto::tls13::OkmBlock;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use tokio::net::TcpStream;

/// Largest TLS record on the wire (16 KiB of payload plus header, content type, padding and tag
/// allowance); a read of this size can always complete a record that has begun.
const READ_CHUNK: usize = 16 * 1024 + 5 + 256;
/// The most unprocessed TLS bytes held for one connection: a handshake message may span records
/// (rustls caps those at 64 KiB), application records are at most `READ_CHUNK`.
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;

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

/// Who protects the records: rustls' connection during the handshake (and for a TLS 1.2
/// connection's whole life), [`lean::Records`] once a TLS 1.3 handshake is done.
enum Session {
    /// With the traffic secrets once rustls derived them (TLS 1.3, `lean::SecretCapture`).
    Full(Box<UnbufferedServerConnection>, Option<Box<[OkmBlock; 2]>>),
    Lean(Box<lean::Records>),
    /// Only while the one becomes the other.
    Gone,
}

/// A server-side TLS connection over a TCP stream; see the module docs.
pub struct TlsConn {
    io: TcpStream,
    session: Session,
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
    /// `outgoing` holds a TLS 1.3 handshake's session tickets, sent with the first write
    /// (`handshake.rs`); reads leave them there.
    hold_out: bool,
    sni: Option<String>,
}

pub mod handshake;
mod lean;
#[cfg(test)]
mod tests;
mod traffic;

/// Opens the records at the front of `buf` with whichever of rustls or [`lean::Records`]
/// holds the keys (`at_write` is rustls' only: the lean write path does not need it).
fn open(
    session: &mut Session,
    buf: &mut [u8],
    outgoing: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]),
    at_write: Option<AtWrite<'_>>,
) -> io::Result<(usize, Progress)> {
    match session {
        Session::Full(conn, _) => drive(conn, buf, outgoing, sink, at_write),
        Session::Lean(r) => r.open(buf, outgoing, sink),
        Session::Gone => Err(io::Error::other("TLS connection state lost")),
    }
}

impl TlsConn {
    /// Runs [`drive`] over the kept `incoming` bytes, decrypted data going to `plain`, and drops
    /// the bytes rustls is done with.
    fn drive_incoming(&mut self, at_write: Option<AtWrite<'_>>) -> io::Result<Progress> {
        let TlsConn {
            session,
            incoming,
            plain,
            outgoing,
            ..
        } = self;
        let (used, progress) = open(
            session,
            incoming,
            outgoing,
            &mut |p| plain.extend_from_slice(p),
            at_write,
        )?;
        incoming.drain(..used);
        Ok(progress)
    }

    /// Replaces rustls' connection by [`lean::Records`] once a TLS 1.3 handshake is done
    /// (called on the first read or write after it, so `facts()` can still read rustls').
    fn lean_up(&mut self) -> io::Result<()> {
        if !matches!(&self.session, Session::Full(c, Some(_)) if lean::Records::fits(c)) {
            return Ok(());
        }
        if let Session::Full(c, Some(secrets)) = std::mem::replace(&mut self.session, Session::Gone)
        {
            self.session = Session::Lean(Box::new(lean::Records::from_conn(*c, &secrets)?));
        }
        Ok(())
    }

    /// After a failure: the alert that explains it goes to `outgoing` (once).
    fn queue_alert(&mut self) {
        match &mut self.session {
            Session::Full(c, _) => queue_alert(c, &mut self.outgoing),
            Session::Lean(r) => r.queue_alert(&mut self.outgoing),
            Session::Gone => {}
        }
    }
}
