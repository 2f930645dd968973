//! Chunked transfers on the node channel: a frame whose encoding is over [`CHUNK_SIZE`] (a
//! route or retained snapshot, a session export, what follows a moved session) goes as a
//! [`Frame::ChunkStart`] and [`Frame::ChunkMore`]s of at most that many bytes, queued back to
//! back on the peer's one ordered channel, so heartbeats go out between them and no single
//! frame comes near the frame cap. The receiver puts the bytes together and applies the frame
//! only once it is complete, exactly as if it had come whole: a snapshot still replaces what
//! the receiver knew, a session is imported whole or not at all.
//!
//! The receiver is bounded: a transfer announcing more than [`MAX_TRANSFER`] bytes, or sending
//! more than it announced, is a protocol error; so is a piece out of order (a `ChunkMore`
//! with no transfer open, a `ChunkStart` while one is open, or any frame but a heartbeat in
//! the middle of one). An unfinished transfer is dropped when its channel closes. Both are
//! logged and counted (`cluster_transfers_dropped`).

use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use super::frame::{decode_capped, encode, Frame, FrameError};
use super::peer::{Peer, Unsent};

/// The largest piece of a chunked transfer (the bytes of one `ChunkStart` / `ChunkMore`), and
/// the encoded size over which a control frame is chunked.
pub(crate) const CHUNK_SIZE: usize = 4 << 20;

/// The largest frame a chunked transfer may carry: what one inbound channel may hold of an
/// unfinished transfer (besides its read buffer).
pub(crate) const MAX_TRANSFER: usize = 1 << 30;

/// Why a transfer was refused or dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The frame (announced or encoded) is over [`MAX_TRANSFER`].
    #[error("chunked transfer of {0} bytes is over the {MAX_TRANSFER} bytes allowed")]
    TooLarge(u64),
    /// More bytes than the `ChunkStart` announced.
    #[error("chunked transfer sent {got} bytes of an announced {total}")]
    Overrun {
        /// Announced.
        total: u64,
        /// Received so far.
        got: u64,
    },
    /// A piece or a frame where it cannot be.
    #[error("chunked transfer out of order: {0}")]
    OutOfOrder(&'static str),
    /// The reassembled bytes are not one frame.
    #[error("chunked transfer is not a frame: {0}")]
    Frame(#[from] FrameError),
}

/// The frames that carry one frame on the wire: itself (no list: every forward and small
/// frame), or its pieces.
#[derive(Debug)]
pub(crate) enum Pieces {
    Whole(Option<Frame>),
    Split(std::vec::IntoIter<Frame>),
}

impl Iterator for Pieces {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        match self {
            Pieces::Whole(f) => f.take(),
            Pieces::Split(v) => v.next(),
        }
    }
}

/// Splits a frame for the wire: itself when its encoding is at most `chunk` bytes, otherwise
/// the pieces that carry it. Forwards are never split (the data queue counts them whole).
pub(crate) fn split(f: Frame, chunk: usize) -> Result<Pieces, ChunkError> {
    if matches!(f, Frame::Forward { .. }) || f.weight() <= chunk {
        return Ok(Pieces::Whole(Some(f)));
    }
    let mut whole = Vec::with_capacity(f.weight());
    encode(&f, &mut whole);
    drop(f);
    if whole.len() > MAX_TRANSFER {
        return Err(ChunkError::TooLarge(whole.len() as u64));
    }
    let chunk = chunk.max(1);
    let total = whole.len() as u64;
    let whole = Bytes::from(whole);
    Ok(Pieces::Split(
        (0..whole.len())
            .step_by(chunk)
            .map(|at| {
                let data = whole.slice(at..(at + chunk).min(whole.len()));
                match at {
                    0 => Frame::ChunkStart { total, data },
                    _ => Frame::ChunkMore { data },
                }
            })
            .collect::<Vec<_>>()
            .into_iter(),
    ))
}

/// Queues a frame to a peer, in pieces of [`CHUNK_SIZE`] when it is larger; the pieces go back
/// to back (callers hold the peers lock, so nothing else is queued between them).
pub(super) fn send(p: &Peer, f: Frame) -> Result<(), Unsent> {
    for piece in split(f, CHUNK_SIZE).map_err(|_| Unsent::TooLarge)? {
        p.send(piece)?;
    }
    Ok(())
}

/// One inbound channel's unfinished transfer; dropped with the channel (logged and counted).
pub(super) struct Reassembly {
    /// The bytes so far and how many were announced.
    open: Option<(Vec<u8>, u64)>,
    /// The most a transfer may announce ([`MAX_TRANSFER`]; lower in tests).
    cap: u64,
    /// Transfers dropped unfinished or refused (`cluster_transfers_dropped`).
    dropped: Counter,
    /// Transfers completed (`cluster_transfers_received`).
    received: Counter,
    /// This node and the peer, for the log line of a dropped transfer.
    who: (Arc<str>, Arc<str>),
}

impl Reassembly {
    /// The reassembly of the channel from `peer` to `node`, counting into `dropped` and
    /// `received`.
    pub(super) fn new(
        cap: usize,
        dropped: Counter,
        received: Counter,
        who: (Arc<str>, Arc<str>),
    ) -> Reassembly {
        Reassembly {
            open: None,
            cap: cap as u64,
            dropped,
            received,
            who,
        }
    }

    /// Takes the next frame read: the frame to apply now (a whole one, or the one a transfer
    /// just completed), `None` while a transfer is unfinished, or why the channel must close
    /// (the transfer is then dropped, logged and counted).
    pub(super) fn take(&mut self, f: Frame) -> Result<Option<Frame>, ChunkError> {
        let r = self.step(f);
        if let Err(e) = &r {
            self.drop_open(&e.to_string());
        }
        r
    }

    fn step(&mut self, f: Frame) -> Result<Option<Frame>, ChunkError> {
        let data = match f {
            Frame::ChunkStart { total, data } => {
                if self.open.is_some() {
                    return Err(ChunkError::OutOfOrder(
                        "a new transfer before the last ended",
                    ));
                }
                if total > self.cap {
                    return Err(ChunkError::TooLarge(total));
                }
                // room for what is announced (at most the cap) is reserved, not touched: memory
                // grows with what arrives
                self.open = Some((Vec::with_capacity(total as usize), total));
                data
            }
            Frame::ChunkMore { data } => data,
            f @ (Frame::Ping { .. } | Frame::Pong { .. }) => return Ok(Some(f)),
            f if self.open.is_none() => return Ok(Some(f)),
            _ => {
                return Err(ChunkError::OutOfOrder(
                    "a frame in the middle of a transfer",
                ))
            }
        };
        let Some((buf, total)) = &mut self.open else {
            return Err(ChunkError::OutOfOrder(
                "a continuation with no transfer open",
            ));
        };
        let total = *total;
        let got = (buf.len() + data.len()) as u64;
        if got > total {
            return Err(ChunkError::Overrun { total, got });
        }
        buf.extend_from_slice(&data);
        if got < total {
            return Ok(None);
        }
        let whole = self.open.take().map(|(b, _)| b).unwrap_or_default();
        let frame = match decode_capped(&whole, self.cap as usize)? {
            Some((f, used)) if used == whole.len() => f,
            _ => return Err(FrameError::Malformed("a transfer is not exactly one frame").into()),
        };
        if matches!(frame, Frame::ChunkStart { .. } | Frame::ChunkMore { .. }) {
            return Err(ChunkError::OutOfOrder("a transfer inside a transfer"));
        }
        self.received.inc();
        Ok(Some(frame))
    }

    fn drop_open(&mut self, why: &str) {
        let (got, total) = self
            .open
            .take()
            .map(|(b, t)| (b.len() as u64, t))
            .unwrap_or((0, 0));
        self.dropped.inc();
        tracing::warn!(node = %self.who.0, peer = %self.who.1, got, total, why, "cluster: chunked transfer from peer dropped");
    }
}

impl Drop for Reassembly {
    fn drop(&mut self) {
        if self.open.is_some() {
            self.drop_open("the channel closed in the middle of it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asm(cap: usize) -> (Reassembly, Counter, Counter) {
        let (d, r) = (Counter::default(), Counter::default());
        let who = (Arc::from("a"), Arc::from("b"));
        (Reassembly::new(cap, d.clone(), r.clone(), who), d, r)
    }

    fn export(n: usize) -> Frame {
        Frame::Session {
            id: 7,
            client_id: "c".into(),
            export: Some((vec![1; 100], (0..n).map(|i| vec![i as u8; 1000]).collect())),
        }
    }

    #[test]
    fn a_large_export_splits_into_many_small_pieces_and_comes_back_whole() {
        let f = export(200);
        let pieces = split(f.clone(), 4096).unwrap().collect::<Vec<_>>();
        assert!(pieces.len() > 40, "{}", pieces.len());
        assert!(matches!(pieces[0], Frame::ChunkStart { .. }));
        for p in &pieces {
            let mut b = Vec::new();
            encode(p, &mut b);
            assert!(b.len() <= 4096 + 32, "a piece of {} bytes", b.len());
        }
        let (mut a, dropped, received) = asm(MAX_TRANSFER);
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let out = a.take(p).unwrap();
            assert_eq!(out.is_some(), i == n - 1);
            if let Some(got) = out {
                assert_eq!(got, f);
            }
            // heartbeats pass in the middle of a transfer
            if i < n - 1 {
                assert_eq!(
                    a.take(Frame::Ping { at: 1 }).unwrap(),
                    Some(Frame::Ping { at: 1 })
                );
            }
        }
        assert_eq!((dropped.get(), received.get()), (0, 1));
        // small frames and forwards go whole
        assert_eq!(
            split(Frame::Leave, 4096).unwrap().collect::<Vec<_>>(),
            vec![Frame::Leave]
        );
        let fwd = Frame::Forward {
            id: 1,
            direct: true,
            shared: vec![],
            msg: Bytes::from(vec![0; 10_000]),
        };
        assert_eq!(
            split(fwd.clone(), 4096).unwrap().collect::<Vec<_>>(),
            vec![fwd]
        );
        assert_eq!(a.take(Frame::Leave).unwrap(), Some(Frame::Leave));
    }

    #[test]
    fn a_transfer_over_the_cap_is_refused_before_it_grows() {
        let pieces = split(export(50), 1000).unwrap().collect::<Vec<_>>();
        let (mut a, dropped, _) = asm(10_000);
        assert!(matches!(
            a.take(pieces[0].clone()),
            Err(ChunkError::TooLarge(_))
        ));
        assert_eq!(dropped.get(), 1);
        // a sender that announces little and sends more
        let (mut a, dropped, _) = asm(MAX_TRANSFER);
        a.take(Frame::ChunkStart {
            total: 3,
            data: Bytes::from_static(&[0, 0]),
        })
        .unwrap();
        assert!(matches!(
            a.take(Frame::ChunkMore {
                data: Bytes::from_static(&[0; 5]),
            }),
            Err(ChunkError::Overrun { total: 3, got: 7 })
        ));
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn pieces_out_of_order_are_protocol_errors() {
        let pieces = split(export(20), 1000).unwrap().collect::<Vec<_>>();
        let (mut a, dropped, _) = asm(MAX_TRANSFER);
        assert!(matches!(
            a.take(pieces[1].clone()),
            Err(ChunkError::OutOfOrder(_))
        ));
        assert!(a.take(pieces[0].clone()).unwrap().is_none());
        assert!(matches!(
            a.take(pieces[0].clone()),
            Err(ChunkError::OutOfOrder(_))
        ));
        assert!(a.take(pieces[0].clone()).unwrap().is_none());
        assert!(matches!(
            a.take(Frame::RouteAdd { filter: "x".into() }),
            Err(ChunkError::OutOfOrder(_))
        ));
        assert_eq!(dropped.get(), 3);
        // a transfer of a transfer, and bytes that are not a frame
        let inner = split(
            Frame::ChunkMore {
                data: Bytes::from(vec![1; 3000]),
            },
            1000,
        )
        .unwrap();
        let (mut a, _, _) = asm(MAX_TRANSFER);
        let mut last = Ok(None);
        for p in inner {
            last = a.take(p);
        }
        assert!(matches!(last, Err(ChunkError::OutOfOrder(_))));
        let mut a = asm(MAX_TRANSFER).0;
        let noise = Frame::ChunkStart {
            total: 4,
            data: Bytes::from_static(&[0, 0, 0, 9]),
        };
        assert!(matches!(a.take(noise), Err(ChunkError::Frame(_))));
    }

    #[test]
    fn a_truncated_transfer_is_dropped_with_its_channel() {
        let pieces = split(export(20), 1000).unwrap().collect::<Vec<_>>();
        let (mut a, dropped, received) = asm(MAX_TRANSFER);
        for p in pieces.iter().take(pieces.len() - 1) {
            assert!(a.take(p.clone()).unwrap().is_none());
        }
        drop(a);
        assert_eq!((dropped.get(), received.get()), (1, 0));
        // a channel that closes between transfers drops nothing
        let (mut a, dropped, _) = asm(MAX_TRANSFER);
        for p in pieces {
            a.take(p).unwrap();
        }
        drop(a);
        assert_eq!(dropped.get(), 0);
    }
}
