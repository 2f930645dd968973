//! Relations between two topic filters, which the ACL needs because a SUBSCRIBE names a filter,
//! not a topic: which topics two filters have in common ([`meet`]; `None` when they share none),
//! and whether one filter matches every topic another one does ([`covers`]). Plus the topic
//! matcher for `pattern` lines, which substitutes `%u`/`%c` while it compares instead of building
//! a string per delivery.
//!
//! "Topic" below means a valid MQTT topic name (non-empty, no wildcards). Filters follow MQTT
//! 3.1.1/5.0 §4.7: `+` is one whole level (empty levels included), `#` the whole rest including
//! the parent level (`a/#` matches `a`), and a filter whose first level is a wildcard does not
//! match topics starting with `$` (MQTT-4.7.2-1). Every function here is exact over that model;
//! the tests check them against brute-force enumeration of topics.

/// MQTT's `$` rule seen from two filters: `other` only matches topics starting with '$' (its
/// first level is a literal `$...`), which `filter`, having a wildcard first level, never
/// matches.
fn dollar_blocked(filter: &str, other: &str) -> bool {
    other.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#"))
}

/// The filter matching exactly the topics that both `a` and `b` match, or `None` when no topic
/// matches both. For valid filters the result is a valid filter.
///
/// Level by level: equal literals stay, `+` meets anything as that thing, and at a `#` the other
/// filter's remainder is taken as it is (`#` matches any rest, including none). So
/// `a/#` and `+/b` meet in `a/b`, `+/+` and `a/#` in `a/+`, `a/#` and `a` in `a`; `#` and
/// `$SYS/x` do not meet.
pub(super) fn meet(a: &str, b: &str) -> Option<String> {
    if dollar_blocked(a, b) || dollar_blocked(b, a) {
        return None;
    }
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(x.len().max(y.len()));
    let mut i = 0;
    loop {
        match (x.get(i).copied(), y.get(i).copied()) {
            (Some("#"), _) => {
                out.extend_from_slice(&y[i..]);
                break;
            }
            (_, Some("#")) => {
                out.extend_from_slice(&x[i..]);
                break;
            }
            (None, None) => break,
            (Some("+"), Some(l)) | (Some(l), Some("+")) => out.push(l),
            (Some(l), Some(m)) if l == m => out.push(l),
            _ => return None,
        }
        i += 1;
    }
    // `/#` and `+` share only the topic "" (one empty level), which is not a valid topic name.
    if out.is_empty() || out == [""] {
        return None;
    }
    Some(out.join("/"))
}

/// Whether every topic that `requested` matches is also matched by `entry`: a `+` in the
/// request is covered by `+` or `#` in the entry, a `#` only by `#`. `a/#` covers `a/b/+`; `a/+`
/// does not cover `a/#` (that also matches `a` and `a/b/c`); a wildcard-first entry does not
/// cover a `$...` request.
pub(super) fn covers(entry: &str, requested: &str) -> bool {
    if dollar_blocked(entry, requested) {
        return false;
    }
    // The parent level that `#` includes is the empty topic here, which is not a valid topic:
    // `#` matches what `+/#` matches, and `/#` what `/+/#` does.
    let requested = match requested {
        "#" => "+/#",
        "/#" => "/+/#",
        r => r,
    };
    let mut e = entry.split('/');
    let mut r = requested.split('/');
    loop {
        match (e.next(), r.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(rl)) if rl != "#" => {}
            (Some(el), Some(rl)) if el == rl => {}
            _ => return false,
        }
    }
}

/// Whether the `pattern` line's filter, with `%u` → `username` and `%c` → `client_id` replaced
/// in one left-to-right pass, matches `topic`. The caller has checked that each value the
/// pattern needs is present, non-empty and free of '/', '+' and '#', so every pattern level
/// stays one level and a substituted level is a literal. Allocates nothing.
pub(super) fn pattern_matches(
    pattern: &str,
    username: Option<&str>,
    client_id: &str,
    topic: &str,
) -> bool {
    if dollar_blocked(pattern, topic) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(pl), Some(tl)) if level_matches(pl, tl, username, client_id) => {}
            _ => return false,
        }
    }
}

/// One literal pattern level against one topic level, substituting as it goes (the same pass as
/// the ACL's `substitute`: `%u` needs a username, `%c` always applies, any other `%` is itself).
fn level_matches(pattern: &str, topic: &str, username: Option<&str>, client_id: &str) -> bool {
    let mut rest = pattern;
    let mut t = topic;
    while let Some(i) = rest.find('%') {
        let Some(after_literal) = t.strip_prefix(&rest[..i]) else {
            return false;
        };
        let tail = &rest[i..];
        let (value, after) = match (username, tail.strip_prefix("%u")) {
            (Some(u), Some(after)) => (u, after),
            _ => match tail.strip_prefix("%c") {
                Some(after) => (client_id, after),
                None => ("%", &tail[1..]),
            },
        };
        let Some(after_value) = after_literal.strip_prefix(value) else {
            return false;
        };
        t = after_value;
        rest = after;
    }
    t == rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    #[test]
    fn meet_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("#", "#", Some("#")),
            ("#", "+/+", Some("+/+")),
            ("#", "test/nosubscribe", Some("test/nosubscribe")),
            ("+/+", "test/nosubscribe", Some("test/nosubscribe")),
            ("+/nosubscribe", "test/#", Some("test/nosubscribe")),
            ("a/#", "+/b", Some("a/b")),
            ("a/#", "a", Some("a")),
            ("a/+", "a/#", Some("a/+")),
            ("a/+/#", "a/#", Some("a/+/#")),
            ("a/+/#", "a/b", Some("a/b")),
            ("+/#", "#", Some("+/#")),
            ("a/b", "a/c", None),
            ("a", "a/b", None),
            ("a/+", "a", None),
            ("a/+/c", "a/b/d", None),
            ("+", "a/b", None),
            ("/#", "+", None),
            ("/#", "/", Some("/")),
            ("#", "$SYS/x", None),
            ("+/x", "$SYS/x", None),
            ("$SYS/#", "$SYS/+", Some("$SYS/+")),
            ("$SYS/#", "+/uptime", None),
            ("$SYS/#", "$other/#", None),
        ];
        for &(a, b, want) in cases {
            assert_eq!(meet(a, b).as_deref(), want, "{a} ∧ {b}");
            assert_eq!(meet(b, a).as_deref(), want, "{b} ∧ {a}");
        }
    }

    #[test]
    fn covers_table() {
        // (entry, requested, entry matches every topic requested matches)
        let cases = [
            ("#", "#", true),
            ("#", "+/+", true),
            ("#", "a/b/c", true),
            ("test/nosubscribe", "#", false),
            ("test/nosubscribe", "+/+", false),
            ("test/nosubscribe", "+/nosubscribe", false),
            ("test/nosubscribe", "test/nosubscribe", true),
            ("secret/#", "secret/+", true),
            ("secret/#", "secret/#", true),
            ("secret/#", "secret", true),
            ("secret/#", "+/+", false),
            ("secret/+", "secret/#", false),
            ("a/#", "a/b/+", true),
            ("+/+", "a/+", true),
            ("+", "a/b", false),
            ("a/b", "a/+", false),
            ("a/+/#", "a/#", false),
            ("a/#", "a/+/#", true),
            ("+/#", "#", true),
            ("+/+/#", "#", false),
            ("/+/#", "/#", true),
            ("+/+/#", "+/#", false),
            ("#", "$SYS/x", false),
            ("+/#", "$SYS/#", false),
            ("$SYS/#", "$SYS/+", true),
            ("$SYS/#", "#", false),
        ];
        for (entry, requested, want) in cases {
            assert_eq!(covers(entry, requested), want, "{entry} covers {requested}");
        }
    }

    /// Every valid filter of up to three levels over `a`, `$s`, the empty level, `+` and `#`.
    fn small_filters() -> Vec<String> {
        let levels = ["a", "$s", "", "+", "#"];
        let mut out: Vec<String> = Vec::new();
        let mut frontier: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..3 {
            let mut next = Vec::new();
            for f in &frontier {
                if f.last() == Some(&"#") {
                    continue;
                }
                for l in levels {
                    let mut g = f.clone();
                    g.push(l);
                    out.push(g.join("/"));
                    next.push(g);
                }
            }
            frontier = next;
        }
        out.retain(|f| !f.is_empty());
        out
    }

    /// Every topic of up to four levels over `a`, `b` (a level no filter names), `$s` and the
    /// empty level: deep and varied enough to tell apart any two of [`small_filters`].
    fn small_topics() -> Vec<String> {
        let levels = ["a", "b", "$s", ""];
        let mut out = Vec::new();
        let mut frontier = vec![String::new()];
        for depth in 0..4 {
            let mut next = Vec::new();
            for t in &frontier {
                for l in levels {
                    let s = if depth == 0 {
                        l.to_string()
                    } else {
                        format!("{t}/{l}")
                    };
                    next.push(s);
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out.retain(|t| !t.is_empty());
        out
    }

    #[test]
    fn meet_and_covers_agree_with_brute_force() {
        let filters = small_filters();
        let topics = small_topics();
        let sets: Vec<Vec<bool>> = filters
            .iter()
            .map(|f| topics.iter().map(|t| matches(f, t)).collect())
            .collect();
        for (i, a) in filters.iter().enumerate() {
            for (j, b) in filters.iter().enumerate() {
                let both: Vec<bool> = sets[i]
                    .iter()
                    .zip(&sets[j])
                    .map(|(x, y)| *x && *y)
                    .collect();
                match meet(a, b) {
                    Some(m) => {
                        let got: Vec<bool> = topics.iter().map(|t| matches(&m, t)).collect();
                        assert_eq!(got, both, "{a} ∧ {b} = {m}");
                    }
                    None => assert!(!both.contains(&true), "{a} ∧ {b} is not empty"),
                }
                let subset = sets[j].iter().zip(&sets[i]).all(|(r, e)| !*r || *e);
                assert_eq!(covers(a, b), subset, "{a} covers {b}");
            }
        }
    }

    #[test]
    fn pattern_matching_equals_substituting_then_matching() {
        let patterns = [
            "devices/%u/#",
            "devices/%u/%c/up",
            "cmd/%c",
            "x-%u-%c/+",
            "%%u/%c%",
            "100%/%u",
            "+/%c",
            "#",
            "a/%cu",
        ];
        let values = [(Some("bob"), "dev1"), (Some("%c"), "bob"), (None, "d")];
        let topics = [
            "devices/bob/x",
            "devices/bob/dev1/up",
            "devices/bob/dev2/up",
            "cmd/dev1",
            "cmd/bob",
            "x-bob-dev1/z",
            "%bob/dev1%",
            "100%/bob",
            "any/d",
            "a/dev1u",
            "a/bobu",
            "$SYS/dev1",
            "devices/%c/bob",
            "cmd/d",
            "%%u/d%",
        ];
        for p in patterns {
            for (user, cid) in values {
                if p.contains("%u") && user.is_none() {
                    continue; // the ACL skips such a pattern before matching
                }
                let substituted = substitute_for_test(p, user, cid);
                for t in topics {
                    assert_eq!(
                        pattern_matches(p, user, cid, t),
                        matches(&substituted, t),
                        "{p} ({user:?}, {cid}) on {t}"
                    );
                }
            }
        }
    }

    /// The one-pass substitution written out plainly.
    fn substitute_for_test(p: &str, user: Option<&str>, cid: &str) -> String {
        let mut out = String::new();
        let mut chars = p.char_indices().peekable();
        while let Some((i, ch)) = chars.next() {
            let next = p[i + 1..].chars().next();
            match (ch, next, user) {
                ('%', Some('u'), Some(u)) => {
                    out.push_str(u);
                    chars.next();
                }
                ('%', Some('c'), _) => {
                    out.push_str(cid);
                    chars.next();
                }
                _ => out.push(ch),
            }
        }
        out
    }
}
