//! `$SYS/brokers/{node}/...` topics, published (retained) every 10 s: version, uptime, clients,
//! messages, subscriptions. Per node: in a cluster each node reports itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::message::Message;
use crate::protocol::QoS;

/// How often the topics are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Publishes the current values once.
pub fn publish_once(b: &Broker) {
    let m = b.metrics();
    let node = &b.cfg().name;
    let items: [(&str, String); 9] = [
        ("version", format!("mqedge {}", env!("CARGO_PKG_VERSION"))),
        (
            "uptime",
            format!("{} seconds", b.started().elapsed().as_secs()),
        ),
        ("clients/connected", m.connected.get().to_string()),
        ("clients/total", b.session_count().to_string()),
        ("messages/received", m.messages_received.get().to_string()),
        ("messages/sent", m.messages_sent.get().to_string()),
        (
            "subscriptions/count",
            b.router().subscription_count().to_string(),
        ),
        ("retained/count", b.retained().len().to_string()),
        ("bytes/received", m.bytes_received.get().to_string()),
    ];
    let publisher: Arc<str> = Arc::from("$SYS");
    for (k, v) in items {
        let msg = Message::plain(
            &format!("$SYS/brokers/{node}/{k}"),
            Bytes::from(v),
            QoS::AtMostOnce,
            true,
            publisher.clone(),
        );
        // $SYS values are refreshed, not persisted
        // the deliveries' own writes are queued already; nothing else is kept for $SYS
        let _ = b.publish(Arc::new(msg)).writes;
    }
}

/// Refreshes the topics until `stop`.
pub async fn run(b: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    loop {
        publish_once(&b);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
