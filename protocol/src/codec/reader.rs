//! The codec's reader over one packet: it owns the packet's frame and reads each field with the
//! crate's wire [`Cursor`] rules, then advances past it, so that binary fields and the payload
//! come out as zero-copy [`Bytes`] slices — and the payload, the rest of the frame, without even
//! a reference count change. May import `error`, `packets` and `wire`.

use bytes::{Buf, Bytes};

use super::error::DecodeError::{self, Protocol};
use crate::wire::{BadField, Cursor, TRUNCATED};

/// Reads one packet's fields; every read says `Malformed` instead of panicking.
pub(super) struct Reader(Bytes);

impl Reader {
    /// Reads all of `frame` (a packet's bytes after its fixed header).
    pub(super) fn new(frame: Bytes) -> Self {
        Reader(frame)
    }

    /// One field by the wire rules, then past it.
    #[inline]
    fn read<T>(
        &mut self,
        f: impl FnOnce(&mut Cursor<'_>) -> Result<T, BadField>,
    ) -> Result<T, DecodeError> {
        let mut c = Cursor::new(&self.0);
        let v = f(&mut c)?;
        let used = self.0.len() - c.len();
        self.0.advance(used);
        Ok(v)
    }

    /// The next `n` bytes as a reader of their own (a property block, 2.2.2.1).
    pub(super) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        if self.0.len() < n {
            return Err(TRUNCATED.into());
        }
        Ok(Reader(self.0.split_to(n)))
    }

    /// Binary Data, zero-copy.
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.sub(n).map(|r| r.0)
    }

    /// The rest of the packet, zero-copy: a PUBLISH payload.
    pub(super) fn payload(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    /// A UTF-8 string, validated in place and copied once.
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        self.read(|c| c.string().map(str::to_owned))
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.read(|c| c.u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.read(|c| c.u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.read(|c| c.u32())
    }

    pub(super) fn varint(&mut self) -> Result<u32, DecodeError> {
        self.read(|c| c.varint())
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

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes left (an upper bound for a list of one-byte codes).
    pub(super) fn remaining(&self) -> usize {
        self.0.len()
    }

    /// The packet ends with its last field: anything after it is malformed.
    pub(super) fn end(&self) -> Result<(), DecodeError> {
        Ok(Cursor::new(&self.0).end()?)
    }
}
