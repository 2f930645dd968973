//! The driver of the external client scripts in `tests/interop/` (MQTT.js, paho): run one to
//! completion under a deadline with both pipes drained, then read its `FAIL name: why` lines and
//! its `N passed, M failed` summary.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one script run left: its exit code (`None`: killed at the deadline) and its output.
pub struct ScriptRun {
    pub status: Option<i32>,
    pub output: String,
    pub timeout: Duration,
}

impl ScriptRun {
    /// Runs `cmd` to completion or kills it at `timeout`; stdout and stderr are read while it
    /// runs, so a chatty script cannot block on a full pipe.
    pub fn run(mut cmd: Command, timeout: Duration) -> ScriptRun {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut p| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = p.read_to_string(&mut s);
                s
            })
        })
        .collect();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = readers
            .into_iter()
            .map(|r| r.join().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("");
        ScriptRun {
            status,
            output,
            timeout,
        }
    }

    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The names of the failed checks (the reasons are in the output).
    pub fn failed(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter_map(|l| l.strip_prefix("FAIL "))
            .map(|l| l.split(':').next().unwrap_or(l))
            .collect()
    }

    /// Fails unless the script exited 0 with no failed check, naming the failed checks, then
    /// `context` (server state, logs), then the script output.
    pub fn assert_clean(&self, what: &str, context: &str) {
        let failed = self.failed();
        assert!(
            self.status == Some(0) && failed.is_empty(),
            "{what} failed: {} (exit {:?}; None = killed after {:?}); {context}\n\
             --- script output ---\n{}",
            if failed.is_empty() {
                "the script did not finish cleanly".to_string()
            } else {
                failed.join(", ")
            },
            self.status,
            self.timeout,
            self.output
        );
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
