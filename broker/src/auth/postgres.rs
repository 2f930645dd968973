//! Users and ACL rows in PostgreSQL (`[auth.postgres]`), in the fixed schema [`SCHEMA`]: a
//! CONNECT's password is checked against the user's argon2 hash there (the password file's
//! format: the part after `user:` of a line `mqedge passwd` writes); a PUBLISH or
//! SUBSCRIBE filter the other checks allowed must also be granted by one of the user's rows.
//!
//! One connection to the database, shared by every query (tokio-postgres pipelines them) and
//! opened again when it broke. Every query is bounded by `timeout`; answers are remembered for
//! `cache_ttl` in [`TtlCache`]s of at most `cache_size` users each, so a busy fleet asks the
//! database once per user and minute, not once per packet.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::acl_hook::AclAction;
use super::cache::TtlCache;
use super::filters::covers;
use super::hook::OnUnavailable;
use crate::topic::{matches as topic_matches, valid_topic_filter};

/// The tables `[auth.postgres]` reads (docs/operations.md "Users and ACL in PostgreSQL").
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS mqedge_users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL          -- argon2 PHC string, as in the password file
);
CREATE TABLE IF NOT EXISTS mqedge_acl (
    username     text NOT NULL,          -- '*': every client, anonymous ones included
    topic_filter text NOT NULL,          -- an MQTT topic filter
    action       text NOT NULL CHECK (action IN ('publish', 'subscribe', 'all'))
);
CREATE INDEX IF NOT EXISTS mqedge_acl_username ON mqedge_acl (username);
";

const USER_QUERY: &str = "SELECT password_hash FROM mqedge_users WHERE username = $1";
const ACL_QUERY: &str =
    "SELECT topic_filter, action FROM mqedge_acl WHERE username = $1 OR username = '*'";
const ANONYMOUS_ACL_QUERY: &str =
    "SELECT topic_filter, action FROM mqedge_acl WHERE username = '*'";

/// `[auth.postgres]`, validated.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Where the database is (its Debug form hides the password).
    pub pg: tokio_postgres::Config,
    /// Connect + query, at most.
    pub timeout: Duration,
    /// Users (hashes, and ACL rows) remembered.
    pub cache_size: usize,
    /// How long a user's hash and rows are remembered; 0 turns the cache off.
    pub cache_ttl: Duration,
    /// What a CONNECT or PUBLISH/SUBSCRIBE gets while the database does not answer.
    pub on_unavailable: OnUnavailable,
    /// Whether the ACL rows are checked (off: the database holds users only).
    pub acl: bool,
}

/// One ACL row: a filter and what it grants.
#[derive(Debug, Clone)]
pub struct AclRow {
    filter: String,
    publish: bool,
    subscribe: bool,
}

/// A user's rows and the `*` rows.
pub type Rows = Arc<[AclRow]>;

/// Whether `rows` grant `action` on `topic` (a topic name for publish; for subscribe, a filter
/// every topic of which a row's filter matches). Rows whose filter is not valid grant nothing.
pub fn allows(rows: &[AclRow], action: AclAction, topic: &str) -> bool {
    rows.iter().any(|r| match action {
        AclAction::Publish => r.publish && topic_matches(&r.filter, topic),
        AclAction::Subscribe => r.subscribe && covers(&r.filter, topic),
    })
}

/// The database's client, with its cache.
pub struct Postgres {
    cfg: PostgresConfig,
    /// The open connection, when there is one (held only while taking or opening it).
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Username → its hash (`None`: no such user).
    users: TtlCache<Option<Arc<str>>>,
    /// Username (`None`: anonymous) → its rows.
    acls: TtlCache<Rows>,
    keys: RandomState,
}

impl Postgres {
    /// A client for the configured database (it connects at the first query).
    pub fn new(cfg: PostgresConfig) -> Postgres {
        Postgres {
            users: TtlCache::new(cfg.cache_size, cfg.cache_ttl),
            acls: TtlCache::new(cfg.cache_size, cfg.cache_ttl),
            client: tokio::sync::Mutex::new(None),
            keys: RandomState::new(),
            cfg,
        }
    }

    /// Its settings.
    pub fn cfg(&self) -> &PostgresConfig {
        &self.cfg
    }

    async fn client(&self) -> Result<Arc<Client>, String> {
        let mut held = self.client.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *held = None;
        let (client, conn) = self
            .cfg
            .pg
            .connect(NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }

    /// Runs `sql` with at most one text parameter, within `timeout`.
    async fn query(
        &self,
        sql: &str,
        arg: Option<&str>,
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let run = async {
            let c = self.client().await?;
            let r = match &arg {
                Some(a) => c.query(sql, &[a]).await,
                None => c.query(sql, &[]).await,
            };
            r.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.cfg.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.timeout)),
        }
    }

    /// `user`'s password hash (`None`: no such user); the flag says it came from the cache.
    pub async fn password_hash(&self, user: &str) -> (Result<Option<Arc<str>>, String>, bool) {
        let key = self.keys.hash_one(("user", user));
        if let Some(h) = self.users.get(key) {
            return (Ok(h), true);
        }
        let r = self
            .query(USER_QUERY, Some(user))
            .await
            .and_then(|rows| match rows.first() {
                None => Ok(None),
                Some(row) => row
                    .try_get::<_, String>(0)
                    .map(|h| Some(Arc::from(h)))
                    .map_err(|e| e.to_string()),
            });
        if let Ok(h) = &r {
            self.users.put(key, h.clone());
        }
        (r, false)
    }

    fn acl_key(&self, user: Option<&str>) -> u64 {
        self.keys.hash_one(("acl", user))
    }

    /// `user`'s rows from the cache, when fresh: no await, for the hot path.
    pub fn cached_rows(&self, user: Option<&str>) -> Option<Rows> {
        self.acls.get(self.acl_key(user))
    }

    /// `user`'s rows (with the `*` rows) from the database, remembered.
    pub async fn rows(&self, user: Option<&str>) -> Result<Rows, String> {
        let rows = match user {
            Some(u) => self.query(ACL_QUERY, Some(u)).await?,
            None => self.query(ANONYMOUS_ACL_QUERY, None).await?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (Ok(filter), Ok(action)) =
                (row.try_get::<_, String>(0), row.try_get::<_, String>(1))
            else {
                continue;
            };
            if !valid_topic_filter(&filter) {
                tracing::warn!(
                    filter,
                    "mqedge_acl row with an invalid topic filter ignored"
                );
                continue;
            }
            let (publish, subscribe) = match action.as_str() {
                "publish" => (true, false),
                "subscribe" => (false, true),
                "all" => (true, true),
                _ => continue,
            };
            out.push(AclRow {
                filter,
                publish,
                subscribe,
            });
        }
        let rows: Rows = out.into();
        self.acls.put(self.acl_key(user), rows.clone());
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(filter: &str, publish: bool, subscribe: bool) -> AclRow {
        AclRow {
            filter: filter.into(),
            publish,
            subscribe,
        }
    }

    #[test]
    fn rows_grant_by_action_and_filter() {
        let rows = [row("fleet/+/up", true, false), row("fleet/#", false, true)];
        assert!(allows(&rows, AclAction::Publish, "fleet/d1/up"));
        assert!(!allows(&rows, AclAction::Publish, "fleet/d1/down"));
        assert!(allows(&rows, AclAction::Subscribe, "fleet/+/down"));
        assert!(!allows(&rows, AclAction::Subscribe, "#"));
        assert!(!allows(&[], AclAction::Publish, "a"));
        let all = [row("a/#", true, true)];
        assert!(
            allows(&all, AclAction::Publish, "a/b") && allows(&all, AclAction::Subscribe, "a/+")
        );
    }
}
