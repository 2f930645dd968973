//! MQTT topic names and filters: validity checks and wildcard matching.
//!
//! Pure functions over `&str`, shared by the broker's session code (validating
//! SUBSCRIBE/PUBLISH), its router, its retained store and its ACL, and by the bench, so all of
//! them agree on what `+`, `#`, `$share/` and leading-`$` topics mean (MQTT 3.1.1 §4.7, MQTT 5.0
//! §4.7–4.8).
//!
//! A `#` is a wildcard only as the whole last level and a `+` only as a whole level; anywhere
//! else they are plain characters. Such filters are rejected by [`valid_topic_filter`], and since a
//! valid topic name never contains `+` or `#`, treating them literally can never produce a match.

/// Longest topic name or filter: an MQTT UTF-8 string carries a 16-bit length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared-subscription filter (MQTT 5.0 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Valid topic NAME for PUBLISH: 1..=65535 bytes, no '+' or '#', no U+0000.
///
/// Why: a PUBLISH naming a wildcard or an empty topic is a protocol error (MQTT-3.3.2-2), and a
/// NUL would break every peer that treats topics as C strings.
pub fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TOPIC_LEN && !t.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// Valid topic FILTER: non-empty, '+' occupies a whole level, '#' only as the whole last level, no
/// U+0000; a shared filter `$share/GROUP/FILTER` is valid when GROUP is non-empty without '+', '#',
/// '/' and FILTER is a valid filter.
///
/// Why: SUBSCRIBE/UNSUBSCRIBE with a malformed filter must be refused (MQTT-4.7.1-1..3,
/// MQTT-4.8.2-1/2) before it reaches the router, which stores whatever it is given.
pub fn valid_topic_filter(f: &str) -> bool {
    if f.len() > MAX_TOPIC_LEN {
        return false;
    }
    if f.starts_with(SHARE_PREFIX) {
        return match parse_shared(f) {
            Some((group, filter)) => {
                !group.is_empty()
                    && !group.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
                    && valid_plain_filter(filter)
            }
            None => false,
        };
    }
    valid_plain_filter(f)
}

/// Valid filter read as a plain one (a `$share/` prefix is just two levels): non-empty, '+' a
/// whole level, '#' only as the whole last level, no U+0000, at most 65,535 bytes.
///
/// Why: ACL entries are filters on topics, never shared subscriptions, and must obey the same
/// level rules as a SUBSCRIBE's filter.
pub fn valid_plain_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > MAX_TOPIC_LEN || f.as_bytes().contains(&0) {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('+') && level != "+" {
            return false;
        }
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
    }
    true
}

/// Splits `$share/GROUP/FILTER` into (GROUP, FILTER); None when not a shared filter.
///
/// Why: the router and the cluster key shared subscriptions by group and by the filter that is
/// actually matched. This only splits; it does not validate (GROUP or FILTER may be empty), use
/// [`valid_topic_filter`] for that. `$share/GROUP` without a filter is not a shared filter.
pub fn parse_shared(f: &str) -> Option<(&str, &str)> {
    f.strip_prefix(SHARE_PREFIX)?.split_once('/')
}

/// Whether `filter` matches `topic` (MQTT rules: '+' one level incl. empty levels, '#' the rest
/// including the parent level ("a/#" matches "a"); topics starting with '$' are not matched by
/// filters whose first level is '+' or '#' (MQTT-4.7.2-1)).
///
/// Why: the reference semantics the trie-based router and retained store are tested against,
/// and a direct check where only one filter is at hand. `filter` is a plain filter: strip a
/// `$share/GROUP/` prefix with [`parse_shared`] first.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/').peekable();
    let mut t = topic.split('/');
    if topic.starts_with('$') && matches!(f.peek(), Some(&"+") | Some(&"#")) {
        return false;
    }
    loop {
        match f.next() {
            Some("#") if f.peek().is_none() => return true,
            Some(level) => match t.next() {
                Some(tl) if level == "+" || level == tl => {}
                _ => return false,
            },
            None => return t.next().is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        let long_ok = "a".repeat(MAX_TOPIC_LEN);
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        for (name, ok) in [
            ("a", true),
            ("/", true),
            ("a/b/c", true),
            ("//", true),
            ("$SYS/broker/load", true),
            ("sport/tennis player1", true),
            (long_ok.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("a/+", false),
            ("a/#", false),
            ("#", false),
            ("a+b", false),
            ("a\0b", false),
        ] {
            assert_eq!(valid_topic_name(name), ok, "name {name:?}");
        }
    }

    #[test]
    fn topic_filters() {
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        for (filter, ok) in [
            ("a", true),
            ("#", true),
            ("+", true),
            ("+/+", true),
            ("/+", true),
            ("+/", true),
            ("a/#", true),
            ("a/+/b", true),
            ("+/tennis/#", true),
            ("sport/tennis/player1/#", true),
            ("$SYS/#", true),
            ("/", true),
            ("$share", true),
            ("$share/g/a/#", true),
            ("$share/g/+", true),
            ("$share/g/#", true),
            ("$share/g/$share/h/x", true),
            ("", false),
            (too_long.as_str(), false),
            ("a/#/b", false),
            ("#/", false),
            ("a#", false),
            ("a/b#", false),
            ("a+", false),
            ("a/+b/c", false),
            ("++", false),
            ("a\0", false),
            ("$share//a", false),
            ("$share/g", false),
            ("$share/g/", false),
            ("$share/", false),
            ("$share/g+/a", false),
            ("$share/g#/a", false),
            ("$share/g/a/#/b", false),
            ("$share/g/a+", false),
        ] {
            assert_eq!(valid_topic_filter(filter), ok, "filter {filter:?}");
        }
    }

    #[test]
    fn shared_split() {
        assert_eq!(parse_shared("$share/g/a/#"), Some(("g", "a/#")));
        assert_eq!(parse_shared("$share/g/+"), Some(("g", "+")));
        assert_eq!(parse_shared("$share//a"), Some(("", "a")));
        assert_eq!(parse_shared("$share/g"), None);
        assert_eq!(parse_shared("$share"), None);
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$SHARE/g/a"), None);
    }

    #[test]
    fn matching_table() {
        for (filter, topic, ok) in [
            // MQTT 3.1.1 §4.7.1.2: multi-level wildcard.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/tennis/player1/#", "sport/tennis/player2", false),
            ("sport/#", "sport", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "ab", false),
            ("#", "a/b/c", true),
            ("#", "/", true),
            // §4.7.1.3: single-level wildcard.
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/+", "a", false),
            ("+/#", "a", true),
            ("+", "", true),
            // Literal levels.
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a//b", "a//b", true),
            ("a//b", "a/b", false),
            ("/", "/", true),
            // §4.7.2: topics beginning with '$'.
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("+/#", "$SYS/x", false),
            ("+", "$", false),
            ("#", "a/$SYS", true),
            ("a/+", "a/$x", true),
            // Misplaced wildcards are literal and never match a valid name.
            ("a/#/b", "a/x/b", false),
            ("a/#/b", "a", false),
            ("a+", "ab", false),
        ] {
            assert_eq!(matches(filter, topic), ok, "{filter:?} vs {topic:?}");
        }
    }
}
