//! The CONNECT phase: read CONNECT (within [`CONNECT_TIMEOUT`]), authenticate and name the
//! client, take the session over from another node in a cluster, attach it, queue CONNACK and
//! build the established connection. A refused client gets CONNACK with the reason's code (when
//! it has one) and a lingering close; every refusal is counted and logged by its
//! [`CloseReason`].

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::aliases::{OutAliases, TOPIC_ALIAS_MAX};
use super::{linger, read_more, write_all, ClientInfo, Conn, Live};
use crate::auth::hook::{HookRequest, OnUnavailable, Verdict};
use crate::auth::{Access, CheckError};
use crate::broker::Broker;
use crate::cluster::Handover;
use crate::drain;
use crate::error::CloseReason;
use crate::limits::{Bite, Limits, CONNECT_TIMEOUT};
use crate::message::unix_now;
use crate::protocol::{
    decode, encode, reason, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Version,
};
use crate::session::Attach;
use crate::topic::valid_topic_name;

/// A client that passed authentication.
struct Admitted {
    client_id: String,
    /// The broker chose the client id (v5: told in CONNACK).
    assigned: bool,
    username: Option<String>,
    /// Session expiry, in seconds (`u32::MAX`: never), within `max_session_expiry`.
    expiry: u32,
}

impl Live {
    /// See [`super::establish`].
    pub(super) async fn establish(
        b: Arc<Broker>,
        mut tcp: TcpStream,
        mut rbuf: BytesMut,
        info: ClientInfo,
    ) -> Option<Live> {
        let _ = tcp.set_nodelay(true);
        let max_packet = Limits::from_config(&b.cfg().limits).max_packet_size();
        let connect = match read_connect(&mut tcp, &mut rbuf, max_packet).await {
            Ok(c) => c,
            Err(why) => {
                // boxed, like the rest of a refusal: rare, and it holds the lingering close
                Box::pin(refuse(&b, tcp, &info, None, why)).await;
                return None;
            }
        };
        if connect.client_id.starts_with("mqedge-hc-") {
            // an LB checks this node: a drain then waits for it to acknowledge
            b.drain().check_seen(&connect.client_id);
        }
        if b.drain().is_draining() {
            // before auth: the LB's health check needs no credentials, and a client told to go
            // elsewhere costs no password check
            Box::pin(refuse_draining(&b, tcp, &info, connect)).await;
            return None;
        }
        let admitted = match Box::pin(admit(&b, &connect, &info)).await {
            Ok(a) => a,
            Err(why) => {
                Box::pin(refuse(&b, tcp, &info, Some(&connect), why)).await;
                return None;
            }
        };
        let conn_id = b.next_conn_id();
        // in a cluster, the session may live on another node: it is handed over before CONNACK
        // (or resumed from this node's copy when its holder does not answer)
        let (import, handover) = match b.cluster() {
            Some(_) => Box::pin(find_session(&b, &admitted.client_id, connect.clean_start)).await,
            None => (None, None),
        };
        let att = b.sessions().attach(
            &admitted.client_id,
            connect.clean_start,
            admitted.expiry,
            connect.version,
            admitted.username.clone(),
            info.addr,
            conn_id,
            import,
        );
        att.session.lock().cn = info.cert_username.clone();
        if let Some(h) = handover {
            // rare (a session moved here): boxed, to keep the CONNECT phase small
            Box::pin(settle_handover(&b, h)).await;
        }
        b.metrics().connections.inc();
        b.metrics().connected.inc();
        // LB health checks connect every few seconds: keep them out of the INFO log
        let quiet = admitted.client_id.starts_with("mqedge-hc-");
        log_connected(&connect, &admitted, &att, &info, conn_id, quiet);
        // not held across the awaits above: it would enlarge this phase's future
        let limits = Limits::from_config(&b.cfg().limits);
        let keep_alive = limits.keep_alive(connect.keep_alive);
        if keep_alive != connect.keep_alive {
            Bite::KeepAlive.count(b.metrics());
        }
        let Attach {
            session,
            session_present,
            kicked,
        } = att;
        let props = connack_properties(limits, &connect, &admitted, keep_alive);
        let mut c = Conn::new(b, session, connect, &admitted);
        c.send(&connack(session_present, reason::SUCCESS, props));
        if session_present {
            c.resend_inflight();
        }
        Some(Live {
            c,
            tcp,
            rbuf,
            kicked,
            keep_alive_ms: u32::from(keep_alive) * 1500,
            peer: info.addr,
            conn_id,
            quiet,
        })
    }
}

impl Conn {
    /// The state of a connection that CONNECT (by value: its will is kept, with the identity
    /// it was checked for) just established.
    fn new(
        b: Arc<Broker>,
        s: Arc<crate::session::Session>,
        connect: Connect,
        a: &Admitted,
    ) -> Conn {
        let v = connect.version;
        let props = connect.properties;
        Conn {
            b,
            s,
            v,
            out: BytesMut::new(),
            client_receive_max: props.receive_maximum.unwrap_or(u16::MAX),
            client_max_packet: props.maximum_packet_size.unwrap_or(u32::MAX),
            aliases: Default::default(),
            acks: Default::default(),
            feed: None,
            out_aliases: props
                .topic_alias_maximum
                .filter(|_| v.is_v5())
                .and_then(OutAliases::new)
                .map(Box::new),
            will: connect.will.map(|mut w| {
                // kept for the whole connection: not as a slice of the CONNECT's read buffer
                crate::message::unpin(&mut w.payload);
                Box::new((w, a.username.clone()))
            }),
            connect_expiry_zero: a.expiry == 0,
        }
    }
}

/// The session of a connecting client held elsewhere in the cluster: handed over by its
/// holder, or its standby copy here when the holder does not answer.
async fn find_session(
    b: &Arc<Broker>,
    client_id: &str,
    clean_start: bool,
) -> (Option<crate::cluster::SessionExport>, Option<Handover>) {
    let taken = match b.cluster() {
        Some(c) => c.take_session(client_id, clean_start).await,
        None => None,
    };
    let (import, handover) = taken.unzip();
    if b.replica().is_none() {
        return (import, handover);
    }
    let standby = standby_import(b, client_id, clean_start, import.is_some()).await;
    (import.or(standby), handover)
}

/// The standby copy of a connecting client's session kept here, when its holder cannot answer
/// for it (down, or its channel does not answer): the client resumes it here (Session Present).
/// When the holder handed the session over (`taken`), the standby copy is dropped instead.
async fn standby_import(
    b: &Arc<Broker>,
    client_id: &str,
    clean_start: bool,
    taken: bool,
) -> Option<crate::cluster::SessionExport> {
    let r = b.replica()?;
    let holder = r.standby_holder(client_id)?;
    if taken || clean_start {
        r.discard_standby(client_id);
        return None;
    }
    if b.cluster().is_some_and(|c| c.reachable(&holder)) {
        return None;
    }
    let e = r.take_standby(client_id).await?;
    r.promoted("connect");
    tracing::warn!(client_id, holder = %holder, "replication: the session's holder does not answer; its copy here resumes");
    Some(e)
}

/// Settles a session handed over to this node: its old holders delete their copy only once this
/// one is on disk (with `data_dir`), and keep theirs when it could not be written.
async fn settle_handover(b: &Arc<Broker>, h: Handover) {
    let Some(c) = b.cluster() else { return };
    let durable = match b.store() {
        Some(store) => store.write(Vec::new()).await.is_ok(),
        None => true,
    };
    c.settle_handover(h, durable);
}

/// Reads the first packet, bounded in time: the CONNECT, or why the client is refused.
async fn read_connect(
    r: &mut TcpStream,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Connect, CloseReason> {
    // boxed: the CONNECT phase's state is freed once it is over (an idle connection keeps
    // only what the main loop needs)
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Box::pin(async {
            loop {
                if let Some(p) = decode(rbuf, None, max)? {
                    return Ok::<Packet, DecodeError>(p);
                }
                match read_more(r, rbuf).await {
                    Ok(0) | Err(_) => return Err(DecodeError::Malformed("closed before CONNECT")),
                    Ok(_) => {}
                }
            }
        }),
    )
    .await;
    match first {
        Ok(Ok(Packet::Connect(c))) => Ok(*c),
        Ok(Err(DecodeError::UnsupportedVersion(level))) => {
            Err(CloseReason::UnsupportedVersion(level))
        }
        Ok(Err(e)) => Err(CloseReason::BadConnect(e)),
        Ok(Ok(_)) => Err(CloseReason::NotConnect),
        Err(_) => Err(CloseReason::ConnectTimeout),
    }
}

/// Refuses a client: CONNACK with the reason's code when it has one, in the layout of the
/// client's version — 3.1.1's when the version is one we do not speak (MQTT-3.1.2-2: the one
/// every client can read, as mosquitto does) — then a lingering close; counted and logged.
/// `connect` is the client's CONNECT when it got that far.
async fn refuse(
    b: &Broker,
    mut tcp: TcpStream,
    info: &ClientInfo,
    connect: Option<&Connect>,
    why: CloseReason,
) {
    let v = connect.map_or(Version::V311, |c| c.version);
    let code = why.connack_code(v);
    if let Some(code) = code {
        let mut out = BytesMut::new();
        encode(
            &connack(false, code, ConnAckProperties::default()),
            v,
            &mut out,
        );
        let _ = write_all(&mut tcp, &mut out).await;
    }
    why.count(b.metrics());
    let peer = info.addr;
    match (&why, connect, code) {
        // LB health checks and clients bouncing off a draining node: not one INFO line each
        (CloseReason::Draining, Some(c), _) => {
            tracing::debug!(peer = %peer, client_id = %c.client_id, "{why}")
        }
        (_, Some(c), Some(code)) => {
            tracing::info!(peer = %peer, client_id = %c.client_id, code, "{why}")
        }
        (CloseReason::UnsupportedVersion(level), _, _) => {
            tracing::info!(peer = %peer, level, "{why}")
        }
        (CloseReason::BadConnect(e), _, _) => tracing::info!(peer = %peer, error = %e, "{why}"),
        _ => tracing::info!(peer = %peer, "{why}"),
    }
    if code.is_some() {
        linger::close(tcp).await;
    }
}

/// A CONNECT while the node drains: the LB acknowledgement it may carry (user properties
/// [`drain::ACK`] and [`drain::LB_CONNECTIONS`]) is recorded, and the client is told to use
/// another server.
async fn refuse_draining(b: &Broker, tcp: TcpStream, info: &ClientInfo, connect: Connect) {
    let props = &connect.properties.user_properties;
    if let Some((_, lb)) = props.iter().find(|(k, _)| k == drain::ACK) {
        let connections = props
            .iter()
            .find(|(k, _)| k == drain::LB_CONNECTIONS)
            .and_then(|(_, v)| v.parse().ok());
        b.drain().ack(lb, connections);
    }
    refuse(b, tcp, info, Some(&connect), CloseReason::Draining).await;
}

/// Authenticates and names the client.
async fn admit(b: &Arc<Broker>, c: &Connect, info: &ClientInfo) -> Result<Admitted, CloseReason> {
    if c.properties.authentication_method.is_some() {
        return Err(CloseReason::BadAuthMethod);
    }
    if let Some(field) = info.missing_identity {
        return Err(CloseReason::CertIdentityMissing(field));
    }
    let (client_id, assigned) = if c.client_id.is_empty() {
        if !c.version.is_v5() && !c.clean_start {
            // MQTT-3.1.3-8
            return Err(CloseReason::EmptyClientId);
        }
        let id = b.next_conn_id() ^ unix_now().rotate_left(32);
        (format!("auto-{id:016x}"), true)
    } else {
        (c.client_id.clone(), false)
    };
    let username = if ask_hook(b, c, info, &client_id).await? {
        // the service vouched for the CONNECT's identity
        info.cert_username.clone().or_else(|| c.username.clone())
    } else {
        match &info.cert_username {
            Some(cn) => Some(cn.clone()),
            None => {
                let checked = authenticate(b, c).await?;
                b.auth().acl_username(c.username.as_deref(), checked)
            }
        }
    };
    if let Some(w) = &c.will {
        check_will(b, &w.topic, username.as_deref(), &client_id)?;
    }
    let asked = if c.version.is_v5() {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = Limits::from_config(&b.cfg().limits).session_expiry(asked);
    if expiry != asked {
        Bite::SessionExpiry.count(b.metrics());
    }
    Ok(Admitted {
        client_id,
        assigned,
        username,
        expiry,
    })
}

/// The PUBLISH rules on a will's topic, for the client that CONNECTs: a valid topic name, not
/// `$SYS`, ACL `write` for this username and client id (MQTT 5 §3.1.2.5 lets the server refuse a
/// will it would not accept as a PUBLISH).
fn check_will(
    b: &Broker,
    topic: &str,
    username: Option<&str>,
    client_id: &str,
) -> Result<(), CloseReason> {
    if !valid_topic_name(topic) {
        return Err(CloseReason::WillTopicInvalid);
    }
    let allowed = !topic.starts_with("$SYS")
        && b.auth()
            .acl()
            .is_none_or(|acl| acl.check(username, client_id, topic, Access::Write));
    if allowed {
        Ok(())
    } else {
        Err(CloseReason::WillNotAuthorized)
    }
}

/// Asks the `[auth.http]` service, when there is one: `Ok(true)` when it let the client in,
/// `Ok(false)` when the local checks decide (no service, `ignore`, or unavailable with
/// `on_unavailable = "local"`).
async fn ask_hook(
    b: &Arc<Broker>,
    c: &Connect,
    info: &ClientInfo,
    client_id: &str,
) -> Result<bool, CloseReason> {
    let Some(hook) = b.auth().hook() else {
        return Ok(false);
    };
    let req = HookRequest {
        client_id,
        username: c.username.as_deref(),
        password: c.password.as_deref(),
        peer: info.addr,
        cn: info.cert_username.as_deref(),
        proto_ver: c.version.level(),
    };
    let (verdict, cached) = hook.check(&req).await;
    let label = if cached { "cached" } else { verdict.label() };
    b.metrics()
        .auth_hook_results
        .get_or_create(&crate::metrics::Reason {
            reason: label.to_string(),
        })
        .inc();
    match verdict {
        Verdict::Allow => Ok(true),
        Verdict::Deny => Err(CloseReason::HookDenied),
        Verdict::Ignore => Ok(false),
        Verdict::Unavailable(why) => {
            let policy = hook.cfg().on_unavailable;
            tracing::warn!(client_id, peer = %info.addr, on_unavailable = ?policy, "auth service unavailable: {why}");
            match policy {
                OnUnavailable::Deny => Err(CloseReason::HookUnavailable),
                OnUnavailable::Allow => Ok(true),
                OnUnavailable::Local => Ok(false),
            }
        }
    }
}

/// Checks the CONNECT's username and password (a client without a certificate CN); `true` when
/// a password check verified the username.
async fn authenticate(b: &Arc<Broker>, c: &Connect) -> Result<bool, CloseReason> {
    let users = b.auth().passwords().is_some() || b.auth().postgres().is_some();
    match (&c.username, users) {
        (None, _) if !b.auth().allow_anonymous() => Err(CloseReason::AnonymousNotAllowed),
        // a username alone proves nothing: without a password file (or a certificate CN from
        // a trusted proxy) such a client is as anonymous as one without
        (Some(_), false) if !b.auth().allow_anonymous() => Err(CloseReason::NoPasswordFile),
        (Some(u), true) => {
            let Some(stored) = super::authorize::stored_hash(b, u).await? else {
                return Ok(true); // the database is down and on_unavailable = "allow"
            };
            let pw = c.password.clone().unwrap_or_default();
            b.auth()
                .check_password(u, pw, stored)
                .await
                .map_err(|e| match e {
                    CheckError::Wrong => CloseReason::BadCredentials,
                    CheckError::Busy => CloseReason::PasswordChecksBusy,
                })?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// "client connected" at INFO; an LB health check at DEBUG.
fn log_connected(
    connect: &Connect,
    a: &Admitted,
    att: &Attach,
    info: &ClientInfo,
    conn_id: u64,
    quiet: bool,
) {
    if quiet {
        tracing::debug!(conn = conn_id, client_id = %a.client_id, peer = %info.addr, "health check connected");
    } else {
        tracing::info!(
            conn = conn_id,
            client_id = %a.client_id,
            username = a.username.as_deref().unwrap_or(""),
            peer = %info.addr,
            version = connect.version.level(),
            clean_start = connect.clean_start,
            session_present = att.session_present,
            "client connected"
        );
    }
}

/// What a v5 CONNACK tells the client: our limits, the keep-alive we enforce when it is not
/// the one asked for (MQTT 5 §3.2.2.3.14: the client must use it from now on), the client id
/// we assigned. Nothing for 3.1.1.
fn connack_properties(
    limits: Limits,
    connect: &Connect,
    a: &Admitted,
    keep_alive: u16,
) -> ConnAckProperties {
    let mut props = ConnAckProperties::default();
    if connect.version.is_v5() {
        props.receive_maximum = Some(limits.receive_maximum());
        props.maximum_packet_size = Some(limits.max_packet_size() as u32);
        props.topic_alias_maximum = Some(TOPIC_ALIAS_MAX);
        props.server_keep_alive = (keep_alive != connect.keep_alive).then_some(keep_alive);
        props.assigned_client_identifier = a.assigned.then(|| a.client_id.clone());
        // MQTT 5 §3.2.2.3.2: the server's Session Expiry Interval overrides the client's
        let asked = connect.properties.session_expiry_interval.unwrap_or(0);
        props.session_expiry_interval = (a.expiry != asked).then_some(a.expiry);
    }
    props
}

fn connack(session_present: bool, code: u8, properties: ConnAckProperties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        properties,
    })
}
