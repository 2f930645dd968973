use super::*;
use crate::ws::frame::client_frame;
use crate::ws::MAX_REQUEST;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Count(AtomicUsize);
impl FrameErrors for Count {
    fn frame_error(&self, _e: FrameError) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

const M: [u8; 4] = [1, 2, 3, 4];

const REQUEST: &str =
    "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Protocol: mqtt\r\n\r\n";

/// Reads one server frame (unmasked): opcode and payload.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.unwrap();
    let len = match h[1] & 0x7F {
        126 => r.read_u16().await.unwrap() as usize,
        127 => r.read_u64().await.unwrap() as usize,
        n => n as usize,
    };
    let mut p = vec![0; len];
    r.read_exact(&mut p).await.unwrap();
    (h[0] & 0x0F, p)
}

#[tokio::test]
async fn handshake_then_mqtt_both_ways_with_ping_and_close() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let mut wire = REQUEST.as_bytes().to_vec();
    // pipelined right behind the request
    wire.extend(client_frame(op::BINARY, true, M, b"\x10\x02ab"));
    client.write_all(&wire).await.unwrap();
    let (req, pre) = handshake(&mut server, &WsConfig::default()).await.unwrap();
    assert_eq!(req.protocol, Some("mqtt"));
    let count = Arc::new(Count::default());
    let mut ws = WsStream::new(server, pre, 1024, count.clone());
    let mut head = vec![0u8; 256];
    let mut got = 0;
    while got < 4 {
        got += ws.read(&mut head[got..]).await.unwrap();
    }
    assert_eq!(&head[..4], b"\x10\x02ab");
    // the 101 arrived first
    let mut answer = vec![0u8; 4096];
    let n = client.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    // server → client: binary frames
    ws.write_all(b"\x20\x02\x00\x00").await.unwrap();
    ws.flush().await.unwrap();
    assert_eq!(
        read_frame(&mut client).await,
        (op::BINARY, b"\x20\x02\x00\x00".to_vec())
    );
    // ping → pong, then close → close reply and EOF
    client
        .write_all(&client_frame(op::PING, true, M, b"p"))
        .await
        .unwrap();
    client
        .write_all(&client_frame(op::CLOSE, true, M, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    ws.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(read_frame(&mut client).await, (op::PONG, b"p".to_vec()));
    assert_eq!(
        read_frame(&mut client).await,
        (op::CLOSE, 1000u16.to_be_bytes().to_vec())
    );
    assert_eq!(count.0.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_oversized_frame_is_counted_and_closed_with_1009() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let count = Arc::new(Count::default());
    let mut ws = WsStream::new(server, Vec::new(), 1024, count.clone());
    client
        .write_all(&client_frame(op::BINARY, true, M, &[0; 5000]))
        .await
        .unwrap();
    let mut b = [0u8; 64];
    let e = ws.read(&mut b).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    assert_eq!(
        read_frame(&mut client).await,
        (op::CLOSE, 1009u16.to_be_bytes().to_vec())
    );
}

#[tokio::test]
async fn a_bad_request_is_answered_with_its_status() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client
        .write_all(REQUEST.replace("/mqtt", "/x").as_bytes())
        .await
        .unwrap();
    let e = handshake(&mut server, &WsConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, AcceptError::Refused(HandshakeError::Path(_))));
    drop(server);
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    // a request that never ends is cut at the limit
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&[b'a'; MAX_REQUEST + 10]).await.unwrap();
    let e = handshake(&mut server, &WsConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        AcceptError::Refused(HandshakeError::TooLarge(_))
    ));
}
