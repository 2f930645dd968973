//! The WebSocket phase of a WS or WSS listener (`[listener.websocket]`), after TLS and before
//! the CONNECT peek: the HTTP Upgrade (path, `Sec-WebSocket-Protocol: mqtt`), the client's
//! address from `X-Forwarded-For` when the immediate peer is a trusted forwarder, then the
//! stream that unwraps frames. The LB terminates WebSocket: backends get plain MQTT behind the
//! usual PROXY header, whose source is the address found here. The protocol itself is
//! `mqedge_shared::ws`, the one implementation the broker's WebSocket listeners use too.

use std::net::SocketAddr;

use mqedge_shared::ws::handshake::client_address;
use mqedge_shared::ws::{AcceptError, WsConfig, WsStream};

use crate::conn::listener::ListenerRt;
use crate::conn::{ClientStream, Reject};

/// Whether `src` may name the client in `X-Forwarded-For` (the per-IP rate limit then waits
/// for that name).
pub fn forwarder_trusted(ws: &WsConfig, src: SocketAddr) -> bool {
    ws.trusted_forwarders().iter().any(|c| c.contains(src.ip()))
}

/// Runs the Upgrade on `s` and wraps it; returns the stream that carries plain MQTT and the
/// client's address (`src`, or the `X-Forwarded-For` one, port 0, from a trusted forwarder).
pub async fn upgrade(
    rt: &ListenerRt,
    ws: &WsConfig,
    mut s: ClientStream,
    src: SocketAddr,
) -> Result<(ClientStream, SocketAddr), Reject> {
    let (req, pre) = mqedge_shared::ws::accept(&mut s, ws)
        .await
        .map_err(|e| match e {
            AcceptError::Refused(h) => Reject::WsHandshake(h),
            AcceptError::Io(e) => Reject::ClientIo(e),
        })?;
    let client = client_address(src.ip(), &req.forwarded_for, ws.trusted_forwarders())
        .map_or(src, |ip| SocketAddr::new(ip, 0));
    let stream = WsStream::new(s, pre, ws.max_frame(), rt.ws_errors());
    Ok((ClientStream::Ws(Box::new(stream)), client))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a WS/WSS connection adds to a plain or TLS one: one boxed stream, its decoder state
    /// and two empty vectors (no buffer while idle); the pump's `ClientStream` does not grow.
    #[test]
    fn the_websocket_state_stays_small() {
        let ws = std::mem::size_of::<WsStream<ClientStream>>();
        let inner = std::mem::size_of::<ClientStream>();
        // 176 measured
        assert!(ws - inner <= 192, "WsStream adds {} bytes", ws - inner);
        assert_eq!(
            inner,
            std::mem::size_of::<mqedge_shared::io::Rewind<tokio::net::TcpStream>>()
        );
        eprintln!(
            "WsStream<ClientStream>: {ws} bytes ({} over the stream)",
            ws - inner
        );
    }
}
