//! `mqedge lb -c FILE` and `mqedge broker -c FILE`: one start-up path for both roles — load
//! the config (exit 1), build the runtime, bind, run until SIGINT/SIGTERM, stop (exit 0), or
//! report a runtime failure (exit 2).

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Which server `run` starts.
#[derive(Clone, Copy)]
pub enum Role {
    Lb,
    Broker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Lb => "lb",
            Role::Broker => "broker",
        })
    }
}

/// A loaded config of either role (boxed: the two differ in size, and grow apart).
enum Loaded {
    Lb(Box<mqedge_lb::config::Config>),
    Broker(Box<mqedge_broker::config::Config>),
}

impl Loaded {
    /// The role's own loader; its error text is every `file:line: what`.
    fn load(role: Role, path: &Path) -> Result<Loaded, String> {
        match role {
            Role::Lb => mqedge_lb::config::Config::load(path)
                .map(|c| Loaded::Lb(Box::new(c)))
                .map_err(|e| e.to_string()),
            Role::Broker => mqedge_broker::config::Config::load(path)
                .map(|c| Loaded::Broker(Box::new(c)))
                .map_err(|e| e.to_string()),
        }
    }

    /// The runtime's worker threads (`[lb] workers`; 0 is tokio's default, one per core).
    fn workers(&self) -> usize {
        match self {
            Loaded::Lb(c) => c.lb.workers,
            Loaded::Broker(_) => 0,
        }
    }

    /// Binds and serves until the shutdown signal.
    async fn serve(self) -> anyhow::Result<()> {
        match self {
            Loaded::Lb(cfg) => {
                let bound = mqedge_lb::bind(&cfg).await?;
                mqedge_lb::run(*cfg, bound, shutdown_signal()).await?;
            }
            Loaded::Broker(cfg) => {
                ignore_hangup();
                let bound = mqedge_broker::bind(&cfg).await?;
                let b = mqedge_broker::Broker::new(*cfg)?;
                let stop = broker_signals(b.clone());
                mqedge_broker::run_with(b, bound, stop).await?;
            }
        }
        Ok(())
    }
}

/// Runs `role` from the config at `path`: exit 0 after a signal, 1 for a bad config, 2 when
/// the server cannot start or fails.
pub fn run(role: Role, path: &Path) -> ExitCode {
    let cfg = match Loaded::load(role, path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.workers() > 0 {
        rt.worker_threads(cfg.workers());
    }
    let rt = match rt
        .enable_all()
        .thread_name(format!("mqedge-{role}"))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqedge {role}: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let res = rt.block_on(cfg.serve());
    // Connections still open after the drain end with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    match res {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqedge {role}: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// SIGHUP must not kill a broker (its default action): the broker has no reloadable settings,
/// so say so instead. (The LB reloads on SIGHUP itself.)
fn ignore_hangup() {
    use tokio::signal::unix::{signal, SignalKind};
    if let Ok(mut hup) = signal(SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::warn!(
                    "SIGHUP: the broker config is not reloadable; restart the node to apply changes"
                );
            }
        });
    }
}

/// A broker's stop. SIGTERM on a clustered node starts a drain (its clients move to the other
/// nodes and the node stops by itself once empty, see docs/cluster.md "Draining a node"); then a
/// second SIGTERM or a SIGINT resolves (the graceful leave at once) and a third exits. Without
/// `[cluster]`, and for SIGINT, as [`shutdown_signal`].
async fn broker_signals(b: std::sync::Arc<mqedge_broker::Broker>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    let sigterm = tokio::select! {
        _ = int.recv() => false,
        _ = term.recv() => true,
    };
    if sigterm && b.start_drain("SIGTERM") {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: leaving now without waiting for the drain");
    }
    exit_on_next(int, term);
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
    exit_on_next(int, term);
}

/// The next SIGINT or SIGTERM exits at once.
fn exit_on_next(mut int: tokio::signal::unix::Signal, mut term: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(0);
    });
}
