//! The `mqedge` binary: the clap parser and the dispatch to [`cli`]'s commands, [`up`] and
//! [`bench`]. Every subcommand calls into a library crate; errors become one clear line and the
//! exit codes of DESIGN.md (0 clean stop, 1 bad config or arguments, 2 runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::run::Role;
use cli::LogFormat;

mod bench;
mod cli;
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
        /// A broker node's config (repeat for each node): with an LB config as -c, also check
        /// that the LB's backend names are the nodes' names (docs/cluster.md, "Placement").
        #[arg(long = "broker", value_name = "FILE")]
        brokers: Vec<PathBuf>,
    },
    /// Load generator: pub/sub message rates and latency, connect storms, held connections.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
    /// Generate a dev CA, a server certificate and client certificates, or node certificates for
    /// the cluster (PEM, ECDSA P-256).
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
        /// A node certificate per name for the cluster's node channel (node-NAME.pem/.key,
        /// DNS SAN NAME, server and client use); only the CA and these are written.
        #[arg(long = "node", conflicts_with_all = ["client_cn", "san"])]
        node: Vec<String>,
        /// Revoke the certificate NAME.pem of the directory: add it to crl.pem (made or
        /// extended, signed by the directory's CA) for `[listener.tls] crl`; nothing else is
        /// written.
        #[arg(long = "revoke", conflicts_with_all = ["client_cn", "san", "node", "reuse_ca", "force"])]
        revoke: Vec<String>,
        /// Keep an existing ca.pem/ca.key in the directory instead of making a new CA.
        #[arg(long)]
        reuse_ca: bool,
        /// Replace an existing CA with a new one (without it, an existing ca.pem or ca.key is
        /// an error: certificates the old CA signed would stop verifying).
        #[arg(long, conflicts_with = "reuse_ca")]
        force: bool,
    },
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
    cli::init_logs(cli.log_format);
    match cli.cmd {
        Cmd::Check { config, brokers } => cli::check::run(&config, &brokers),
        Cmd::Lb { config } => cli::run::run(Role::Lb, &config),
        Cmd::Broker { config } => cli::run::run(Role::Broker, &config),
        Cmd::Passwd { file, user } => cli::passwd::run(&file, &user),
        Cmd::Up { dir, base_port } => up::run(&dir, base_port),
        Cmd::Bench { cmd } => bench::run(cmd),
        Cmd::Certs {
            out,
            client_cn,
            san,
            node,
            reuse_ca,
            force,
            revoke,
        } => cli::certs::run(
            &out,
            &node,
            &revoke,
            &mqedge_shared::certs::CertOptions {
                sans: san,
                client_cns: client_cn,
                reuse_ca,
                replace_ca: force,
            },
        ),
    }
}
