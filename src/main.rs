//! The `mqedge` binary: CLI wiring only. Every subcommand calls into a library crate; errors
//! become one clear line and the exit codes of DESIGN.md (0 clean stop, 1 bad config or
//! arguments, 2 runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Validate a config file: exit 0, or exit 1 with `file:line: what is wrong`.
    Check {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
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
        Cmd::Certs {
            out,
            client_cn,
            san,
            reuse_ca,
        } => {
            let opts = mqedge_shared::certs::CertOptions {
                sans: san,
                client_cns: client_cn,
                reuse_ca,
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
    if t.contains_key("node") {
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
        Ok("broker") => {
            eprintln!(
                "{}:1: this is a broker config ([node]); this build of mqedge has no broker role yet",
                path.display()
            );
            ExitCode::from(1)
        }
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
