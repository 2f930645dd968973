//! The memory budget of a connection, held by size.

use std::mem::size_of;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{establish, ClientInfo, Conn, Live};
use crate::broker::Broker;
use crate::config::Config;
use crate::error::CloseReason;

/// An idle connection costs its task (this state and the main loop's futures) plus the
/// socket: what is optional is boxed (will, client topic aliases, our topic aliases, the
/// retained feed), so the state a connection keeps for its whole life stays within this.
#[test]
fn connection_state_stays_small() {
    assert!(
        size_of::<Live>() <= 256,
        "Live is {} bytes",
        size_of::<Live>()
    );
    assert!(
        size_of::<Conn>() <= 120,
        "Conn is {} bytes",
        size_of::<Conn>()
    );
    assert!(size_of::<CloseReason>() <= 32);
}

/// What the task of an idle, established connection holds, measured on a real one: [`Live`]
/// and the future of [`Live::serve`] (its `select!` over the reader's readiness, the session's
/// bell, the keep-alive `Sleep` and the takeover receiver), with no read or write buffer
/// allocated. Measured (x86_64, debug build, December 2026): `Live` 248 B + `serve` 232 B =
/// 480 B; the budget is 496 B (the whole task future: `listener::tests`). The CONNECT phase's
/// future (1,384 B measured, budget 1,408 B) is boxed by the listener and freed before
/// `serve` starts. ARCHITECTURE.md, "Memory per idle connection", has the rest of an idle
/// connection's bytes.
#[tokio::test]
async fn an_idle_connection_holds_its_budget() {
    let cfg = Config::parse(
        std::path::Path::new("t.toml"),
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n",
    )
    .expect("config");
    let b = Broker::new(cfg).expect("broker");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id "a"
        let connect = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'a',
        ];
        s.write_all(&connect).await.expect("write");
        s
    });
    let (tcp, peer) = l.accept().await.expect("accept");
    let _client = client.await.expect("client");
    let info = ClientInfo {
        addr: peer,
        cert_username: None,
        missing_identity: None,
    };
    let setup = establish(b, tcp, BytesMut::new(), info);
    let setup_size = std::mem::size_of_val(&setup);
    let mut live = tokio::time::timeout(std::time::Duration::from_secs(5), setup)
        .await
        .expect("in time")
        .expect("established");
    assert!(
        setup_size <= 1408,
        "the CONNECT phase is {setup_size} bytes"
    );
    let serve = live.serve();
    let serve_size = std::mem::size_of_val(&serve);
    drop(serve);
    assert!(
        serve_size <= 240,
        "the main loop's future is {serve_size} bytes"
    );
    assert!(size_of::<Option<Live>>() + serve_size <= 496);
}
