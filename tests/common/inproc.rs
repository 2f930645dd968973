//! In-process servers for tests of library behaviour: the config file is loaded with the
//! library's own loader, its listeners bound (`127.0.0.1:0` in the config gives OS ports), and
//! `mqedge_broker::run_with` / `mqedge_lb::run_with` run on a runtime thread of their own, so
//! the test's runtime (or a plain `#[test]`) only drives clients. The bound addresses come from
//! the listeners themselves, not from log lines. Drop signals the shutdown and waits a bounded
//! time for the server to finish (a server that hangs fails the next assertion, not the
//! whole test binary).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{broker_config, TempDir};

/// How long a server may take to stop after its shutdown signal (drain timeouts included).
const STOP_WAIT: Duration = Duration::from_secs(15);

/// How long binding and building the state may take.
const START_WAIT: Duration = Duration::from_secs(20);

/// The addresses a server's listeners were bound to, by listener name.
#[derive(Clone, Debug)]
pub struct Addrs {
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
}

impl Addrs {
    fn of(names: Vec<String>, listeners: &[TcpListener], admin: Option<&TcpListener>) -> Addrs {
        Addrs {
            listeners: names
                .into_iter()
                .zip(listeners)
                .map(|(n, l)| (n, l.local_addr().unwrap()))
                .collect(),
            admin: admin.map(|a| a.local_addr().unwrap()),
        }
    }

    fn first(&self) -> SocketAddr {
        self.listeners.first().expect("no [[listener]]").1
    }

    fn named(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener named {name:?} in {:?}", self.listeners))
            .1
    }

    fn admin(&self) -> SocketAddr {
        self.admin.expect("the config sets no admin address")
    }
}

/// A server's log lines, captured for failure messages (tests assert on state and metrics, not
/// on these). `MQEDGE_TEST_VERBOSE` also echoes them to stderr.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("MQEDGE_TEST_VERBOSE").is_some() {
            let _ = std::io::stderr().write_all(b);
        }
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// A dispatcher writing to this buffer, at `RUST_LOG`'s level (default: info, debug for the
    /// LB). [`LogBuf::wait_listening`] needs the servers' info lines.
    fn dispatch(&self) -> tracing::Dispatch {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,mqedge_lb=debug,rustls=error")
        });
        let me = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(move || me.clone())
                .finish(),
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until `n` accept loops have started. `run_with` has no readiness signal (it binds
    /// nothing itself and says nothing when it starts accepting: after the LB's first health
    /// round, after the broker's cluster start), so the `listening` line each accept loop
    /// logs stands in for one. Readiness only: no assertion reads log text.
    fn wait_listening(&self, n: usize, name: &str) {
        let deadline = std::time::Instant::now() + START_WAIT;
        loop {
            let up = self
                .text()
                .lines()
                .filter(|l| l.contains(" listening ") && l.contains(" listener="))
                .count();
            if up >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {up} of {n} listeners accepting after {START_WAIT:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A server on its own runtime thread; stopped and joined on drop.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    done: mpsc::Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
    name: &'static str,
    log: LogBuf,
}

impl Running {
    /// Runs `start(stop)` on a new thread's multi-threaded runtime: it binds and builds the
    /// state, yielding what the test gets (`T`) and the future that serves until `stop`
    /// resolves. Returns once `start` has finished.
    fn spawn<T, F, Fut, Serve>(name: &'static str, start: F) -> (Running, T)
    where
        T: Send + 'static,
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, Serve), String>>,
        Serve: Future<Output = Result<(), String>>,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let log = LogBuf::default();
        let dispatch = log.dispatch();
        let thread = std::thread::Builder::new()
            .name(format!("inproc-{name}"))
            .spawn(move || {
                // this server's threads log to its buffer (the test's own threads do not)
                let _here = tracing::dispatcher::set_default(&dispatch);
                let workers = dispatch.clone();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .thread_name(format!("inproc-{name}"))
                    .on_thread_start(move || {
                        std::mem::forget(tracing::dispatcher::set_default(&workers));
                    })
                    .build()
                    .unwrap();
                let res = rt.block_on(async move {
                    match start(stop_rx).await {
                        Ok((t, serve)) => {
                            let _ = ready_tx.send(Ok(t));
                            serve.await
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            Err(e)
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
                let _ = done_tx.send(res);
            })
            .unwrap();
        let running = Running {
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
            name,
            log,
        };
        match ready_rx.recv_timeout(START_WAIT) {
            Ok(Ok(t)) => (running, t),
            Ok(Err(e)) => panic!("{name}: cannot start: {e}"),
            Err(_) => panic!("{name}: not started within {START_WAIT:?}"),
        }
    }

    /// Whether `run_with` has returned (or the thread panicked) before a stop was asked for.
    fn finished(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }

    /// Signals the shutdown and waits (bounded) for `run_with` to return; its result.
    fn stop(&mut self) -> Option<Result<(), String>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let res = self.done.recv_timeout(STOP_WAIT).ok();
        if res.is_some() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            eprintln!("{}: did not stop within {STOP_WAIT:?}", self.name);
        }
        res
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server run in-process from a config file; `S` is its shared state.
pub struct InProc<S> {
    /// The server's shared state (sessions, live config, metrics), for assertions on state.
    pub state: Arc<S>,
    addrs: Addrs,
    // dropped first: the server stops before its directory goes
    running: Running,
    dir: Option<TempDir>,
}

/// A broker node run in-process (see [`broker_config`]).
pub type InProcBroker = InProc<mqedge_broker::Broker>;

/// A load balancer run in-process. The config file stays the LB's: editing it reloads the LB
/// as it would the binary's.
pub type InProcLb = InProc<mqedge_lb::Lb>;

impl<S> InProc<S> {
    /// Starts the server (see [`Running::spawn`]) and waits until its accept loops run.
    fn spawn<F, Fut, Serve>(name: &'static str, start: F) -> InProc<S>
    where
        S: Send + Sync + 'static,
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<((Arc<S>, Addrs), Serve), String>>,
        Serve: Future<Output = Result<(), String>>,
    {
        let (running, (state, addrs)) = Running::spawn(name, start);
        running.log.wait_listening(addrs.listeners.len(), name);
        InProc {
            state,
            addrs,
            running,
            dir: None,
        }
    }

    /// The admin API (`[node] admin`, `[lb] admin`).
    pub fn admin(&self) -> SocketAddr {
        self.addrs.admin()
    }

    /// What the server logged so far (for failure messages).
    pub fn logs(&self) -> String {
        self.running.log.text()
    }

    /// Whether the server stopped on its own (a failure: nothing asked it to).
    pub fn finished(&self) -> bool {
        self.running.finished()
    }

    /// Stops the server as SIGTERM would (the broker tells its clients and flushes its store,
    /// the LB drains) and waits for it; what `run_with` returned, `None` when it did not return
    /// within the bound.
    pub fn stop(&mut self) -> Option<Result<(), String>> {
        self.running.stop()
    }
}

/// The future that resolves when the test asks the server to stop.
async fn stopped(stop: oneshot::Receiver<()>) {
    let _ = stop.await;
}

impl InProc<mqedge_broker::Broker> {
    /// A node of [`broker_config`] (one plain listener on port 0, admin on port 0, anonymous
    /// clients) plus `extra` TOML, in a temp dir of its own named after `tag`.
    pub fn plain(tag: &str, extra: &str) -> InProcBroker {
        let dir = TempDir::new(tag);
        let cfg = dir.write("b.toml", &broker_config("127.0.0.1:0", "", extra));
        let mut b = InProcBroker::start(&cfg);
        b.dir = Some(dir);
        b
    }

    pub fn start(config: &Path) -> InProcBroker {
        let cfg = mqedge_broker::config::Config::load(config)
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let names = cfg.listeners.iter().map(|l| l.name.clone()).collect();
        InProc::spawn("broker", move |stop| async move {
            let bound = mqedge_broker::bind(&cfg).await.map_err(|e| e.to_string())?;
            let addrs = Addrs::of(names, &bound.listeners, bound.admin.as_ref());
            let b = mqedge_broker::Broker::new(cfg).map_err(|e| e.to_string())?;
            let serve = mqedge_broker::run_with(b.clone(), bound, stopped(stop));
            Ok((
                (b, addrs),
                async move { serve.await.map_err(|e| e.to_string()) },
            ))
        })
    }

    /// The first MQTT listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs.first()
    }

    pub fn addr_of(&self, listener: &str) -> SocketAddr {
        self.addrs.named(listener)
    }
}

impl InProc<mqedge_lb::Lb> {
    pub fn start(config: &Path) -> InProcLb {
        let cfg = mqedge_lb::config::Config::load(config)
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let names = cfg.listeners.iter().map(|l| l.name.clone()).collect();
        InProc::spawn("lb", move |stop| async move {
            let bound = mqedge_lb::bind(&cfg).await.map_err(|e| e.to_string())?;
            let addrs = Addrs::of(names, &bound.listeners, bound.admin.as_ref());
            let lb = mqedge_lb::Lb::new(&cfg);
            let serve = mqedge_lb::run_with(lb.clone(), cfg, bound, stopped(stop));
            Ok(((lb, addrs), async move {
                serve.await.map_err(|e| e.to_string())
            }))
        })
    }

    /// The address of the named `[[listener]]`.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs.named(listener)
    }
}
