//! The primitives every MQTT reader and writer in this crate is built on, written once: the
//! Variable Byte Integer (1.5.5), the two-byte integer, Binary Data (1.5.6) and the UTF-8 string
//! with its rules (1.5.4), read through a checked [`Cursor`] and written through a [`Sink`]. The
//! codec and the CONNECT peek both use them, so the broker and the LB cannot disagree on a field.
//! Imports nothing from the crate.

use bytes::{BufMut, BytesMut};

/// A field that breaks the wire rules. The codec and the peek wrap the text in their own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadField(pub(crate) &'static str);

/// A length or count that runs past the bytes of its packet.
pub(crate) const TRUNCATED: BadField = BadField("a field runs past the end of the packet");

/// Reads a Variable Byte Integer: `Ok(None)` when `b` ends before its last byte, `(value, length)`
/// otherwise. At most 4 bytes (2.2.3), in the fewest bytes that hold the value (MQTT-1.5.5-1 v5).
pub(crate) fn varint(b: &[u8]) -> Result<Option<(usize, usize)>, BadField> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(BadField("variable byte integer not in its shortest form"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(BadField("variable byte integer longer than 4 bytes"))
}

/// A checked cursor over one packet's bytes: every read says which field is bad instead of
/// panicking, and every read borrows from the packet (nothing is copied here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Cursor(b)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], BadField> {
        if self.0.len() < n {
            return Err(TRUNCATED);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, BadField> {
        let [b] = self.array()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, BadField> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, BadField> {
        self.array().map(u32::from_be_bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadField> {
        let b = self.take(N)?;
        b.try_into().map_err(|_| TRUNCATED)
    }

    pub(crate) fn varint(&mut self) -> Result<u32, BadField> {
        let (value, len) = varint(self.0)?.ok_or(TRUNCATED)?;
        self.take(len)?;
        u32::try_from(value).map_err(|_| TRUNCATED) // 4 × 7 bits always fit
    }

    /// Binary Data: two-byte length, then that many bytes (1.5.6).
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], BadField> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    /// UTF-8 Encoded String (1.5.4): two-byte length, then well-formed UTF-8 — which excludes the
    /// surrogates U+D800..U+DFFF (MQTT-1.5.3-1) — without U+0000 (MQTT-1.5.3-2). U+FEFF is kept,
    /// never stripped (MQTT-1.5.3-3).
    pub(crate) fn string(&mut self) -> Result<&'a str, BadField> {
        let n = usize::from(self.u16()?);
        let raw = self.0.get(..n).ok_or(TRUNCATED)?;
        let s = std::str::from_utf8(raw).map_err(|_| BadField("string is not valid UTF-8"))?;
        if raw.contains(&0) {
            return Err(BadField("string contains U+0000"));
        }
        self.take(n)?;
        Ok(s)
    }

    /// The packet ends with its last field: anything after it is malformed.
    pub(crate) fn end(&self) -> Result<(), BadField> {
        if !self.is_empty() {
            return Err(BadField("bytes after the last field"));
        }
        Ok(())
    }
}

/// Where encoding goes: a buffer, or a [`Counter`] that measures the same writes, so that
/// lengths and bytes come from one piece of code and cannot disagree.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn byte(&mut self, b: u8) {
        self.put(&[b]);
    }
    fn short(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
}

/// A sink that only counts: the length of what would be written.
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn byte(&mut self, b: u8) {
        self.put_u8(b);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

pub(crate) fn put_varint<S: Sink>(s: &mut S, mut v: usize) {
    while v >= 0x80 {
        s.byte((v % 0x80) as u8 | 0x80);
        v /= 0x80;
    }
    s.byte(v as u8);
}

/// Binary Data, cut at 65,535 bytes (decode never produces longer).
pub(crate) fn put_bin<S: Sink>(s: &mut S, v: &[u8]) {
    let n = v.len().min(usize::from(u16::MAX));
    s.short(n as u16);
    s.put(v.get(..n).unwrap_or_default());
}

/// A string, cut at 65,535 bytes on a character boundary so that it stays valid UTF-8.
pub(crate) fn put_str<S: Sink>(s: &mut S, v: &str) {
    let mut n = v.len().min(usize::from(u16::MAX));
    while !v.is_char_boundary(n) {
        n -= 1;
    }
    put_bin(s, v.as_bytes().get(..n).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_bounds_and_shortest_form() {
        for (bytes, want) in [
            (&[0x00][..], Some((0, 1))),
            (&[0x7F], Some((127, 1))),
            (&[0x80, 0x01], Some((128, 2))),
            (&[0xFF, 0xFF, 0xFF, 0x7F], Some((268_435_455, 4))),
            (&[], None),
            (&[0x80], None),
            (&[0xFF, 0xFF, 0xFF], None),
        ] {
            assert_eq!(varint(bytes), Ok(want), "{bytes:02x?}");
        }
        assert!(varint(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(varint(&[0x80, 0x00]).is_err());
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint(&out), Ok(Some((v, out.len()))), "{v}");
            let mut c = Counter(0);
            put_varint(&mut c, v);
            assert_eq!(c.0, out.len());
        }
    }

    #[test]
    fn strings() {
        let mut out = Vec::new();
        put_str(&mut out, "h\u{e9}\u{FEFF}");
        assert_eq!(Cursor::new(&out).string(), Ok("h\u{e9}\u{FEFF}"));
        assert!(Cursor::new(&[0, 2, b'a', 0]).string().is_err());
        assert!(Cursor::new(&[0, 3, 0xED, 0xA0, 0x80]).string().is_err()); // a surrogate
        assert_eq!(Cursor::new(&[0, 3, b'a']).string(), Err(TRUNCATED));
        let long = "\u{e9}".repeat(40_000);
        let mut out = Vec::new();
        put_str(&mut out, &long);
        assert_eq!(Cursor::new(&out).string().map(str::len), Ok(65_534));
    }
}
