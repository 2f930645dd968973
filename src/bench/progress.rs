//! The live progress bar (indicatif, on stderr): shown only when stderr is a terminal and the
//! report is not `--json`, refreshed from the run's atomic counters a few times a second, and
//! cleared before the report or an error line is printed.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// A running progress bar, or nothing when there is no terminal to draw on.
pub struct Progress {
    bar: Option<ProgressBar>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Whether a bar would be drawn at all.
    pub fn wanted(json: bool) -> bool {
        !json && std::io::stderr().is_terminal()
    }

    /// Starts a bar of `len` steps (a spinner when `None`); `status` returns the position and
    /// the message, and is called every 200 ms.
    pub fn start<F>(enabled: bool, len: Option<u64>, status: F) -> Progress
    where
        F: Fn() -> (u64, String) + Send + 'static,
    {
        if !enabled {
            return Progress {
                bar: None,
                task: None,
            };
        }
        let template = match len {
            Some(_) => "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
            None => "{spinner} [{elapsed_precise}] {msg}",
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar =
            ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr()).with_style(style);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let (pos, msg) = status();
                b.set_position(pos);
                b.set_message(msg);
            }
        });
        Progress {
            bar: Some(bar),
            task: Some(task),
        }
    }

    /// Stops updating and erases the bar.
    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
