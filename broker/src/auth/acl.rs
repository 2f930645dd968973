//! The mosquitto-format ACL file (`[auth] acl_file`): who may publish, receive and subscribe
//! to what. Parsed once into plain values; [`Acl::check`] is a pure function of them that never
//! panics on what a client sends. The filter-vs-filter relations a SUBSCRIBE needs live in
//! [`filters`](super::filters).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use super::error::{located, read_file, AuthError};
use super::filters::{covers, meet, pattern_matches};
use crate::topic::matches as topic_matches;
use crate::topic::{parse_shared, valid_plain_filter, valid_topic_filter, valid_topic_name};

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published on a concrete topic (checked on delivery).
    Read,
    /// Publish on a concrete topic.
    Write,
    /// Subscribe to a topic filter (checked on SUBSCRIBE, against the filter as requested; what
    /// the subscription then delivers is checked message by message with `Read`).
    Subscribe,
}

/// The access word of one ACL line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn from_word(w: &str) -> Option<Grant> {
        match w {
            "read" => Some(Grant::Read),
            "write" => Some(Grant::Write),
            "readwrite" => Some(Grant::ReadWrite),
            "deny" => Some(Grant::Deny),
            _ => None,
        }
    }

    fn allows_read(self) -> bool {
        matches!(self, Grant::Read | Grant::ReadWrite)
    }

    fn allows_write(self) -> bool {
        matches!(self, Grant::Write | Grant::ReadWrite)
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone)]
struct Entry {
    grant: Grant,
    /// A valid MQTT topic filter (for patterns: before `%u`/`%c` substitution).
    filter: String,
    /// The filter holds `%u` / `%c` (only acted on for `pattern` lines); kept so the
    /// per-message check does not search the string each time.
    needs_user: bool,
    needs_client: bool,
}

impl Entry {
    /// Whether this pattern applies to the client at all: every value it needs must be present,
    /// non-empty and free of '+', '#', '/' and NUL, or a client id could turn a per-client
    /// pattern into a wildcard or reach into another client's subtree.
    fn applies_to(&self, username: Option<&str>, client_id: &str) -> bool {
        let safe = |v: &str| !v.is_empty() && !v.contains(['+', '#', '/', '\0']);
        (!self.needs_user || username.is_some_and(safe)) && (!self.needs_client || safe(client_id))
    }
}

/// A mosquitto-format ACL file: who may publish, receive and subscribe to what.
///
/// `topic [read|write|readwrite|deny] FILTER` lines before any `user` line apply to everyone,
/// anonymous clients included (DESIGN.md's rule; in mosquitto they apply to anonymous clients
/// only); after `user NAME` they apply to NAME only; `pattern` lines apply to everyone with
/// `%u`/`%c` replaced. For a topic, a `deny` that matches wins; otherwise something must grant
/// the access. For a SUBSCRIBE filter see [`Acl::check`]. The default (and an ACL with no
/// entries) denies everything.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// `topic` lines before the first `user` line.
    everyone: Vec<Entry>,
    /// `topic` lines after `user NAME`, by NAME (several blocks for one user add up).
    users: HashMap<String, Vec<Entry>>,
    /// `pattern` lines, wherever they appear.
    patterns: Vec<Entry>,
}

impl Acl {
    /// Reads and parses the ACL file at `path` (errors name the path as given).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = read_file(path)?;
        let acl = Self::parse(&path.display().to_string(), &text)?;
        tracing::debug!(
            path = %path.display(),
            everyone = acl.everyone.len(),
            users = acl.users.len(),
            patterns = acl.patterns.len(),
            "ACL loaded"
        );
        Ok(acl)
    }

    /// Parses ACL `text`; `file` is only used to name it in errors. Stops at the first bad line.
    pub fn parse(file: &str, text: &str) -> Result<Self, AuthError> {
        let mut acl = Acl::default();
        // `None` until the first `user` line: until then `topic` lines go to `everyone`, which
        // covers users and anonymous clients alike. This differs from mosquitto, where that first
        // block applies to anonymous clients only; DESIGN.md [auth] asks for everyone.
        let mut current_user: Option<String> = None;
        for (idx, raw) in text.lines().enumerate() {
            let n = idx + 1;
            let err = |msg: String| located(file, Some(n), msg);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim_start()),
                None => (line, ""),
            };
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a username".into()));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let entry = parse_entry(keyword, rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(entry);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(entry);
                    } else {
                        acl.everyone.push(entry);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?}: expected `topic`, `user` or `pattern`"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// May this client (username `None` = anonymous) do `access` on `topic`? A topic name with
    /// wildcards for Read/Write, or an invalid filter for Subscribe, is refused.
    ///
    /// Read and Write: some applicable entry granting that access matches the topic, and no
    /// applicable `deny` entry does.
    ///
    /// Subscribe (`topic` is the filter as requested; `$share/GROUP/` is stripped first, the
    /// group does not change what is delivered): granted when some applicable entry granting
    /// read shares at least one topic with the filter, and those shared topics are not all
    /// inside one applicable `deny` entry. So with `topic readwrite #` and
    /// `topic deny test/nosubscribe`, `#`, `+/+` and `+/nosubscribe` are granted and
    /// `test/nosubscribe` is refused; with `topic deny secret/#`, `secret/+` is refused. A
    /// granted filter may still match topics the client may not read: the broker checks Read
    /// on every delivery (retained ones included), and that check is what withholds them.
    pub fn check(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        match access {
            Access::Read | Access::Write => {
                if !valid_topic_name(topic) {
                    return false;
                }
                self.check_topic(username, client_id, topic, access == Access::Write)
            }
            Access::Subscribe if valid_topic_filter(topic) => {
                let filter = parse_shared(topic).map_or(topic, |(_group, filter)| filter);
                self.check_subscribe(username, client_id, filter)
            }
            Access::Subscribe => false,
        }
    }

    /// The `topic` entries that apply to this client: the first block, then its own blocks.
    fn topic_entries<'a>(&'a self, username: Option<&str>) -> impl Iterator<Item = &'a Entry> {
        let own = username.and_then(|u| self.users.get(u));
        self.everyone.iter().chain(own.into_iter().flatten())
    }

    /// Read or Write on a concrete topic: runs on every delivery and publish, so it allocates
    /// nothing (patterns are matched while substituting, see [`pattern_matches`]).
    fn check_topic(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        write: bool,
    ) -> bool {
        let relevant = |g: Grant| {
            g == Grant::Deny
                || if write {
                    g.allows_write()
                } else {
                    g.allows_read()
                }
        };
        let mut allowed = false;
        for e in self.topic_entries(username) {
            if relevant(e.grant) && topic_matches(&e.filter, topic) {
                if e.grant == Grant::Deny {
                    return false;
                }
                allowed = true;
            }
        }
        for e in &self.patterns {
            if relevant(e.grant)
                && e.applies_to(username, client_id)
                && pattern_matches(&e.filter, username, client_id, topic)
            {
                if e.grant == Grant::Deny {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }

    /// Subscribe to a valid plain filter: see [`Acl::check`]. For each read grant G, the topics
    /// the filter could deliver through G are exactly `meet(G, filter)`; the filter is granted
    /// if one such set is non-empty and not covered by a deny. Runs once per SUBSCRIBE filter,
    /// so it may collect the applicable entries.
    fn check_subscribe<'a>(
        &'a self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> bool {
        let mut grants: Vec<Cow<'a, str>> = Vec::new();
        let mut denies: Vec<Cow<'a, str>> = Vec::new();
        let mut sort = |grant: Grant, f: Cow<'a, str>| match grant {
            Grant::Deny => denies.push(f),
            g if g.allows_read() => grants.push(f),
            _ => {}
        };
        for e in self.topic_entries(username) {
            sort(e.grant, Cow::Borrowed(e.filter.as_str()));
        }
        for e in &self.patterns {
            if let Some(f) = substitute(e, username, client_id) {
                sort(e.grant, f);
            }
        }
        grants.iter().any(|g| match meet(g, filter) {
            Some(reachable) => !denies.iter().any(|d| covers(d, &reachable)),
            None => false,
        })
    }
}

/// Parses the part of a `topic`/`pattern` line after the keyword: optional access word, then
/// the filter (the rest of the line, so it may contain spaces).
fn parse_entry(keyword: &str, rest: &str) -> Result<Entry, String> {
    let (grant, filter) = match rest.split_once(char::is_whitespace) {
        Some((w, f)) => match Grant::from_word(w) {
            Some(g) => (g, f.trim_start()),
            None => (Grant::ReadWrite, rest),
        },
        None => match Grant::from_word(rest) {
            Some(_) => return Err(format!("`{keyword} {rest}` needs a topic filter")),
            None => (Grant::ReadWrite, rest),
        },
    };
    if filter.is_empty() {
        return Err(format!("`{keyword}` needs a topic filter"));
    }
    if !valid_plain_filter(filter) {
        return Err(format!(
            "invalid topic filter {filter:?}: '+' and '#' must fill a whole level, \
             and '#' must be the last level"
        ));
    }
    Ok(Entry {
        grant,
        filter: filter.to_string(),
        needs_user: filter.contains("%u"),
        needs_client: filter.contains("%c"),
    })
}

/// The pattern's filter with `%u` and `%c` replaced in one pass (so a username that is
/// literally `%c` stays `%c`), or `None` when the pattern does not apply to this client (see
/// [`Entry::applies_to`]). Used on SUBSCRIBE; deliveries use [`pattern_matches`] instead.
fn substitute<'a>(e: &'a Entry, username: Option<&str>, client_id: &str) -> Option<Cow<'a, str>> {
    if !e.applies_to(username, client_id) {
        return None;
    }
    let pattern = e.filter.as_str();
    if !pattern.contains('%') {
        return Some(Cow::Borrowed(pattern));
    }
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        rest = if let (Some(u), Some(after)) = (username, tail.strip_prefix("%u")) {
            out.push_str(u);
            after
        } else if let Some(after) = tail.strip_prefix("%c") {
            out.push_str(client_id);
            after
        } else {
            out.push('%');
            &tail[1..]
        };
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests;
