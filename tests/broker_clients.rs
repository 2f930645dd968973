//! Real clients against the broker (run in-process): rumqttc (the v3.1.1 API and `rumqttc::v5`) and the
//! Debian `mosquitto_pub`/`mosquitto_sub` (`-V mqttv311` and `-V mqttv5`), each talking to the
//! others through the broker. QoS 0/1/2 both ways, retained messages, wills on an abrupt
//! disconnect, wildcards, shared and overlapping subscriptions, `$` topics, session takeover and
//! a persistent `mosquitto_sub -c` session that collects what was published while it was away.
//!
//! Synchronisation is by observation: a subscriber counts as subscribed when it saw its SUBACK
//! (`mosquitto_sub -d` under `stdbuf -oL` prints it as it happens), a publish as done when its
//! PUBACK/PUBCOMP arrived. Waits for "nothing more arrives" are short and come after a sentinel.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::sync::mpsc;

/// A received application message, whichever client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
}

fn msg(topic: &str, payload: &str, qos: u8, retain: bool) -> Msg {
    Msg {
        topic: topic.into(),
        payload: payload.into(),
        qos,
        retain,
    }
}

/// What a client's event loop task reports.
#[derive(Debug)]
enum Ev {
    ConnAck,
    SubAck(Vec<bool>),
    /// PUBACK or PUBCOMP: an outgoing QoS 1/2 publish completed.
    Done,
    Msg(Msg),
    /// The event loop failed (connection closed, DISCONNECT from the server, …): its Debug text.
    Closed(String),
}

enum Api {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A rumqttc client whose event loop runs in its own task; dropping or aborting that task
/// drops the socket without a DISCONNECT.
struct Client {
    id: String,
    api: Api,
    rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
    inbox: VecDeque<Msg>,
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Connects a v3.1.1 rumqttc client (`tune` adjusts the options) and waits for its CONNACK.
async fn connect4(
    addr: SocketAddr,
    id: &str,
    tune: impl FnOnce(&mut rumqttc::MqttOptions),
) -> Client {
    use rumqttc::{Event, Packet};
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    tune(&mut o);
    let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                Ok(Event::Incoming(Packet::SubAck(a))) => Ev::SubAck(
                    a.return_codes
                        .iter()
                        .map(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                        .collect(),
                ),
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => Ev::Done,
                Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(Msg {
                    topic: p.topic.clone(),
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    qos: p.qos as u8,
                    retain: p.retain,
                }),
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(Ev::Closed(format!("{e:?}")));
                    return; // no reconnect: the event loop (and its socket) is dropped
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    let mut c = Client {
        id: id.to_string(),
        api: Api::V4(c),
        rx,
        task,
        inbox: VecDeque::new(),
    };
    c.expect_connack().await;
    c
}

/// Connects a v5 rumqttc client (`tune` adjusts the options) and waits for its CONNACK.
async fn connect5(
    addr: SocketAddr,
    id: &str,
    tune: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> Client {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::Event;
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    tune(&mut o);
    let (c, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        // rumqttc 0.25 tracks the broker's topic aliases but reports each PUBLISH as it came
        // (an empty topic when only the alias was sent): the application resolves them
        let mut aliases = std::collections::HashMap::new();
        loop {
            let ev = match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                Ok(Event::Incoming(Packet::SubAck(a))) => Ev::SubAck(
                    a.return_codes
                        .iter()
                        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        .collect(),
                ),
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => Ev::Done,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if let Some(a) = p.properties.as_ref().and_then(|p| p.topic_alias) {
                        if topic.is_empty() {
                            topic = aliases.get(&a).cloned().unwrap_or_default();
                        } else {
                            aliases.insert(a, topic.clone());
                        }
                    }
                    Ev::Msg(Msg {
                        topic,
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    })
                }
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(Ev::Closed(format!("{e:?}")));
                    return;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    let mut c = Client {
        id: id.to_string(),
        api: Api::V5(c),
        rx,
        task,
        inbox: VecDeque::new(),
    };
    c.expect_connack().await;
    c
}

impl Client {
    /// The next event that is not an application message (those go to the inbox).
    async fn next_control(&mut self, t: Duration) -> Option<Ev> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Msg(m))) => self.inbox.push_back(m),
                Ok(Some(ev)) => return Some(ev),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn expect_connack(&mut self) {
        match self.next_control(Duration::from_secs(5)).await {
            Some(Ev::ConnAck) => {}
            other => panic!("{}: expected CONNACK, got {other:?}", self.id),
        }
    }

    /// Subscribes and waits for a SUBACK granting it.
    async fn subscribe(&mut self, filter: &str, qos: u8) {
        let r = match &self.api {
            Api::V4(c) => c
                .subscribe(filter, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Api::V5(c) => c
                .subscribe(filter, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
        };
        r.unwrap_or_else(|e| panic!("{}: subscribe {filter}: {e}", self.id));
        match self.next_control(Duration::from_secs(5)).await {
            Some(Ev::SubAck(ok)) => assert_eq!(ok, vec![true], "{}: SUBACK for {filter}", self.id),
            other => panic!("{}: expected SUBACK for {filter}, got {other:?}", self.id),
        }
    }

    /// Publishes; for QoS 1/2 waits until the broker's PUBACK/PUBCOMP arrived.
    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &str) {
        let r = match &self.api {
            Api::V4(c) => c
                .publish(topic, qos4(qos), retain, payload.as_bytes().to_vec())
                .await
                .map_err(|e| e.to_string()),
            Api::V5(c) => c
                .publish(topic, qos5(qos), retain, payload.as_bytes().to_vec())
                .await
                .map_err(|e| e.to_string()),
        };
        r.unwrap_or_else(|e| panic!("{}: publish {topic}: {e}", self.id));
        if qos > 0 {
            match self.next_control(Duration::from_secs(5)).await {
                Some(Ev::Done) => {}
                other => panic!(
                    "{}: expected PUBACK/PUBCOMP for {topic}, got {other:?}",
                    self.id
                ),
            }
        }
    }

    /// The next application message within `t`.
    async fn recv(&mut self, t: Duration) -> Option<Msg> {
        if let Some(m) = self.inbox.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Msg(m))) => return Some(m),
                Ok(Some(Ev::Closed(e))) => panic!("{}: connection lost: {e}", self.id),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Messages up to and including the first on `sentinel` (panics if it does not come).
    async fn recv_until(&mut self, sentinel: &str, t: Duration) -> Vec<Msg> {
        let mut got = Vec::new();
        loop {
            match self.recv(t).await {
                Some(m) if m.topic == sentinel => {
                    got.push(m);
                    return got;
                }
                Some(m) => got.push(m),
                None => panic!("{}: no {sentinel} within {t:?}; got {got:?}", self.id),
            }
        }
    }

    /// Waits until the event loop reports the connection gone; returns its error text.
    async fn closed(&mut self, t: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Closed(e))) => return Some(e),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    async fn disconnect(mut self) {
        let _ = match &self.api {
            Api::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Api::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
        let _ = self.closed(Duration::from_secs(3)).await;
        self.task.abort();
    }

    /// Drops the TCP connection without a DISCONNECT (the event loop task and its socket go away).
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// `mosquitto_sub` with `-d` under `stdbuf -oL`, printing each message as `MSG retain qos topic
/// payload` the moment it arrives.
struct MosqSub {
    p: Proc,
}

fn mosquitto_sub(addr: SocketAddr, args: &[&str]) -> MosqSub {
    let mut cmd = Command::new(which("stdbuf"));
    cmd.arg("-oL")
        .arg(which("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-d"])
        .args(["-F", "MSG %r %q %t %p"])
        .args(args);
    MosqSub {
        p: Proc::spawn("mosquitto_sub", cmd),
    }
}

impl MosqSub {
    /// Waits for the SUBACK (the subscription is in place).
    async fn subscribed(&self) {
        let ok = eventually(Duration::from_secs(5), || {
            self.p.count_log("received SUBACK") > 0
        })
        .await;
        assert!(ok, "mosquitto_sub: no SUBACK; output:\n{}", self.p.logs());
    }

    fn msgs(&self) -> Vec<Msg> {
        self.p
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("MSG ")?;
                let mut it = rest.splitn(4, ' ');
                let retain = it.next()? == "1";
                let qos = it.next()?.parse().ok()?;
                let topic = it.next()?.to_string();
                let payload = it.next().unwrap_or("").to_string();
                Some(Msg {
                    topic,
                    payload,
                    qos,
                    retain,
                })
            })
            .collect()
    }

    /// Waits until `n` messages were printed; returns all printed so far.
    async fn wait_msgs(&self, n: usize, t: Duration) -> Vec<Msg> {
        let ok = eventually(t, || self.msgs().len() >= n).await;
        assert!(
            ok,
            "mosquitto_sub: {} of {n} messages; output:\n{}",
            self.msgs().len(),
            self.p.logs()
        );
        self.msgs()
    }

    /// Waits for the process to exit; its exit code.
    async fn exit(&mut self, t: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Ok(Some(s)) = self.p.child.try_wait() {
                return s.code();
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `mosquitto_pub` to completion; panics unless it succeeds.
async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(which("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub did not finish")
    .expect("mosquitto_pub did not start");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const T: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched for, after a sentinel made everything due arrive.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_publishers_reach_mosquitto_sub_at_qos_0_1_2() {
    let n = InProcBroker::plain("cl-qos-out", "");
    let addr = n.addr();
    for (sub_version, pub_v5) in [("mqttv311", true), ("mqttv5", false)] {
        let filter = format!("rt/{sub_version}/#");
        let s2 = mosquitto_sub(addr, &["-V", sub_version, "-q", "2", "-t", &filter]);
        let s0 = mosquitto_sub(addr, &["-V", sub_version, "-q", "0", "-t", &filter]);
        s2.subscribed().await;
        s0.subscribed().await;
        let id = format!("pub-{sub_version}");
        let mut p = if pub_v5 {
            connect5(addr, &id, |_| {}).await
        } else {
            connect4(addr, &id, |_| {}).await
        };
        for q in 0..3u8 {
            p.publish(
                &format!("rt/{sub_version}/q{q}"),
                q,
                false,
                &format!("hello at qos {q}"),
            )
            .await;
        }
        let want: Vec<Msg> = (0..3u8)
            .map(|q| {
                msg(
                    &format!("rt/{sub_version}/q{q}"),
                    &format!("hello at qos {q}"),
                    q,
                    false,
                )
            })
            .collect();
        // granted QoS 2: each at the QoS it was published with, in order
        assert_eq!(s2.wait_msgs(3, T).await, want, "{sub_version} -q 2");
        // granted QoS 0: everything downgraded to 0 (MQTT-3.8.4-6 / v5 MQTT-3.8.4-8)
        let want0: Vec<Msg> = want
            .iter()
            .map(|m| Msg {
                qos: 0,
                ..m.clone()
            })
            .collect();
        assert_eq!(s0.wait_msgs(3, T).await, want0, "{sub_version} -q 0");
        p.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_reaches_rumqttc_subscribers_at_qos_0_1_2() {
    let n = InProcBroker::plain("cl-qos-in", "");
    let addr = n.addr();
    let mut s4 = connect4(addr, "sub-v4", |_| {}).await;
    let mut s5 = connect5(addr, "sub-v5", |_| {}).await;
    s4.subscribe("rt2/#", 2).await;
    s5.subscribe("rt2/#", 2).await;
    let mut want = Vec::new();
    for v in ["mqttv311", "mqttv5"] {
        for q in 0..3u8 {
            let topic = format!("rt2/{v}/q{q}");
            let payload = format!("from mosquitto_pub {v} qos {q}");
            mosquitto_pub(
                addr,
                &["-V", v, "-q", &q.to_string(), "-t", &topic, "-m", &payload],
            )
            .await;
            want.push(msg(&topic, &payload, q, false));
        }
    }
    for s in [&mut s4, &mut s5] {
        let mut got = Vec::new();
        while got.len() < want.len() {
            match s.recv(T).await {
                Some(m) => got.push(m),
                None => panic!("{}: got only {got:?}", s.id),
            }
        }
        assert_eq!(got, want, "{}", s.id);
    }
    assert_eq!(s4.recv(QUIET).await, None, "one copy each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_from_mosquitto_pub_reaches_later_subscribers_and_empty_clears_it() {
    let n = InProcBroker::plain("cl-retained", "");
    let addr = n.addr();
    mosquitto_pub(
        addr,
        &[
            "-V", "mqttv311", "-q", "1", "-r", "-t", "ret/a", "-m", "hello",
        ],
    )
    .await;

    // later subscribers get it with the RETAIN flag (MQTT-3.3.1-8), mosquitto_sub and rumqttc
    let mut late = mosquitto_sub(addr, &["-V", "mqttv5", "-q", "1", "-t", "ret/#", "-C", "1"]);
    assert_eq!(
        late.wait_msgs(1, T).await,
        vec![msg("ret/a", "hello", 1, true)]
    );
    assert_eq!(late.exit(T).await, Some(0));
    let mut live = connect4(addr, "ret-live", |_| {}).await;
    live.subscribe("ret/#", 1).await;
    assert_eq!(live.recv(T).await, Some(msg("ret/a", "hello", 1, true)));

    // an established subscription gets new retained publishes with RETAIN 0 (MQTT-3.3.1-9)
    mosquitto_pub(
        addr,
        &["-V", "mqttv5", "-q", "1", "-r", "-t", "ret/b", "-m", "live"],
    )
    .await;
    assert_eq!(live.recv(T).await, Some(msg("ret/b", "live", 1, false)));

    // an empty retained message is delivered as normal and clears ret/a (MQTT-3.3.1-10/11)
    mosquitto_pub(
        addr,
        &["-V", "mqttv311", "-q", "1", "-r", "-t", "ret/a", "-n"],
    )
    .await;
    assert_eq!(live.recv(T).await, Some(msg("ret/a", "", 1, false)));
    let mut fresh = connect5(addr, "ret-fresh", |_| {}).await;
    fresh.subscribe("ret/#", 1).await;
    assert_eq!(fresh.recv(T).await, Some(msg("ret/b", "live", 1, true)));
    assert_eq!(fresh.recv(QUIET).await, None, "ret/a must be gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_a_client_vanishes_without_disconnect() {
    let n = InProcBroker::plain("cl-will", "");
    let addr = n.addr();
    let watcher = mosquitto_sub(addr, &["-V", "mqttv5", "-q", "1", "-t", "will/#"]);
    watcher.subscribed().await;
    let mut rum = connect4(addr, "will-watcher", |_| {}).await;
    rum.subscribe("will/#", 2).await;

    // v3.1.1 rumqttc: TCP closed under it, no DISCONNECT
    let c = connect4(addr, "dev-4", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "will/dev-4",
            "dev-4 vanished",
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    c.kill().await;
    let w4 = msg("will/dev-4", "dev-4 vanished", 1, false);
    assert_eq!(rum.recv(T).await, Some(w4.clone()));
    assert_eq!(watcher.wait_msgs(1, T).await, vec![w4.clone()]);

    // v5 rumqttc, QoS 2 will
    let c = connect5(addr, "dev-5", |o| {
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            "will/dev-5",
            "dev-5 vanished",
            qos5(2),
            false,
            None,
        ));
    })
    .await;
    c.kill().await;
    let w5 = msg("will/dev-5", "dev-5 vanished", 2, false);
    assert_eq!(rum.recv(T).await, Some(w5.clone()));
    // the watcher subscribed at QoS 1: the QoS 2 will reaches it at QoS 1
    let w5_at_1 = Msg { qos: 1, ..w5 };
    assert_eq!(watcher.wait_msgs(2, T).await, vec![w4, w5_at_1]);

    // a normal DISCONNECT discards the will (MQTT-3.1.2-10 / v5 MQTT-3.1.2-10)
    let c = connect4(addr, "dev-polite", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "will/dev-polite",
            "should not be sent",
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    c.disconnect().await;
    let admin = n.admin();
    assert!(
        eventually(T, || http("GET", admin, "/api/clients/dev-polite").0 == 404).await,
        "dev-polite's clean session should end at its DISCONNECT"
    );
    let mut p = connect4(addr, "will-sentinel", |_| {}).await;
    p.publish("will/sentinel", 1, false, "end").await;
    assert_eq!(
        rum.recv_until("will/sentinel", T).await,
        vec![msg("will/sentinel", "end", 1, false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_as_specified_across_clients() {
    let n = InProcBroker::plain("cl-wild", "");
    let addr = n.addr();
    let mut plus = connect4(addr, "w-plus", |_| {}).await;
    plus.subscribe("a/+/c", 1).await;
    let mut hash = connect5(addr, "w-hash", |_| {}).await;
    hash.subscribe("a/#", 1).await;
    let mosq = mosquitto_sub(addr, &["-V", "mqttv311", "-q", "1", "-t", "+/b/#"]);
    mosq.subscribed().await;

    let mut p = connect4(addr, "w-pub", |_| {}).await;
    let topics = [
        "a/b/c", "a//c", "a/b", "a", "a/b/c/d", "x/b", "a/bb/c/d", "b/b/c",
    ];
    for t in topics {
        p.publish(t, 1, false, t).await;
    }
    // sentinels: a/end/c matches a/+/c and a/#; end/b matches +/b/#
    p.publish("a/end/c", 1, false, "end").await;
    p.publish("end/b", 1, false, "end").await;

    let topics_of = |v: Vec<Msg>| v.into_iter().map(|m| m.topic).collect::<Vec<_>>();
    assert_eq!(
        topics_of(plus.recv_until("a/end/c", T).await),
        ["a/b/c", "a//c", "a/end/c"]
    );
    assert_eq!(
        topics_of(hash.recv_until("a/end/c", T).await),
        ["a/b/c", "a//c", "a/b", "a", "a/b/c/d", "a/bb/c/d", "a/end/c"]
    );
    // "+/b/#" also matches "x/b" ("#" includes the parent level, MQTT-4.7.1-2)
    let got = mosq.wait_msgs(6, T).await;
    assert_eq!(
        topics_of(got),
        ["a/b/c", "a/b", "a/b/c/d", "x/b", "b/b/c", "end/b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_gives_each_message_to_one_group_member() {
    let n = InProcBroker::plain("cl-shared", "");
    let addr = n.addr();
    let mut m1 = connect4(addr, "worker-1", |_| {}).await;
    let mut m2 = connect5(addr, "worker-2", |_| {}).await;
    m1.subscribe("$share/g/t", 1).await;
    m2.subscribe("$share/g/t", 1).await;
    let mut plain = connect4(addr, "observer", |_| {}).await;
    plain.subscribe("t", 1).await;

    let mut p = connect5(addr, "producer", |_| {}).await;
    const N: usize = 20;
    for i in 0..N {
        p.publish("t", 1, false, &format!("job-{i}")).await;
    }
    // the non-shared subscriber gets all of them
    let mut seen = Vec::new();
    for _ in 0..N {
        seen.push(plain.recv(T).await.expect("observer").payload);
    }
    assert_eq!(seen, (0..N).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    // the group gets each exactly once, spread over both members
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + T;
    while a.len() + b.len() < N && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(m) = m1.recv(Duration::from_millis(50)) => a.push(m.payload),
            Some(m) = m2.recv(Duration::from_millis(50)) => b.push(m.payload),
            else => {}
        }
    }
    assert_eq!(m1.recv(QUIET).await, None, "worker-1 got an extra copy");
    assert_eq!(m2.recv(QUIET).await, None, "worker-2 got an extra copy");
    let mut all: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    all.sort_by_key(|s| s[4..].parse::<usize>().unwrap());
    assert_eq!(
        all,
        (0..N).map(|i| format!("job-{i}")).collect::<Vec<_>>(),
        "worker-1 {a:?} worker-2 {b:?}"
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members should get work: {a:?} / {b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let n = InProcBroker::plain("cl-overlap", "");
    let addr = n.addr();
    let mut c4 = connect4(addr, "ov-4", |_| {}).await;
    let mut c5 = connect5(addr, "ov-5", |_| {}).await;
    for c in [&mut c4, &mut c5] {
        c.subscribe("ov/#", 0).await;
        c.subscribe("ov/+/x", 2).await;
        c.subscribe("ov/a/x", 1).await;
    }
    let mut p = connect4(addr, "ov-pub", |_| {}).await;
    p.publish("ov/a/x", 2, false, "once").await;
    p.publish("ov/end", 1, false, "end").await;
    for c in [&mut c4, &mut c5] {
        // MQTT-3.3.5-1: the maximum QoS of all matching subscriptions; one copy
        assert_eq!(
            c.recv_until("ov/end", T).await,
            vec![
                msg("ov/a/x", "once", 2, false),
                msg("ov/end", "end", 0, false)
            ],
            "{}",
            c.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let n = InProcBroker::plain("cl-dollar", "");
    let addr = n.addr();
    // $SYS exists (retained) so the negative checks below mean something
    let mut sys = connect4(addr, "sys-reader", |_| {}).await;
    sys.subscribe("$SYS/#", 0).await;
    let first = sys.recv(T).await.expect("a retained $SYS message");
    assert!(first.topic.starts_with("$SYS/brokers/node1/"), "{first:?}");

    let mut all = connect4(addr, "hash-all", |_| {}).await;
    all.subscribe("#", 1).await;
    all.subscribe("+/x", 1).await;
    let mut app = connect5(addr, "dollar-app", |_| {}).await;
    app.subscribe("$app/#", 1).await;
    let mosq = mosquitto_sub(addr, &["-V", "mqttv5", "-q", "1", "-t", "#", "-t", "+/+"]);
    mosq.subscribed().await;

    let mut p = connect4(addr, "dollar-pub", |_| {}).await;
    p.publish("$app/x", 1, false, "dollar").await;
    p.publish("n/x", 1, false, "plain").await;
    // MQTT-4.7.2-1: "#" and "+/x" see neither $SYS (retained) nor $app, one copy of n/x
    assert_eq!(
        all.recv_until("n/x", T).await,
        vec![msg("n/x", "plain", 1, false)]
    );
    assert_eq!(all.recv(QUIET).await, None);
    assert_eq!(app.recv(T).await, Some(msg("$app/x", "dollar", 1, false)));
    assert_eq!(
        mosq.wait_msgs(1, T).await,
        vec![msg("n/x", "plain", 1, false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_the_same_client_id_takes_the_session_over() {
    let n = InProcBroker::plain("cl-takeover", "");
    let addr = n.addr();

    // v3.1.1: the first connection is closed
    let mut first = connect4(addr, "twin-4", |_| {}).await;
    let mut second = connect4(addr, "twin-4", |_| {}).await;
    let why = first.closed(T).await;
    assert!(why.is_some(), "first twin-4 connection still open");
    second.subscribe("twin/4", 1).await;
    second.publish("twin/4", 1, false, "still here").await;
    assert_eq!(
        second.recv(T).await,
        Some(msg("twin/4", "still here", 1, false))
    );

    // v5: the first connection gets DISCONNECT 0x8E Session taken over, then is closed
    let mut first = connect5(addr, "twin-5", |_| {}).await;
    let mut second = connect5(addr, "twin-5", |_| {}).await;
    let why = first
        .closed(T)
        .await
        .expect("first twin-5 connection still open");
    assert!(
        why.contains("SessionTakenOver"),
        "expected DISCONNECT 0x8E, rumqttc says {why} (ConnectionAborted: rumqttc 0.25 v5 cannot \
         parse a DISCONNECT without its property length, e.g. `e0 01 8e`; `e0 02 8e 00` works)"
    );
    second.subscribe("twin/5", 1).await;
    second.publish("twin/5", 1, false, "still here").await;
    assert_eq!(
        second.recv(T).await,
        Some(msg("twin/5", "still here", 1, false))
    );
    assert_eq!(second.closed(QUIET).await, None, "the new connection stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_persistent_session_gets_qos1_messages_published_while_away() {
    let n = InProcBroker::plain("cl-persist", "");
    let addr = n.addr();
    let mut p = connect5(addr, "away-pub", |_| {}).await;
    for v in ["mqttv311", "mqttv5"] {
        let id = format!("away-{v}");
        let filter = format!("off/{v}/#");
        // subscribe in a persistent session, then leave (-E: exit after the SUBACK)
        let mut s = mosquitto_sub(
            addr,
            &["-V", v, "-c", "-i", &id, "-q", "1", "-t", &filter, "-E"],
        );
        assert_eq!(s.exit(T).await, Some(0), "{}", s.p.logs());
        for i in 0..3 {
            p.publish(
                &format!("off/{v}/m{i}"),
                1,
                false,
                &format!("while away {i}"),
            )
            .await;
        }
        let mut back = mosquitto_sub(
            addr,
            &[
                "-V", v, "-c", "-i", &id, "-q", "1", "-t", &filter, "-C", "3",
            ],
        );
        let want: Vec<Msg> = (0..3)
            .map(|i| {
                msg(
                    &format!("off/{v}/m{i}"),
                    &format!("while away {i}"),
                    1,
                    false,
                )
            })
            .collect();
        assert_eq!(back.wait_msgs(3, T).await, want, "{v}");
        assert_eq!(back.exit(T).await, Some(0), "{}", back.p.logs());
    }
}

/// Topic aliases from the broker (v5 §3.3.2.3.4) as a real client decodes them: rumqttc v5
/// (whose aliases the harness resolves, see `connect5`) allows 2 aliases (Topic Alias Maximum
/// in CONNECT) and receives messages on 5 topics in turn, each twice in a row, so the broker
/// sends topics by alias alone and reassigns aliases all the time; every message arrives under
/// its own topic, in order. (`mosquitto_sub` is not part of it: libmosquitto announces a Topic
/// Alias Maximum when told to with `-D connect topic-alias-maximum`, but refuses a PUBLISH
/// with an empty topic, so it cannot use aliases.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_decodes_the_broker_topic_aliases() {
    let n = InProcBroker::plain("cl-alias", "");
    let addr = n.addr();
    let mut r = connect5(addr, "alias-rumqttc", |o| {
        o.set_topic_alias_max(Some(2));
    })
    .await;
    r.subscribe("ta/#", 1).await;
    let mut p = connect5(addr, "alias-pub", |_| {}).await;
    let mut want = Vec::new();
    for i in 0..30 {
        // each topic twice in a row (the second time by alias alone), 5 topics in turn
        let topic = format!("ta/t{}", (i / 2 * 3) % 5);
        let payload = format!("m{i}");
        p.publish(&topic, 1, false, &payload).await;
        want.push(msg(&topic, &payload, 1, false));
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        match r.recv(T).await {
            Some(m) => got.push(m),
            None => panic!("rumqttc: got only {got:?}"),
        }
    }
    assert_eq!(got, want, "rumqttc");
}
