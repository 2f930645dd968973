//! The load generator's MQTT client: a TCP or TLS stream bound to a chosen 127.0.0.x source
//! address, CONNECT/CONNACK and SUBSCRIBE/SUBACK done in order, then read and write halves with
//! their buffers handed to the scenario's own event loop. Packets go through the broker's codec
//! (`mqedge_protocol`), so the bench speaks exactly what the broker parses.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqedge_protocol::reason;
use mqedge_protocol::{
    decode, encode, Connect, ConnectProperties, Disconnect, Packet, QoS, RetainHandling, Subscribe,
    SubscribeFilter, Version,
};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The largest packet we accept from the server (the MQTT maximum).
const MAX_PACKET: usize = 268_435_460;

/// Where and how every client of a run connects.
pub struct Endpoint {
    /// The server.
    pub addr: SocketAddr,
    /// TLS settings; `None` = plain MQTT.
    pub tls: Option<TlsTarget>,
    /// Source addresses, used round robin by client index (empty: the kernel picks).
    pub sources: Vec<IpAddr>,
    /// MQTT 3.1.1 or 5.0.
    pub version: Version,
    /// Keep Alive sent in CONNECT (seconds); clients ping at this interval.
    pub keep_alive: u16,
    /// Connect with a persistent session (clean start off; v5: session expiry 1 h), so the
    /// server stores what it queues for the client.
    pub persistent: bool,
    /// User Name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// TCP connect + TLS handshake + CONNACK must finish within it.
    pub connect_timeout: Duration,
    /// TLS handshakes of the run that resumed a session (`--resume`).
    pub resumed: std::sync::atomic::AtomicU64,
}

/// A TLS client config with the name to verify the server against.
pub struct TlsTarget {
    /// rustls config (CA or `--insecure`, optional client certificate, session resumption only
    /// with `--resume`),
    /// built once and shared by every connection.
    pub config: Arc<rustls::ClientConfig>,
    /// SNI and verification name.
    pub server_name: ServerName<'static>,
    /// `--resume`: one config per client index, each with a session store of its own (one
    /// device, one ticket), made on first use; empty without `--resume`.
    pub per_client: Vec<std::sync::OnceLock<Arc<rustls::ClientConfig>>>,
}

impl TlsTarget {
    /// The config client `index` connects with.
    fn config_for(&self, index: usize) -> Arc<rustls::ClientConfig> {
        if self.per_client.is_empty() {
            return self.config.clone();
        }
        self.per_client[index % self.per_client.len()]
            .get_or_init(|| {
                let mut c = (*self.config).clone();
                c.resumption = rustls::client::Resumption::in_memory_sessions(1);
                Arc::new(c)
            })
            .clone()
    }
}

/// Why a client could not connect or lost its connection. Displayed as the one line the bench
/// prints before exiting 2.
#[derive(Debug)]
pub enum ClientError {
    /// Binding the source address failed.
    Bind { src: IpAddr, source: io::Error },
    /// The TCP connect failed (refused, unreachable, ...).
    Connect { addr: SocketAddr, source: io::Error },
    /// The TLS handshake failed.
    Tls { addr: SocketAddr, source: io::Error },
    /// The server answered CONNECT with a failure code.
    Refused { addr: SocketAddr, code: u8 },
    /// A step did not finish in time.
    Timeout {
        addr: SocketAddr,
        what: &'static str,
    },
    /// The server closed the connection.
    Closed { addr: SocketAddr },
    /// The server sent something this client cannot accept.
    Protocol { addr: SocketAddr, what: String },
    /// Reading or writing failed.
    Io { addr: SocketAddr, source: io::Error },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Bind { src, source } => {
                write!(f, "cannot bind source address {src}: {}", io_msg(source))
            }
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {}", io_msg(source))
            }
            ClientError::Tls { addr, source } => {
                write!(f, "TLS handshake with {addr} failed: {}", io_msg(source))
            }
            ClientError::Refused { addr, code } => write!(
                f,
                "{addr} refused the connection: CONNACK reason 0x{code:02X} ({})",
                reason::connack_name(*code).unwrap_or("refused")
            ),
            ClientError::Timeout { addr, what } => write!(f, "{addr}: timed out {what}"),
            ClientError::Closed { addr } => write!(f, "{addr} closed the connection"),
            ClientError::Protocol { addr, what } => write!(f, "{addr}: {what}"),
            ClientError::Io { addr, source } => write!(f, "{addr}: {}", io_msg(source)),
        }
    }
}

impl std::error::Error for ClientError {}

/// An I/O error as a person reads it: "Connection refused", without "(os error 111)".
pub fn io_msg(e: &io::Error) -> String {
    strip_os_error(&e.to_string())
}

/// Drops every " (os error N)" from a message.
pub fn strip_os_error(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" (os error ") {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find(')') {
            Some(j) => &rest[i + j + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// A plain or TLS client stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connected MQTT client. The fields are public so an event loop can `select!` over a read
/// into `rbuf` and a write from `wbuf` at the same time (disjoint borrows).
pub struct Conn {
    /// Read half.
    pub rd: ReadHalf<Stream>,
    /// Write half.
    pub wr: WriteHalf<Stream>,
    /// Bytes read and not yet decoded.
    pub rbuf: BytesMut,
    /// Encoded packets not yet written.
    pub wbuf: BytesMut,
    /// The negotiated protocol version.
    pub version: Version,
    /// The server's Receive Maximum (v5 CONNACK; 65,535 when absent).
    pub server_receive_max: u16,
    /// The server address (for error messages).
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Opens client number `index` (which picks its source address): TCP connect, TLS
    /// handshake, CONNECT (clean start), CONNACK — all within `connect_timeout`.
    pub async fn connect(&self, index: usize, client_id: &str) -> Result<Conn, ClientError> {
        let addr = self.addr;
        match tokio::time::timeout(self.connect_timeout, self.connect_inner(index, client_id)).await
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr,
                what: "connecting (TCP, TLS, CONNACK)",
            }),
        }
    }

    async fn connect_inner(&self, index: usize, client_id: &str) -> Result<Conn, ClientError> {
        let addr = self.addr;
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| ClientError::Connect { addr, source })?;
        if !self.sources.is_empty() {
            let src = self.sources[index % self.sources.len()];
            sock.bind(SocketAddr::new(src, 0))
                .map_err(|source| ClientError::Bind { src, source })?;
        }
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Tcp(tcp),
            Some(t) => {
                let tls = TlsConnector::from(t.config_for(index))
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|source| ClientError::Tls { addr, source })?;
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    self.resumed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Stream::Tls(Box::new(tls))
            }
        };
        let (rd, wr) = tokio::io::split(stream);
        let mut c = Conn {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(256),
            version: self.version,
            server_receive_max: u16::MAX,
            addr,
        };
        let connect = Packet::Connect(Box::new(Connect {
            version: self.version,
            clean_start: !self.persistent,
            keep_alive: self.keep_alive,
            client_id: client_id.to_string(),
            will: None,
            username: self.username.clone(),
            password: self.password.clone(),
            properties: ConnectProperties {
                session_expiry_interval: (self.persistent && self.version == Version::V5)
                    .then_some(3600),
                ..ConnectProperties::default()
            },
        }));
        // With TLS 1.3 a refused client certificate shows only now, as an alert on the first
        // read: still a TLS failure for the person reading the error.
        let tls_err = |e: ClientError| match e {
            ClientError::Io { addr, source }
                if self.tls.is_some() && source.kind() == io::ErrorKind::InvalidData =>
            {
                ClientError::Tls { addr, source }
            }
            e => e,
        };
        c.send(&connect).await.map_err(tls_err)?;
        match c.recv().await.map_err(tls_err)? {
            Packet::ConnAck(a) if a.code != 0 => Err(ClientError::Refused { addr, code: a.code }),
            Packet::ConnAck(a) => {
                c.server_receive_max = a.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(c)
            }
            Packet::Auth(_) => Err(ClientError::Protocol {
                addr,
                what: "the server asks for enhanced authentication (AUTH)".into(),
            }),
            other => Err(ClientError::Protocol {
                addr,
                what: format!("expected CONNACK, got {}", kind(&other)),
            }),
        }
    }
}

impl Conn {
    /// Encodes `p` and writes everything buffered.
    pub async fn send(&mut self, p: &Packet) -> Result<(), ClientError> {
        encode(p, self.version, &mut self.wbuf);
        self.flush().await
    }

    /// Writes everything buffered in `wbuf`.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let addr = self.addr;
        self.wr
            .write_all_buf(&mut self.wbuf)
            .await
            .map_err(|source| ClientError::Io { addr, source })
    }

    /// The next complete packet already in `rbuf`, if any.
    pub fn decode(&mut self) -> Result<Option<Packet>, ClientError> {
        decode(&mut self.rbuf, Some(self.version), MAX_PACKET).map_err(|e| ClientError::Protocol {
            addr: self.addr,
            what: format!("bad packet from the server: {e}"),
        })
    }

    /// Turns the result of a read into `rbuf` into an error when the peer closed or failed.
    pub fn check_read(&self, r: io::Result<usize>) -> Result<(), ClientError> {
        match r {
            Ok(0) => Err(ClientError::Closed { addr: self.addr }),
            Ok(_) => Ok(()),
            Err(source) => Err(ClientError::Io {
                addr: self.addr,
                source,
            }),
        }
    }

    /// Reads until a whole packet is decoded.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = self.decode()? {
                return Ok(p);
            }
            let r = self.rd.read_buf(&mut self.rbuf).await;
            self.check_read(r)?;
        }
    }

    /// Subscribes to one filter and waits for its SUBACK; a failure code is an error.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![SubscribeFilter {
                filter: filter.to_string(),
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            }],
        });
        self.send(&sub).await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(a) if a.packet_id == 1 => {
                    return match a.codes.first() {
                        Some(&c) if c < 0x80 => Ok(()),
                        code => Err(ClientError::Protocol {
                            addr: self.addr,
                            what: format!(
                                "subscription to {filter:?} refused (SUBACK 0x{:02X})",
                                code.copied().unwrap_or(0x80)
                            ),
                        }),
                    };
                }
                Packet::PingResp | Packet::Publish(_) => continue,
                other => {
                    return Err(ClientError::Protocol {
                        addr: self.addr,
                        what: format!("expected SUBACK, got {}", kind(&other)),
                    })
                }
            }
        }
    }

    /// Sends DISCONNECT and closes the stream (TLS close_notify included); errors are moot.
    /// Over TLS the DISCONNECT record and the close_notify leave in one write: a connect storm
    /// measures the server, and a second send per connection was the client's own cost.
    pub async fn close(self) {
        let Conn {
            rd,
            wr,
            mut wbuf,
            version,
            ..
        } = self;
        encode(
            &Packet::Disconnect(Disconnect::default()),
            version,
            &mut wbuf,
        );
        let mut s = rd.unsplit(wr);
        let closing = async {
            if let Stream::Tls(t) = &mut s {
                // into rustls' send buffer; the shutdown below writes it with the close_notify
                if std::io::Write::write_all(&mut t.get_mut().1.writer(), &wbuf).is_ok() {
                    wbuf.clear();
                }
            }
            let _ = s.write_all_buf(&mut wbuf).await;
            let _ = s.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    }
}

/// A packet's name, for error messages.
pub fn kind(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}

/// Parses `--src`: comma-separated addresses and ranges (`127.0.0.1-127.0.0.20`, or
/// `127.0.0.1-20` for the last octet), expanded in order; at most 65,536 addresses.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    const MAX: u128 = 65_536;
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: &str| format!("--src {part:?}: {why}");
        let Some((a, b)) = part.split_once('-') else {
            out.push(
                part.parse::<IpAddr>()
                    .map_err(|_| bad("not an IP address"))?,
            );
            continue;
        };
        let a: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| bad("range start is not an IP address"))?;
        let b: IpAddr = match (b.trim().parse::<IpAddr>(), b.trim().parse::<u8>(), a) {
            (Ok(ip), _, _) => ip,
            (_, Ok(last), IpAddr::V4(v4)) => {
                let [x, y, z, _] = v4.octets();
                IpAddr::from([x, y, z, last])
            }
            _ => return Err(bad("range end is not an IP address")),
        };
        let (lo, hi) = match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
            _ => return Err(bad("mixes IPv4 and IPv6")),
        };
        if hi < lo {
            return Err(bad("range end is before its start"));
        }
        if hi - lo + 1 + out.len() as u128 > MAX {
            return Err(bad("more than 65536 addresses"));
        }
        for n in lo..=hi {
            out.push(match a {
                IpAddr::V4(_) => IpAddr::from(u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()),
                IpAddr::V6(_) => IpAddr::from(n.to_be_bytes()),
            });
        }
    }
    if out.is_empty() {
        return Err("--src: no address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_expand_ranges_in_order() {
        let v = parse_sources("127.0.0.1-127.0.0.3,127.0.1.9").unwrap();
        let s: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.1.9"]);
        assert_eq!(parse_sources("127.0.0.1-20").unwrap().len(), 20);
        assert_eq!(parse_sources("::1").unwrap().len(), 1);
        assert!(parse_sources("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_sources("127.0.0.1-::1").is_err());
        assert!(parse_sources("10.0.0.0-10.1.0.0").is_err());
        assert!(parse_sources("localhost").is_err());
        assert!(parse_sources("").is_err());
    }

    #[test]
    fn io_messages_drop_the_os_error_number() {
        let e = io::Error::from_raw_os_error(111);
        assert_eq!(io_msg(&e), "Connection refused");
        assert_eq!(
            strip_os_error("a: x (os error 2): b (os error 3)"),
            "a: x: b"
        );
    }
}
