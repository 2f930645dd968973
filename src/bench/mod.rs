//! `mqedge bench`: a load generator of the emqtt-bench kind built on our own codec.
//! `pub`/`sub`/`pubsub` measure messages per second and publish-to-delivery latency, `conn`
//! measures connect storms (TLS handshakes + CONNECT per second), `hold` keeps N connections
//! open so the server's memory per connection can be read. A progress bar goes to stderr when
//! it is a terminal; the report goes to stdout as a table or, with `--json`, one JSON object.
//!
//! Files: [`client`] (TCP/TLS + MQTT client), [`setup`] (endpoint, fd budget, paced opening,
//! Ctrl-C, clock), [`pubsub`] (coordinator) with its [`publisher`] and [`subscriber`] loops and
//! their shared [`flow`] helpers, [`conn`] (conn and hold), [`report`], [`progress`].
//!
//! Exit codes: 0 after a report (errors are counted in it), 1 for bad arguments (including more
//! connections than the open-files limit allows, and unreadable TLS files), 2 when the server
//! cannot be reached or refuses the clients — one line on stderr, `mqedge bench: ...`.

mod client;
mod conn;
mod flow;
mod progress;
mod publisher;
mod pubsub;
mod report;
mod setup;
mod subscriber;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use mqedge_protocol::QoS;
use mqedge_shared::config::parse_duration;

use self::client::ClientError;
use self::progress::Progress;
use self::report::Report;

/// `mqedge bench` subcommands.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Publishers only: N clients publishing to --topic.
    Pub(Box<PubArgs>),
    /// Subscribers only: M clients on --topic, counting deliveries and latency (the send time
    /// travels in the payload, so a `bench pub` in another process on this host is measured).
    Sub(Box<SubArgs>),
    /// Publishers and subscribers in one run: messages/s delivered and end-to-end latency.
    Pubsub(Box<PubSubArgs>),
    /// Connect storm: N connections (TLS handshake + CONNECT/CONNACK), --concurrency at a time.
    Conn(Box<ConnArgs>),
    /// Open N connections, keep them alive for --duration, then close them.
    Hold(Box<HoldArgs>),
}

/// Options every subcommand has: where to connect and how.
#[derive(Args, Clone)]
#[command(group(clap::ArgGroup::new("tls").args(["cafile", "insecure"])))]
pub struct Common {
    /// Server host name or address.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(short, long, default_value_t = 1883)]
    port: u16,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(short = 'V', long = "mqtt-version", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(4..=5))]
    mqtt_version: u8,
    /// Source addresses for the client sockets, used round robin, e.g.
    /// `127.0.0.1-127.0.0.20,127.0.1.1` (`127.0.0.1-20` = last octet 1 to 20).
    #[arg(long, value_name = "ADDRS")]
    src: Option<String>,
    /// CA certificate (PEM): connect with TLS and verify the server against it.
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// For load generation only: connect with TLS but do not verify the server (neither its
    /// certificate chain nor its handshake signature), so no --cafile. It spares the client two
    /// ECDSA verifications per handshake, a third of its CPU in a connect storm, so `conn`
    /// measures the server rather than the client; --cert is still presented and verified by
    /// the server. Never use it against a server you do not control.
    #[arg(long, conflicts_with = "cafile")]
    insecure: bool,
    /// Client certificate chain (PEM) presented in the TLS handshake; needs --key and --cafile
    /// (or --insecure).
    #[arg(long, value_name = "FILE", requires_all = ["key", "tls"])]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Server name for SNI and certificate verification.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// A reconnect storm (`conn`): every client keeps its own TLS session store, as a device
    /// does; the fleet connects once (full handshakes, not measured), then every client comes
    /// back and resumes with its ticket; the report counts the resumed handshakes. Without it
    /// every handshake is a full one.
    #[arg(long, requires = "tls")]
    resume: bool,
    /// User Name in CONNECT.
    #[arg(short, long)]
    username: Option<String>,
    /// Password in CONNECT.
    #[arg(short = 'P', long)]
    password: Option<String>,
    /// Keep Alive in seconds; idle clients send PINGREQ at this interval (0 = off).
    #[arg(short, long, default_value_t = 60)]
    keepalive: u16,
    /// Time for TCP connect + TLS handshake + CONNACK.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Persistent sessions: clean start off (v5: session expiry 1 h), so the broker stores
    /// what it queues for them (with `data_dir`) and replicates it (`session_replicas = 2`).
    #[arg(long)]
    persistent: bool,
    /// Client id prefix; ids are PREFIX-pub-0, PREFIX-sub-0, PREFIX-conn-0, ...
    /// [default: mqedge-bench-PID]
    #[arg(long)]
    prefix: Option<String>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Connection attempts started per second (0 = as fast as --concurrency allows).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    conn_rate: f64,
    /// Print one JSON object instead of the table (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// What publishers send.
#[derive(Args, Clone)]
pub struct PubOpts {
    /// Topic to publish to; %i = publisher index, %c = client id.
    #[arg(short, long, default_value = "bench/%i")]
    topic: String,
    /// QoS 0, 1 or 2.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes; the first 8 carry the send time.
    #[arg(short, long, default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(8..=16 * 1024 * 1024))]
    size: u32,
    /// Messages per second per publisher (0 = as fast as possible; QoS 1/2 windowed by --inflight).
    #[arg(short, long, default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,
    /// Messages per publisher.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// How long publishers send [default: 10s unless --count is given].
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// QoS 1/2 messages awaiting their ack, per publisher (capped by the server's Receive Maximum).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    /// Publish with the RETAIN flag.
    #[arg(long)]
    retain: bool,
}

/// `mqedge bench pub`.
#[derive(Args, Clone)]
pub struct PubArgs {
    #[command(flatten)]
    common: Common,
    /// Publishers.
    #[arg(short, long, default_value_t = 1)]
    clients: usize,
    #[command(flatten)]
    publish: PubOpts,
}

/// `mqedge bench sub`.
#[derive(Args, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers.
    #[arg(short, long, default_value_t = 1)]
    clients: usize,
    /// Topic filter; %i = subscriber index, %c = client id.
    #[arg(short, long, default_value = "bench/#")]
    topic: String,
    /// Maximum QoS of the subscription.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Subscribe as members of shared subscription group GROUP (`$share/GROUP/FILTER`).
    #[arg(long, value_name = "GROUP")]
    shared: Option<String>,
    /// Stop each subscriber after this many messages.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Stop after this long [default: when every subscriber got --count, or Ctrl-C].
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

/// `mqedge bench pubsub`.
#[derive(Args, Clone)]
pub struct PubSubArgs {
    #[command(flatten)]
    common: Common,
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Subscribers.
    #[arg(long, default_value_t = 1)]
    subs: usize,
    #[command(flatten)]
    publish: PubOpts,
    /// Subscribers' topic filter; %i = subscriber index, %c = client id.
    #[arg(long, default_value = "bench/#")]
    sub_topic: String,
    /// Subscribers join shared subscription group GROUP (`$share/GROUP/FILTER`).
    #[arg(long, value_name = "GROUP")]
    shared: Option<String>,
}

/// `mqedge bench conn`.
#[derive(Args, Clone)]
pub struct ConnArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open.
    #[arg(short, long, default_value_t = 100)]
    clients: usize,
    /// Close each connection as soon as its CONNACK arrives (storms beyond the fd limit).
    #[arg(long)]
    close_each: bool,
}

/// `mqedge bench hold`.
#[derive(Args, Clone)]
pub struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open and hold.
    #[arg(short, long, default_value_t = 100)]
    clients: usize,
    /// How long to hold them once all are up [default: until Ctrl-C].
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number >= 0")),
    }
}

/// Why a run stopped without a report.
#[derive(Debug)]
pub enum BenchError {
    /// Arguments that cannot work here (exit 1).
    Usage(String),
    /// A client could not connect or set up (exit 2).
    Client(ClientError),
    /// Another runtime failure (exit 2).
    Run(String),
    /// Ctrl-C before the clients were set up (exit 130).
    Interrupted,
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(s) | BenchError::Run(s) => f.write_str(s),
            BenchError::Client(e) => e.fmt(f),
            BenchError::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl BenchError {
    fn exit_code(&self) -> u8 {
        match self {
            BenchError::Usage(_) => 1,
            BenchError::Client(_) | BenchError::Run(_) => 2,
            BenchError::Interrupted => 130,
        }
    }
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or_default()
}

impl Common {
    fn prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("mqedge-bench-{}", std::process::id()))
    }
    fn run_opts(&self) -> pubsub::RunOpts {
        pubsub::RunOpts {
            prefix: self.prefix(),
            concurrency: self.concurrency as usize,
            conn_rate: self.conn_rate,
            progress: Progress::wanted(self.json),
        }
    }
    fn conn_opts(&self) -> conn::ConnOpts {
        conn::ConnOpts {
            prefix: self.prefix(),
            concurrency: self.concurrency as usize,
            conn_rate: self.conn_rate,
            progress: Progress::wanted(self.json),
            resume: self.resume,
        }
    }
}

impl PubOpts {
    fn plan(&self, clients: usize) -> pubsub::PubPlan {
        pubsub::PubPlan {
            clients,
            topic: self.topic.clone(),
            qos: qos(self.qos),
            size: self.size as usize,
            rate: self.rate,
            count: self.count,
            duration: self.duration,
            inflight: self.inflight,
            retain: self.retain,
        }
    }
}

/// Runs one bench subcommand to its report (stdout) or one error line (stderr).
pub fn run(cmd: BenchCmd) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mqedge-bench")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqedge bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let json = match &cmd {
        BenchCmd::Pub(a) => a.common.json,
        BenchCmd::Sub(a) => a.common.json,
        BenchCmd::Pubsub(a) => a.common.json,
        BenchCmd::Conn(a) => a.common.json,
        BenchCmd::Hold(a) => a.common.json,
    };
    let res = rt.block_on(run_async(cmd));
    rt.shutdown_timeout(Duration::from_secs(1));
    match res {
        Ok(report) => {
            report.print(json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqedge bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run_async(cmd: BenchCmd) -> Result<Report, BenchError> {
    let (_stop_tx, stop) = setup::stop_on_signal();
    match cmd {
        BenchCmd::Pub(a) => {
            setup::ensure_fds(a.clients as u64, 0)?;
            let ep = Arc::new(setup::endpoint(&a.common).await?);
            let plan = a.publish.plan(a.clients);
            let r = pubsub::run(ep, Some(plan), None, a.common.run_opts(), stop).await?;
            Ok(Report::Messages(r))
        }
        BenchCmd::Sub(a) => {
            setup::ensure_fds(a.clients as u64, 0)?;
            let ep = Arc::new(setup::endpoint(&a.common).await?);
            let plan = pubsub::SubPlan {
                clients: a.clients,
                filter: a.topic.clone(),
                qos: qos(a.qos),
                shared: a.shared.clone(),
                count: a.count,
                duration: a.duration,
            };
            let r = pubsub::run(ep, None, Some(plan), a.common.run_opts(), stop).await?;
            Ok(Report::Messages(r))
        }
        BenchCmd::Pubsub(a) => {
            setup::ensure_fds((a.pubs + a.subs) as u64, 0)?;
            let ep = Arc::new(setup::endpoint(&a.common).await?);
            let pubs = a.publish.plan(a.pubs);
            let subs = pubsub::SubPlan {
                clients: a.subs,
                filter: a.sub_topic.clone(),
                qos: qos(a.publish.qos),
                shared: a.shared.clone(),
                count: None,
                duration: None,
            };
            let r = pubsub::run(ep, Some(pubs), Some(subs), a.common.run_opts(), stop).await?;
            Ok(Report::Messages(r))
        }
        BenchCmd::Conn(a) => {
            let fds = if a.close_each {
                a.clients.min(a.common.concurrency as usize)
            } else {
                a.clients
            };
            setup::ensure_fds(fds as u64, 1)?;
            let ep = Arc::new(setup::endpoint(&a.common).await?);
            let r = conn::conn(ep, a.clients, a.close_each, a.common.conn_opts(), stop).await?;
            Ok(Report::Conns(r))
        }
        BenchCmd::Hold(a) => {
            setup::ensure_fds(a.clients as u64, 1)?;
            let ep = Arc::new(setup::endpoint(&a.common).await?);
            let r = conn::hold(ep, a.clients, a.duration, a.common.conn_opts(), stop).await?;
            Ok(Report::Conns(r))
        }
    }
}
