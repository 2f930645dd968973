//! The `mqedge` binary: CLI wiring only. Every subcommand calls into a library crate; errors
//! become one clear line and the exit codes of DESIGN.md (0 clean stop, 1 bad config or
//! arguments, 2 runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod passwd;
mod up;

#[derive(Parser)]
#[command(
    name = "mqedge",
    version,
    about = "MQTT edge load balancer and clustered broker"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a load balancer.
    Lb {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run a broker node.
    Broker {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Add or update a user in a password file (argon2). On a terminal the password is asked
    /// twice without echo; otherwise the first line of stdin is the password.
    Passwd {
        /// Password file (created when missing).
        #[arg(short, long)]
        file: PathBuf,
        /// User name.
        user: String,
    },
    /// The local topology: dev certs, the LB and three clustered broker nodes as child
    /// processes; Ctrl-C, SIGTERM or SIGHUP stops them all.
    Up {
        /// Working directory for certs, generated configs and data.
        #[arg(long, default_value = ".mqedge")]
        dir: PathBuf,
        /// Move all 12 ports to PORT..PORT+11 (LB plain, LB TLS, LB admin, node1..3 MQTT,
        /// node1..3 admin, node1..3 cluster), instead of 1883, 8883, 9100, 11883.., 19101..,
        /// 14371...
        #[arg(long, value_name = "PORT")]
        base_port: Option<u16>,
    },
    /// Validate a config file: exit 0, or exit 1 with `file:line: what is wrong`.
    Check {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Load generator: pub/sub message rates and latency, connect storms, held connections.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
    /// Generate a dev CA, a server certificate and client certificates (PEM, ECDSA P-256).
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A client certificate per CN (default: one with CN dev-client as client.pem/client.key).
        #[arg(long = "client-cn")]
        client_cn: Vec<String>,
        /// Extra subject alternative names for the server certificate.
        #[arg(long = "san")]
        san: Vec<String>,
        /// Keep an existing ca.pem/ca.key in the directory instead of making a new CA.
        #[arg(long)]
        reuse_ca: bool,
        /// Replace an existing CA with a new one (without it, an existing ca.pem or ca.key is
        /// an error: certificates the old CA signed would stop verifying).
        #[arg(long, conflicts_with = "reuse_ca")]
        force: bool,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logs(cli.log_format);
    match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Lb { config } => run_lb(&config),
        Cmd::Broker { config } => run_broker(&config),
        Cmd::Passwd { file, user } => passwd::run(&file, &user),
        Cmd::Up { dir, base_port } => up::run(&dir, base_port),
        Cmd::Bench { cmd } => bench::run(cmd),
        Cmd::Certs {
            out,
            client_cn,
            san,
            reuse_ca,
            force,
        } => {
            let opts = mqedge_shared::certs::CertOptions {
                sans: san,
                client_cns: client_cn,
                reuse_ca,
                replace_ca: force,
            };
            match mqedge_shared::certs::generate(&out, &opts) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mqedge certs: {}", error_chain(&e));
                    if matches!(e, mqedge_shared::certs::CertError::CaExists(_)) {
                        eprintln!(
                            "mqedge certs: pass --reuse-ca to sign the new certificates with \
                             the existing CA, or --force to replace it"
                        );
                    }
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Which role a config file is for, judged by its top-level tables.
fn role_of(path: &std::path::Path) -> Result<&'static str, String> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read config file: {e}", path.display()))?;
    let t: toml::Table = match toml::from_str(&src) {
        Ok(t) => t,
        // let the role parser report the syntax error with its line
        Err(_) => return Ok("lb"),
    };
    let broker = ["node", "cluster", "auth", "limits", "shared_subscriptions"]
        .iter()
        .any(|k| t.contains_key(*k));
    let lb = ["lb", "backend", "balance", "health"]
        .iter()
        .any(|k| t.contains_key(*k));
    if broker && !lb {
        return Ok("broker");
    }
    if lb {
        return Ok("lb");
    }
    // only [[listener]]: whichever role accepts it
    if mqedge_lb::config::Config::load(path).is_err()
        && mqedge_broker::config::Config::load(path).is_ok()
    {
        Ok("broker")
    } else {
        Ok("lb")
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match role_of(path) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Ok("broker") => match mqedge_broker::config::Config::load(path) {
            // the password and ACL files are loaded (and checked) by the config itself
            Ok(c) => {
                println!(
                    "{}: ok (broker config: node {}, {} listener(s))",
                    path.display(),
                    c.name,
                    c.listeners.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Ok(_) => match mqedge_lb::config::Config::load(path) {
            Ok(c) => {
                println!(
                    "{}: ok (lb config: {} listener(s), {} backend(s))",
                    path.display(),
                    c.listeners.len(),
                    c.backends.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
    }
}

fn run_lb(path: &std::path::Path) -> ExitCode {
    let cfg = match mqedge_lb::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.lb.workers > 0 {
        rt.worker_threads(cfg.lb.workers);
    }
    let rt = match rt.enable_all().thread_name("mqedge-lb").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqedge lb: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let res: anyhow::Result<()> = rt.block_on(async move {
        let bound = mqedge_lb::bind(&cfg).await?;
        mqedge_lb::run(cfg, bound, shutdown_signal()).await?;
        Ok(())
    });
    // Connections still open after drain_timeout end with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match res {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqedge lb: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_broker(path: &std::path::Path) -> ExitCode {
    let cfg = match mqedge_broker::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mqedge-broker")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqedge broker: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let res: anyhow::Result<()> = rt.block_on(async move {
        // SIGHUP must not kill a broker (its default action): the broker has no reloadable
        // settings, so say so instead
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!("SIGHUP: the broker config is not reloadable; restart the node to apply changes");
                }
            });
        }
        let bound = mqedge_broker::bind(&cfg).await?;
        let b = mqedge_broker::Broker::new(cfg)?;
        mqedge_broker::run_with(b, bound, shutdown_signal()).await?;
        Ok(())
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match res {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqedge broker: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(0);
    });
}
