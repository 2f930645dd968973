//! The codec's cursor over one packet: the crate's wire [`Cursor`] (reached through `Deref`) plus
//! the frame it reads, so that binary fields and payloads come out as zero-copy [`Bytes`] slices
//! of the read buffer. May import `error`, `packets` and `wire`.

use std::ops::{Deref, DerefMut};

use bytes::Bytes;

use super::error::DecodeError::{self, Protocol};
use crate::wire::Cursor;

/// Reads one packet's fields; every read says `Malformed` instead of panicking.
pub(super) struct Reader<'a> {
    frame: &'a Bytes,
    cur: Cursor<'a>,
}

impl<'a> Reader<'a> {
    /// Reads all of `frame` (a packet's bytes after its fixed header).
    pub(super) fn new(frame: &'a Bytes) -> Self {
        Reader {
            frame,
            cur: Cursor::new(frame),
        }
    }

    /// The next `n` bytes as a reader of their own (a property block, 2.2.2.1).
    pub(super) fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        let cur = Cursor::new(self.cur.take(n)?);
        Ok(Reader { cur, ..*self })
    }

    /// A slice of the frame, sharing its allocation.
    fn share(&self, part: &[u8]) -> Bytes {
        self.frame.slice_ref(part)
    }

    /// Binary Data, zero-copy.
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let b = self.cur.binary()?;
        Ok(self.share(b))
    }

    /// The rest of the packet, zero-copy: a PUBLISH payload.
    pub(super) fn payload(&mut self) -> Bytes {
        let b = self.cur.rest();
        self.share(b)
    }

    /// A UTF-8 string, validated in place and copied once.
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        Ok(self.cur.string()?.to_owned())
    }

    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(Protocol("packet identifier 0")), // MQTT-2.3.1-1
            id => Ok(id),
        }
    }

    /// A v5 reason code, which must be one of the packet's own.
    pub(super) fn code(&mut self, allowed: &[u8]) -> Result<u8, DecodeError> {
        let code = self.u8()?;
        if !allowed.contains(&code) {
            return Err(Protocol("reason code not allowed in this packet"));
        }
        Ok(code)
    }

    /// Bytes left (an upper bound for a list of one-byte codes).
    pub(super) fn remaining(&self) -> usize {
        self.cur.len()
    }
}

impl<'a> Deref for Reader<'a> {
    type Target = Cursor<'a>;
    fn deref(&self) -> &Cursor<'a> {
        &self.cur
    }
}

impl DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.cur
    }
}
