//! The external checks of what the client sends (a PUBLISH's topic, a SUBSCRIBE's filters),
//! after the ACL file allowed it: the `[auth.http_acl]` service, then the `[auth.postgres]`
//! rows. Asked in the connection's task before the packet is acted on; the connection's inbound
//! loop awaits the verdict, so a client's packets keep their order; cached answers are taken
//! without an await. Deliveries are never checked here. And the CONNECT's password hash from
//! `[auth.postgres]`.

use std::net::SocketAddr;

use super::Conn;
use crate::auth::acl_hook::{AclAction, AclHook, AclRequest};
use crate::auth::hook::{OnUnavailable, Verdict};
use crate::auth::postgres::allows;
use crate::auth::Stored;
use crate::broker::Broker;
use crate::error::CloseReason;
use crate::metrics::{AclHookResult, PgResult};
use crate::protocol::reason;

/// What the caches know of one check.
pub(super) enum Cached {
    /// Decided: `None` allows, `Some(code)` refuses with that reason code.
    Done(Option<u8>),
    /// Not known: what is left to ask.
    Ask(Pending),
}

/// The checks a cache could not answer.
pub(super) struct Pending {
    /// Ask the service under this key.
    hook: Option<u64>,
    /// Fetch the user's rows.
    rows: bool,
}

/// What the service is told of the client besides its id.
struct Facts {
    username: Option<String>,
    peer: SocketAddr,
    cn: Option<String>,
}

impl Facts {
    fn request<'a>(
        &'a self,
        client_id: &'a str,
        action: AclAction,
        topic: &'a str,
    ) -> AclRequest<'a> {
        AclRequest {
            client_id,
            username: self.username.as_deref(),
            peer: self.peer,
            cn: self.cn.as_deref(),
            topic,
            action,
        }
    }
}

impl Conn {
    /// The external checks from their caches: `Done(None)` also when none is configured.
    pub(super) fn check_cached(&self, action: AclAction, topic: &str) -> Cached {
        let mut left = Pending {
            hook: None,
            rows: false,
        };
        if let Some(hook) = self.b.auth().acl_hook() {
            let key = hook.key(&self.facts().request(&self.s.client_id, action, topic));
            match hook.cached(key) {
                Some(v) => {
                    if let Some(code) = self.decide(hook, action, topic, v, true) {
                        return Cached::Done(Some(code));
                    }
                }
                None => left.hook = Some(key),
            }
        }
        if let Some(pg) = self.b.auth().postgres().filter(|pg| pg.cfg().acl) {
            let user = self.s.lock().username.clone();
            match pg.cached_rows(user.as_deref()) {
                Some(rows) => {
                    let ok = allows(&rows, action, topic);
                    if left.hook.is_none() || !ok {
                        if let Some(code) = self.rows_verdict(action, Ok(ok), true) {
                            return Cached::Done(Some(code));
                        }
                    } else {
                        left.rows = true; // counted when the service has answered
                    }
                }
                None => left.rows = true,
            }
        }
        if left.hook.is_none() && !left.rows {
            Cached::Done(None)
        } else {
            Cached::Ask(left)
        }
    }

    /// What the caches left: the service, then the rows. `None` allows, `Some(code)` refuses.
    pub(super) async fn check_rest(
        &self,
        left: Pending,
        action: AclAction,
        topic: &str,
    ) -> Option<u8> {
        if let (Some(key), Some(hook)) = (left.hook, self.b.auth().acl_hook()) {
            let facts = self.facts();
            let v = hook
                .ask(key, &facts.request(&self.s.client_id, action, topic))
                .await;
            if let Some(code) = self.decide(hook, action, topic, v, false) {
                return Some(code);
            }
        }
        let pg = self.b.auth().postgres().filter(|_| left.rows)?;
        let user = self.s.lock().username.clone();
        let (r, cached) = match pg.cached_rows(user.as_deref()) {
            Some(rows) => (Ok(rows), true),
            None => (pg.rows(user.as_deref()).await, false),
        };
        self.rows_verdict(action, r.map(|rows| allows(&rows, action, topic)), cached)
    }

    /// The caches, then what they left: `None` allows, `Some(code)` refuses.
    pub(super) async fn check_external(&self, action: AclAction, topic: &str) -> Option<u8> {
        match self.check_cached(action, topic) {
            Cached::Done(d) => d,
            Cached::Ask(left) => self.check_rest(left, action, topic).await,
        }
    }

    /// Counts what the rows said and decides: not granted is 0x87; no answer follows
    /// `on_unavailable` as for the service.
    fn rows_verdict(&self, action: AclAction, r: Result<bool, String>, cached: bool) -> Option<u8> {
        let (label, deny) = match r {
            Ok(true) => ("allow", None),
            Ok(false) => ("deny", Some(reason::NOT_AUTHORIZED)),
            Err(why) => {
                let policy = self.b.auth().postgres().map(|p| p.cfg().on_unavailable);
                tracing::warn!(client_id = %self.s.client_id, action = action.word(), on_unavailable = ?policy, "user database unavailable: {why}");
                let deny = matches!(policy, Some(OnUnavailable::Deny))
                    .then_some(reason::UNSPECIFIED_ERROR);
                ("unavailable", deny)
            }
        };
        self.b
            .metrics()
            .postgres_results
            .get_or_create(&PgResult::new("acl", label, cached))
            .inc();
        deny
    }

    /// The session's facts the service is told (copied: not held under the session's lock).
    fn facts(&self) -> Facts {
        let st = self.s.lock();
        Facts {
            username: st.username.clone(),
            peer: st.peer.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            cn: st.cn.clone(),
        }
    }

    /// Counts the answer and turns it into the connection's decision: deny refuses with 0x87
    /// Not authorized; ignore leaves the ACL file's allow standing; no answer follows
    /// `on_unavailable` (`deny`: 0x80 Unspecified error, the client may retry; `allow` and
    /// `local`: the ACL file's allow stands).
    fn decide(
        &self,
        hook: &AclHook,
        action: AclAction,
        topic: &str,
        v: Verdict,
        cached: bool,
    ) -> Option<u8> {
        self.b
            .metrics()
            .acl_hook_results
            .get_or_create(&AclHookResult::new(action.word(), v.label(), cached))
            .inc();
        match v {
            Verdict::Allow | Verdict::Ignore => None,
            Verdict::Deny => {
                tracing::debug!(client_id = %self.s.client_id, topic, action = action.word(), "denied by the authorization service");
                Some(reason::NOT_AUTHORIZED)
            }
            Verdict::Unavailable(why) => {
                let policy = hook.cfg().on_unavailable;
                tracing::warn!(client_id = %self.s.client_id, topic, action = action.word(), on_unavailable = ?policy, "authorization service unavailable: {why}");
                match policy {
                    OnUnavailable::Deny => Some(reason::UNSPECIFIED_ERROR),
                    OnUnavailable::Allow | OnUnavailable::Local => None,
                }
            }
        }
    }
}

/// Where a CONNECT's password is checked: the user's hash in `[auth.postgres]` when it has one
/// there, else the password file. `None`: the database did not answer and `on_unavailable =
/// "allow"` lets the client in unchecked.
pub(super) async fn stored_hash(b: &Broker, user: &str) -> Result<Option<Stored>, CloseReason> {
    let Some(pg) = b.auth().postgres() else {
        return Ok(Some(Stored::File));
    };
    let (r, cached) = pg.password_hash(user).await;
    let label = match &r {
        Ok(Some(_)) => "found",
        Ok(None) => "missing",
        Err(_) => "unavailable",
    };
    b.metrics()
        .postgres_results
        .get_or_create(&PgResult::new("user", label, cached))
        .inc();
    match r {
        Ok(Some(h)) => Ok(Some(Stored::Hash(h))),
        Ok(None) => Ok(Some(Stored::File)),
        Err(why) => {
            let policy = pg.cfg().on_unavailable;
            tracing::warn!(username = user, on_unavailable = ?policy, "user database unavailable: {why}");
            match policy {
                OnUnavailable::Deny => Err(CloseReason::UserDbUnavailable),
                OnUnavailable::Allow => Ok(None),
                OnUnavailable::Local => Ok(Some(Stored::File)),
            }
        }
    }
}
