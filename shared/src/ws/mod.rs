//! MQTT over WebSocket (MQTT 5 §6, RFC 6455), the one implementation both roles use: the LB's
//! WS/WSS listeners terminate WebSocket and forward plain MQTT, and the broker's WebSocket
//! listeners unwrap it the same way. [`handshake`] (the HTTP Upgrade, pure) and [`frame`] (the
//! frame codec, pure) are tested and fuzzed alone; [`stream`] is the tokio stream over them.
//! This file holds the listener setting both config files share, `websocket = { ... }`.

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ByteSize, Cidr, Problems};

pub mod frame;
pub mod handshake;
pub mod stream;

pub use stream::{handshake as accept, AcceptError, FrameErrors, WsStream};

/// The path EMQX, HiveMQ and most clients' examples use.
pub const DEFAULT_PATH: &str = "/mqtt";
/// Default `max_frame`: frames are streamed, never buffered, so this guards against absurd
/// announcements rather than memory use.
pub const DEFAULT_MAX_FRAME: u64 = 1 << 20;
/// The most an Upgrade request may take (browsers send well under 2 KiB).
pub const MAX_REQUEST: usize = 8 * 1024;

/// A listener's `websocket` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    path: Option<Spanned<String>>,
    max_frame: Option<Spanned<ByteSize>>,
    #[serde(default)]
    trusted_forwarders: Vec<Spanned<String>>,
}

/// A WebSocket listener's checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    path: String,
    max_frame: u64,
    trusted_forwarders: Vec<Cidr>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: DEFAULT_PATH.into(),
            max_frame: DEFAULT_MAX_FRAME,
            trusted_forwarders: Vec::new(),
        }
    }
}

impl WsConfig {
    /// Checks a raw table; problems go to `p` (the defaults stand in for bad values).
    pub fn parse(raw: &RawWebSocket, p: &mut Problems<'_>) -> WsConfig {
        let mut c = WsConfig::default();
        if let Some(path) = &raw.path {
            let v = path.get_ref();
            if !v.starts_with('/') || v.contains(['?', '#', ' ']) {
                p.at(
                    path.span(),
                    format!("websocket path {v:?}: expected an absolute path like \"/mqtt\""),
                );
            } else {
                c.path = v.clone();
            }
        }
        if let Some(m) = &raw.max_frame {
            if m.get_ref().0 < 1024 {
                p.at(m.span(), "websocket max_frame must be at least 1KiB");
            } else {
                c.max_frame = m.get_ref().0;
            }
        }
        for t in &raw.trusted_forwarders {
            match t.get_ref().parse::<Cidr>() {
                Ok(n) => c.trusted_forwarders.push(n),
                Err(e) => p.at(t.span(), e),
            }
        }
        c
    }

    /// The request path the listener answers (others get 404).
    #[inline]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The largest frame payload accepted.
    #[inline]
    pub fn max_frame(&self) -> u64 {
        self.max_frame
    }

    /// The largest Upgrade request accepted.
    #[inline]
    pub fn max_request(&self) -> usize {
        MAX_REQUEST
    }

    /// The immediate peers whose `X-Forwarded-For` names the client.
    #[inline]
    pub fn trusted_forwarders(&self) -> &[Cidr] {
        &self.trusted_forwarders
    }
}
