//! How the cluster reaches its peers and how fast its timers run ([`Wiring`]): in production
//! UDP gossip and a TCP node channel on `[cluster] bind` with the documented timings; in tests
//! a [`MemoryNetwork`] and millisecond timers, so partitions, pauses and kills run as unit
//! tests. The rest of the cluster sees only [`Listener`] and the dial in [`super::peer`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use super::memory::{MemoryListener, MemoryNetwork};
use super::{ClusterError, GOSSIP_INTERVAL, HEARTBEAT, HEARTBEAT_DEADLINE};

/// Where gossip and the node channel go.
#[derive(Clone, Default)]
pub enum Transport {
    /// UDP gossip and a TCP node channel on `[cluster] bind` (optionally mutual TLS).
    #[default]
    Net,
    /// An in-process network (plain: the memory transport carries no TLS).
    Memory(MemoryNetwork),
}

/// The cluster's timers. The defaults are the documented ones (docs/cluster.md); tests shorten
/// them to milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// The failure detector's expected heartbeat interval before it has measured one.
    pub detector_initial: Duration,
    /// Heartbeat gaps longer than this are not learnt by the failure detector.
    pub detector_max: Duration,
    /// How often the node channel sends a `Ping`.
    pub heartbeat: Duration,
    /// A peer answering no `Ping` for this long is unreachable (inbound: twice this, silent).
    pub heartbeat_deadline: Duration,
    /// How long one dial may take (the retries back off a tenth of it more each time).
    pub dial_timeout: Duration,
    /// How often membership is looked at again without a gossip change (re-dials, resends).
    pub recheck: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            gossip_interval: GOSSIP_INTERVAL,
            detector_initial: Duration::from_millis(500),
            detector_max: Duration::from_secs(2),
            heartbeat: HEARTBEAT,
            heartbeat_deadline: HEARTBEAT_DEADLINE,
            dial_timeout: Duration::from_secs(1),
            recheck: Duration::from_secs(1),
        }
    }
}

impl Timing {
    /// Timers for in-memory tests: a peer is called down in about a quarter of a second and
    /// unreachable in a fifth.
    pub fn fast() -> Timing {
        Timing {
            gossip_interval: Duration::from_millis(20),
            detector_initial: Duration::from_millis(20),
            detector_max: Duration::from_millis(200),
            heartbeat: Duration::from_millis(20),
            heartbeat_deadline: Duration::from_millis(200),
            dial_timeout: Duration::from_millis(100),
            recheck: Duration::from_millis(50),
        }
    }
}

/// A transport and the timers: what [`super::Cluster::wired`] and `run_wired` take.
#[derive(Clone, Default)]
pub struct Wiring {
    /// Where gossip and the node channel go.
    pub transport: Transport,
    /// The timers.
    pub timing: Timing,
}

impl Wiring {
    /// An in-memory network with [`Timing::fast`].
    pub fn memory(net: &MemoryNetwork) -> Wiring {
        Wiring {
            transport: Transport::Memory(net.clone()),
            timing: Timing::fast(),
        }
    }
}

/// The node channel's listener.
pub(super) enum Listener {
    Tcp(TcpListener),
    Memory(MemoryListener),
}

impl Transport {
    /// Binds the node channel on `bind`.
    pub(super) async fn listen(&self, bind: SocketAddr) -> Result<Listener, ClusterError> {
        let r = match self {
            Transport::Net => TcpListener::bind(bind).await.map(Listener::Tcp),
            Transport::Memory(net) => net.listen(bind).await.map(Listener::Memory),
        };
        r.map_err(|e| ClusterError::Bind {
            addr: bind,
            source: e,
        })
    }

    /// The gossip transport.
    pub(super) fn gossip(&self) -> &dyn chitchat::transport::Transport {
        match self {
            Transport::Net => &chitchat::transport::UdpTransport,
            Transport::Memory(net) => net.gossip(),
        }
    }
}
