//! What every scenario needs before and around its clients: the [`Endpoint`] built from the
//! command line (address, TLS material, source addresses), the file-descriptor budget, opening
//! many connections with a concurrency cap and an optional rate, Ctrl-C as a stop signal, and
//! the clock whose timestamps travel in payloads.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mqedge_protocol::Version;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{io_msg, parse_sources, strip_os_error, Endpoint, TlsTarget};
use super::{BenchError, Common};

/// File descriptors kept free for the runtime, stdio and the odd file.
const FD_RESERVE: u64 = 64;

/// Builds the endpoint: resolves the host, loads TLS material, expands `--src`.
pub async fn endpoint(c: &Common) -> Result<Endpoint, BenchError> {
    let sources = match &c.src {
        Some(s) => parse_sources(s).map_err(BenchError::Usage)?,
        None => Vec::new(),
    };
    let target = format!("{}:{}", c.host, c.port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| BenchError::Run(format!("cannot resolve {}: {}", c.host, io_msg(&e))))?
        .collect();
    // Prefer an address of the family the source addresses have.
    let want_v4 = sources.first().map(|s| s.is_ipv4());
    let addr = addrs
        .iter()
        .find(|a| want_v4.is_none_or(|v4| a.is_ipv4() == v4))
        .copied()
        .ok_or_else(|| match (addrs.is_empty(), want_v4) {
            (false, Some(v4)) => BenchError::Usage(format!(
                "--src has IPv{} addresses but {} has none",
                if v4 { 4 } else { 6 },
                c.host
            )),
            _ => BenchError::Run(format!("cannot resolve {}: no address", c.host)),
        })?;
    if sources.iter().any(|s| s.is_ipv4() != addr.is_ipv4()) {
        return Err(BenchError::Usage(
            "--src mixes IPv4 and IPv6 addresses".into(),
        ));
    }
    let tls = if c.cafile.is_none() && !c.insecure {
        None
    } else {
        let usage =
            |e: mqedge_shared::tls::TlsError| BenchError::Usage(strip_os_error(&e.to_string()));
        let id = match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => Some((
                mqedge_shared::tls::load_certs(cert).map_err(usage)?,
                mqedge_shared::tls::load_key(key).map_err(usage)?,
            )),
            _ => None,
        };
        let mut config = match &c.cafile {
            Some(ca) => {
                let ca = mqedge_shared::tls::load_certs(ca).map_err(usage)?;
                (*mqedge_shared::tls::client_config(ca, id).map_err(usage)?).clone()
            }
            None => insecure_config(id)?,
        };
        // Every connection does a full handshake (what a connect storm measures); with
        // `--resume` each client index has a store of its own (`TlsTarget::per_client`)
        config.resumption = rustls::client::Resumption::disabled();
        let server_name = ServerName::try_from(c.sni.clone())
            .map_err(|_| BenchError::Usage(format!("--sni {:?}: not a valid name", c.sni)))?;
        Some(TlsTarget {
            config: Arc::new(config),
            server_name,
            per_client: if c.resume {
                (0..RESUME_DEVICES).map(|_| Default::default()).collect()
            } else {
                Vec::new()
            },
        })
    };
    Ok(Endpoint {
        addr,
        tls,
        sources,
        version: if c.mqtt_version == 5 {
            Version::V5
        } else {
            Version::V311
        },
        keep_alive: c.keepalive,
        persistent: c.persistent,
        username: c.username.clone(),
        password: c
            .password
            .as_ref()
            .map(|p| Bytes::from(p.clone().into_bytes())),
        connect_timeout: c.connect_timeout,
        resumed: Default::default(),
    })
}

/// Client indexes with a session store of their own under `--resume` (beyond it they share,
/// round robin); a slot is 16 bytes until its client first connects.
const RESUME_DEVICES: usize = 100_000;

/// The `--insecure` client config: same provider and protocol versions as the verifying one,
/// the client certificate (if any) still presented, the server taken on trust.
fn insecure_config(
    id: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, BenchError> {
    let provider = mqedge_shared::tls::provider();
    let verifier = Arc::new(AnyServer(provider.clone()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Usage(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match id {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| BenchError::Usage(format!("--cert/--key: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `--insecure`: accepts any server certificate and handshake signature, so a load generator
/// spends its CPU on the handshakes it drives, not on checking a server it set up itself.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    /// The same trust as TLS 1.2: any signature.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Makes sure `connections` sockets (plus `extra` of our own, such as a probe) fit under the
/// open-files limit, raising the soft limit up to the hard one when needed; otherwise says how
/// far off it is.
pub fn ensure_fds(connections: u64, extra: u64) -> Result<(), BenchError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let need = connections + extra + FD_RESERVE;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if need <= soft {
        return Ok(());
    }
    if need <= hard && setrlimit(Resource::RLIMIT_NOFILE, need, hard).is_ok() {
        return Ok(());
    }
    Err(BenchError::Usage(format!(
        "{connections} connections need {need} file descriptors but the open-files limit is {soft} \
         (hard limit {hard}); use fewer clients or raise `ulimit -n`"
    )))
}

/// Opens `n` things (connections, with whatever setup `make` adds) with at most `concurrency`
/// in flight and, when `rate` > 0, at most `rate` starts per second. `done` sees each result
/// as it completes, in completion order, and may stop the whole batch. Returns false when
/// `stop` fired first.
pub async fn open_many<T, Fut, Mk, Done>(
    n: usize,
    concurrency: usize,
    rate: f64,
    stop: &mut watch::Receiver<bool>,
    mut make: Mk,
    mut done: Done,
) -> bool
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    Mk: FnMut(usize) -> Fut,
    Done: FnMut(usize, T) -> ControlFlow<()>,
{
    let concurrency = concurrency.max(1);
    let gap = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    let mut set: JoinSet<(usize, T)> = JoinSet::new();
    let mut next = 0usize;
    loop {
        let due = |i: usize| gap.map_or(start, |g| start + g.mul_f64(i as f64));
        while next < n && set.len() < concurrency && due(next) <= Instant::now() {
            let fut = make(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        if next >= n && set.is_empty() {
            return true;
        }
        let waiting_for_rate = next < n && set.len() < concurrency;
        tokio::select! {
            r = set.join_next(), if !set.is_empty() => {
                if let Some(Ok((i, out))) = r {
                    if done(i, out).is_break() {
                        set.abort_all();
                        return true;
                    }
                }
            }
            _ = tokio::time::sleep_until(due(next)), if waiting_for_rate => {}
            _ = stop.changed() => {
                set.abort_all();
                return false;
            }
        }
    }
}

/// A stop signal raised by the first Ctrl-C (or SIGTERM); a second one exits at once.
pub fn stop_on_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let t = tx.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        let _ = t.send(true);
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        std::process::exit(130);
    });
    (tx, rx)
}

/// The time base of payload timestamps: nanoseconds since the Unix epoch, read once from the
/// wall clock and advanced by the monotonic clock, so timestamps never jump during a run and
/// a `bench pub` and a `bench sub` in separate processes on one host still agree.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: std::time::Instant,
    base_ns: u64,
}

impl Clock {
    /// Anchors the clock now.
    pub fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock {
            base: std::time::Instant::now(),
            base_ns: wall,
        }
    }

    /// Now, in nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        let e = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(e)
    }
}
