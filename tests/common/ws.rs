//! A raw WebSocket client for tests: the Upgrade request with chosen headers, masked frames
//! out, frames in. Real clients (MQTT.js, paho) are driven by the interop tests; this one can
//! also send what they never would (a wrong path, an oversized frame).

use std::io;

use mqedge_shared::ws::frame::{client_frame, op};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Sends the Upgrade request for `path` with `extra` header lines (each ending in `\r\n`) and
/// returns the response head.
pub async fn ws_open<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
    extra: &str,
) -> io::Result<String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            break;
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One masked binary frame carrying `data`.
pub async fn ws_send<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> io::Result<()> {
    s.write_all(&client_frame(op::BINARY, true, [9, 8, 7, 6], data))
        .await
}

/// Reads one (unmasked, server) frame: opcode and payload.
pub async fn ws_recv<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let len = match h[1] & 0x7F {
        126 => s.read_u16().await? as usize,
        127 => s.read_u64().await? as usize,
        n => n as usize,
    };
    let mut p = vec![0; len];
    s.read_exact(&mut p).await?;
    Ok((h[0] & 0x0F, p))
}

/// Opens a WebSocket on `s`, sends a 3.1.1 CONNECT for `client_id` (split over two frames, so
/// the peek must join them) and returns the CONNACK's return code.
pub async fn ws_mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
    extra: &str,
    client_id: &str,
) -> io::Result<u8> {
    let head = ws_open(s, path, extra).await?;
    if !head.starts_with("HTTP/1.1 101 ") || !head.contains("Sec-WebSocket-Protocol: mqtt\r\n") {
        return Err(io::Error::other(format!("handshake answer: {head:?}")));
    }
    let pkt = mqedge_protocol::peek::encode_connect(4, client_id, None, 30);
    let (a, b) = pkt.split_at(pkt.len() / 2);
    ws_send(s, a).await?;
    ws_send(s, b).await?;
    let mut ack = Vec::new();
    while ack.len() < 4 {
        let (opcode, p) = ws_recv(s).await?;
        if opcode != op::BINARY {
            return Err(io::Error::other(format!(
                "frame opcode {opcode} before CONNACK"
            )));
        }
        ack.extend_from_slice(&p);
    }
    Ok(ack[3])
}
