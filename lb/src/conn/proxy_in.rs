//! The PROXY v1/v2 header a trusted L4 balancer in front sends first, on listeners with
//! `proxy_protocol = true`. The parsing is [`mqedge_shared::proxy`] (pure); this is the I/O
//! around it. Its source address becomes the client's.

use tokio::net::TcpStream;

use crate::conn::Reject;

/// Reads a PROXY v1/v2 header byte-exactly enough: whatever was read past it is returned to be
/// replayed in front of the stream.
pub async fn read_proxy_header(
    tcp: &TcpStream,
) -> Result<(mqedge_shared::proxy::ProxyInfo, Vec<u8>), Reject> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match mqedge_shared::proxy::parse(&buf) {
            Ok(Some((info, len))) => return Ok((info, buf.split_off(len))),
            Ok(None) => {}
            Err(e) => return Err(Reject::ProxyHeader(e)),
        }
        if buf.len() > 64 * 1024 {
            return Err(Reject::ProxyHeader(
                mqedge_shared::proxy::ProxyError::Invalid("header too long".into()),
            ));
        }
        tcp.readable().await.map_err(Reject::ClientIo)?;
        let mut chunk = [0u8; 512];
        match tcp.try_read(&mut chunk) {
            Ok(0) => {
                return Err(Reject::ClientIo(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof in PROXY header",
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Reject::ClientIo(e)),
        }
    }
}
