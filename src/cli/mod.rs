//! The subcommands behind `src/main.rs`'s parser, one file each: [`check`] validates a config,
//! [`run`] runs the LB or a broker node, [`certs`] writes a dev PKI, [`passwd`] sets a
//! password. This file holds the log set-up every command runs under. The commands import only
//! the library crates: not this module, not each other.

pub mod certs;
pub mod check;
pub mod passwd;
pub mod run;

/// Log format on stderr; chosen by `--log-format`, the level comes from `RUST_LOG`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber once, before any subcommand logs (`info,rustls=error` when
/// `RUST_LOG` is unset; colours only on a terminal).
pub fn init_logs(format: LogFormat) {
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
