//! The node's authentication and authorization state ([`Auth`]): the loaded password file and
//! ACL, and the gate every CONNECT password check goes through. argon2 costs ~19 MiB and tens of
//! milliseconds of one core per check, on a blocking thread: without a bound, a burst of bogus
//! CONNECTs (unknown users included: they are verified against a dummy hash, to cost the same)
//! grows the blocking pool and the memory with them. The gate lets `max_concurrent_password_checks`
//! run at once; a check that cannot start within [`CHECK_WAIT`] is refused as busy.
//!
//! [`Auth::acl_username`] decides which username a client's ACL checks (`user` blocks, `%u`)
//! see: a CONNECT username counts only once a password check verified it. One that is merely
//! claimed (anonymous clients allowed, no password file: what `mqedge up` runs) is anonymous to
//! the ACL unless `trust_claimed_usernames` says otherwise; a certificate CN from a trusted
//! proxy never comes this way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{Acl, PasswordFile};

/// How long a CONNECT waits for a password-check slot: well inside the 10 s CONNECT timeout,
/// so a client refused as busy hears it soon and retries elsewhere (through the LB), while a
/// short burst still gets through.
pub const CHECK_WAIT: Duration = Duration::from_secs(2);

/// Why a password could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckError {
    /// The username and password do not match (or the user does not exist).
    Wrong,
    /// No check slot freed within [`CHECK_WAIT`].
    Busy,
}

/// Authentication and authorization state, loaded once at start.
pub struct Auth {
    /// Whether clients without a username are let in.
    allow_anonymous: bool,
    /// Shared with the blocking thread that runs argon2.
    passwords: Option<Arc<PasswordFile>>,
    /// None: everything is allowed.
    acl: Option<Acl>,
    /// Slots for argon2 checks running at once (`max_concurrent_password_checks`).
    checks: Arc<Semaphore>,
    /// `trust_claimed_usernames`: the operator lets unchecked usernames act as that user.
    trust_claimed: bool,
    /// `[auth.http]`: the external service asked first.
    hook: Option<super::hook::Hook>,
    /// `[auth.http_acl]`: the external service asked after the ACL file.
    acl_hook: Option<super::acl_hook::AclHook>,
    /// `[auth.postgres]`: users and ACL rows in the database.
    postgres: Option<super::postgres::Postgres>,
}

/// Where a password check finds the user's hash.
pub enum Stored {
    /// In the password file (an unknown user checks against a dummy hash).
    File,
    /// This one (from `[auth.postgres]`).
    Hash(Arc<str>),
}

impl Auth {
    /// The state from the loaded files; `max_checks` (at least 1) password checks may run at
    /// once; `trust_claimed` gives unchecked usernames their user's ACL rights.
    pub fn new(
        allow_anonymous: bool,
        passwords: Option<PasswordFile>,
        acl: Option<Acl>,
        max_checks: usize,
        trust_claimed: bool,
    ) -> Auth {
        Auth {
            allow_anonymous,
            passwords: passwords.map(Arc::new),
            acl,
            checks: Arc::new(Semaphore::new(max_checks.max(1))),
            trust_claimed,
            hook: None,
            acl_hook: None,
            postgres: None,
        }
    }

    /// Asks the service of `http` about every CONNECT before the password file, and the one
    /// of `http_acl` about every PUBLISH and SUBSCRIBE filter the ACL file allows.
    pub fn with_services(
        mut self,
        http: Option<super::hook::AuthHttpConfig>,
        http_acl: Option<super::hook::AuthHttpConfig>,
        postgres: Option<super::postgres::PostgresConfig>,
    ) -> Auth {
        self.hook = http.map(super::hook::Hook::new);
        self.acl_hook = http_acl.map(super::acl_hook::AclHook::new);
        self.postgres = postgres.map(super::postgres::Postgres::new);
        self
    }

    /// The user database, when `[auth.postgres]` names one.
    pub fn postgres(&self) -> Option<&super::postgres::Postgres> {
        self.postgres.as_ref()
    }

    /// The external authorization service, when `[auth.http_acl]` names one.
    pub fn acl_hook(&self) -> Option<&super::acl_hook::AclHook> {
        self.acl_hook.as_ref()
    }

    /// The external service, when `[auth.http]` names one.
    pub fn hook(&self) -> Option<&super::hook::Hook> {
        self.hook.as_ref()
    }

    /// The username the session and its ACL checks get, for a client admitted without a
    /// certificate CN: the CONNECT's username when `checked` (a password check passed) or when
    /// the operator trusts claimed usernames; otherwise none, so a client cannot become `alice`
    /// by saying so.
    pub fn acl_username(&self, claimed: Option<&str>, checked: bool) -> Option<String> {
        claimed
            .filter(|_| checked || self.trust_claimed)
            .map(str::to_string)
    }

    /// Whether clients without a username are let in.
    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The password file, when one is configured.
    pub fn passwords(&self) -> Option<&PasswordFile> {
        self.passwords.as_deref()
    }

    /// The ACL, when one is configured (none: everything is allowed).
    pub fn acl(&self) -> Option<&Acl> {
        self.acl.as_ref()
    }

    /// Checks `user`'s `password` through the gate: waits up to [`CHECK_WAIT`] for a slot,
    /// then runs argon2 on a blocking thread while holding it. Unknown users cost the same as
    /// known ones (and take a slot the same way). `stored` says where the hash is; without a
    /// password file, [`Stored::File`] matches nothing.
    pub async fn check_password(
        &self,
        user: &str,
        password: Bytes,
        stored: Stored,
    ) -> Result<(), CheckError> {
        let file = self.passwords.clone();
        let permit =
            match tokio::time::timeout(CHECK_WAIT, self.checks.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                // the semaphore is never closed; a timeout is the busy case
                Ok(Err(_)) | Err(_) => return Err(CheckError::Busy),
            };
        let user = user.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let _slot = permit; // released when argon2 is done, even if the CONNECT went away
            match (stored, file) {
                (Stored::Hash(h), _) => super::passwd::verify_hash(Some(&h), &password),
                (Stored::File, Some(f)) => f.verify(&user, &password),
                (Stored::File, None) => super::passwd::verify_hash(None, &password),
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(CheckError::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(max_checks: usize) -> Auth {
        let hash = crate::auth::hash_password(b"pw").unwrap();
        let file = PasswordFile::parse("passwd", &format!("u:{hash}\n")).unwrap();
        Auth::new(false, Some(file), None, max_checks, false)
    }

    #[test]
    fn a_claimed_username_counts_only_when_checked_or_trusted() {
        let strict = Auth::new(true, None, None, 1, false);
        assert_eq!(strict.acl_username(Some("alice"), false), None);
        assert_eq!(
            strict.acl_username(Some("alice"), true).as_deref(),
            Some("alice")
        );
        assert_eq!(strict.acl_username(None, true), None);
        let trusting = Auth::new(true, None, None, 1, true);
        assert_eq!(
            trusting.acl_username(Some("alice"), false).as_deref(),
            Some("alice")
        );
    }

    #[tokio::test]
    async fn a_check_waits_for_a_slot_then_is_busy() {
        let a = auth(1);
        let held = a.checks.clone().acquire_owned().await.unwrap();
        let started = tokio::time::Instant::now();
        let r = a
            .check_password("u", Bytes::from_static(b"pw"), Stored::File)
            .await;
        assert_eq!(r, Err(CheckError::Busy));
        assert!(started.elapsed() >= CHECK_WAIT);
        drop(held);
        let pw = |p: &'static [u8]| a.check_password("u", Bytes::from_static(p), Stored::File);
        assert_eq!(pw(b"pw").await, Ok(()));
        assert_eq!(pw(b"no").await, Err(CheckError::Wrong));
        let r = a
            .check_password("nobody", Bytes::from_static(b"pw"), Stored::File)
            .await;
        assert_eq!(r, Err(CheckError::Wrong));
    }
}
