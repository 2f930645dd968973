use super::*;
use crate::auth::passwd::tests::config_line;

fn acl(text: &str) -> Acl {
    Acl::parse("acl", text).unwrap()
}

const R: Access = Access::Read;
const W: Access = Access::Write;
const S: Access = Access::Subscribe;

#[test]
fn first_block_applies_to_everyone_including_anonymous() {
    let a = acl("topic read public/#\nuser alice\ntopic readwrite alice/#\n");
    assert!(a.check(None, "c1", "public/news", R));
    assert!(a.check(Some("alice"), "c1", "public/news", R));
    assert!(a.check(Some("bob"), "c1", "public/news", R));
    assert!(!a.check(None, "c1", "public/news", W));
    assert!(a.check(None, "c1", "public/#", S));
}

#[test]
fn user_block_applies_only_to_that_user() {
    let a = acl("user alice\ntopic alice/#\nuser bob\ntopic read bob/in\n");
    assert!(a.check(Some("alice"), "c", "alice/x", W));
    assert!(a.check(Some("alice"), "c", "alice/x", R));
    assert!(!a.check(Some("bob"), "c", "alice/x", R));
    assert!(!a.check(None, "c", "alice/x", R));
    assert!(a.check(Some("bob"), "c", "bob/in", R));
    assert!(!a.check(Some("bob"), "c", "bob/in", W));
    assert!(!a.check(Some("alice"), "c", "bob/in", R));
}

#[test]
fn several_blocks_for_one_user_add_up() {
    let a = acl("user alice\ntopic a\nuser bob\ntopic b\nuser alice\ntopic c\n");
    assert!(a.check(Some("alice"), "x", "a", R));
    assert!(a.check(Some("alice"), "x", "c", R));
    assert!(!a.check(Some("alice"), "x", "b", R));
}

#[test]
fn patterns_substitute_username_and_client_id() {
    let a = acl("user alice\npattern write devices/%u/%c/up\npattern read cmd/%c\n");
    // Patterns apply to everyone, even though they sit in alice's block.
    assert!(a.check(Some("bob"), "dev1", "devices/bob/dev1/up", W));
    assert!(!a.check(Some("bob"), "dev1", "devices/bob/dev2/up", W));
    assert!(!a.check(Some("bob"), "dev1", "devices/alice/dev1/up", W));
    assert!(!a.check(Some("bob"), "dev1", "devices/bob/dev1/up", R));
    assert!(a.check(None, "dev1", "cmd/dev1", R));
    assert!(!a.check(None, "dev1", "cmd/dev2", R));
    // %u never matches an anonymous client.
    assert!(!a.check(None, "dev1", "devices/%u/dev1/up", W));
    assert!(!a.check(None, "dev1", "devices//dev1/up", W));
}

#[test]
fn pattern_values_with_wildcards_or_slashes_do_not_match() {
    let a = acl("pattern read devices/%u/#\npattern read cmd/%c\n");
    assert!(a.check(Some("bob"), "c", "devices/bob/x", R));
    assert!(!a.check(Some("+"), "c", "devices/+/#", S));
    assert!(!a.check(Some("#"), "c", "devices/x/y", R));
    assert!(!a.check(Some("a/b"), "c", "devices/a/b/x", R));
    assert!(!a.check(Some(""), "c", "devices//x", R));
    assert!(!a.check(None, "#", "cmd/x", R));
    assert!(!a.check(None, "a/b", "cmd/a/b", R));
    assert!(!a.check(None, "+", "cmd/+", S));
    // One-pass substitution: a user literally named `%c` does not become its client id.
    let a = acl("pattern readwrite devices/%u/%c\n");
    assert!(!a.check(Some("%c"), "bob", "devices/bob/bob", W));
    assert!(a.check(Some("%c"), "bob", "devices/%c/bob", W));
    assert!(a.check(Some("bob"), "bob", "devices/bob/bob", W));
}

#[test]
fn deny_wins() {
    let a = acl(
        "topic readwrite #\ntopic deny secret/#\nuser alice\ntopic deny public/x\n\
         pattern deny private/%u\n",
    );
    assert!(a.check(None, "c", "public/x", R));
    assert!(a.check(None, "c", "public/x", W));
    assert!(!a.check(None, "c", "secret/x", R));
    assert!(!a.check(None, "c", "secret", W));
    assert!(!a.check(Some("alice"), "c", "public/x", R));
    assert!(a.check(Some("bob"), "c", "public/x", R));
    assert!(!a.check(Some("bob"), "c", "private/bob", W));
    assert!(a.check(Some("bob"), "c", "private/alice", W));
    // Subscribe: refused only when every topic the filter could deliver is denied.
    assert!(!a.check(None, "c", "secret/#", S));
    assert!(!a.check(None, "c", "secret/+", S));
    assert!(!a.check(None, "c", "secret", S));
    assert!(
        a.check(None, "c", "+/x", S),
        "delivers public/x; secret/x is filtered"
    );
    assert!(a.check(None, "c", "#", S));
    assert!(a.check(None, "c", "public/#", S));
    assert!(a.check(Some("alice"), "c", "public/#", S));
    assert!(!a.check(Some("alice"), "c", "public/x", S));
    assert!(a.check(Some("alice"), "c", "public/+", S));
    assert!(!a.check(Some("bob"), "c", "private/bob", S));
    assert!(a.check(Some("bob"), "c", "private/+", S));
}

/// The case from issue 11: an admin or a test suite subscribing to `#` next to one deny.
#[test]
fn wildcard_subscriptions_are_granted_next_to_a_deny() {
    let a = acl("topic readwrite #
topic deny test/nosubscribe
");
    for (filter, granted) in [
        ("#", true),
        ("+/+", true),
        ("+/nosubscribe", true),
        ("test/+", true),
        ("test/#", true),
        ("$share/g/#", true),
        ("test/nosubscribe", false),
        ("$share/g/test/nosubscribe", false),
    ] {
        assert_eq!(a.check(None, "c", filter, S), granted, "{filter}");
        assert_eq!(a.check(Some("u"), "c", filter, S), granted, "{filter}");
    }
    assert!(!a.check(None, "c", "test/nosubscribe", R));
    assert!(a.check(None, "c", "test/other", R));
    // Denies are not added up: two denies that together cover a filter leave it granted
    // (nothing is delivered; every delivery is checked).
    let a = acl("topic read a/#
topic deny a/x
topic deny a/+/#
");
    assert!(!a.check(None, "c", "a/+/y", S));
    assert!(a.check(None, "c", "a/#", S));
    assert!(a.check(None, "c", "a", S));
}

/// The deny only needs to cover what the grants can deliver through the filter, not the
/// whole filter.
#[test]
fn subscribe_is_refused_when_what_a_grant_delivers_is_denied() {
    let a = acl("topic read a/#
topic deny a/secret/#
");
    assert!(
        !a.check(None, "c", "+/secret/x", S),
        "only a/secret/x could arrive"
    );
    assert!(!a.check(None, "c", "+/secret/#", S));
    assert!(a.check(None, "c", "+/+/x", S), "a/other/x could arrive");
    assert!(!a.check(None, "c", "b/#", S), "nothing could arrive");
    let a = acl("topic read a/#
topic read b/#
topic deny a/secret
");
    assert!(a.check(None, "c", "+/secret", S), "b/secret could arrive");
}

#[test]
fn subscribe_with_patterns() {
    let a = acl("pattern read devices/%u/#
pattern deny devices/%u/private/#
         pattern read cmd/%c/+
pattern deny cmd/%c/reboot
");
    let bob = Some("bob");
    assert!(a.check(bob, "d1", "devices/bob/#", S));
    assert!(a.check(bob, "d1", "devices/+/#", S), "delivers only bob's");
    assert!(a.check(bob, "d1", "#", S));
    assert!(!a.check(bob, "d1", "devices/bob/private/+", S));
    assert!(!a.check(bob, "d1", "devices/alice/#", S));
    assert!(a.check(None, "d1", "cmd/+/+", S));
    assert!(!a.check(None, "d1", "cmd/d1/reboot", S));
    assert!(
        !a.check(None, "d1", "cmd/+/reboot", S),
        "only cmd/d1/reboot could arrive"
    );
    assert!(
        !a.check(None, "d1", "devices/+/#", S),
        "anonymous: no %u pattern applies"
    );
    assert!(!a.check(Some("a+b"), "d1", "devices/#", S));
    // Per delivery:
    assert!(a.check(bob, "d1", "devices/bob/x", R));
    assert!(!a.check(bob, "d1", "devices/alice/x", R));
    assert!(!a.check(bob, "d1", "devices/bob/private/k", R));
    assert!(!a.check(None, "d1", "cmd/d1/reboot", R));
    assert!(a.check(None, "d1", "cmd/d1/ping", R));
}

#[test]
fn wildcard_entries_match_topics() {
    let a = acl("topic read sensors/+/temp\ntopic write cmd/#\n");
    assert!(a.check(None, "c", "sensors/kitchen/temp", R));
    assert!(!a.check(None, "c", "sensors/kitchen/humidity", R));
    assert!(!a.check(None, "c", "sensors/a/b/temp", R));
    assert!(!a.check(None, "c", "sensors/temp", R));
    assert!(!a.check(None, "c", "sensors/kitchen/temp", W));
    assert!(a.check(None, "c", "cmd", W), "'#' includes the parent");
    assert!(a.check(None, "c", "cmd/a/b/c", W));
    assert!(!a.check(None, "c", "cmdx", W));
    assert!(!a.check(None, "c", "cmd/a", R));
    // A topic name with wildcards is not a topic: refused for Read/Write.
    assert!(!a.check(None, "c", "cmd/+", W));
}

#[test]
fn subscribe_needs_a_read_entry_sharing_a_topic_with_the_filter() {
    let a = acl("topic read a/#\ntopic readwrite b/+\ntopic write w/#\n");
    for (filter, granted) in [
        ("a/b/+", true),
        ("a/#", true),
        ("a", true),
        ("b/+", true),
        ("b/x", true),
        ("b/#", true), // delivers b/x, never b/x/y
        ("+/x", true), // a/x, b/x
        ("#", true),
        ("b/x/y", false),
        ("c/#", false),
        ("x/+", false),
        ("w/x", false),          // write does not allow subscribe
        ("a/+/#/x", false),      // invalid filter
        ("$share/g1/a/x", true), // the share prefix is stripped; the group does not matter
        ("$share/g1/b/#", true),
        ("$share/g1/c", false),
        ("$share/g1", false),
    ] {
        assert_eq!(a.check(None, "c", filter, S), granted, "{filter}");
    }
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let a = acl("topic readwrite #\ntopic read +/status\n");
    assert!(a.check(None, "c", "anything/at/all", W));
    assert!(!a.check(None, "c", "$SYS/broker/uptime", R));
    assert!(!a.check(None, "c", "$SYS/status", R));
    assert!(!a.check(None, "c", "$SYS/#", S));
    let a = acl("topic read $SYS/#\n");
    assert!(a.check(None, "c", "$SYS/broker/uptime", R));
    assert!(a.check(None, "c", "$SYS/#", S));
    // Deny `#` does not reach `$SYS` either, matching how Read is decided.
    let a = acl("topic read $SYS/#\ntopic deny #\n");
    assert!(a.check(None, "c", "$SYS/broker/uptime", R));
    assert!(a.check(None, "c", "$SYS/#", S));
    assert!(!a.check(None, "c", "other", R));
}

#[test]
fn empty_acl_denies_everything() {
    let a = acl("# nothing here\n\n   \n");
    for access in [R, W, S] {
        assert!(!a.check(None, "c", "a", access));
        assert!(!a.check(Some("alice"), "c", "a", access));
    }
    assert!(!Acl::default().check(Some("alice"), "c", "#", S));
}

#[test]
fn topics_may_contain_spaces_and_access_defaults_to_readwrite() {
    let a = acl("topic my topic/with spaces\ntopic read  spaced  out \ntopic readership\n");
    assert!(a.check(None, "c", "my topic/with spaces", W));
    assert!(a.check(None, "c", "my topic/with spaces", R));
    assert!(a.check(None, "c", "spaced  out", R));
    assert!(!a.check(None, "c", "spaced  out", W));
    assert!(a.check(None, "c", "readership", W));
}

#[test]
fn malformed_acl_lines_are_rejected_with_their_line() {
    let cases = [
        ("topic read a\nbogus b\n", 2),
        ("# c\n\ntopic\n", 3),
        ("topic read\n", 1),
        ("topic deny   \n", 1),
        ("user\n", 1),
        ("pattern write\n", 1),
        ("topic a/#/b\n", 1),
        ("topic read a/b+\n", 1),
        ("\n\n\npattern read x/%u#\n", 4),
        ("Topic a\n", 1),
    ];
    for (text, line) in cases {
        let err = Acl::parse("acl", text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("acl:{line}: ")),
            "{text:?}: {shown}"
        );
        assert_eq!(config_line(err), Some(line), "{text:?}");
    }
}
