//! What the subscription trie holds for a local subscriber: its client id (the key: equal and
//! hashed by it alone) and a handle to its session, so that a delivery reaches the session
//! without looking the id up in the registry. The handle is good only while its session is the
//! one the registry holds for that id: the registry retires a session as it takes it out or
//! puts another in its place (under the same lock), and a retired handle falls back to the
//! lookup by id, so a delivery goes where the lookup would have sent it.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use super::Session;

/// A local subscriber in the trie.
#[derive(Clone)]
pub struct SessionRef {
    id: Arc<str>,
    /// Weak: a subscription never keeps a session alive.
    session: Weak<Session>,
}

impl SessionRef {
    /// The trie's key for `s`.
    pub fn new(s: &Arc<Session>) -> SessionRef {
        SessionRef {
            id: s.client_id.clone(),
            session: Arc::downgrade(s),
        }
    }

    /// A key that only names the client (to take its subscriptions out).
    pub fn id_only(id: &Arc<str>) -> SessionRef {
        SessionRef {
            id: id.clone(),
            session: Weak::new(),
        }
    }

    /// The client id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The session, while it is still the registry's session of this client id.
    pub fn live(&self) -> Option<Arc<Session>> {
        self.session.upgrade().filter(|s| !s.is_retired())
    }
}

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for SessionRef {}

impl Hash for SessionRef {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.id.hash(h);
    }
}

impl AsRef<str> for SessionRef {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_good_until_its_session_is_retired_or_gone() {
        let s = Arc::new(Session::new(Arc::from("c")));
        let r = SessionRef::new(&s);
        assert!(Arc::ptr_eq(&r.live().unwrap(), &s));
        assert_eq!(r, SessionRef::id_only(&Arc::from("c")));
        s.retire();
        assert!(r.live().is_none());
        let t = Arc::new(Session::new(Arc::from("d")));
        let r = SessionRef::new(&t);
        drop(t);
        assert!(r.live().is_none());
    }
}
