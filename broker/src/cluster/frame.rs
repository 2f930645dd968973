//! The node-to-node wire format: length-delimited, versioned frames over TCP.
//! `[u32 length][u8 version = 1][u8 kind][body]`, the length counting version, kind and body.
//! Pure: bytes in, frames out (or `None` for "need more"), so it is unit-tested alone.

use bytes::Bytes;

use crate::message::{put, Rd};

/// The frame format version this node speaks.
pub const VERSION: u8 = 1;
/// Largest frame accepted (a route snapshot of ~1M filters fits).
pub const MAX_FRAME: usize = 256 << 20;

/// One node-to-node message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on a connection: who is talking, and which incarnation.
    Hello {
        /// Node name.
        node: String,
        /// Incarnation (start time); a restarted node has a new one.
        epoch: u64,
        /// The receiver's incarnation the sender dialed: frames queued for an incarnation that
        /// is gone are never delivered to the next one (the receiver refuses the connection).
        to_epoch: u64,
    },
    /// The sender's complete set of local filters (replaces what the receiver knew).
    RoutesReset {
        /// Filters, `$share/G/F` included.
        filters: Vec<String>,
    },
    /// The sender gained its first local subscriber of a filter.
    RouteAdd {
        /// Filter.
        filter: String,
    },
    /// The sender lost its last local subscriber of a filter.
    RouteDel {
        /// Filter.
        filter: String,
    },
    /// A publish for the receiver's subscribers.
    Forward {
        /// Nonzero: acknowledge with `ForwardAck` once delivered (QoS 1/2).
        id: u64,
        /// Deliver to matching non-shared subscribers.
        direct: bool,
        /// Shared groups (group, filter) the receiver must serve with one member each.
        shared: Vec<(String, String)>,
        /// The message (`Message::encode`), shared by the copies to several peers.
        msg: Bytes,
    },
    /// A forward was delivered (queued) on the receiver.
    ForwardAck {
        /// The forward's id.
        id: u64,
    },
    /// Retained messages with their versions (all of them and the tombstones at connect;
    /// `payload` empty clears).
    Retained {
        /// Versioned records (`retained_versions::encode_record`).
        msgs: Vec<Vec<u8>>,
    },
    /// A client connects elsewhere: hand its session over (or just end it for clean start).
    TakeSession {
        /// Request id.
        id: u64,
        /// Client identifier.
        client_id: String,
        /// Whether the new connection wants a clean start (nothing to move).
        clean_start: bool,
    },
    /// Answer to `TakeSession`. With an export, the sender froze the session: it keeps it until
    /// `SessionDone` (or its freeze deadline).
    Session {
        /// Request id.
        id: u64,
        /// Client identifier (so a late answer can still be settled).
        client_id: String,
        /// The session record and its queued messages, when the receiver had one to give.
        export: Option<(Vec<u8>, Vec<Vec<u8>>)>,
    },
    /// The sender is leaving the cluster gracefully.
    Leave,
    /// The asker settles a handover: `keep` false = it holds the session durably now (delete
    /// yours and send what was queued since the export); true = it did not take it (unfreeze).
    SessionDone {
        /// The `TakeSession` request id.
        id: u64,
        /// Client identifier.
        client_id: String,
        /// Whether the old holder keeps the session.
        keep: bool,
    },
    /// Messages queued into a frozen session after its export, for the new holder's queue
    /// (entries as in the export).
    SessionAppend {
        /// Client identifier.
        client_id: String,
        /// Entries (`encode_handover` format).
        queued: Vec<Vec<u8>>,
    },
    /// Heartbeat on the sender's outgoing channel: the receiver answers [`Frame::Pong`] on its
    /// own, so the sender learns that the round trip acks travel is alive.
    Ping {
        /// The sender's clock (ms), echoed back.
        at: u64,
    },
    /// A restarted node asks which of the sessions it restored the receiver holds (their
    /// clients reconnected there while it was down): those are pushed there, merged, not kept.
    /// Or a node asks a peer that came back which of its connected clients' sessions the peer
    /// still holds offline: those are taken from it.
    Holds {
        /// Request id.
        id: u64,
        /// Client identifiers.
        client_ids: Vec<String>,
        /// Only the ones whose client is not connected to the receiver (a peer back from a
        /// pause or a cut asks which copies of its connected clients' sessions it left here).
        offline_only: bool,
    },
    /// Answer to [`Frame::Holds`]: the ones the sender holds a persistent session of.
    Held {
        /// The request id.
        id: u64,
        /// Client identifiers.
        client_ids: Vec<String>,
    },
    /// Answer to [`Frame::Ping`].
    Pong {
        /// The ping's `at`.
        at: u64,
    },
    /// The first piece of a frame too large to go whole (a snapshot, an export): `total`
    /// bytes of its encoding follow in this and the next [`Frame::ChunkMore`]s
    /// ([`super::chunks`]).
    ChunkStart {
        /// Length of the whole encoded frame.
        total: u64,
        /// Its first bytes (a slice of the encoding: splitting copies nothing).
        data: Bytes,
    },
    /// The next piece of the frame a [`Frame::ChunkStart`] began.
    ChunkMore {
        /// The next bytes.
        data: Bytes,
    },
    /// Session replication: store ops on the sender's persistent sessions that the receiver
    /// keeps as standby copies (`[cluster] session_replicas = 2`); answered with
    /// [`Frame::ForwardAck`] once durable there.
    Replicate {
        /// Nonzero: acknowledge once durable.
        id: u64,
        /// The ops (the broker's `replica::ops` encoding; opaque here).
        ops: Vec<u8>,
    },
    /// The sender promoted every standby copy it had of `of`'s sessions (`of` is down): once
    /// every live node said so, `of`'s held routes are no longer needed.
    Promoted {
        /// The node that is down.
        of: String,
    },
    /// Many [`Frame::ForwardAck`]s in one: every id of each `(first, count)` range was
    /// delivered (or is durable) here. Sent only to a peer that announces it reads them
    /// (gossip key [`ACK_RANGES_KEY`]); at most [`MAX_RANGE_ACKS`] ids per frame.
    ForwardAcks {
        /// `(first id, how many ids from it)`, each count at least 1.
        ranges: Vec<(u64, u32)>,
    },
}

/// The gossip key a node announces when it reads [`Frame::ForwardAcks`] (older nodes close the
/// channel on a kind they do not know, so a peer without it gets one `ForwardAck` per id).
pub const ACK_RANGES_KEY: &str = "ack_ranges";
/// The most ids one [`Frame::ForwardAcks`] may acknowledge (a receiver's work per frame is
/// bounded by it, whatever the ranges claim).
pub const MAX_RANGE_ACKS: u64 = 1 << 16;

impl Frame {
    /// About the bytes this frame takes encoded: what the per-peer queue bounds count.
    pub fn weight(&self) -> usize {
        let strs = |v: &[String]| v.iter().map(|s| s.len() + 4).sum::<usize>();
        let bufs = |v: &[Vec<u8>]| v.iter().map(|b| b.len() + 4).sum::<usize>();
        32 + match self {
            Frame::Hello { node, .. } => node.len(),
            Frame::RoutesReset { filters } => strs(filters),
            Frame::RouteAdd { filter } | Frame::RouteDel { filter } => filter.len(),
            Frame::Forward { shared, msg, .. } => {
                msg.len()
                    + shared
                        .iter()
                        .map(|(g, f)| g.len() + f.len() + 8)
                        .sum::<usize>()
            }
            Frame::Retained { msgs } => bufs(msgs),
            Frame::TakeSession { client_id, .. } | Frame::SessionDone { client_id, .. } => {
                client_id.len()
            }
            Frame::Session {
                client_id, export, ..
            } => client_id.len() + export.as_ref().map(|(r, q)| r.len() + bufs(q)).unwrap_or(0),
            Frame::SessionAppend { client_id, queued } => client_id.len() + bufs(queued),
            Frame::Holds { client_ids, .. } | Frame::Held { client_ids, .. } => strs(client_ids),
            Frame::ChunkStart { data, .. } | Frame::ChunkMore { data } => data.len() + 8,
            Frame::Replicate { ops, .. } => ops.len() + 8,
            Frame::Promoted { of } => of.len(),
            Frame::ForwardAcks { ranges } => 4 + ranges.len() * 12,
            Frame::ForwardAck { .. } | Frame::Leave | Frame::Ping { .. } | Frame::Pong { .. } => 0,
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A version this node does not speak.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// Bad body.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

fn put_str(o: &mut Vec<u8>, s: &str) {
    put(o, s.as_bytes());
}

/// Appends the encoding of a frame.
pub fn encode(f: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    // the body goes straight after the header (its kind byte is set below)
    out.reserve(f.weight());
    out.extend_from_slice(&[0, 0, 0, 0, VERSION, 0]);
    let b = &mut *out;
    let kind: u8 = match f {
        Frame::Hello {
            node,
            epoch,
            to_epoch,
        } => {
            put_str(b, node);
            b.extend_from_slice(&epoch.to_be_bytes());
            b.extend_from_slice(&to_epoch.to_be_bytes());
            1
        }
        Frame::RoutesReset { filters } => {
            b.extend_from_slice(&(filters.len() as u32).to_be_bytes());
            for x in filters {
                put_str(b, x);
            }
            2
        }
        Frame::RouteAdd { filter } => {
            put_str(b, filter);
            3
        }
        Frame::RouteDel { filter } => {
            put_str(b, filter);
            4
        }
        Frame::Forward {
            id,
            direct,
            shared,
            msg,
        } => {
            b.extend_from_slice(&id.to_be_bytes());
            b.push(u8::from(*direct));
            b.extend_from_slice(&(shared.len() as u32).to_be_bytes());
            for (g, x) in shared {
                put_str(b, g);
                put_str(b, x);
            }
            put(b, msg);
            5
        }
        Frame::ForwardAck { id } => {
            b.extend_from_slice(&id.to_be_bytes());
            6
        }
        Frame::Retained { msgs } => {
            b.extend_from_slice(&(msgs.len() as u32).to_be_bytes());
            for m in msgs {
                put(b, m);
            }
            7
        }
        Frame::TakeSession {
            id,
            client_id,
            clean_start,
        } => {
            b.extend_from_slice(&id.to_be_bytes());
            put_str(b, client_id);
            b.push(u8::from(*clean_start));
            8
        }
        Frame::Session {
            id,
            client_id,
            export,
        } => {
            b.extend_from_slice(&id.to_be_bytes());
            put_str(b, client_id);
            match export {
                Some((rec, queued)) => {
                    b.push(1);
                    put(b, rec);
                    b.extend_from_slice(&(queued.len() as u32).to_be_bytes());
                    for q in queued {
                        put(b, q);
                    }
                }
                None => b.push(0),
            }
            9
        }
        Frame::Leave => 10,
        Frame::SessionDone {
            id,
            client_id,
            keep,
        } => {
            b.extend_from_slice(&id.to_be_bytes());
            put_str(b, client_id);
            b.push(u8::from(*keep));
            11
        }
        Frame::SessionAppend { client_id, queued } => {
            put_str(b, client_id);
            b.extend_from_slice(&(queued.len() as u32).to_be_bytes());
            for q in queued {
                put(b, q);
            }
            12
        }
        Frame::Ping { at } => {
            b.extend_from_slice(&at.to_be_bytes());
            13
        }
        Frame::Pong { at } => {
            b.extend_from_slice(&at.to_be_bytes());
            14
        }
        Frame::Holds { id, client_ids, .. } | Frame::Held { id, client_ids } => {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&(client_ids.len() as u32).to_be_bytes());
            for c in client_ids {
                put_str(b, c);
            }
            if let Frame::Holds { offline_only, .. } = f {
                b.push(u8::from(*offline_only));
                15
            } else {
                16
            }
        }
        Frame::ChunkStart { total, data } => {
            b.extend_from_slice(&total.to_be_bytes());
            put(b, data);
            17
        }
        Frame::ChunkMore { data } => {
            put(b, data);
            18
        }
        Frame::Replicate { id, ops } => {
            b.extend_from_slice(&id.to_be_bytes());
            put(b, ops);
            19
        }
        Frame::Promoted { of } => {
            put_str(b, of);
            20
        }
        Frame::ForwardAcks { ranges } => {
            b.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
            for (first, count) in ranges {
                b.extend_from_slice(&first.to_be_bytes());
                b.extend_from_slice(&count.to_be_bytes());
            }
            21
        }
    };
    out[start + 5] = kind;
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decodes one frame from the front of `buf`; returns it and the bytes it used, or `None` when
/// more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_capped(buf, MAX_FRAME)
}

/// [`decode`] with another size cap (a frame reassembled from chunks may be larger).
pub fn decode_capped(buf: &[u8], cap: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > cap {
        return Err(FrameError::TooLarge(len));
    }
    if len < 2 {
        return Err(FrameError::Malformed("frame shorter than its header"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let v = buf[4];
    if v != VERSION {
        return Err(FrameError::Version(v));
    }
    let kind = buf[5];
    let mut r = Rd(&buf[6..4 + len]);
    let bad = FrameError::Malformed("truncated body");
    let s = |r: &mut Rd<'_>| r.string().ok_or(FrameError::Malformed("truncated string"));
    let f = match kind {
        1 => Frame::Hello {
            node: s(&mut r)?,
            epoch: r.u64().ok_or(bad.clone())?,
            to_epoch: r.u64().ok_or(bad.clone())?,
        },
        2 => {
            let n = r.u32().ok_or(bad.clone())? as usize;
            let mut filters = Vec::with_capacity(n.min(1 << 20));
            for _ in 0..n {
                filters.push(s(&mut r)?);
            }
            Frame::RoutesReset { filters }
        }
        3 => Frame::RouteAdd { filter: s(&mut r)? },
        4 => Frame::RouteDel { filter: s(&mut r)? },
        5 => {
            let id = r.u64().ok_or(bad.clone())?;
            let direct = r.u8().ok_or(bad.clone())? != 0;
            let n = r.u32().ok_or(bad.clone())? as usize;
            let mut shared = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                shared.push((s(&mut r)?, s(&mut r)?));
            }
            let msg = Bytes::copy_from_slice(r.bytes().ok_or(bad.clone())?);
            Frame::Forward {
                id,
                direct,
                shared,
                msg,
            }
        }
        6 => Frame::ForwardAck {
            id: r.u64().ok_or(bad.clone())?,
        },
        7 => {
            let n = r.u32().ok_or(bad.clone())? as usize;
            let mut msgs = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                msgs.push(r.bytes().ok_or(bad.clone())?.to_vec());
            }
            Frame::Retained { msgs }
        }
        8 => Frame::TakeSession {
            id: r.u64().ok_or(bad.clone())?,
            client_id: s(&mut r)?,
            clean_start: r.u8().ok_or(bad.clone())? != 0,
        },
        9 => {
            let id = r.u64().ok_or(bad.clone())?;
            let client_id = s(&mut r)?;
            let export = match r.u8().ok_or(bad.clone())? {
                0 => None,
                _ => {
                    let rec = r.bytes().ok_or(bad.clone())?.to_vec();
                    let n = r.u32().ok_or(bad.clone())? as usize;
                    let mut q = Vec::with_capacity(n.min(1 << 16));
                    for _ in 0..n {
                        q.push(r.bytes().ok_or(bad.clone())?.to_vec());
                    }
                    Some((rec, q))
                }
            };
            Frame::Session {
                id,
                client_id,
                export,
            }
        }
        10 => Frame::Leave,
        11 => Frame::SessionDone {
            id: r.u64().ok_or(bad.clone())?,
            client_id: s(&mut r)?,
            keep: r.u8().ok_or(bad.clone())? != 0,
        },
        12 => {
            let client_id = s(&mut r)?;
            let n = r.u32().ok_or(bad.clone())? as usize;
            let mut queued = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                queued.push(r.bytes().ok_or(bad.clone())?.to_vec());
            }
            Frame::SessionAppend { client_id, queued }
        }
        13 => Frame::Ping {
            at: r.u64().ok_or(bad.clone())?,
        },
        14 => Frame::Pong {
            at: r.u64().ok_or(bad.clone())?,
        },
        15 | 16 => {
            let id = r.u64().ok_or(bad.clone())?;
            let n = r.u32().ok_or(bad.clone())? as usize;
            let mut client_ids = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                client_ids.push(s(&mut r)?);
            }
            if kind == 15 {
                let offline_only = r.u8().ok_or(bad.clone())? != 0;
                Frame::Holds {
                    id,
                    client_ids,
                    offline_only,
                }
            } else {
                Frame::Held { id, client_ids }
            }
        }
        17 => Frame::ChunkStart {
            total: r.u64().ok_or(bad.clone())?,
            data: Bytes::copy_from_slice(r.bytes().ok_or(bad.clone())?),
        },
        18 => Frame::ChunkMore {
            data: Bytes::copy_from_slice(r.bytes().ok_or(bad.clone())?),
        },
        19 => Frame::Replicate {
            id: r.u64().ok_or(bad.clone())?,
            ops: r.bytes().ok_or(bad.clone())?.to_vec(),
        },
        20 => Frame::Promoted { of: s(&mut r)? },
        21 => Frame::ForwardAcks {
            ranges: decode_ranges(&mut r)?,
        },
        _ => return Err(FrameError::Malformed("unknown frame kind")),
    };
    if !r.0.is_empty() {
        return Err(FrameError::Malformed("trailing bytes"));
    }
    Ok(Some((f, 4 + len)))
}

/// The ranges of a [`Frame::ForwardAcks`]: each count at least 1, no range past `u64::MAX`,
/// at most [`MAX_RANGE_ACKS`] ids in all.
fn decode_ranges(r: &mut Rd<'_>) -> Result<Vec<(u64, u32)>, FrameError> {
    let bad = FrameError::Malformed("truncated body");
    let n = r.u32().ok_or(bad.clone())? as usize;
    let mut ranges = Vec::with_capacity(n.min(r.0.len() / 12));
    let mut ids = 0u64;
    for _ in 0..n {
        let first = r.u64().ok_or(bad.clone())?;
        let count = r.u32().ok_or(bad.clone())?;
        if count == 0 || first.checked_add(u64::from(count) - 1).is_none() {
            return Err(FrameError::Malformed("empty or overflowing ack range"));
        }
        ids += u64::from(count);
        if ids > MAX_RANGE_ACKS {
            return Err(FrameError::Malformed("too many ids in one ack frame"));
        }
        ranges.push((first, count));
    }
    Ok(ranges)
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
