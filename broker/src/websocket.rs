//! MQTT over WebSocket at the broker (`[[listener]]` with a `websocket` table): after the
//! PROXY header, the Upgrade (`mqedge_shared::ws`, the LB's implementation too), then a
//! bridge. The connection code reads and writes a `TcpStream` directly (its idle budget rests
//! on the socket's own readiness), so rather than make it generic the bridge hands it the far
//! end of a loopback TCP pair and pumps frames ↔ MQTT between the client and the near end.
//! The cost, per WebSocket client only: a second socket pair and the pump's two 8 KiB copy
//! buffers. A client behind the LB's WS listeners never comes here: the LB unwraps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mqedge_shared::io::Rewind;
use mqedge_shared::ws::frame::FrameError;
use mqedge_shared::ws::handshake::client_address;
use mqedge_shared::ws::{AcceptError, FrameErrors, WsConfig, WsStream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::broker::Broker;
use crate::error::CloseReason;

/// Time allowed for the Upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once one direction of the bridge has ended, how long the other may take to finish.
const LINGER: Duration = Duration::from_secs(5);

/// One WebSocket listener's loopback pair maker.
pub struct Bridge {
    /// On 127.0.0.1, port 0: the far ends come from here.
    listener: TcpListener,
    /// One pair at a time, so each connect is matched with its own accept.
    pairing: Mutex<()>,
}

impl Bridge {
    /// Binds the loopback listener.
    pub async fn bind() -> std::io::Result<Bridge> {
        Ok(Bridge {
            listener: TcpListener::bind("127.0.0.1:0").await?,
            pairing: Mutex::new(()),
        })
    }

    /// A connected pair (near, far). Another local process could connect to the loopback port
    /// too: an accepted socket that is not the other end of our connect is dropped.
    async fn pair(&self) -> std::io::Result<(TcpStream, TcpStream)> {
        let _one = self.pairing.lock().await;
        let near = TcpStream::connect(self.listener.local_addr()?).await?;
        let me = near.local_addr()?;
        tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let (far, from) = self.listener.accept().await?;
                if from == me {
                    return Ok((near, far));
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

/// Counts refused frames in `rejected_total{reason="ws_frame"}`.
struct Count(Arc<Broker>);

impl FrameErrors for Count {
    fn frame_error(&self, e: FrameError) {
        CloseReason::WsFrame(e).count(self.0.metrics());
        tracing::info!(reason = e.label(), "closing a WebSocket connection: {e}");
    }
}

/// The Upgrade on `tcp` (after `head`, the bytes read past a PROXY header), then the bridge:
/// returns the far end for the MQTT connection and the client's address (`peer`, or
/// `X-Forwarded-For` from a trusted forwarder). `None` when the client was refused (counted).
pub async fn accept(
    ws: &WsConfig,
    bridge: &Bridge,
    b: &Arc<Broker>,
    tcp: TcpStream,
    head: Vec<u8>,
    peer: SocketAddr,
) -> Option<(TcpStream, SocketAddr)> {
    let mut s = Rewind::new(head, tcp);
    let (req, pre) = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        mqedge_shared::ws::accept(&mut s, ws),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(AcceptError::Refused(e))) => {
            let why = CloseReason::WsHandshake;
            why.count(b.metrics());
            tracing::info!(peer = %peer, error = %e, "{why}");
            return None;
        }
        Ok(Err(AcceptError::Io(_))) | Err(_) => return None,
    };
    let client = client_address(peer.ip(), &req.forwarded_for, ws.trusted_forwarders())
        .map_or(peer, |ip| SocketAddr::new(ip, 0));
    let (near, far) = match bridge.pair().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "WebSocket bridge: no loopback pair");
            return None;
        }
    };
    let errors: Arc<dyn FrameErrors> = Arc::new(Count(b.clone()));
    let stream = WsStream::new(s, pre, ws.max_frame(), errors);
    tokio::spawn(pump(stream, near));
    Some((far, client))
}

/// Frames ↔ MQTT until both directions end (or one has ended for [`LINGER`]).
async fn pump(ws: WsStream<Rewind<TcpStream>>, near: TcpStream) {
    let (mut cr, mut cw) = tokio::io::split(ws);
    let (mut nr, mut nw) = near.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut nw).await;
        let _ = nw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut nr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(LINGER, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(LINGER, up).await; }
    }
}
