//! The LB's end of the placement feed's wire: one `GET /api/placement?limit=N` to a broker's
//! admin port over plain HTTP/1.1 (`Connection: close`; no HTTP client dependency for one
//! request shape), the answer read whole under a byte cap and a deadline, and its JSON decoded
//! into a [`FeedDoc`]. Nothing a broker sends can make it hold more than the cap.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::BackendAddr;

/// Bytes allowed per entry asked for: a client id of at most 256 bytes (the broker leaves
/// longer ones out), a node name and the JSON around them.
const BYTES_PER_ENTRY: usize = 400;
/// Bytes allowed for the status line, headers and the rest of the document.
const BASE_BYTES: usize = 64 * 1024;

/// Why one poll of a feed failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// No TCP connection to the admin address.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The admin address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The whole poll took longer than `[placement] timeout`.
    #[error("no whole answer within {0:?}")]
    Timeout(Duration),
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is over the cap for the entries asked for.
    #[error("answer over {0} bytes")]
    TooLarge(usize),
    /// Not 200 (401: `[placement] admin_token_file` missing or wrong; 404: a broker without the
    /// feed).
    #[error("HTTP status {0}")]
    Status(u16),
    /// Not an HTTP/1.x answer we can read.
    #[error("malformed HTTP answer: {0}")]
    Http(&'static str),
    /// The body is not the feed's JSON.
    #[error("malformed feed JSON: {0}")]
    Json(String),
    /// The admin address answers for another node than the backend it is configured on.
    #[error("the feed is node {got:?}, not backend {want:?}: [[backend]] admin points at another broker")]
    WrongNode {
        /// The backend's name.
        want: String,
        /// The feed's `node`.
        got: String,
    },
}

/// The feed's document (`GET /api/placement` on a broker).
#[derive(Debug, Deserialize)]
pub struct FeedDoc {
    /// The node answering.
    pub node: String,
    /// The live nodes it placed by.
    #[serde(default)]
    pub members: Vec<String>,
    /// Sessions held on `node` whose hash home is another node.
    pub exceptions: Vec<Exception>,
    /// Whether it left some out.
    #[serde(default)]
    pub truncated: bool,
    /// How fast it takes new clients (`[placement] pacing`); absent from a broker that
    /// predates it.
    #[serde(default)]
    pub admit: Option<AdmitDoc>,
}

/// A broker's admission figures.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct AdmitDoc {
    /// New clients per second it can take now.
    pub rate: f64,
}

/// One session off its hash home.
#[derive(Debug, Deserialize)]
pub struct Exception {
    /// Its client id.
    pub client_id: String,
    /// The node holding it (the feed's own node: a node speaks only for itself).
    pub node: String,
}

/// The most bytes an answer listing `limit` entries may have.
pub fn cap_for(limit: usize) -> usize {
    limit
        .saturating_mul(BYTES_PER_ENTRY)
        .saturating_add(BASE_BYTES)
}

/// Reads a whole HTTP answer (at most `cap` bytes) and its JSON body.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    s: &mut TcpStream,
    cap: usize,
) -> Result<T, FeedError> {
    let mut raw = Vec::new();
    s.take((cap as u64).saturating_add(1))
        .read_to_end(&mut raw)
        .await?;
    if raw.len() > cap {
        return Err(FeedError::TooLarge(cap));
    }
    let body = body_of(&raw)?;
    serde_json::from_slice::<T>(&body).map_err(|e| FeedError::Json(e.to_string()))
}

/// Polls the feed at `addr` once: at most `limit` entries, the bearer `token` when the broker
/// asks for one, everything within `timeout`.
pub async fn fetch(
    addr: &BackendAddr,
    limit: usize,
    token: Option<&str>,
    timeout: Duration,
) -> Result<FeedDoc, FeedError> {
    let cap = cap_for(limit);
    let poll = async {
        let (mut s, peer) = dial(addr).await?;
        s.write_all(request(peer, limit, token).as_bytes()).await?;
        read_json::<FeedDoc>(&mut s, cap).await
    };
    tokio::time::timeout(timeout, poll)
        .await
        .unwrap_or(Err(FeedError::Timeout(timeout)))
}

/// A TCP connection to the admin address (a host name is resolved at every poll) and the peer
/// address, which the request names as its `Host` (the admin guard accepts IP literals).
pub(crate) async fn dial(addr: &BackendAddr) -> Result<(TcpStream, SocketAddr), FeedError> {
    let failed = |source| FeedError::Connect {
        addr: addr.to_string(),
        source,
    };
    let targets: Vec<SocketAddr> = match addr {
        BackendAddr::Ip(a) => vec![*a],
        BackendAddr::Host(h, p) => tokio::net::lookup_host((h.as_str(), *p))
            .await
            .map_err(failed)?
            .collect(),
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in targets {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok((s, a)),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// The request bytes.
fn request(peer: SocketAddr, limit: usize, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /api/placement?limit={limit} HTTP/1.1\r\nHost: {peer}\r\nAccept: application/json\r\n\
         User-Agent: mqedge-lb\r\n{auth}Connection: close\r\n\r\n"
    )
}

/// The body of a whole HTTP/1.x answer (read to its end): 200 only; `Content-Length` or
/// `chunked` honoured.
pub fn body_of(raw: &[u8]) -> Result<Vec<u8>, FeedError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(FeedError::Http("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| FeedError::Http("headers not UTF-8"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(FeedError::Http("not an HTTP/1.x status line"));
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(FeedError::Http("no status code"))?;
    if code != 200 {
        return Err(FeedError::Status(code));
    }
    let (mut chunked, mut length) = (false, None);
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(FeedError::Http("a header line without ':'"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| FeedError::Http("bad Content-Length"))?,
            );
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) if body.len() < n => Err(FeedError::Http("body shorter than Content-Length")),
        Some(n) => Ok(body[..n].to_vec()),
        None => Ok(body.to_vec()),
    }
}

/// Decodes a `chunked` body (extensions and trailers ignored).
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, FeedError> {
    let mut out = Vec::with_capacity(b.len());
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return Err(FeedError::Http("bad chunked body"));
        };
        let line = std::str::from_utf8(&b[..eol]).map_err(|_| FeedError::Http("bad chunk size"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| FeedError::Http("bad chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size.saturating_add(2) || &b[size..size + 2] != b"\r\n" {
            return Err(FeedError::Http("bad chunked body"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_length_by_chunks_and_to_the_end() {
        let ok = |raw: &str| body_of(raw.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{}{}xx").unwrap(),
            "{}{}"
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\n{\"a\r\n2\r\n\":\r\n0\r\n\r\n")
                .unwrap(),
            "{\"a\":"
        );
        assert_eq!(ok("HTTP/1.0 200 OK\r\n\r\n[1]").unwrap(), "[1]");
    }

    #[test]
    fn what_is_not_a_whole_200_is_an_error() {
        let err = |raw: &str| body_of(raw.as_bytes()).unwrap_err().to_string();
        assert_eq!(err("HTTP/1.1 401 Unauthorized\r\n\r\n"), "HTTP status 401");
        assert!(err("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").contains("shorter"));
        assert!(err("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").contains("Content-Length"));
        assert!(
            err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").contains("chunk")
        );
        assert!(
            err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\r\n")
                .contains("chunk")
        );
        assert!(err("HTTP/1.1 200 OK\r\n").contains("end of headers"));
        assert!(err("SSH-2.0\r\n\r\n").contains("status line"));
        assert!(err("HTTP/1.1 200 OK\r\nbroken\r\n\r\n").contains("':'"));
    }

    #[test]
    fn the_cap_grows_with_the_entries_asked_for_and_never_overflows() {
        assert_eq!(cap_for(0), BASE_BYTES);
        assert_eq!(cap_for(100_000), 100_000 * BYTES_PER_ENTRY + BASE_BYTES);
        assert_eq!(cap_for(usize::MAX), usize::MAX);
    }

    #[test]
    fn the_request_names_the_peer_as_host_and_carries_the_token() {
        let r = request("127.0.0.1:8081".parse().unwrap(), 7, Some("s3cret"));
        assert!(r.starts_with("GET /api/placement?limit=7 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n"));
        assert!(r.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        assert!(r.ends_with("Connection: close\r\n\r\n"));
        assert!(!request("[::1]:1".parse().unwrap(), 1, None).contains("Authorization"));
    }
}
