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
