//! One client connection's path, a file per phase, all in the connection's own task:
//! [`accept`] (accept, count, spawn; then the setup phases in order under one
//! `connect_timeout`) → [`proxy_in`] (PROXY header from a trusted balancer in front) → rate
//! limit (`limits.rs`, through `state`) → [`tls`] / [`tls_stream`] (handshake, facts) →
//! [`websocket`] (WS/WSS listeners: Upgrade, `X-Forwarded-For`, unwrap) → [`peek`] (the
//! CONNECT) → [`connect`] (pick, dial with retries, [`proxy_out`] header and replay) → [`pump`]
//! (the byte pump and the closing log line). [`listener`] holds each listener's runtime.
//!
//! This module holds what several phases pass along: [`ClientFacts`], [`ClientStream`],
//! [`Reject`] and the [`ClientSlot`] that keeps the connection counters right.
//!
//! May use `state`, `backend`, `config`, `metrics`, `signal`, `limits`; never `control`.

pub mod accept;
pub mod connect;
pub mod listener;
pub mod peek;
pub mod proxy_in;
pub mod proxy_out;
pub mod pump;
pub mod shape;
pub mod tls;
pub mod tls_stream;
pub mod websocket;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mqedge_shared::io::Rewind;
use mqedge_shared::ws::WsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::conn::listener::ListenerRt;
use crate::conn::tls::TlsFacts;
use crate::conn::tls_stream::TlsConn;
use crate::state::Lb;

/// What the client side told us before forwarding.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// Connection id (logs, UNIQUE_ID TLV).
    pub conn_id: String,
    /// Real client address (from an upstream PROXY header when there is one).
    pub src: SocketAddr,
    /// Address the client connected to.
    pub dst: SocketAddr,
    /// TLS facts for TLS listeners.
    pub tls: Option<TlsFacts>,
}

/// Why a connection ended before forwarding; the label is the metric's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// connect_timeout elapsed.
    #[error("timed out before a complete CONNECT")]
    Timeout,
    /// Bad or missing upstream PROXY header.
    #[error("{0}")]
    ProxyHeader(mqedge_shared::proxy::ProxyError),
    /// TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// Bad first packet.
    #[error("{0}")]
    Peek(mqedge_protocol::peek::PeekError),
    /// A PROXY header from an address outside the listener's `trusted_proxies`.
    #[error("refused: PROXY header from an address outside trusted_proxies")]
    UntrustedProxy,
    /// Over `connect_rate_per_ip`.
    #[error("over the per-IP connect rate")]
    RateLimited,
    /// Client closed or errored before sending a full CONNECT.
    #[error("client closed before a complete CONNECT: {0}")]
    ClientIo(std::io::Error),
    /// The WebSocket Upgrade request was refused (answered with an HTTP status).
    #[error("{0}")]
    WsHandshake(mqedge_shared::ws::handshake::HandshakeError),
    /// A WebSocket frame before the CONNECT was refused (closed with a close code).
    #[error("{0}")]
    WsFrame(mqedge_shared::ws::frame::FrameError),
}

impl Reject {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Timeout => "timeout",
            Reject::ProxyHeader(_) => "proxy_header",
            Reject::UntrustedProxy => "untrusted_proxy",
            Reject::Tls(e) => tls::failure_reason(e),
            Reject::Peek(e) => e.label(),
            Reject::ClientIo(_) => "client_io",
            Reject::RateLimited => "rate_limited",
            Reject::WsHandshake(_) => "ws_handshake",
            Reject::WsFrame(_) => "ws_frame",
        }
    }

    /// A read error of the peek, which on a WebSocket listener may be a refused frame.
    pub fn from_read(e: std::io::Error) -> Reject {
        match e
            .get_ref()
            .and_then(|i| i.downcast_ref::<mqedge_shared::ws::frame::FrameError>())
        {
            Some(f) => Reject::WsFrame(*f),
            None => Reject::ClientIo(e),
        }
    }
}

/// One open client connection in the counters: `max_connections` (all listeners) and the
/// listener's `connections_active`. Taken in the accept loop, held by the connection's task,
/// given back on drop however the task ends.
pub struct ClientSlot {
    lb: Arc<Lb>,
    rt: Arc<ListenerRt>,
}

impl ClientSlot {
    /// A slot for a new connection; `None` when `max_connections` are open already.
    pub fn take(lb: &Arc<Lb>, rt: &Arc<ListenerRt>) -> Option<ClientSlot> {
        if !lb.take_client_slot() {
            return None;
        }
        rt.active().inc();
        Some(ClientSlot {
            lb: lb.clone(),
            rt: rt.clone(),
        })
    }

    /// The shared state, for the connection's phases.
    #[inline]
    pub fn lb(&self) -> &Arc<Lb> {
        &self.lb
    }

    /// The connection's listener.
    #[inline]
    pub fn listener(&self) -> &Arc<ListenerRt> {
        &self.rt
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.rt.active().dec();
        self.lb.release_client_slot();
    }
}

/// The client side after its prelude: plain TCP or TLS (both with replayable read-ahead), or
/// WebSocket over either.
pub enum ClientStream {
    /// Plain TCP.
    Plain(Rewind<TcpStream>),
    /// TLS-terminated.
    Tls(Box<TlsConn>),
    /// WebSocket-terminated, over plain TCP (WS) or TLS (WSS): reads and writes plain MQTT.
    Ws(Box<WsStream<ClientStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
