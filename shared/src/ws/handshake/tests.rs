use super::*;

fn req(extra: &str) -> String {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[test]
fn the_rfc_example_key() {
    // RFC 6455 §1.3
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(base64(b"a"), "YQ==");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
}

#[test]
fn accepts_and_echoes_the_mqtt_subprotocol() {
    let r = parse(
        req("Sec-WebSocket-Protocol: foo, mqtt\r\n").as_bytes(),
        "/mqtt",
    )
    .unwrap();
    assert_eq!(r.protocol, Some("mqtt"));
    let text = String::from_utf8(accept_response(&r)).unwrap();
    assert!(text.starts_with("HTTP/1.1 101 "));
    assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    let r = parse(
        req("Sec-WebSocket-Protocol: mqttv3.1\r\n").as_bytes(),
        "/mqtt",
    )
    .unwrap();
    assert_eq!(r.protocol, Some("mqttv3.1"));
    let r = parse(req("").as_bytes(), "/mqtt").unwrap();
    assert_eq!(r.protocol, None);
    // a query string is not part of the path
    let q = req("").replace("/mqtt ", "/mqtt?x=1 ");
    assert!(parse(q.as_bytes(), "/mqtt").is_ok());
}

#[test]
fn refusals_and_their_status() {
    let cases = [
        (req("").replace("GET", "POST"), "405"),
        (req("").replace("/mqtt", "/other"), "404"),
        (req("").replace("Upgrade: websocket\r\n", ""), "400"),
        (req("").replace("Version: 13", "Version: 8"), "426"),
        (req("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), "400"),
        (req("Sec-WebSocket-Protocol: chat\r\n"), "400"),
        ("hello\r\n\r\n".to_string(), "400"),
        (req("").replace("HTTP/1.1", "HTTP/1.0"), "400"),
    ];
    for (text, status) in cases {
        let e = parse(text.as_bytes(), "/mqtt").unwrap_err();
        assert!(e.status().starts_with(status), "{e:?} for {text:?}");
        let answer = String::from_utf8(error_response(&e)).unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")));
    }
}

#[test]
fn forwarded_for_only_from_trusted_peers() {
    let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
    let xff = |s: &str| {
        s.split(',')
            .map(|e| e.trim().to_string())
            .collect::<Vec<_>>()
    };
    let lb: IpAddr = "10.0.0.5".parse().unwrap();
    let stranger: IpAddr = "192.0.2.1".parse().unwrap();
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        client_address(lb, &xff("203.0.113.7"), &trusted),
        ip("203.0.113.7")
    );
    // a client's own claim on the left is skipped: the first untrusted from the right wins
    assert_eq!(
        client_address(lb, &xff("1.1.1.1, 203.0.113.7, 10.0.0.9"), &trusted),
        ip("203.0.113.7")
    );
    assert_eq!(
        client_address(lb, &xff("10.1.1.1, 10.0.0.9"), &trusted),
        ip("10.1.1.1")
    );
    assert_eq!(
        client_address(lb, &xff("[2001:db8::1]"), &trusted),
        ip("2001:db8::1")
    );
    assert_eq!(
        client_address(lb, &xff("203.0.113.7:4711"), &trusted),
        ip("203.0.113.7")
    );
    assert_eq!(
        client_address(stranger, &xff("203.0.113.7"), &trusted),
        None
    );
    assert_eq!(client_address(lb, &[], &trusted), None);
    assert_eq!(client_address(lb, &xff("unknown"), &trusted), None);
    let r = parse(
        req("X-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\n").as_bytes(),
        "/mqtt",
    )
    .unwrap();
    assert_eq!(r.forwarded_for, ["1.2.3.4", "5.6.7.8"]);
}
