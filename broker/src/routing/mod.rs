//! Routing: where a publish goes. The subscription trie ([`trie`]), retained messages
//! ([`retained`]) and the shared-subscription policy ([`shared`]) are pure tables; this module
//! turns a topic's matches (local and remote) into a plan of deliveries. It knows nothing of
//! sessions or the cluster: it imports only [`crate::topic`], [`crate::message`] and
//! [`crate::config`].

pub mod retained;
pub mod trie;

pub use self::trie::{Matches, Router, SubOptions};
