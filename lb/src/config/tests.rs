//! Unit tests of the config's two stages.

use super::*;
use mqedge_shared::config::ConfigErrors;
use std::path::Path;

fn parse(s: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("lb.toml"), s)
}

const MIN: &str = "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n";

#[test]
fn defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.lb.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.lb.max_connect_packet, 65536);
    assert_eq!(c.lb.max_connections, 100_000);
    assert_eq!(c.lb.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.lb.connect_burst_per_ip, 20);
    assert_eq!(c.balance.strategy, Strategy::ClientId);
    assert_eq!(c.balance.fallback, Strategy::SourceIp);
    assert_eq!(c.balance.retries, 2);
    assert_eq!(c.health.kind, HealthKind::Mqtt);
    assert_eq!((c.health.fall, c.health.rise), (2, 3));
    assert!(c.backends.is_empty());
}

#[test]
fn backends_and_errors_with_lines() {
    let ok = format!(
        "{MIN}[[backend]]\nname = \"node1\"\naddr = \"127.0.0.1:11883\"\nproxy_protocol = \"v2\"\n[[backend]]\nname = \"node2\"\naddr = \"broker-1.broker:1883\"\nweight = 3\n"
    );
    let c = parse(&ok).unwrap();
    assert_eq!(c.backends[0].proxy_protocol, ProxyMode::V2);
    assert_eq!(
        c.backends[1].addr,
        BackendAddr::Host("broker-1.broker".into(), 1883)
    );
    assert_eq!(c.backends[1].weight, 3);

    let e = parse(&format!(
        "{MIN}[[backend]]\nname = \"a\"\naddr = \"nope\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("lb.toml:6: invalid backend address"), "{e}");
    let e = parse(&format!("{MIN}[lb]\nconnect_timeout = \"5 parsecs\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("lb.toml:5: invalid duration"), "{e}");
    let e = parse(&format!("{MIN}[lb]\nbogus = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("lb.toml:5: unknown field `bogus`"), "{e}");
    let e = parse("[[listener]]\nname = \"x\"\nbind = \"localhost\"\n[health]\nfall = 0\n")
        .unwrap_err();
    assert_eq!(e.0.len(), 2, "all problems at once: {e}");
    assert!(
        e.0[0]
            .to_string()
            .starts_with("lb.toml:3: bind: invalid address"),
        "{e}"
    );
    assert!(
        e.0[1]
            .to_string()
            .starts_with("lb.toml:5: fall must be at least 1"),
        "{e}"
    );
    let e = parse(&format!("{MIN}[balance]\nstrategy = \"coin_flip\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("lb.toml:5: unknown variant `coin_flip`"),
        "{e}"
    );
    let e = parse(&format!("{MIN}[[backend]]\nname = \"a\"\naddr = \"1.2.3.4:1\"\n[[backend]]\nname = \"a\"\naddr = \"1.2.3.4:2\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lb.toml:8: duplicate backend name"), "{e}");
    let e = parse("[[listener]]\nname = \"x\"\nbind = \"127.0.0.1:1\"\n[listener.tls]\ncert = \"/nonexistent.pem\"\nkey = \"/k\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("lb.toml:4") || e.starts_with("lb.toml:5"),
        "{e}"
    );
    assert!(e.contains("/nonexistent.pem"), "{e}");
}

#[test]
fn proxy_input_needs_trusted_proxies() {
    let pp = "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\nproxy_protocol = true\n";
    let e = parse(pp).unwrap_err().to_string();
    assert!(
        e.starts_with("lb.toml:3: proxy_protocol needs trusted_proxies"),
        "{e}"
    );
    let e = parse(&format!("{pp}trusted_proxies = [\"10.0.0.0/33\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("lb.toml:5: invalid CIDR"), "{e}");
    let c = parse(&format!(
        "{pp}trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n"
    ))
    .unwrap();
    let t = &c.listeners[0].trusted_proxies;
    assert_eq!(t.len(), 2);
    assert!(t[0].contains("10.1.2.3".parse().unwrap()));
    assert!(!t[0].contains("11.0.0.1".parse().unwrap()));
}

#[test]
fn bandwidth_and_buffers_parse_and_refuse_with_lines() {
    let ok = format!(
        "{MIN}bandwidth_in = \"64KiB\"\nbandwidth_out = \"1MiB\"\nrcvbuf = \"32KiB\"\n\
         [[backend]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\nsndbuf = \"1MiB\"\n"
    );
    let c = parse(&ok).unwrap();
    let net = c.listeners[0].net;
    assert_eq!(net.limit(true), Some((65536, 65536)));
    assert_eq!(net.limit(false), Some((1 << 20, 1 << 20)));
    assert_eq!(net.bufs.rcvbuf, Some(32768));
    assert_eq!(c.backends[0].bufs.sndbuf, Some(1 << 20));
    assert!(!parse(MIN).unwrap().listeners[0].net.shaped());

    let bad = format!(
        "{MIN}bandwidth_in = \"100B\"\nbandwidth_burst = \"512B\"\nsndbuf = \"1GiB\"\n\
         [[listener]]\nname = \"b\"\nbind = \"127.0.0.1:1\"\nbandwidth_burst = \"8KiB\"\n\
         [[backend]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\nrcvbuf = 10\n"
    );
    let e = parse(&bad).unwrap_err().to_string();
    for want in [
        "lb.toml:4: listener \"mqtt\": bandwidth_in must be at least 1KiB",
        "lb.toml:5: listener \"mqtt\": bandwidth_burst must be at least 1KiB",
        "lb.toml:6: listener \"mqtt\": sndbuf must be between 4KiB and 64MiB",
        "lb.toml:10: listener \"b\": bandwidth_burst needs bandwidth_in or bandwidth_out",
        "lb.toml:14: backend \"n1\": rcvbuf must be between 4KiB and 64MiB",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn proxy_tlvs_default_to_all_and_refuse_with_lines() {
    use crate::config::ProxyTlvs;
    let b =
        |extra: &str| format!("{MIN}[[backend]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\n{extra}");
    let c = parse(&b("proxy_protocol = \"v2\"\n")).unwrap();
    assert_eq!(c.backends[0].proxy_tlvs, ProxyTlvs::ALL);
    let c = parse(&b(
        "proxy_protocol = \"v2\"\nproxy_tlvs = [\"cn\", \"san\"]\n",
    ))
    .unwrap();
    let t = c.backends[0].proxy_tlvs;
    assert!(t.has(ProxyTlvs::CN) && t.has(ProxyTlvs::SAN));
    assert!(!t.has(ProxyTlvs::DN) && !t.has(ProxyTlvs::FINGERPRINT));
    let c = parse(&b("proxy_protocol = \"v2\"\nproxy_tlvs = []\n")).unwrap();
    assert_eq!(c.backends[0].proxy_tlvs, ProxyTlvs::empty());
    let e = parse(&b(
        "proxy_protocol = \"v2\"\nproxy_tlvs = [\"cn\", \"subject\"]\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("lb.toml:8: proxy_tlvs: unknown TLV \"subject\""),
        "{e}"
    );
    let e = parse(&b("proxy_protocol = \"v1\"\nproxy_tlvs = [\"dn\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("lb.toml:8: proxy_tlvs needs proxy_protocol = \"v2\""),
        "{e}"
    );
}

#[test]
fn websocket_listeners_and_their_errors_with_lines() {
    let ok = format!(
        "{MIN}[listener.websocket]\npath = \"/ws\"\nmax_frame = \"64KiB\"\ntrusted_forwarders = [\"10.0.0.0/8\"]\n"
    );
    let ws = parse(&ok).unwrap().listeners[0].websocket.clone().unwrap();
    assert_eq!((ws.path(), ws.max_frame()), ("/ws", 64 * 1024));
    assert_eq!(ws.trusted_forwarders().len(), 1);
    let empty = parse(&format!("{MIN}[listener.websocket]\n")).unwrap();
    let ws = empty.listeners[0].websocket.clone().unwrap();
    assert_eq!((ws.path(), ws.max_frame()), ("/mqtt", 1 << 20));
    assert!(parse(MIN).unwrap().listeners[0].websocket.is_none());
    let bad = format!(
        "{MIN}[listener.websocket]\npath = \"mqtt\"\nmax_frame = \"10\"\ntrusted_forwarders = [\"x\"]\n"
    );
    let e = parse(&bad).unwrap_err().to_string();
    for (line, what) in [
        (5, "websocket path"),
        (6, "websocket max_frame"),
        (7, "invalid CIDR"),
    ] {
        assert!(e.contains(&format!("lb.toml:{line}: {what}")), "{e}");
    }
}
