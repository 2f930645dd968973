//! The PROXY v1/v2 header a trusted L4 balancer in front sends first, on listeners with
//! `proxy_protocol = true`. The parsing is [`mqedge_shared::proxy`] (pure); this is the I/O
//! around it. As on the broker, the header is read and then believed only from a TCP peer in
//! the listener's `trusted_proxies`; its source address becomes the client's.

use std::net::SocketAddr;

use mqedge_shared::config::Cidr;
use tokio::net::TcpStream;

use crate::conn::Reject;

/// Reads a PROXY v1/v2 header from `peer` byte-exactly enough: whatever was read past it is
/// returned to be replayed in front of the stream. A header from outside `trusted` is refused.
pub async fn read_proxy_header(
    tcp: &TcpStream,
    peer: SocketAddr,
    trusted: &[Cidr],
) -> Result<(mqedge_shared::proxy::ProxyInfo, Vec<u8>), Reject> {
    use mqedge_shared::proxy::{read_header, ProxyError, ReadError};
    match read_header(tcp).await {
        Ok((Some(_), _)) if !trusted.iter().any(|c| c.contains(peer.ip())) => {
            Err(Reject::UntrustedProxy)
        }
        Ok((Some(info), rest)) => Ok((info, rest)),
        Ok((None, _)) => Err(Reject::ProxyHeader(ProxyError::Missing)),
        Err(ReadError::Header(e)) => Err(Reject::ProxyHeader(e)),
        Err(ReadError::Io(e)) => Err(Reject::ClientIo(e)),
    }
}
