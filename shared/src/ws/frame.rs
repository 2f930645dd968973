//! WebSocket frames (RFC 6455 §5), pure and bounded: a [`Decoder`] that turns received bytes
//! into MQTT bytes in place (headers removed, payload unmasked) and keeps only a few words of
//! state between calls, and [`header`] for the server's own unmasked frames.
//!
//! The decoder never buffers a data frame: its payload is handed on as it arrives, so a frame's
//! size costs no memory; `max_frame` still refuses frames over the limit, as an operator's
//! guard against clients that announce gigabytes. Only a control frame's payload (at most 125
//! bytes) is held, for the pong or the close reply.

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    /// Continuation of a fragmented message.
    pub const CONT: u8 = 0x0;
    /// Text (refused: MQTT travels in binary frames).
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close status codes the LB and the broker send (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (a text frame).
    pub const UNSUPPORTED: u16 = 1003;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// Why a peer's frames were refused; each closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A client frame without a mask (MUST be masked, RFC 6455 §5.1).
    #[error("WebSocket frame from the client is not masked")]
    Unmasked,
    /// Reserved bits set without a negotiated extension.
    #[error("WebSocket frame with reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("WebSocket frame with unknown opcode {0:#x}")]
    BadOpcode(u8),
    /// A text frame: MQTT is carried in binary frames only (MQTT 5 §6.0).
    #[error("WebSocket text frame (MQTT needs binary frames)")]
    Text,
    /// A control frame over 125 bytes or fragmented.
    #[error("invalid WebSocket control frame")]
    BadControl,
    /// A continuation without a message, or a new message inside a fragmented one.
    #[error("WebSocket fragments out of order")]
    Fragmentation,
    /// A frame's declared payload is over `max_frame`.
    #[error("WebSocket frame of {0} bytes is over max_frame")]
    TooLarge(u64),
}

impl FrameError {
    /// The close code that tells the peer why.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Text => close_code::UNSUPPORTED,
            FrameError::TooLarge(_) => close_code::TOO_BIG,
            _ => close_code::PROTOCOL,
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            FrameError::Unmasked => "unmasked",
            FrameError::Reserved => "reserved_bits",
            FrameError::BadOpcode(_) => "bad_opcode",
            FrameError::Text => "text_frame",
            FrameError::BadControl => "bad_control",
            FrameError::Fragmentation => "fragmentation",
            FrameError::TooLarge(_) => "too_large",
        }
    }
}

/// The most a control frame may carry.
pub const MAX_CONTROL: usize = 125;
/// The longest frame header (2 + 8 length + 4 mask).
const MAX_HEADER: usize = 14;

/// What a control frame asked for, kept until the stream acts on it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Control {
    /// A ping's payload to echo in a pong (only the latest is answered, RFC 6455 §5.5.3).
    pub pong: Option<Vec<u8>>,
    /// The peer's close code (`Some` once a close frame arrived; 1005 when it had none).
    pub close: Option<u16>,
}

/// The receiving side's state between calls; see the module docs.
#[derive(Debug)]
pub struct Decoder {
    max_frame: u64,
    require_mask: bool,
    hdr: [u8; MAX_HEADER],
    hdr_len: u8,
    /// Payload bytes of the current frame still to come (0: expecting a header).
    remaining: u64,
    mask: [u8; 4],
    mask_pos: u8,
    /// The current frame's opcode.
    opcode: u8,
    /// A data message was started without its final fragment.
    in_message: bool,
    /// A control frame's payload so far.
    ctrl: Vec<u8>,
    control: Control,
}

impl Decoder {
    /// A decoder for frames sent by a client (masked), of at most `max_frame` payload bytes.
    pub fn new(max_frame: u64) -> Decoder {
        Decoder {
            max_frame,
            require_mask: true,
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            remaining: 0,
            mask: [0; 4],
            mask_pos: 0,
            opcode: 0,
            in_message: false,
            ctrl: Vec::new(),
            control: Control::default(),
        }
    }

    /// Whether a frame is half received (an EOF now cuts it).
    pub fn mid_frame(&self) -> bool {
        self.hdr_len > 0 || self.remaining > 0
    }

    /// Takes what control frames asked for since the last call.
    pub fn take_control(&mut self) -> Control {
        std::mem::take(&mut self.control)
    }

    /// Whether a close frame has arrived (nothing after it is data).
    pub fn closed(&self) -> bool {
        self.control.close.is_some()
    }

    /// Decodes `buf` in place: afterwards `buf[..n]` holds the MQTT bytes (payload of binary
    /// and continuation frames, unmasked) it contained, and `n` is returned. Bytes after a close
    /// frame are ignored.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let mut rd = 0;
        let mut wr = 0;
        while rd < buf.len() && self.control.close.is_none() {
            if self.remaining == 0 {
                rd += self.header_byte(buf[rd])?;
                continue;
            }
            let take = ((buf.len() - rd) as u64).min(self.remaining) as usize;
            for i in 0..take {
                let b = buf[rd + i] ^ self.mask[(self.mask_pos as usize + i) & 3];
                if self.opcode >= op::CLOSE {
                    self.ctrl.push(b);
                } else {
                    buf[wr] = b;
                    wr += 1;
                }
            }
            self.mask_pos = ((self.mask_pos as usize + take) & 3) as u8;
            self.remaining -= take as u64;
            rd += take;
            if self.remaining == 0 {
                self.end_frame();
            }
        }
        Ok(wr)
    }

    /// Takes one header byte; when the header is complete, checks it and starts its payload.
    fn header_byte(&mut self, b: u8) -> Result<usize, FrameError> {
        self.hdr[self.hdr_len as usize] = b;
        self.hdr_len += 1;
        match header_len(&self.hdr[..self.hdr_len as usize]) {
            Some(need) if self.hdr_len as usize >= need => self.start_frame(need)?,
            _ => {}
        }
        Ok(1)
    }

    fn start_frame(&mut self, len: usize) -> Result<(), FrameError> {
        let h = self.hdr;
        self.hdr_len = 0;
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = h[0] & 0x0F;
        let masked = h[1] & 0x80 != 0;
        if self.require_mask && !masked {
            return Err(FrameError::Unmasked);
        }
        let payload = match h[1] & 0x7F {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => n as u64,
        };
        match opcode {
            op::CLOSE | op::PING | op::PONG => {
                if !fin || payload > MAX_CONTROL as u64 {
                    return Err(FrameError::BadControl);
                }
            }
            op::TEXT => return Err(FrameError::Text),
            op::BINARY if self.in_message => return Err(FrameError::Fragmentation),
            op::CONT if !self.in_message => return Err(FrameError::Fragmentation),
            op::BINARY | op::CONT => {
                if payload > self.max_frame {
                    return Err(FrameError::TooLarge(payload));
                }
                self.in_message = !fin;
            }
            other => return Err(FrameError::BadOpcode(other)),
        }
        self.mask = if masked {
            [h[len - 4], h[len - 3], h[len - 2], h[len - 1]]
        } else {
            [0; 4]
        };
        self.mask_pos = 0;
        self.opcode = opcode;
        self.remaining = payload;
        if payload == 0 {
            self.end_frame();
        }
        Ok(())
    }

    /// A frame's payload is complete: act on a control frame.
    fn end_frame(&mut self) {
        match self.opcode {
            op::PING => self.control.pong = Some(std::mem::take(&mut self.ctrl)),
            op::CLOSE => {
                let c = &self.ctrl;
                let code = if c.len() >= 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    1005
                };
                self.control.close = Some(code);
                self.ctrl = Vec::new();
            }
            op::PONG => self.ctrl = Vec::new(),
            _ => {}
        }
        self.opcode = op::CONT;
    }
}

/// The full header length once enough of it is known (`None`: need more bytes).
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    Some(
        2 + mask
            + match h[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            },
    )
}

/// Writes an unmasked server frame header (FIN set) for `len` payload bytes into `out`;
/// returns its length (2, 4 or 10).
pub fn header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole server control frame (`payload` at most [`MAX_CONTROL`] bytes; longer is cut).
pub fn control_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let mut h = [0u8; 10];
    let n = header(opcode, payload.len(), &mut h);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// A close frame with `code`.
pub fn close_frame(code: u16, out: &mut Vec<u8>) {
    control_frame(op::CLOSE, &code.to_be_bytes(), out);
}

/// Builds a masked client frame (for tests and fuzzing: the LB and the broker only decode them).
pub fn client_frame(opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 10];
    let n = header(opcode, payload.len(), &mut h);
    let mut out = h[..n].to_vec();
    if !fin {
        out[0] &= 0x7F;
    }
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests;
