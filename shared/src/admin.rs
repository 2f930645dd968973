//! The HTTP skeleton both admin ports use (axum): serving a router on an already-bound listener
//! until a shutdown signal, the `/metrics` response in Prometheus' text format, and the JSON
//! error shape of the APIs, and the guard in front of both (Host check against DNS rebinding,
//! `Origin` and a custom header on state-changing requests against CSRF, the optional bearer
//! token). Each role keeps its own routes and handlers.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use toml::Spanned;

use crate::config::{resolve_path, Problems};

/// The Prometheus text exposition format, version 0.0.4: what scrapers expect on `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` response: an encoded registry with the content type scrapers expect.
pub fn metrics_text(body: String) -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
}

/// A 404 with `{"error": message}`, the shape every admin API error has.
pub fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}

/// Serves `router` on a bound listener until `stop` resolves; requests in flight then finish.
/// Logs `admin listening` with the address, and `admin server failed` if serving fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "admin listening");
    }
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// The header every state-changing admin request (POST …) must carry. A web page cannot add a
/// custom header to a cross-origin request without a CORS preflight, which the admin API never
/// answers, so a drain from a hostile page is refused (CSRF).
pub const ADMIN_HEADER: &str = "x-mqedge-admin";

/// Who may use an admin API, from the config: host names it answers to besides IP literals and
/// `localhost` (DNS rebinding defence), and the optional bearer token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// `admin_hosts`: further `Host` names accepted, lower case, without a trailing dot.
    pub hosts: Vec<String>,
    /// The content of `admin_token_file`; `None` = no token asked for.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the token is a secret: never in logs or `mqedge check` output
        f.debug_struct("AdminAccess")
            .field("hosts", &self.hosts)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminAccess {
    /// Reads `admin_token_file` (relative to the config file) and checks `admin_hosts`; every
    /// problem goes to `p` as `file:line: what`. A missing or empty token file is an error, not
    /// an open API.
    pub fn from_config(
        p: &mut Problems<'_>,
        config_file: &Path,
        token_file: Option<&Spanned<String>>,
        hosts: &[Spanned<String>],
    ) -> AdminAccess {
        let mut out = AdminAccess::default();
        for h in hosts {
            let name = h.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if ok {
                out.hosts.push(name);
            } else {
                p.at(
                    h.span(),
                    format!("admin_hosts: {:?} is not a host name", h.get_ref()),
                );
            }
        }
        if let Some(f) = token_file {
            let path = resolve_path(config_file, f.get_ref());
            match std::fs::read_to_string(&path) {
                Err(e) => p.at(
                    f.span(),
                    format!("admin_token_file: cannot read {}: {e}", path.display()),
                ),
                Ok(s) if s.trim().is_empty() => p.at(
                    f.span(),
                    format!("admin_token_file: {} is empty", path.display()),
                ),
                Ok(s) if !s.trim().bytes().all(|b| b.is_ascii_graphic()) => p.at(
                    f.span(),
                    format!(
                        "admin_token_file: {} must hold one token of printable ASCII without spaces",
                        path.display()
                    ),
                ),
                Ok(s) => out.token = Some(s.trim().to_string()),
            }
        }
        out
    }

    /// Whether serving on `addr` with this access deserves the start-up warning: reachable
    /// from other hosts and no token asked for.
    pub fn exposed(&self, addr: SocketAddr) -> bool {
        self.token.is_none() && !addr.ip().is_loopback()
    }
}

/// Why the guard refused a request; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` is not an IP literal, `localhost` or one of `admin_hosts` (DNS rebinding).
    Host,
    /// A state-changing request whose `Origin` is not the admin's own.
    Origin,
    /// A state-changing request without [`ADMIN_HEADER`] (what a cross-site form sends).
    Header,
    /// No `Authorization: Bearer` with the configured token.
    Token,
}

impl Refusal {
    /// The `reason` label of the refusal counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::Header => "admin_header",
            Refusal::Token => "token",
        }
    }

    fn response(self) -> Response {
        let (code, msg) = match self {
            Refusal::Host => (StatusCode::FORBIDDEN, "Host not allowed".to_string()),
            Refusal::Origin => (StatusCode::FORBIDDEN, "cross-origin request".to_string()),
            Refusal::Header => (
                StatusCode::FORBIDDEN,
                format!("state-changing requests need the header {ADMIN_HEADER}: 1"),
            ),
            Refusal::Token => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".to_string(),
            ),
        };
        let mut r = (code, Json(json!({ "error": msg }))).into_response();
        if self == Refusal::Token {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// The host part of a `Host` or origin authority, without port or IPv6 brackets.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn host_allowed(access: &AdminAccess, host: &str) -> bool {
    let h = host_part(host).trim_end_matches('.');
    h.parse::<IpAddr>().is_ok()
        || h.eq_ignore_ascii_case("localhost")
        || access.hosts.iter().any(|n| n.eq_ignore_ascii_case(h))
}

/// Compares in time that does not depend on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Decides one request: the `Host` check on every path; the token on every path but
/// `/healthz`; the `Origin` and [`ADMIN_HEADER`] checks on every method but GET, HEAD and
/// OPTIONS. A request without `Host` (HTTP/1.0 tools) passes the host check: browsers, the
/// only DNS-rebinding vehicle, always send one.
pub fn check(
    access: &AdminAccess,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    if headers.contains_key(header::HOST) && !host.is_some_and(|h| host_allowed(access, h)) {
        return Err(Refusal::Host);
    }
    if let Some(t) = &access.token {
        let given = text(header::AUTHORIZATION).and_then(|a| a.strip_prefix("Bearer "));
        if path != "/healthz"
            && !given.is_some_and(|g| same_secret(g.trim().as_bytes(), t.as_bytes()))
        {
            return Err(Refusal::Token);
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if headers.contains_key(header::ORIGIN) {
        let origin = text(header::ORIGIN).unwrap_or("");
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .zip(host)
            .is_some_and(|(o, h)| o.eq_ignore_ascii_case(h));
        if !own {
            return Err(Refusal::Origin);
        }
    }
    if !headers.contains_key(ADMIN_HEADER) {
        return Err(Refusal::Header);
    }
    Ok(())
}

/// Wraps `router` in the guard: `access` is asked per request (so a role can take it from its
/// live config), `refused` is told each refusal (each role counts them in its metrics).
pub fn guarded<A, R>(router: Router, access: A, refused: R) -> Router
where
    A: Fn() -> Arc<AdminAccess> + Clone + Send + Sync + 'static,
    R: Fn(Refusal) + Clone + Send + Sync + 'static,
{
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let (access, refused) = (access.clone(), refused.clone());
        async move {
            match check(&access(), req.method(), req.uri().path(), req.headers()) {
                Ok(()) => next.run(req).await,
                Err(r) => {
                    refused(r);
                    r.response()
                }
            }
        }
    }))
}

/// Logs a warning when the admin API at `addr` is reachable beyond loopback without a token.
pub fn warn_if_exposed(addr: SocketAddr, access: &AdminAccess) {
    if access.exposed(addr) {
        tracing::warn!(addr = %addr, "admin API bound outside loopback without admin_token_file: anyone who reaches it can use it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hosts_origins_and_tokens() {
        let open = AdminAccess {
            hosts: vec!["lb.internal".into()],
            token: None,
        };
        for ok in [
            "127.0.0.1:9100",
            "[::1]:9100",
            "localhost",
            "LocalHost:1",
            "lb.internal:9100",
            "10.0.0.1",
        ] {
            assert_eq!(
                check(&open, &Method::GET, "/", &req(&[("host", ok)])),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:9100",
            "lb.internal.evil.example",
        ] {
            let h = req(&[("host", bad)]);
            assert_eq!(
                check(&open, &Method::GET, "/healthz", &h),
                Err(Refusal::Host),
                "{bad}"
            );
        }
        let post = |extra: &[(&'static str, &str)]| {
            let mut h = vec![("host", "127.0.0.1:9100")];
            h.extend_from_slice(extra);
            check(&open, &Method::POST, "/api/x", &req(&h))
        };
        assert_eq!(post(&[]), Err(Refusal::Header));
        assert_eq!(post(&[(ADMIN_HEADER, "1")]), Ok(()));
        assert_eq!(
            post(&[(ADMIN_HEADER, "1"), ("origin", "http://127.0.0.1:9100")]),
            Ok(())
        );
        assert_eq!(
            post(&[(ADMIN_HEADER, "1"), ("origin", "http://evil.example")]),
            Err(Refusal::Origin)
        );
        assert_eq!(
            post(&[(ADMIN_HEADER, "1"), ("origin", "null")]),
            Err(Refusal::Origin)
        );
        let locked = AdminAccess {
            hosts: vec![],
            token: Some("s3cret".into()),
        };
        let get = |path, auth: Option<&str>| {
            let mut h = req(&[("host", "127.0.0.1")]);
            if let Some(a) = auth {
                h.insert(header::AUTHORIZATION, a.parse().unwrap());
            }
            check(&locked, &Method::GET, path, &h)
        };
        assert_eq!(get("/healthz", None), Ok(()));
        assert_eq!(get("/metrics", None), Err(Refusal::Token));
        assert_eq!(
            get("/api/clients/a", Some("Bearer wrong!")),
            Err(Refusal::Token)
        );
        assert_eq!(get("/api/clients/a", Some("Bearer s3cret")), Ok(()));
        assert!(!locked.exposed("0.0.0.0:9100".parse().unwrap()));
        assert!(open.exposed("0.0.0.0:9100".parse().unwrap()));
        assert!(!open.exposed("[::1]:9100".parse().unwrap()));
    }
}
