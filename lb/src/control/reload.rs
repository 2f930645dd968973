//! Hot reload by diff. The file watcher and SIGHUP feed one loop; the whole file is parsed and
//! validated first, and an invalid file changes nothing (logged, counted, shown at
//! `/api/reload`). A valid one is applied as a diff: backends with the same name and address are
//! kept (state, connections, counters) and take the new weight and PROXY mode; new ones start in
//! `checking` and get their first check before any traffic; removed ones stop taking connections
//! and their leftovers close after `drain_timeout`. A removed backend re-added (same name and
//! address) before that close is the same backend again, as after `ready`: the close is
//! cancelled and it goes back to `checking` with its connections and counters. Balance, health and `[lb]` limits swap
//! atomically; the TLS config of unchanged listeners is rebuilt from its files and swapped too
//! (certificate rotation, a new client CA, new CRLs: a certificate revoked since applies from
//! the next handshake); other listener changes need a restart and say so.
//!
//! The watcher looks at the file's directory, not the file: editors and Kubernetes ConfigMaps
//! replace files (rename, symlink swap), which a watch on the file itself would miss. Any event
//! there triggers a re-read; a content hash skips no-op events.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::backend::{Backend, State};
use crate::config::{Config, LbSettings};
use crate::conn::listener::Listeners;
use crate::state::{Lb, Live};

/// What a reload did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Backends added.
    pub added: Vec<String>,
    /// Backends removed (now draining).
    pub removed: Vec<String>,
    /// Backends removed earlier and re-added while their close was pending (drain cancelled).
    pub restored: Vec<String>,
    /// Backends kept.
    pub kept: Vec<String>,
    /// Listener changes that need a restart.
    pub needs_restart: Vec<String>,
    /// The generation now in force.
    pub generation: u64,
}

/// Applies a validated config to the running LB.
pub fn apply(lb: &Arc<Lb>, listeners: &Listeners, new: &Config) -> Applied {
    let old = lb.live_arc();
    let mut out = Applied::default();
    let mut next: Vec<Arc<Backend>> = Vec::with_capacity(new.backends.len());
    let mut fresh = Vec::new();
    let mut retired = lb.reload_status().take_retired();
    for bc in &new.backends {
        let same = |o: &&Arc<Backend>| o.name() == bc.name && *o.addr() == bc.addr;
        if let Some(o) = old.backends.iter().find(same) {
            o.update(bc);
            out.kept.push(bc.name.clone());
            next.push(o.clone());
            continue;
        }
        match retired.iter().position(|r| same(&r)) {
            Some(i) => {
                let r = retired.swap_remove(i);
                r.update(bc);
                r.end_drain();
                out.restored.push(bc.name.clone());
                fresh.push(r.clone());
                next.push(r);
            }
            None => {
                let b = Arc::new(Backend::new(bc, State::Checking, lb.metrics()));
                out.added.push(bc.name.clone());
                fresh.push(b.clone());
                next.push(b);
            }
        }
    }
    let removed: Vec<Arc<Backend>> = old
        .backends
        .iter()
        .filter(|o| !next.iter().any(|n| Arc::ptr_eq(n, o)))
        .cloned()
        .collect();
    out.generation = old.generation + 1;
    // name, admin and workers need a restart: keep the running values (reported below)
    let mut lb_settings = new.lb.clone();
    lb_settings.name = old.lb.name.clone();
    lb_settings.admin = old.lb.admin;
    lb_settings.workers = old.lb.workers;
    lb.set_live(Live {
        lb: lb_settings,
        balance: new.balance,
        health: new.health,
        backends: next,
        placement: new.placement.clone(),
        generation: out.generation,
    });
    for b in &removed {
        out.removed.push(b.name().to_string());
        b.start_drain(new.lb.drain_timeout);
    }
    retired.extend(removed);
    lb.reload_status().put_retired(retired);
    for b in fresh {
        tokio::spawn(crate::control::health::run_checker(lb.clone(), b, false));
    }
    out.needs_restart = listeners.swap_tls(&new.listeners);
    out.needs_restart.extend(restart_only(&old.lb, &new.lb));
    lb.metrics().reload_generation.set(out.generation as i64);
    lb.metrics().reloads.inc();
    out
}

/// The `[lb]` settings that changed but only take effect at a restart.
fn restart_only(old: &LbSettings, new: &LbSettings) -> Vec<String> {
    let mut changed = Vec::new();
    for (what, old_v, new_v) in [
        ("name", &old.name, &new.name),
        (
            "admin",
            &format!("{:?}", old.admin),
            &format!("{:?}", new.admin),
        ),
        (
            "workers",
            &old.workers.to_string(),
            &new.workers.to_string(),
        ),
    ] {
        if old_v != new_v {
            changed.push(format!("[lb] {what}"));
        }
    }
    changed
}

/// Re-reads the config file and applies it, or records why not.
pub fn reload_from_file(
    lb: &Arc<Lb>,
    listeners: &Listeners,
    path: &Path,
) -> Result<Applied, String> {
    match Config::load(path) {
        Ok(cfg) => {
            let a = apply(lb, listeners, &cfg);
            lb.reload_status().set_last_error(None);
            tracing::info!(
                generation = a.generation,
                added = ?a.added,
                removed = ?a.removed,
                restored = ?a.restored,
                kept = a.kept.len(),
                "config reloaded"
            );
            for r in &a.needs_restart {
                tracing::warn!(
                    "config reload: {r} changed; that change needs a restart and was not applied"
                );
            }
            Ok(a)
        }
        Err(e) => {
            let msg = e.to_string();
            lb.metrics().reload_failures.inc();
            tracing::error!(
                "config reload refused, nothing changed: {}",
                msg.replace('\n', "; ")
            );
            lb.reload_status().set_last_error(Some(msg.clone()));
            Err(msg)
        }
    }
}

/// Hash of the config file and of every TLS file it names: a renewed certificate (same
/// config, new files) is a change too.
fn digest(path: &Path) -> Option<u64> {
    let text = std::fs::read(path).ok()?;
    let mut all = text;
    for f in tls_files(path) {
        if let Ok(b) = std::fs::read(&f) {
            all.extend_from_slice(&b);
        }
    }
    Some(crate::backend::balance::stable_hash(&all))
}

/// The TLS files a config names (when it parses).
fn tls_files(path: &Path) -> Vec<PathBuf> {
    Config::load(path)
        .map(|c| {
            c.listeners
                .iter()
                .filter_map(|l| l.tls.as_ref())
                .flat_map(|t| t.files.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Watches the config's directory and its certificate directories; every event but a read
/// sends a (not forced) reload request. `None` when there is no watcher (SIGHUP still works).
fn start_watcher(
    path: &Path,
    dir: &Path,
    wtx: mpsc::Sender<bool>,
) -> Option<notify::RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = wtx.try_send(false);
            }
        }
    });
    match watcher {
        Ok(mut w) => {
            use notify::Watcher;
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; SIGHUP still reloads");
            }
            // certificate directories too, for rotation without touching the config
            let mut dirs: Vec<PathBuf> = tls_files(path)
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect();
            dirs.sort();
            dirs.dedup();
            for d in dirs.iter().filter(|d| d.as_path() != dir) {
                if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch a certificate directory; SIGHUP still reloads");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; SIGHUP still reloads");
            None
        }
    }
}

/// Turns every SIGHUP into a forced reload request.
#[cfg(unix)]
fn forward_sighup(tx: mpsc::Sender<bool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            while hup.recv().await.is_some() {
                if tx.send(true).await.is_err() {
                    break;
                }
            }
        }
    });
}

/// Watches the config file (and SIGHUP) until `stop`; debounces bursts of events by 200 ms.
/// The watch starts before this returns (the returned future is the loop), so a change made
/// once the LB has logged `listening` is never missed.
pub fn watch_loop(
    lb: Arc<Lb>,
    listeners: Arc<Listeners>,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    let (tx, mut rx) = mpsc::channel::<bool>(16);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let watcher = start_watcher(&path, &dir, tx.clone());
    #[cfg(unix)]
    forward_sighup(tx.clone());
    let mut last = digest(&path);
    async move {
        // both live as long as the loop: dropping them would end the events
        let (_watcher, _tx) = (watcher, tx);
        loop {
            let forced = tokio::select! {
                _ = stop.changed() => break,
                m = rx.recv() => match m { Some(f) => f, None => break },
            };
            // debounce: collect the burst an editor or a ConfigMap swap makes
            let mut forced = forced;
            tokio::time::sleep(Duration::from_millis(200)).await;
            while let Ok(f) = rx.try_recv() {
                forced |= f;
            }
            let now = digest(&path);
            if !forced && now == last {
                continue;
            }
            if forced {
                tracing::info!("SIGHUP: re-reading {}", path.display());
            }
            last = now;
            let _ = reload_from_file(&lb, &listeners, &path);
        }
    }
}
