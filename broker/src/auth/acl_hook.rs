//! The external authorization service (`[auth.http_acl]`): a client's PUBLISH (before it is
//! routed) and each filter of its SUBSCRIBE (before it is granted) is POSTed to it as JSON, in
//! the shape EMQX's HTTP authorization and VerneMQ's `auth_on_publish`/`auth_on_subscribe`
//! webhooks use, and its answer (`{"result": "allow" | "deny" | "ignore"}`) decides, after the
//! ACL file (docs/operations.md "External authorization").
//!
//! Asked from the connection's task only, on the inbound side: a delivery is never checked
//! here, so no lock on the publish path waits for the network. Answers (allow, deny and
//! ignore; never "unavailable") are remembered for `cache_ttl` in a [`TtlCache`] of at most
//! `cache_size` entries; a hit is a hash and a map lookup.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use serde_json::json;
use tokio::sync::Semaphore;

use super::cache::TtlCache;
use super::hook::{post, AuthHttpConfig, Verdict, MAX_IN_FLIGHT};

/// What the client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclAction {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter (of a `$share/group/...` filter: the part after the group).
    Subscribe,
}

impl AclAction {
    /// The word in the request's `action` and in the metric's `action` label.
    pub fn word(self) -> &'static str {
        match self {
            AclAction::Publish => "publish",
            AclAction::Subscribe => "subscribe",
        }
    }
}

/// The facts of one PUBLISH or SUBSCRIBE filter the service is told.
pub struct AclRequest<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// The username the session's ACL checks see (a checked password's or the CN).
    pub username: Option<&'a str>,
    /// The client's address (from the PROXY header when there was one).
    pub peer: SocketAddr,
    /// The verified certificate CN the LB passed on.
    pub cn: Option<&'a str>,
    /// The topic name (publish) or filter (subscribe).
    pub topic: &'a str,
    /// What the client asks.
    pub action: AclAction,
}

/// The service's client, with its bounds and cache.
pub struct AclHook {
    cfg: AuthHttpConfig,
    slots: Semaphore,
    /// Hash of a request's facts → the answer (keyed with a per-process random key, so a
    /// client cannot aim at another's entry).
    cache: TtlCache<Verdict>,
    keys: RandomState,
}

impl AclHook {
    /// A client for the configured service.
    pub fn new(cfg: AuthHttpConfig) -> AclHook {
        AclHook {
            slots: Semaphore::new(MAX_IN_FLIGHT),
            cache: TtlCache::new(cfg.cache_size, cfg.cache_ttl),
            keys: RandomState::new(),
            cfg,
        }
    }

    /// Its settings.
    pub fn cfg(&self) -> &AuthHttpConfig {
        &self.cfg
    }

    /// The cache key: everything the request tells the service except the port.
    pub fn key(&self, r: &AclRequest<'_>) -> u64 {
        self.keys.hash_one((
            r.client_id,
            r.username,
            r.cn,
            r.peer.ip(),
            r.action,
            r.topic,
        ))
    }

    /// The remembered answer for `key`, if one is still fresh: no await, for the hot path.
    pub fn cached(&self, key: u64) -> Option<Verdict> {
        self.cache.get(key)
    }

    /// Asks the service (within `timeout`) and remembers a usable answer under `key`.
    pub async fn ask(&self, key: u64, r: &AclRequest<'_>) -> Verdict {
        let body = request_body(r);
        let verdict = match tokio::time::timeout(
            self.cfg.timeout,
            post(&self.cfg, &self.slots, body),
        )
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => Verdict::Unavailable(why),
            Err(_) => Verdict::Unavailable(format!("no answer within {:?}", self.cfg.timeout)),
        };
        if !matches!(verdict, Verdict::Unavailable(_)) {
            self.remember(key, verdict.clone());
        }
        verdict
    }

    fn remember(&self, key: u64, v: Verdict) {
        self.cache.put(key, v);
    }

    /// Entries held now (for tests and the bound).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}

/// The POST body: EMQX's field names.
fn request_body(r: &AclRequest<'_>) -> Vec<u8> {
    json!({
        "clientid": r.client_id,
        "username": r.username,
        "peerhost": r.peer.ip().to_string(),
        "peerport": r.peer.port(),
        "cn": r.cn,
        "topic": r.topic,
        "action": r.action.word(),
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hook(cache_size: usize) -> AclHook {
        AclHook::new(AuthHttpConfig {
            authority: "127.0.0.1:9".into(),
            path: "/".into(),
            timeout: Duration::from_millis(100),
            cache_size,
            cache_ttl: Duration::from_secs(60),
            on_unavailable: Default::default(),
        })
    }

    fn req(topic: &str) -> AclRequest<'_> {
        AclRequest {
            client_id: "c",
            username: Some("u"),
            peer: "10.0.0.7:4242".parse().unwrap(),
            cn: None,
            topic,
            action: AclAction::Publish,
        }
    }

    #[test]
    fn the_cache_is_bounded_and_keys_every_fact() {
        let h = hook(64);
        for i in 0..1000 {
            let t = format!("t/{i}");
            h.remember(h.key(&req(&t)), Verdict::Allow);
        }
        assert!(h.cache_len() <= 64, "{} entries", h.cache_len());
        let a = req("a");
        h.remember(h.key(&a), Verdict::Deny);
        assert_eq!(h.cached(h.key(&a)), Some(Verdict::Deny));
        let sub = AclRequest {
            action: AclAction::Subscribe,
            ..req("a")
        };
        assert_eq!(h.cached(h.key(&sub)), None);
        let other = AclRequest {
            username: Some("v"),
            ..req("a")
        };
        assert_eq!(h.cached(h.key(&other)), None);
        let v: serde_json::Value = serde_json::from_slice(&request_body(&sub)).unwrap();
        assert_eq!(v["action"], "subscribe");
        assert_eq!(v["topic"], "a");
        assert_eq!(v["peerhost"], "10.0.0.7");
    }

    #[tokio::test]
    async fn a_service_that_is_down_is_not_remembered() {
        let h = hook(64);
        let r = req("x");
        let k = h.key(&r);
        assert!(matches!(h.ask(k, &r).await, Verdict::Unavailable(_)));
        assert_eq!(h.cached(k), None);
    }
}
