//! The external authentication service (`[auth.http]`): every CONNECT is POSTed to it as JSON
//! before the password file is asked, in the shape EMQX's and VerneMQ's HTTP auth use, and its
//! answer (`{"result": "allow" | "deny" | "ignore"}`) decides. Bounded on every side: one
//! request at most `timeout` (connect included), at most [`MAX_IN_FLIGHT`] at once, answers of
//! at most [`MAX_ANSWER`] bytes, and a cache of at most `cache_size` allowed CONNECTs.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;
use tokio::sync::Semaphore;

use serde::Deserialize;
use std::time::Duration;

/// Requests to the service at once; CONNECTs past them wait (within `timeout`).
pub const MAX_IN_FLIGHT: usize = 64;
/// The longest answer read.
pub const MAX_ANSWER: usize = 64 * 1024;

/// What a CONNECT gets while the service is down, slow past `timeout`, or answering garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refused (v5 CONNACK 0x88 Server unavailable, 3.1.1 code 3): nobody gets in unchecked.
    #[default]
    Deny,
    /// Let in as if the service had allowed it.
    Allow,
    /// Decided by the password file and `allow_anonymous`, as without a service.
    Local,
}

/// `[auth.http]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHttpConfig {
    /// `host:port` to connect to.
    pub authority: String,
    /// The request path (with its query).
    pub path: String,
    /// Connect + request + answer, at most.
    pub timeout: Duration,
    /// Allowed CONNECTs remembered (identical ones within `cache_ttl` are not asked again).
    pub cache_size: usize,
    /// How long an allow is remembered; 0 turns the cache off.
    pub cache_ttl: Duration,
    /// See [`OnUnavailable`].
    pub on_unavailable: OnUnavailable,
}

/// What the service said about one CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it in.
    Allow,
    /// Refuse it.
    Deny,
    /// The service has no opinion: the password file and `allow_anonymous` decide.
    Ignore,
    /// No usable answer (down, slow, not 200, not the JSON above): why.
    Unavailable(String),
}

impl Verdict {
    /// The `reason` label of `mqedge_broker_auth_hook_results_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ignore => "ignore",
            Verdict::Unavailable(_) => "unavailable",
        }
    }
}

/// The facts of one CONNECT the service is told.
pub struct HookRequest<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// CONNECT username.
    pub username: Option<&'a str>,
    /// CONNECT password, as sent.
    pub password: Option<&'a [u8]>,
    /// The client's address (from the PROXY header when there was one).
    pub peer: SocketAddr,
    /// The verified certificate CN the LB passed on.
    pub cn: Option<&'a str>,
    /// Protocol level: 4 (3.1.1) or 5.
    pub proto_ver: u8,
}

/// The service's client, with its bounds and cache.
pub struct Hook {
    cfg: AuthHttpConfig,
    slots: Semaphore,
    /// Hash of an allowed CONNECT's facts → when it stops counting (keyed with a per-process
    /// random key, so a client cannot aim at another's entry).
    cache: Mutex<HashMap<u64, Instant>>,
    keys: RandomState,
}

impl Hook {
    /// A client for the configured service.
    pub fn new(cfg: AuthHttpConfig) -> Hook {
        Hook {
            cfg,
            slots: Semaphore::new(MAX_IN_FLIGHT),
            cache: Mutex::new(HashMap::new()),
            keys: RandomState::new(),
        }
    }

    /// Its settings.
    pub fn cfg(&self) -> &AuthHttpConfig {
        &self.cfg
    }

    fn key(&self, r: &HookRequest<'_>) -> u64 {
        self.keys.hash_one((
            r.client_id,
            r.username,
            r.password,
            r.cn,
            r.peer.ip(),
            r.proto_ver,
        ))
    }

    /// Asks the service (or the cache); the flag says the answer came from the cache.
    pub async fn check(&self, r: &HookRequest<'_>) -> (Verdict, bool) {
        let key = self.key(r);
        if !self.cfg.cache_ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&key).is_some_and(|until| *until > Instant::now()) {
                return (Verdict::Allow, true);
            }
        }
        let verdict = match tokio::time::timeout(self.cfg.timeout, self.ask(r)).await {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => Verdict::Unavailable(why),
            Err(_) => Verdict::Unavailable(format!("no answer within {:?}", self.cfg.timeout)),
        };
        if verdict == Verdict::Allow {
            self.remember(key);
        }
        (verdict, false)
    }

    /// Only allows are remembered: a refused device whose password was fixed gets in at once.
    fn remember(&self, key: u64) {
        if self.cfg.cache_ttl.is_zero() || self.cfg.cache_size == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.cfg.cache_size {
            cache.retain(|_, until| *until > now);
        }
        if cache.len() >= self.cfg.cache_size {
            if let Some(k) = cache.keys().next().copied() {
                cache.remove(&k);
            }
        }
        cache.insert(key, now + self.cfg.cache_ttl);
    }

    async fn ask(&self, r: &HookRequest<'_>) -> Result<Verdict, String> {
        post(&self.cfg, &self.slots, request_body(r)).await
    }
}

/// POSTs `body` to the service of `cfg` (one connection per request, within one of `slots`)
/// and reads its verdict; the caller bounds it with `cfg.timeout`. Shared with the ACL hook.
pub(super) async fn post(
    cfg: &AuthHttpConfig,
    slots: &Semaphore,
    body: Vec<u8>,
) -> Result<Verdict, String> {
    let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect(&cfg.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", cfg.authority))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // the connection's own task, bounded like the request
    tokio::spawn(tokio::time::timeout(cfg.timeout, conn));
    let req = hyper::Request::post(&cfg.path)
        .header(hyper::header::HOST, &cfg.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let answer = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!("HTTP {status}"));
    }
    parse_answer(&answer)
}

/// The POST body: EMQX's field names; a password that is not UTF-8 goes as hex.
fn request_body(r: &HookRequest<'_>) -> Vec<u8> {
    let (password, password_hex) = match r.password.map(std::str::from_utf8) {
        Some(Ok(p)) => (Some(p.to_string()), None),
        Some(Err(_)) => (
            None,
            r.password
                .map(|p| p.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        ),
        None => (None, None),
    };
    let mut v = json!({
        "clientid": r.client_id,
        "username": r.username,
        "password": password,
        "peerhost": r.peer.ip().to_string(),
        "peerport": r.peer.port(),
        "cn": r.cn,
        "proto_ver": r.proto_ver,
    });
    if let Some(h) = password_hex {
        v["password_hex"] = json!(h);
    }
    v.to_string().into_bytes()
}

/// `{"result": "allow" | "deny" | "ignore"}`; anything else is no answer.
fn parse_answer(body: &[u8]) -> Result<Verdict, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    match v["result"].as_str() {
        Some("allow") => Ok(Verdict::Allow),
        Some("deny") => Ok(Verdict::Deny),
        Some("ignore") => Ok(Verdict::Ignore),
        _ => Err("answer has no result of allow, deny or ignore".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_bodies() {
        assert_eq!(parse_answer(br#"{"result":"allow"}"#), Ok(Verdict::Allow));
        assert_eq!(
            parse_answer(br#"{"result":"deny","x":1}"#),
            Ok(Verdict::Deny)
        );
        assert_eq!(parse_answer(br#"{"result":"ignore"}"#), Ok(Verdict::Ignore));
        assert!(parse_answer(br#"{"result":"maybe"}"#).is_err());
        assert!(parse_answer(b"<html>").is_err());
        let r = HookRequest {
            client_id: "dev-1",
            username: Some("u"),
            password: Some(&[0xff, 0x00]),
            peer: "10.0.0.7:4242".parse().unwrap(),
            cn: None,
            proto_ver: 5,
        };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&r)).unwrap();
        assert_eq!(v["password"], serde_json::Value::Null);
        assert_eq!(v["password_hex"], "ff00");
        assert_eq!(v["peerhost"], "10.0.0.7");
        assert_eq!(v["peerport"], 4242);
    }
}
